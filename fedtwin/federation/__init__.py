"""Flower ServerApp / ClientApp factories with fedtwin's guard rails and validation."""

from fedtwin.federation.client import make_client_app, simulation_sites
from fedtwin.federation.collector import RoundCollector
from fedtwin.federation.config import RunConfig, SiteConfig, SiteId
from fedtwin.federation.server import CoordinatorOutcome, make_server_app, run_coordinator
from fedtwin.federation.validation import RejectedUpdate, ValidatedStrategy

__all__ = [
    "CoordinatorOutcome",
    "RejectedUpdate",
    "RoundCollector",
    "RunConfig",
    "SiteConfig",
    "SiteId",
    "ValidatedStrategy",
    "make_client_app",
    "make_server_app",
    "run_coordinator",
    "simulation_sites",
]
