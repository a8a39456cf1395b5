"""App-hash approval at the site: a run's code executes only if the site approved its bundle.

The ClientApp of a run arrives from the coordinator inside the Flower App Bundle (FAB), so a
malicious coordinator could ship a ClientApp that skips the site's guard rails. Flower 1.42's
own answer, ``flower-supernode --trusted-entities`` (signed FABs), works only with a SuperLink
that vouches for a license (``valid_license``); the open-source SuperLink does not, and the
node then refuses every run. fedtwin therefore checks at the boundary the site owns: its warm
executor (:mod:`.warm_executor`, site-installed code) runs every task in a forked child, and
there, before Flower's ``run_clientapp`` installs or imports anything of the FAB, this gate
hashes the FAB bytes the SuperNode received and looks the digest up in the site policy's
``approved_app_hashes``.

Invariants:

* the digest is SHA-256 over the received bytes (Flower's FAB hash), computed here; the hash
  the coordinator names is only compared with it, and a mismatch refuses;
* the site policy is read for each task (an edit applies to the next message); an unreadable
  policy or an empty ``approved_app_hashes`` refuses every run (fail closed);
* a refused FAB is never installed nor imported: the reply (error :data:`REFUSED_APP`) comes
  from a ClientApp built here from the site's own code, after it wrote the refusal to the
  site's audit log; nothing is read from the site's data and no ε is spent;
* an approved FAB runs exactly as Flower runs it (Flower's own installer and loader).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedtwin.errors import FedTwinError
from fedtwin.federation.client import REFUSED_APP, RUN_CONFIG_KEY

APP_NOT_APPROVED = "app-not-approved"
"""Audit reason code of the refusal, in the site's and the coordinator's logs."""


def fab_digest(content: bytes) -> str:
    """``sha256:<hex>`` of a FAB's bytes (what ``approved_app_hashes`` lists)."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def flower_app_digest(project_dir: Path) -> str:
    """The digest of the FAB ``flwr run`` builds from ``project_dir`` (builds are byte-stable)."""
    from flwr.cli.build import build_fab_from_disk

    try:
        return fab_digest(build_fab_from_disk(project_dir))
    except (OSError, ValueError) as error:
        from fedtwin.errors import ConfigError

        raise ConfigError(f"{project_dir}: cannot build the Flower app bundle ({error})") from error


def approve_app(site_policy: Path, digest: str) -> None:
    """Add ``digest`` to a site policy's ``approved_app_hashes`` (what a site does after review).

    The policy is rewritten through its model (validated, comments replaced by one header line)
    and renamed into place.
    """
    from fedtwin.consent import load_site_policy, policy_toml

    policy = load_site_policy(site_policy)
    if digest in policy.approved_app_hashes:
        return
    document = policy.model_dump()
    document["approved_app_hashes"] = (*policy.approved_app_hashes, digest)
    header = f"{policy.site_id} policy; approved apps updated by fedtwin"
    partial = site_policy.with_name(site_policy.name + ".partial")
    partial.write_text(policy_toml(type(policy).model_validate(document), header=header))
    partial.replace(site_policy)


def approval_problem(site_config: Path, digest: str) -> str | None:
    """Why the site refuses the app ``digest`` (None when its site policy approves it)."""
    from fedtwin.consent import load_site_policy
    from fedtwin.federation import load_site_config

    try:
        approved = load_site_policy(load_site_config(site_config).site_policy).approved_app_hashes
    except FedTwinError as error:
        return f"site policy unusable, every app refused: {error}"
    if digest not in approved:
        return f"app {digest} is not in the site policy's approved_app_hashes"
    return None


def _refusal_context(msg: Message) -> tuple[str, int | None]:
    """The fedtwin run id and round a refused message claims (for the site's log only)."""
    import json

    config = msg.content.config_records.get("config") if msg.has_content() else None
    run_id = f"flwr-{msg.metadata.run_id}"
    server_round = None
    if config is not None:
        value = config.get("server-round")
        server_round = value if isinstance(value, int) and value >= 0 else None
        try:
            claimed = json.loads(str(config.get(RUN_CONFIG_KEY, "{}"))).get("run_id")
        except (ValueError, AttributeError):
            claimed = None
        if isinstance(claimed, str):
            run_id = claimed
    return run_id, server_round


