"""The site's app-hash gate on real Flower App Bundles, policies, messages and audit logs.

The bundles are built by Flower's own builder from a copy of this project's Flower app; the
gate wraps stand-ins for Flower's installer and loader that record whether they were reached
(the real ones run in the multi-process deployment test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.cli.build import build_fab_from_disk

from fedtwin.audit import EVENT_ADAPTER, AuditSigner
from fedtwin.consent import load_site_policy
from fedtwin.deploy.app_gate import (
    AppGate,
    approval_problem,
    approve_app,
    fab_digest,
    flower_app_digest,
)
from fedtwin.deploy.coordinator import copy_flower_app
from fedtwin.deploy.local import flower_app_dir
from fedtwin.federation.client import REFUSED_APP

REPO_POLICY = Path(__file__).resolve().parents[2] / "policies" / "site-opt-out.toml"


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture(scope="module")
def fabs(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """The project's app bundle and one whose ClientApp entry was changed by one comment."""
    root = tmp_path_factory.mktemp("apps")
    approved = copy_flower_app(flower_app_dir(), root / "approved")
    changed = copy_flower_app(flower_app_dir(), root / "changed")
    with (changed / "client" / "app.py").open("a") as handle:
        handle.write("\n# one more line\n")
    return build_fab_from_disk(approved), build_fab_from_disk(changed)


@pytest.fixture
def site_config(tmp_path: Path) -> Path:
    policy = tmp_path / "site-policy.toml"
    policy.write_text(REPO_POLICY.read_text().replace('site_id = "site-b"', 'site_id = "site-x"'))
    AuditSigner.from_seed("site-x", b"x" * 32).save(tmp_path / "site.audit.pem")
    config = tmp_path / "site.toml"
    config.write_text(
        "[site]\n"
        'site_id = "site-x"\n'
        f'data_dir = "{tmp_path / "export"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'site_policy = "{policy}"\n'
        f'consortium_policy = "{tmp_path / "consortium.toml"}"\n'
        f'audit_key = "{tmp_path / "site.audit.pem"}"\n'
        f'coordinator_audit_key = "{tmp_path / "coordinator.vkey"}"\n'
    )
    return config


class _Flower:
    """Stand-ins for Flower's installer and loader: record what reached them."""

    def __init__(self) -> None:
        self.installed: list[bytes] = []
        self.loaded: list[str] = []

    def install(self, fab: Path | bytes, *args: Any, **kwargs: Any) -> Path:
        self.installed.append(fab if isinstance(fab, bytes) else b"")
        return Path("/installed")

    def loader_factory(self, *args: Any, **kwargs: Any) -> Any:
        def load(fab_id: str, fab_version: str, fab_hash: str) -> str:
            self.loaded.append(fab_hash)
            return "the bundle's ClientApp"

        return load


def _train_message() -> Message:
    config = ConfigRecord({"run-config": '{"run_id": "study-run"}', "server-round": 2})
    request = Message(RecordDict({"config": config}), dst_node_id=1, message_type=MessageType.TRAIN)
    return request


def test_fab_builds_are_byte_stable_so_a_site_can_approve_a_hash_in_advance(
    fabs: tuple[bytes, bytes], tmp_path: Path
) -> None:
    approved, changed = fabs
    again = copy_flower_app(flower_app_dir(), tmp_path / "again")
    assert flower_app_digest(again) == fab_digest(approved)
    assert fab_digest(changed) != fab_digest(approved)


def test_an_empty_approval_list_refuses_every_app(
    site_config: Path, fabs: tuple[bytes, bytes]
) -> None:
    problem = approval_problem(site_config, fab_digest(fabs[0]))
    assert problem is not None and "approved_app_hashes" in problem


def test_an_unreadable_site_policy_refuses_every_app(
    site_config: Path, fabs: tuple[bytes, bytes]
) -> None:
    (site_config.parent / "site-policy.toml").write_text("regime = 'opt-out'\n")
    problem = approval_problem(site_config, fab_digest(fabs[0]))
    assert problem is not None and "site policy unusable" in problem


def test_an_approved_bundle_is_installed_and_loaded_as_flower_would(
    site_config: Path, fabs: tuple[bytes, bytes]
) -> None:
    approved, _ = fabs
    approve_app(site_config.parent / "site-policy.toml", fab_digest(approved))
    policy = load_site_policy(site_config.parent / "site-policy.toml")
    assert policy.approved_app_hashes == (fab_digest(approved),)
    flower, gate = _Flower(), AppGate(site_config)

    assert gate.install(flower.install)(approved, None, True) == Path("/installed")
    app = gate.loader(flower.loader_factory)()("app", "1.0", fab_digest(approved)[7:])

    assert app == "the bundle's ClientApp"
    assert flower.installed == [approved]
    assert gate.refusal is None


def test_an_unapproved_bundle_is_never_installed_and_every_message_is_refused_and_logged(
    site_config: Path, fabs: tuple[bytes, bytes]
) -> None:
    approved, changed = fabs
    approve_app(site_config.parent / "site-policy.toml", fab_digest(approved))
    flower, gate = _Flower(), AppGate(site_config)

    gate.install(flower.install)(changed, None, True)
    app = gate.loader(flower.loader_factory)()("app", "1.0", fab_digest(changed)[7:])
    reply = app(_train_message(), Context(7, 1, {}, RecordDict(), {}))

    assert flower.installed == [] and flower.loaded == []
    assert reply.has_error() and reply.error.code == REFUSED_APP
    assert fab_digest(changed) in reply.error.reason
    log = site_config.parent / "state" / "audit" / "site-x.audit.jsonl"
    events = [EVENT_ADAPTER.validate_json(line) for line in log.read_bytes().splitlines()]
    decision, refused = events[0], events[1]
    assert decision.type == "policy_decision" and decision.allowed is False  # type: ignore[union-attr]
    assert (decision.run_id, decision.round) == ("study-run", 2)
    assert refused.type == "site_refused" and refused.reason_code == "app-not-approved"  # type: ignore[union-attr]


def test_a_bundle_whose_claimed_hash_is_not_its_own_is_refused(
    site_config: Path, fabs: tuple[bytes, bytes]
) -> None:
    approved, changed = fabs
    approve_app(site_config.parent / "site-policy.toml", fab_digest(approved))
    flower, gate = _Flower(), AppGate(site_config)

    gate.install(flower.install)(approved, None, True)
    # The coordinator names another bundle's hash: Flower would load that one's directory.
    gate.loader(flower.loader_factory)()("app", "1.0", fab_digest(changed)[7:])

    assert flower.loaded == []
    assert gate.refusal is not None and "hash to" in gate.refusal
