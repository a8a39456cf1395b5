"""The site's persistent privacy ledger: validate before a round, commit after it.

Invariants:

* every spend is a frozen :class:`SpendEvent`; the ledger is an append-only SQLite table (WAL
  journal, ``synchronous=FULL``) at the site, so it survives restarts of the SuperNode;
* :meth:`PrivacyLedger.can_spend` composes the planned spend onto the *whole* history with a
  fresh accountant and compares with the site's cap; it writes nothing;
* :meth:`PrivacyLedger.commit` is idempotent per ``(run_id, round)``: a retried round is never
  counted twice, and a different spend claimed for an already committed round is refused
  (fail closed);
* ε is per patient, δ fixed per ledger: composing spends at different δ is refused;
* a ledger belongs to one site (its id is written at creation) and is checked on every open:
  a ledger of another site, or a file that is not an intact ledger, refuses all training
  (fail closed) with one line naming the file;
* the site's cap bounds ε over *everything* in the ledger (all studies); a study's own cap
  (the consortium policy's) bounds ε over that study's spends only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.privacy.accountant import AccountantKind, MechanismSteps, epsilon_spent

MECHANISM = "dp-sgd/poisson-patients/gaussian"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spends (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    study TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    max_grad_norm REAL NOT NULL,
    committed_at TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SpendEvent(BaseModel):
    """One round's privacy spend at one site."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(min_length=1)
    round: int = Field(ge=1)
    study: str = Field(min_length=1)
    mechanism: str = MECHANISM
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1)
    max_grad_norm: float = Field(gt=0)

    def as_mechanism(self) -> MechanismSteps:
        """The accountant's view of this spend."""
        return MechanismSteps(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps
        )


@dataclass(frozen=True)
class LedgerCheck:
    """Answer of :meth:`PrivacyLedger.can_spend`.

    ``epsilon_before``/``epsilon_after`` are over the whole ledger (the site's cap applies);
    ``study_epsilon_after`` over the planned spend's study only (``study_cap`` applies).
    """

    allowed: bool
    epsilon_before: float
    epsilon_after: float
    epsilon_cap: float
    delta: float
    study_epsilon_after: float = 0.0
    study_cap: float | None = None

    @property
    def reason(self) -> str:
        """Why the spend is refused (empty when allowed)."""
        if self.epsilon_after > self.epsilon_cap:
            return f"site cap: ε would reach {self.epsilon_after:.3f} > {self.epsilon_cap}"
        if self.study_cap is not None and self.study_epsilon_after > self.study_cap:
            return f"study cap: ε would reach {self.study_epsilon_after:.3f} > {self.study_cap}"
        return ""


