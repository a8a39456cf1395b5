"""Flower ServerApp entry the consortium deploys (named in ``[tool.flwr.app.components]``).

All logic lives in :mod:`fedtwin.federation`; the run config comes from ``context.run_config``.
"""

from fedtwin.federation import make_server_app

app = make_server_app()
