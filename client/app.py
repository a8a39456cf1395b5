"""Flower ClientApp entry a hospital deploys (named in ``[tool.flwr.app.components]``).

The site's guard rails (run-config validation, privacy ledger, patient-level DP) run from the
site's installed ``fedtwin``; the site is resolved from the SuperNode's ``--node-config``.
"""

from fedtwin.federation import make_client_app, node_config_sites

app = make_client_app(node_config_sites)
