"""The coordinator's audited, validated FedAvg on real Flower messages from test clients.

A round's replies come from enrolled test sites; some send a NaN update, a wrong shape, a wrong
dtype or an update 1000x larger than the others. The strategy stack the coordinator runs
(:class:`AuditedStrategy` over :class:`ValidatedStrategy` over Flower's ``FedAvg``) must
exclude exactly those, aggregate the rest, and write every rejection to a real audit log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from fedtwin.audit import EVENT_ADAPTER, AuditLog, AuditSigner
from fedtwin.federation import ValidatedStrategy
from fedtwin.federation.audited import AuditedStrategy, CoordinatorAudit

SITES = ("site-a", "site-b", "site-c", "site-d", "site-e", "site-f")
SHAPES = {"w": (4, 3), "b": (3,)}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class _Grid:
    """The only Grid call FedAvg's configure_train makes: which nodes are connected."""

    def get_node_ids(self) -> list[int]:
        return list(range(1, len(SITES) + 1))


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in values.items()})


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {k: rng.normal(size=shape).astype(np.float32) for k, shape in SHAPES.items()}


def _stack(
    tmp_path: Path, min_updates: int = 1
) -> tuple[AuditedStrategy, ValidatedStrategy, dict[str, AuditSigner], Path]:
    signers = {site: AuditSigner.from_seed(site, site.encode().ljust(32, b"0")) for site in SITES}
    log_dir = tmp_path / "audit"
    audit = CoordinatorAudit(
        log=AuditLog.open(log_dir, "coordinator"),
        signer=AuditSigner.from_seed("coordinator", b"c" * 32),
        origin="fedtwin/test/coordinator",
        run_id="test-run",
        site_keys={site: signer.verifier_key for site, signer in signers.items()},
    )
    validated = ValidatedStrategy(
        FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1),
        max_update_norm=1e9,  # only the median rule can catch the x1000 update
        max_norm_ratio=10.0,
        min_updates=min_updates,
    )
    return AuditedStrategy(validated, audit), validated, signers, log_dir


def _replies(
    strategy: AuditedStrategy,
    signers: dict[str, AuditSigner],
    updates: dict[str, dict[str, np.ndarray]],
    global_arrays: dict[str, np.ndarray],
) -> list[Message]:
    requests = list(strategy.configure_train(1, _arrays(global_arrays), ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    assert len(requests) == len(SITES)
    replies = []
    for request, (site, update) in zip(requests, updates.items(), strict=False):
        assert request.metadata.message_type == MessageType.TRAIN
        content = RecordDict(
            {
                "arrays": _arrays(update),
                "metrics": MetricRecord({"num-examples": 10}),
                "site": ConfigRecord(
                    {"site-id": site, "audit-key": signers[site].verifier_key.encode()}
                ),
            }
        )
        replies.append(Message(content, reply_to=request))
    return replies


def _honest(global_arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in global_arrays.items()
    }


def _events(log_dir: Path) -> list[object]:
    lines = (log_dir / "coordinator.audit.jsonl").read_bytes().splitlines()
    return [EVENT_ADAPTER.validate_json(line) for line in lines]


def test_nan_wrong_shape_wrong_dtype_and_1000x_updates_are_rejected_and_audited(
    tmp_path: Path,
) -> None:
    strategy, validated, signers, log_dir = _stack(tmp_path)
    base = _global()
    honest = {site: _honest(base, seed) for seed, site in enumerate(SITES[:3])}
    huge = {k: base[k] + 1000 * (honest["site-a"][k] - base[k]) for k in base}
    nan = {**_honest(base, 7), "w": np.full(SHAPES["w"], np.nan, dtype=np.float32)}
    wrong_shape = {**_honest(base, 8), "w": np.zeros((3, 4), dtype=np.float32)}
    wrong_dtype = {k: v.astype(np.float64) for k, v in _honest(base, 9).items()}
    updates = {
        **honest,
        "site-d": nan,
        "site-e": wrong_shape,
        "site-f": {k: v.astype(np.float32) for k, v in huge.items()},
    }
    replies = _replies(strategy, signers, updates, base)
    dtype_reply = _replies(strategy, signers, {"site-c": wrong_dtype}, base)[0]

    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    for key in base:
        expected = np.mean([honest[site][key] for site in honest], axis=0)
        np.testing.assert_allclose(aggregated[key].numpy(), expected, rtol=1e-6)
    reasons = {r.site_id: r.reason for r in validated.rejected}
    assert set(reasons) == {"site-d", "site-e", "site-f"}
    assert "non-finite" in reasons["site-d"]
    assert "shape" in reasons["site-e"]
    assert "median" in reasons["site-f"]

    events = _events(log_dir)
    rejected = {e.site_id: e for e in events if e.type == "update_rejected"}  # type: ignore[attr-defined]
    assert set(rejected) == {"site-d", "site-e", "site-f"}
    assert all(e.reason_code == "validation-failed" for e in rejected.values())
    received = {e.site_id for e in events if e.type == "update_received"}  # type: ignore[attr-defined]
    assert received == set(SITES)
    (aggregation,) = [e for e in events if e.type == "aggregated"]  # type: ignore[attr-defined]
    assert aggregation.contributors == ("site-a", "site-b", "site-c")  # type: ignore[attr-defined]

    validated.rejected.clear()
    strategy.aggregate_train(2, [replies[0], dtype_reply])
    assert [r.site_id for r in validated.rejected] == ["site-c"]
    assert "dtype" in validated.rejected[0].reason


def test_a_round_below_min_updates_is_not_aggregated_and_is_audited(tmp_path: Path) -> None:
    strategy, validated, signers, log_dir = _stack(tmp_path, min_updates=3)
    base = _global()
    updates = {site: _honest(base, seed) for seed, site in enumerate(SITES[:2])}
    replies = _replies(strategy, signers, updates, base)

    aggregated, metrics = strategy.aggregate_train(1, replies)

    assert aggregated is None and metrics is None
    assert [(s.server_round, s.accepted, s.required) for s in validated.short_rounds] == [(1, 2, 3)]
    events = _events(log_dir)
    errors = [e for e in events if e.type == "error_raised"]  # type: ignore[attr-defined]
    assert [e.error_class for e in errors] == ["QuorumNotMet"]  # type: ignore[attr-defined]
    assert not [e for e in events if e.type == "aggregated"]  # type: ignore[attr-defined]


def test_two_updates_one_1000x_larger_keeps_only_the_smaller() -> None:
    base = _global()
    validated = ValidatedStrategy(FedAvg(), max_update_norm=1e9, max_norm_ratio=10.0)
    strategy_replies = []
    for site, scale in (("site-a", 1.0), ("site-b", 1000.0)):
        update = {k: (v + scale * 0.01).astype(np.float32) for k, v in base.items()}
        request = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
        content = RecordDict(
            {
                "arrays": _arrays(update),
                "metrics": MetricRecord({"num-examples": 10}),
                "site": ConfigRecord({"site-id": site}),
            }
        )
        strategy_replies.append(Message(content, reply_to=request))
    list(validated.configure_train(1, _arrays(base), ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    aggregated, _ = validated.aggregate_train(1, strategy_replies)
    assert [r.site_id for r in validated.rejected] == ["site-b"]
    assert aggregated is not None
    np.testing.assert_allclose(aggregated["b"].numpy(), base["b"] + 0.01, rtol=1e-6)
