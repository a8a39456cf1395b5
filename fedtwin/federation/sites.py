"""Where a site's configuration comes from: a TOML file, a demo manifest, a simulated node.

Every reader validates against :class:`~fedtwin.federation.config.SiteConfig` and turns any
problem into one :class:`~fedtwin.errors.ConfigError` line naming the file and the field.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context
from pydantic import TypeAdapter, ValidationError

from fedtwin.errors import ConfigError
from fedtwin.federation.config import SiteConfig, one_line

SITES_MANIFEST = "sites.json"

SiteResolver = Callable[[Context], SiteConfig]


def _read_document(path: Path, what: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what} ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: invalid JSON at line {error.lineno}") from error


def load_site_config(path: Path) -> SiteConfig:
    """Read a site config (TOML, optionally under ``[site]``) and validate it."""
    document = _read_document(path, "site config", tomllib.loads)
    try:
        return SiteConfig.model_validate(document.get("site", document))
    except ValidationError as error:
        raise ConfigError(f"{path}: {one_line(error)}") from error


def load_sites_manifest(path: Path) -> list[SiteConfig]:
    """Read a ``sites.json`` manifest; folders in it are relative to the manifest's folder."""
    document = _read_document(path, "sites manifest", json.loads)
    try:
        sites = TypeAdapter(list[SiteConfig]).validate_python(document)
    except ValidationError as error:
        raise ConfigError(f"{path}: {one_line(error)}") from error
    root = path.parent.resolve()
    return [site.model_copy(update=_paths(site, lambda p: root / p)) for site in sites]


def _paths(site: SiteConfig, change: Callable[[Path], Path]) -> dict[str, Path]:
    """Every path field of a site config, changed."""
    return {
        name: change(getattr(site, name))
        for name, field in SiteConfig.model_fields.items()
        if field.annotation is Path
    }


def write_sites_manifest(root: Path, sites: Sequence[SiteConfig]) -> Path:
    """Write ``root/sites.json`` with each site's folders relative to ``root`` (movable)."""
    from fedtwin.federation.outputs import write_json

    base = root.resolve()
    documents = [
        site.model_copy(update=_paths(site, lambda p: p.resolve().relative_to(base))).model_dump(
            mode="json"
        )
        for site in sites
    ]
    write_json(root / SITES_MANIFEST, documents)
    return root / SITES_MANIFEST


def simulation_sites(sites: Sequence[SiteConfig]) -> SiteResolver:
    """Resolve the site of a simulated SuperNode from its ``partition-id``."""

    def resolve(context: Context) -> SiteConfig:
        partition = int(str(context.node_config["partition-id"]))
        if not 0 <= partition < len(sites):
            raise ConfigError(f"no site configured for partition {partition}")
        return sites[partition]

    return resolve


def node_config_sites(context: Context) -> SiteConfig:
    """Resolve a node's site from its node config.

    ``site-config`` names a TOML file (deployment); in a simulation started with ``flwr run``,
    ``partition-id`` indexes ``<data-root>/sites.json``.
    """
    if "site-config" in context.node_config:
        return load_site_config(Path(str(context.node_config["site-config"])))
    if "partition-id" in context.node_config and "data-root" in context.run_config:
        manifest = Path(str(context.run_config["data-root"])) / SITES_MANIFEST
        return simulation_sites(load_sites_manifest(manifest))(context)
    raise ConfigError("node config names no site-config, and no data-root is configured")
