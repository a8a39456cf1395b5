"""Audit log speed: durable appends per second, verification of 100,000 events, proof sizes.

* appends: events written through :class:`fedtwin.audit.AuditLog` with group commit (one
  ``fdatasync`` per batch of ``--batch`` events; every counted event is on disk when its batch
  returns), against the baseline of the same appends with a single ``fdatasync`` at the very end
  (not durable until then). ``fsync_each_appends_per_s`` is the rate with one ``fdatasync`` per
  event, for reference. Goal: at least 5,000 durable appends per second;
* verification: :func:`fedtwin.audit.verify_log` of a ``--events`` log (100,000 by default)
  with a signed checkpoint every 1,000 events, against the baseline of only hashing its lines
  into the RFC 9162 root. Goal: at most 5 s;
* proofs: inclusion and consistency proof lengths (hashes) against ``ceil(log2 n)``.

Prints one JSON line. Deterministic content (fixed seed key, fixed clock); timings are the best
of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fedtwin.audit import (
    AuditLog,
    AuditSigner,
    BudgetChecked,
    ConsentFiltered,
    UpdateSent,
    verify_log,
)
from fedtwin.audit.entries import log_file, read_log_lines
from fedtwin.audit.merkle import leaf_hash, root_of
from fedtwin.audit.tree import MerkleTree

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def ticking() -> Callable[[], datetime]:
    state = {"n": 0}

    def clock() -> datetime:
        state["n"] += 1
        return T0 + timedelta(milliseconds=state["n"])

    return clock


def append_event(log: AuditLog, n: int) -> None:
    round_ = 1 + n // 1000
    kind = n % 3
    if kind == 0:
        log.record(
            BudgetChecked,
            run_id="bench-run",
            round=round_,
            site_id="site-a",
            epsilon_before=0.001 * n,
            epsilon_after=0.001 * n + 0.25,
            epsilon_cap=8.0,
            delta=1e-5,
            noise_multiplier=1.1,
            max_grad_norm=1.0,
            sample_rate=0.05,
            steps=40,
            accountant="prv",
            allowed=True,
        )
    elif kind == 1:
        log.record(
            ConsentFiltered,
            run_id="bench-run",
            round=round_,
            site_id="site-a",
            consent_snapshot_time=T0,
            patients_total=1000,
            patients_permitted=900,
            denied_by_reason={"withdrawn": 40, "no-research-consent": 60},
        )
    else:
        log.record(
            UpdateSent,
            run_id="bench-run",
            round=round_,
            site_id="site-a",
            sha256=f"sha256:{n:064x}",
            num_examples=900,
        )


def appends_per_second(directory: Path, events: int, batch: int) -> float:
    with AuditLog.open(directory, "site-a", clock=ticking()) as log:
        started = time.perf_counter()
        for first in range(0, events, batch):
            with log.batch():
                for n in range(first, min(first + batch, events)):
                    append_event(log, n)
        return events / (time.perf_counter() - started)


def build_log(directory: Path, events: int, signer: AuditSigner) -> Path:
    with AuditLog.open(directory, "site-a", clock=ticking()) as log:
        for first in range(0, events, 1000):
            with log.batch():
                for n in range(first, min(first + 1000, events)):
                    append_event(log, n)
            log.checkpoint(signer, "fedtwin/bench-run/site-a")
    return log_file(directory, "site-a")


def best_of(repeat: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def proof_sizes(sizes: list[int]) -> list[dict[str, int]]:
    rows = []
    for n in sizes:
        tree = MerkleTree(leaf_hash(i.to_bytes(8, "big")) for i in range(n))
        probes = sorted({0, n // 3, n // 2, n - 1})
        rows.append(
            {
                "n": n,
                "ceil_log2_n": math.ceil(math.log2(n)),
                "inclusion_max": max(len(tree.inclusion_proof(i)) for i in probes),
                "consistency_max": max(len(tree.consistency_proof(max(m, 1))) for m in probes),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    signer = AuditSigner.from_seed("site-a", bytes([7]) * 32)
    with tempfile.TemporaryDirectory(prefix="fedtwin-bench-audit-") as tmp:
        root = Path(tmp)

        def fresh(name: str) -> Path:
            folder = root / name / str(time.perf_counter_ns())
            folder.mkdir(parents=True)
            return folder

        durable = max(
            appends_per_second(fresh("durable"), args.appends, args.batch)
            for _ in range(args.repeat)
        )
        buffered = max(
            appends_per_second(fresh("buffered"), args.appends, args.appends)
            for _ in range(args.repeat)
        )
        fsync_each = appends_per_second(fresh("each"), 300, 1)
        path = build_log(fresh("verify"), args.events, signer)
        key = signer.verifier_key
        report = verify_log(path, key)
        if not report.ok or report.entries != args.events:
            raise SystemExit(f"bench log did not verify: {report.summary()}")
        verify_s = best_of(args.repeat, lambda: verify_log(path, key))
        hash_s = best_of(
            args.repeat, lambda: root_of([leaf_hash(ln) for ln in read_log_lines(path).lines])
        )
    print(
        json.dumps(
            {
                "bench": "audit",
                "durable_appends_per_s": round(durable),
                "group_commit_batch": args.batch,
                "baseline": "same appends, one fdatasync at the end (not durable)",
                "baseline_appends_per_s": round(buffered),
                "ratio": round(durable / buffered, 3),
                "fsync_each_appends_per_s": round(fsync_each),
                "goal_appends_per_s": 5000,
                "verify_events": args.events,
                "verify_s": round(verify_s, 3),
                "verify_baseline": "hash the lines into the RFC 9162 root only",
                "hash_only_s": round(hash_s, 3),
                "verify_ratio": round(verify_s / hash_s, 2),
                "goal_verify_s": 5.0,
                "proof_sizes": proof_sizes([10, 1_000, 100_000, 1_000_000]),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