class PrivacyLedger:
    """Per-site, per-patient privacy budget across every round and run of a study.

    Parameters
    ----------
    path : Path
        The SQLite file (created with its parent folder if missing).
    epsilon_cap : float
        The most ε per patient the site will ever spend.
    delta : float
        δ of every guarantee this ledger states; fixed at creation.
    accountant : AccountantKind
        Accountant used to compose the history.
    clock : Callable[[], datetime]
        Source of commit times (injected for tests).
    site_id : str or None
        The site owning the ledger; written at creation and checked on every open.

    Raises
    ------
    ConfigError
        If the cap or δ are invalid, or the file is not an intact ledger of this site and δ.
    """

    def __init__(
        self,
        path: Path,
        epsilon_cap: float,
        delta: float,
        accountant: AccountantKind = AccountantKind.PRV,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        site_id: str | None = None,
    ) -> None:
        if not epsilon_cap > 0 or not 0 < delta < 1:
            raise ConfigError("privacy ledger needs epsilon_cap > 0 and 0 < delta < 1")
        self.path, self.epsilon_cap, self.delta = path, epsilon_cap, delta
        self.accountant, self.clock = accountant, clock
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            meta = {"delta": repr(delta), "site_id": site_id or ""}
            for key, value in meta.items():
                db.execute("INSERT OR IGNORE INTO ledger_meta VALUES (?, ?)", (key, value))
            stored = dict(db.execute("SELECT key, value FROM ledger_meta").fetchall())
            (integrity,) = db.execute("PRAGMA quick_check").fetchone()
        if integrity != "ok":
            raise ConfigError(f"{path}: privacy ledger is corrupted ({integrity})")
        if float(stored["delta"]) != delta:
            raise ConfigError(
                f"{path}: ledger was created for delta={stored['delta']}, not {delta}"
            )
        if site_id is not None and stored["site_id"] not in ("", site_id):
            raise ConfigError(
                f"{path}: ledger belongs to site {stored['site_id']!r}, not {site_id!r}"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        except sqlite3.Error as error:
            raise ConfigError(f"{self.path}: cannot open privacy ledger ({error})") from error
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except sqlite3.DatabaseError as error:
            # Not a database, a damaged page, a foreign schema: never train on it.
            raise ConfigError(f"{self.path}: privacy ledger is unreadable ({error})") from error
        finally:
            db.close()

    def history(self, exclude_run: str | None = None) -> list[SpendEvent]:
        """Every committed spend in commit order (optionally without one run's)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id, round, study, mechanism, noise_multiplier, sample_rate, steps,"
                " max_grad_norm FROM spends ORDER BY rowid"
            ).fetchall()
        events = [
            SpendEvent(
                run_id=r[0],
                round=r[1],
                study=r[2],
                mechanism=r[3],
                noise_multiplier=r[4],
                sample_rate=r[5],
                steps=r[6],
                max_grad_norm=r[7],
            )
            for r in rows
        ]
        return [e for e in events if e.run_id != exclude_run]

    def epsilon(self, study: str | None = None) -> float:
        """ε per patient spent so far at this site (over one study's spends if given)."""
        return epsilon_spent(
            (e.as_mechanism() for e in self.history() if study is None or e.study == study),
            self.delta,
            self.accountant,
        )

    def epsilon_by_round(self, run_id: str) -> list[tuple[int, float]]:
        """Cumulative ε of the whole ledger after each committed round of ``run_id``."""
        history = self.history()
        points = []
        for index, event in enumerate(history):
            if event.run_id == run_id:
                mechanisms = (e.as_mechanism() for e in history[: index + 1])
                points.append((event.round, epsilon_spent(mechanisms, self.delta, self.accountant)))
        return points

    def can_spend(self, planned: SpendEvent, study_cap: float | None = None) -> LedgerCheck:
        """Would committing ``planned`` keep every patient within the caps? Writes nothing.

        The site's cap bounds the whole ledger; ``study_cap`` (if given) bounds the spends of
        ``planned.study`` alone.
        """
        past = [e for e in self.history() if (e.run_id, e.round) != (planned.run_id, planned.round)]
        before = epsilon_spent((e.as_mechanism() for e in past), self.delta, self.accountant)
        after = epsilon_spent(
            (*(e.as_mechanism() for e in past), planned.as_mechanism()),
            self.delta,
            self.accountant,
        )
        study_after = epsilon_spent(
            (*(e.as_mechanism() for e in past if e.study == planned.study), planned.as_mechanism()),
            self.delta,
            self.accountant,
        )
        allowed = after <= self.epsilon_cap and (study_cap is None or study_after <= study_cap)
        return LedgerCheck(
            allowed=allowed,
            epsilon_before=before,
            epsilon_after=after,
            epsilon_cap=self.epsilon_cap,
            delta=self.delta,
            study_epsilon_after=study_after,
            study_cap=study_cap,
        )

    def commit(self, event: SpendEvent) -> bool:
        """Record ``event``; returns False if this exact spend was already committed.

        Raises
        ------
        VerificationError
            If a *different* spend is already committed for the same run and round.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            existing = db.execute(
                "SELECT study, mechanism, noise_multiplier, sample_rate, steps, max_grad_norm"
                " FROM spends WHERE run_id=? AND round=?",
                (event.run_id, event.round),
            ).fetchone()
            if existing is not None:
                db.execute("ROLLBACK")
                if existing != _spend_columns(event):
                    raise VerificationError(
                        f"ledger {self.path}: round {event.round} of run {event.run_id} is "
                        "already committed with a different spend"
                    )
                return False
            db.execute(
                "INSERT INTO spends VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.run_id, event.round, *_spend_columns(event), self.clock().isoformat()),
            )
            db.execute("COMMIT")
        return True


def _spend_columns(event: SpendEvent) -> tuple[str, str, float, float, int, float]:
    return (
        event.study,
        event.mechanism,
        event.noise_multiplier,
        event.sample_rate,
        event.steps,
        event.max_grad_norm,
    )
