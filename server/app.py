"""Flower ServerApp entry the consortium deploys (named in ``[tool.flwr.app.components]``).

All logic lives in :mod:`fedtwin.federation`; the run config comes from ``context.run_config``.
The Grid is wrapped so replies are pulled every 0.2 s instead of Flower's fixed 3 s
(:mod:`fedtwin.deploy.polling`).
"""

from fedtwin.deploy.polling import prompt_polling
from fedtwin.federation import make_server_app

app = prompt_polling(make_server_app())
