"""Small simulated site trees for the federation tests (built by the demo's generator)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtwin.audit import EVENT_ADAPTER
from fedtwin.demo import DemoConfig
from fedtwin.federation import SiteConfig

SMALL = DemoConfig(
    rounds=3,
    sites=3,
    patients_per_site=60,
    days=0.5,
    local_steps=3,
    batch_patients=16,
    min_eligible_patients=5,
    seed=11,
)


@dataclass(frozen=True)
class SiteTree:
    """A generated consortium + sites tree and its site configs."""

    root: Path
    config: DemoConfig
    sites: tuple[SiteConfig, ...]

    def site(self, site_id: str) -> SiteConfig:
        return next(s for s in self.sites if s.site_id == site_id)


def relocated(site: SiteConfig, old: Path, new: Path) -> SiteConfig:
    """The site config with every path under ``old`` moved under ``new``."""
    updates = {
        name: new / value.relative_to(old)
        for name, value in site.model_dump().items()
        if isinstance(value, Path) and value.is_relative_to(old)
    }
    return site.model_copy(update=updates)


def site_events(site: SiteConfig) -> list[Any]:
    """Every event of the site's own audit log, validated."""
    path = site.audit_dir / f"{site.site_id}.audit.jsonl"
    return [EVENT_ADAPTER.validate_json(line) for line in path.read_bytes().splitlines()]