def log_app_refusal(site_config: Path, msg: Message, digest: str, reason: str) -> None:
    """Record the refusal in the site's audit log (policy decision + site refused)."""
    from fedtwin.audit import PolicyDecision, SiteRefused
    from fedtwin.consent import load_site_policy, policy_hash
    from fedtwin.federation import load_site_config
    from fedtwin.federation.site_round import open_party

    site = load_site_config(site_config)
    run_id, server_round = _refusal_context(msg)
    party = open_party(site)
    try:
        try:
            version = policy_hash(load_site_policy(site.site_policy))
        except FedTwinError:
            version = digest  # no readable policy: name the refused app instead
        with party.log.batch():
            party.log.record(
                PolicyDecision,
                run_id=run_id,
                round=server_round,
                site_id=site.site_id,
                policy_version_hash=version,
                allowed=False,
                reasons=(reason[:500],),
            )
            party.log.record(
                SiteRefused,
                run_id=run_id,
                round=server_round,
                site_id=site.site_id,
                reason_code=APP_NOT_APPROVED,
                reason=reason[:500],
            )
    finally:
        party.close()


def refusing_client_app(site_config: Path, digest: str, reason: str) -> ClientApp:
    """A ClientApp (site code) that logs and refuses every message of an unapproved app."""
    app = ClientApp()

    def refuse(msg: Message, context: Context) -> Message:
        # The refusal stands even when the site's log cannot be written.
        with contextlib.suppress(FedTwinError, OSError):
            log_app_refusal(site_config, msg, digest, reason)
        return Message(Error(REFUSED_APP, f"site refuses the app: {reason}"), reply_to=msg)

    app.train()(refuse)
    app.evaluate()(refuse)
    app.query()(refuse)
    return app


@dataclass
class AppGate:
    """Wraps Flower's FAB installer and ClientApp loader for one task (one forked child)."""

    site_config: Path
    digest: str | None = None
    refusal: str | None = None

    def install(self, original: Callable[..., Path]) -> Callable[..., Path]:
        """Flower's ``install_from_fab`` that first checks the bytes it was given."""

        def install(fab_file: Path | bytes, *args: Any, **kwargs: Any) -> Path:
            content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
            self.digest = fab_digest(content)
            self.refusal = approval_problem(self.site_config, self.digest)
            if self.refusal is not None:
                return Path(os.devnull)  # nothing of the bundle is written or imported
            return original(fab_file, *args, **kwargs)

        return install

    def loader(self, original: Callable[..., Callable[..., Any]]) -> Callable[..., Any]:
        """Flower's ``get_load_client_app_fn`` whose loader refuses an unchecked app."""

        def factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            load = original(*args, **kwargs)

            def gated(fab_id: str, fab_version: str, fab_hash: str) -> Any:
                if self.digest is None:
                    self.digest, self.refusal = "sha256:" + "0" * 64, "no bundle was checked"
                elif self.refusal is None and self.digest != f"sha256:{fab_hash}":
                    self.refusal = f"the bundle's bytes hash to {self.digest}, not {fab_hash}"
                if self.refusal is not None:
                    return refusing_client_app(self.site_config, self.digest, self.refusal)
                return load(fab_id, fab_version, fab_hash)

            return gated

        return factory


def run_gated_clientapp(
    runtime_api_address: str, token: str, parent_pid: int, site_config: Path
) -> int:
    """Run one task with Flower's ``run_clientapp`` behind the gate; return its exit code.

    Call only in a child process that runs this one task: Flower's module is patched there.
    """
    from flwr.supernode.runtime import run_clientapp as flower

    gate = AppGate(site_config)
    # The two names run_clientapp calls, replaced in this (forked, one-task) process only.
    names = vars(flower)
    names["install_from_fab"] = gate.install(names["install_from_fab"])
    names["get_load_client_app_fn"] = gate.loader(names["get_load_client_app_fn"])
    try:
        flower.run_clientapp(
            runtime_api_address=runtime_api_address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=parent_pid,
            runtime_dependency_install=False,
        )
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0
    return 0
