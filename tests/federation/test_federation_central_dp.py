"""The coordinator's optional central DP: clipping per site, noise on the average."""

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from fedtwin.federation import RoundCollector, RunConfig
from fedtwin.federation.config import CentralDpConfig
from fedtwin.federation.outputs import site_level_privacy
from fedtwin.federation.server import build_strategy

GLOBAL = {"w": np.zeros((4, 5), dtype=np.float32)}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class _ThreeSites:
    """The only part of a Grid that FedAvg's sampling reads: which nodes are connected."""

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def _reply(update: np.ndarray, site: str) -> Message:
    request = Message(RecordDict(), dst_node_id=11, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(update.astype(np.float32))}),
            "metrics": MetricRecord(
                {"num-examples": 10, "server-round": 1, "epsilon": 1.0, "train-loss": 0.5}
            ),
            "site": ConfigRecord({"site-id": site}),
        }
    )
    return Message(content, reply_to=request)


def _aggregate(run: RunConfig, updates: list[np.ndarray]) -> np.ndarray:
    strategy = build_strategy(run, RoundCollector())
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), _ThreeSites()))  # type: ignore[arg-type]
    replies = [_reply(u, f"site-{i}") for i, u in enumerate(updates)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    return aggregated.to_numpy_ndarrays()[0]


def test_without_central_dp_the_coordinator_averages_plainly() -> None:
    run = RunConfig(min_sites=3)
    assert isinstance(build_strategy(run, RoundCollector()).inner, FedAvg)
    updates = [np.full((4, 5), v) for v in (0.1, 0.2, 0.3)]
    assert np.allclose(_aggregate(run, updates), 0.2)


def test_central_dp_clips_each_site_and_adds_noise_to_the_average() -> None:
    clip = 0.5
    run = RunConfig(
        min_sites=3, central_dp=CentralDpConfig(noise_multiplier=1.0, clipping_norm=clip)
    )
    strategy = build_strategy(run, RoundCollector())
    assert isinstance(strategy.inner, DifferentialPrivacyServerSideFixedClipping)
    # Three sites with identical large updates (norm 8.9): clipped to 0.5 each before averaging.
    updates = [np.full((4, 5), 2.0) for _ in range(3)]
    averaged = _aggregate(run, updates)
    noiseless = np.full((4, 5), 2.0) * clip / np.linalg.norm(np.full((4, 5), 2.0))
    noise = averaged - noiseless
    expected_std = 1.0 * clip / 3
    assert 0.3 * expected_std < noise.std() < 3 * expected_std
    assert not np.allclose(averaged, noiseless)


def test_site_level_epsilon_is_reported_only_with_central_dp() -> None:
    assert site_level_privacy(RunConfig(), [3] * 5) is None
    run = RunConfig(
        min_sites=3, central_dp=CentralDpConfig(noise_multiplier=2.0, clipping_norm=1.0)
    )
    one = site_level_privacy(run, [3])
    five = site_level_privacy(run, [3] * 5)
    five_with_a_refusal = site_level_privacy(run, [3, 3, 2, 3, 3])
    assert one is not None and five is not None and five_with_a_refusal is not None
    assert 0 < one["epsilon"] < five["epsilon"] < five_with_a_refusal["epsilon"]
    assert five["unit"] == "site"


def test_a_refusing_site_does_not_stop_central_dp_aggregation() -> None:
    run = RunConfig(
        min_sites=3, central_dp=CentralDpConfig(noise_multiplier=0.01, clipping_norm=10.0)
    )
    strategy = build_strategy(run, RoundCollector())
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), _ThreeSites()))  # type: ignore[arg-type]
    request = Message(RecordDict(), dst_node_id=13, message_type=MessageType.TRAIN)
    refusal = Message(Error(4101, "site-2: privacy budget exhausted"), reply_to=request)
    replies = [_reply(np.full((4, 5), 0.1), "site-0"), _reply(np.full((4, 5), 0.3), "site-1")]
    aggregated, _ = strategy.aggregate_train(1, [*replies, refusal])
    assert aggregated is not None
    assert abs(float(aggregated.to_numpy_ndarrays()[0].mean()) - 0.2) < 0.05
    assert [(r.code, r.reason) for r in strategy.refusals] == [
        (4101, "site-2: privacy budget exhausted")
    ]
