"""Real deployment: a coordinator (Flower SuperLink) and site nodes (SuperNodes) over HTTPS.

Only enrolled sites get in (Flower SuperNode authentication with keys from
:mod:`fedtwin.pki`); every process fedtwin starts has telemetry and runtime dependency
installation off and its Flower home inside a fedtwin state folder. Processes are supervised
by name with pid files, so ``start``/``stop``/``status`` work across invocations.
"""

from fedtwin.deploy.config import (
    CoordinatorConfig,
    CoordinatorSection,
    NodeSection,
    RunSection,
    load_coordinator_config,
    load_node_section,
)
from fedtwin.deploy.coordinator import Coordinator, CoordinatorStatus, RunOutcome
from fedtwin.deploy.flwr_cli import FlwrCli, Registration, RunInfo
from fedtwin.deploy.process import ManagedProcess, ProcessState, ProcessStatus
from fedtwin.deploy.site import SiteNode, SiteNodeStatus, site_toml

__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorSection",
    "CoordinatorStatus",
    "FlwrCli",
    "ManagedProcess",
    "NodeSection",
    "ProcessState",
    "ProcessStatus",
    "Registration",
    "RunInfo",
    "RunOutcome",
    "RunSection",
    "SiteNode",
    "SiteNodeStatus",
    "load_coordinator_config",
    "load_node_section",
    "site_toml",
]
