"""Per-site, per-round metrics gathered on the coordinator from the sites' replies.

Flower's default aggregation averages metrics weighted by examples, which is wrong for ε (the
guarantee of the worst site is the maximum) and hides per-site error. This collector keeps every
site's reported metrics per round and aggregates RMSE by pooling squared errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedtwin.federation.calibration import FOLD_KEYS
from fedtwin.federation.client import SITE_RECORD_KEY

SiteMetrics = dict[str, float]
SUMMED_KEYS = frozenset({"heldout-patients"})
RoundCallback = Callable[[int, "RoundCollector"], None]


def _site(record: RecordDict) -> str:
    site = record.config_records.get(SITE_RECORD_KEY, ConfigRecord())
    return str(site.get("site-id", "?"))


def _metrics(record: RecordDict) -> SiteMetrics:
    metric_record = next(iter(record.metric_records.values()))
    return {k: float(v) for k, v in metric_record.items() if isinstance(v, int | float)}


def _histograms(record: RecordDict) -> dict[str, list[int]]:
    metric_record = next(iter(record.metric_records.values()))
    folds = {}
    for key in FOLD_KEYS:
        value = metric_record.get(key)
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            folds[key] = [int(v) for v in value]
    return folds if len(folds) == len(FOLD_KEYS) else {}


@dataclass
class RoundCollector:
    """Collects train and evaluate metrics per round and site; calls back after evaluation."""

    on_round_evaluated: RoundCallback | None = None
    train: dict[int, dict[str, SiteMetrics]] = field(default_factory=dict)
    evaluate: dict[int, dict[str, SiteMetrics]] = field(default_factory=dict)
    #: round → site → the calibration folds' flat ``|z|`` histograms (integer counts)
    calibration: dict[int, dict[str, dict[str, list[int]]]] = field(default_factory=dict)

    def aggregate_train(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        """Record every site's training metrics; return worst-case ε and mean loss."""
        per_site = {_site(r): _metrics(r) for r in records}
        server_round = int(next(iter(per_site.values()))["server-round"])
        self.train[server_round] = per_site
        weights = [m[weight_key] for m in per_site.values()]
        losses = [m["train-loss"] for m in per_site.values()]
        return MetricRecord(
            {
                "epsilon-max": max(m["epsilon"] for m in per_site.values()),
                "train-loss": sum(w * x for w, x in zip(weights, losses, strict=True))
                / sum(weights),
                "sites": len(per_site),
            }
        )

    def aggregate_evaluate(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        """Record every site's held-out metrics; return RMSE/MAE pooled over all windows."""
        per_site = {_site(r): _metrics(r) for r in records}
        server_round = int(next(iter(per_site.values()))["server-round"])
        self.evaluate[server_round] = per_site
        self.calibration[server_round] = {
            site: folds for site, folds in ((_site(r), _histograms(r)) for r in records) if folds
        }
        pooled = pool_site_metrics(per_site, weight_key)
        if self.on_round_evaluated is not None:
            self.on_round_evaluated(server_round, self)
        return MetricRecord(dict[str, int | float | list[int] | list[float]](pooled))


def pool_site_metrics(per_site: dict[str, SiteMetrics], weight_key: str) -> dict[str, float]:
    """Pool per-site metrics over all sites.

    RMSE via the weighted mean of squares, counts summed, everything else as weighted means;
    the weights are ``weight_key`` (the number of evaluation windows).
    """
    total = sum(m[weight_key] for m in per_site.values())
    pooled: dict[str, float] = {}
    keys = set.intersection(*(set(m) for m in per_site.values())) - {weight_key, "server-round"}
    for key in sorted(keys):
        if key in SUMMED_KEYS:
            pooled[key] = sum(m[key] for m in per_site.values())
        elif "rmse" in key:
            mean_square = sum(m[weight_key] * m[key] ** 2 for m in per_site.values()) / total
            pooled[key] = math.sqrt(mean_square)
        else:
            pooled[key] = sum(m[weight_key] * m[key] for m in per_site.values()) / total
    return pooled
