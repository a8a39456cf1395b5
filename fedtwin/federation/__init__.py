"""Flower ServerApp / ClientApp factories with fedtwin's guard rails and validation."""

from fedtwin.federation.client import make_client_app
from fedtwin.federation.collector import RoundCollector
from fedtwin.federation.config import RunConfig, SiteConfig, SiteId
from fedtwin.federation.server import (
    CoordinatorOutcome,
    CoordinatorSetup,
    make_server_app,
    run_coordinator,
)
from fedtwin.federation.site_round import RoundClock, wall_clock
from fedtwin.federation.sites import (
    load_site_config,
    load_sites_manifest,
    node_config_sites,
    simulation_sites,
    write_sites_manifest,
)
from fedtwin.federation.validation import RejectedUpdate, ValidatedStrategy

__all__ = [
    "CoordinatorOutcome",
    "CoordinatorSetup",
    "RejectedUpdate",
    "RoundClock",
    "RoundCollector",
    "RunConfig",
    "SiteConfig",
    "SiteId",
    "ValidatedStrategy",
    "load_site_config",
    "load_sites_manifest",
    "make_client_app",
    "make_server_app",
    "node_config_sites",
    "run_coordinator",
    "simulation_sites",
    "wall_clock",
    "write_sites_manifest",
]
