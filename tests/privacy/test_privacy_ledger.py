from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.privacy import AccountantKind, PrivacyLedger, SpendEvent, epsilon_spent


def _event(round_: int, run: str = "run-1", noise: float = 1.5) -> SpendEvent:
    return SpendEvent(
        run_id=run,
        round=round_,
        study="study",
        noise_multiplier=noise,
        sample_rate=0.1,
        steps=20,
        max_grad_norm=1.0,
    )


def _ledger(path: Path, cap: float = 3.0) -> PrivacyLedger:
    return PrivacyLedger(
        path / "ledger.sqlite",
        epsilon_cap=cap,
        delta=1e-5,
        accountant=AccountantKind.RDP,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_can_spend_writes_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    check = ledger.can_spend(_event(1))
    assert check.allowed and check.epsilon_before == 0.0 and check.epsilon_after > 0
    assert ledger.history() == []


def test_spends_accumulate_until_the_cap_refuses(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    round_ = 1
    while ledger.can_spend(_event(round_)).allowed:
        ledger.commit(_event(round_))
        round_ += 1
    refused = ledger.can_spend(_event(round_))
    assert not refused.allowed
    assert refused.epsilon_before <= 3.0 < refused.epsilon_after
    assert ledger.epsilon() == pytest.approx(refused.epsilon_before)
    assert round_ > 2


def test_retried_round_is_not_counted_twice(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert ledger.commit(_event(1)) is True
    assert ledger.commit(_event(1)) is False
    assert len(ledger.history()) == 1


def test_conflicting_commit_for_a_round_fails_closed(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.commit(_event(1, noise=1.5))
    with pytest.raises(VerificationError, match="already committed"):
        ledger.commit(_event(1, noise=0.5))


def test_ledger_survives_reopening(tmp_path: Path) -> None:
    first = _ledger(tmp_path)
    first.commit(_event(1))
    first.commit(_event(2))
    reopened = _ledger(tmp_path)
    assert [e.round for e in reopened.history()] == [1, 2]
    assert reopened.epsilon() == pytest.approx(first.epsilon())


def test_ledger_refuses_a_different_delta(tmp_path: Path) -> None:
    _ledger(tmp_path).commit(_event(1))
    with pytest.raises(ConfigError, match="delta"):
        PrivacyLedger(tmp_path / "ledger.sqlite", epsilon_cap=3.0, delta=1e-6)


def test_history_can_exclude_the_current_run(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, cap=50)
    ledger.commit(_event(1, run="a"))
    ledger.commit(_event(1, run="b"))
    assert [e.run_id for e in ledger.history(exclude_run="b")] == ["a"]


def test_ledger_of_another_site_refuses_to_open(tmp_path: Path) -> None:
    PrivacyLedger(tmp_path / "l.sqlite", 3.0, 1e-5, site_id="site-a")
    with pytest.raises(ConfigError, match="belongs to site 'site-a'"):
        PrivacyLedger(tmp_path / "l.sqlite", 3.0, 1e-5, site_id="site-b")


@pytest.mark.parametrize(
    "content",
    [b"not a database at all, just text\n", b"SQLite format 3\x00" + b"\xff" * 4000],
)
def test_corrupted_ledger_refuses_with_one_line_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        PrivacyLedger(path, 3.0, 1e-5)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(("cap", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (1.0, 0.0), (1.0, 1.0)])
def test_invalid_cap_or_delta_is_refused(tmp_path: Path, cap: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        PrivacyLedger(tmp_path / "l.sqlite", cap, delta)


def test_study_cap_bounds_one_study_while_the_site_cap_bounds_all(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, cap=100.0)
    other = _event(1, run="run-0").model_copy(update={"study": "other-study"})
    ledger.commit(other)
    planned = _event(1)
    study_only = ledger.can_spend(planned, study_cap=planned_epsilon(ledger, planned) * 1.01)
    assert study_only.allowed
    assert study_only.study_epsilon_after < study_only.epsilon_after
    tight = ledger.can_spend(planned, study_cap=planned_epsilon(ledger, planned) * 0.99)
    assert not tight.allowed and tight.reason.startswith("study cap")


def planned_epsilon(ledger: PrivacyLedger, planned: SpendEvent) -> float:
    return epsilon_spent([planned.as_mechanism()], ledger.delta, ledger.accountant)


def test_epsilon_by_round_is_cumulative_and_increasing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, cap=100.0)
    for round_ in (1, 2, 3):
        ledger.commit(_event(round_))
    points = ledger.epsilon_by_round("run-1")
    assert [r for r, _ in points] == [1, 2, 3]
    values = [e for _, e in points]
    assert values[0] < values[1] < values[2]
    assert values[-1] == pytest.approx(ledger.epsilon())
