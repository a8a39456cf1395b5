"""Round checkpoints of the coordinator, and resuming a run after the last completed round.

After every completed round (training aggregated or not, evaluation and cosignatures
collected) the coordinator writes ``<out_dir>/resume/``: the global model after that round
(``round-<n>.safetensors``) and ``state.json`` (the round, the run config hash, the model
file's digest, the coordinator audit log's size, the metrics and rejections so far, which node
is which site). The model is written first and ``state.json`` is renamed into place last, so
the state always names a complete model file; a crash leaves the previous round's state.

Resuming (``fedtwin coordinator run --resume``) reads the state back, fail closed: it must be
the same fedtwin run (``run_id`` and the run config hash unchanged), the model file must have
the digest the state names, and the audit log must hold at least the entries it held then.
Rounds then continue at ``round + 1`` under the same ``run_id``; every site keys its ledger and
its stored releases on ``(run_id, round)``, so a round a site had already trained before the
coordinator died is answered from the stored release (same global model) and never spent again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.federation.config import RunConfig, one_line
from fedtwin.federation.grids import SteadyNodesGrid

RESUME_DIR = "resume"
STATE_FILE = "state.json"

SiteMetrics = dict[str, float]


class RoundState(BaseModel):
    """What the coordinator needs to continue a run after its last completed round."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    config_hash: str
    completed_round: int = Field(ge=1)
    model_file: str = Field(pattern=r"^round-[0-9]+\.safetensors$")
    model_sha256: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    audit_log_size: int = Field(ge=0)
    train: dict[int, dict[str, SiteMetrics]] = Field(default_factory=dict)
    evaluate: dict[int, dict[str, SiteMetrics]] = Field(default_factory=dict)
    rejected: tuple[tuple[int, str, str], ...] = ()
    refusals: tuple[tuple[int, int, int, str], ...] = ()
    node_sites: dict[int, str] = Field(default_factory=dict)
    joined: tuple[str, ...] = ()


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def write_round_state(out_dir: Path, state: RoundState, arrays: ArrayRecord) -> None:
    """Write the round's model, then ``state.json`` naming it (see module docstring)."""
    folder = out_dir / RESUME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / state.model_file
    partial = model.with_name(model.name + ".partial")
    tensors = {k: v.detach().contiguous().cpu() for k, v in arrays.to_torch_state_dict().items()}
    save_file(tensors, str(partial))
    partial.replace(model)
    final = state.model_copy(update={"model_sha256": _sha256(model)})
    text = json.dumps(final.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    partial_state = folder / (STATE_FILE + ".partial")
    partial_state.write_text(text)
    partial_state.replace(folder / STATE_FILE)
    for older in folder.glob("round-*.safetensors"):
        if older.name != state.model_file:
            older.unlink(missing_ok=True)


def load_round_state(
    out_dir: Path, run: RunConfig, audit_log_size: int
) -> tuple[RoundState, ArrayRecord]:
    """The state and global model to resume ``run`` from (see module docstring).

    Raises
    ------
    ConfigError
        If there is no state, or it belongs to another run or another run config.
    VerificationError
        If the model file or the audit log does not match what the state recorded.
    """
    path = out_dir / RESUME_DIR / STATE_FILE
    try:
        state = RoundState.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"{path}: no round checkpoint to resume from") from error
    except ValidationError as error:
        raise ConfigError(f"{path}: {one_line(error)}") from error
    if state.run_id != run.run_id or state.config_hash != run.config_hash:
        raise ConfigError(
            f"{path}: checkpoint of run {state.run_id} with another run config; "
            "a resumed run must be submitted with the same settings"
        )
    model = path.parent / state.model_file
    if not model.is_file() or _sha256(model) != state.model_sha256:
        raise VerificationError(f"{model}: missing or not the model the checkpoint names")
    if audit_log_size < state.audit_log_size:
        raise VerificationError(
            f"coordinator audit log holds {audit_log_size} entries, fewer than the "
            f"{state.audit_log_size} it held at round {state.completed_round}"
        )
    return state, ArrayRecord(load_file(str(model)))


RoundDone = Callable[[int, ArrayRecord], None]


class ResumableStrategy(Strategy):
    """Numbers rounds from ``first_round`` and reports each completed round with its model.

    Flower's ``Strategy.start`` always counts rounds from 1; this outermost wrapper shifts the
    numbers the wrapped strategy (and therefore every site and log) sees, so a resumed run
    keeps the real round numbers.
    """

    def __init__(self, inner: Strategy, first_round: int, on_round_done: RoundDone) -> None:
        self.inner = inner
        self.offset = first_round - 1
        self.on_round_done = on_round_done
        self.arrays: ArrayRecord | None = None

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the round's global model; delegate with the real round number.

        The wrapped strategy sees the connected sites through a :class:`SteadyNodesGrid`: a
        site dropping out while the round is configured cannot stall the run.
        """
        self.arrays = arrays
        return self.inner.configure_train(
            server_round + self.offset, arrays, config, SteadyNodesGrid(grid)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate; keep the new global model when there is one."""
        arrays, metrics = self.inner.aggregate_train(server_round + self.offset, replies)
        if arrays is not None:
            self.arrays = arrays
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate with the real round number (sites seen as in :meth:`configure_train`)."""
        return self.inner.configure_evaluate(
            server_round + self.offset, arrays, config, SteadyNodesGrid(grid)
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate; the round is complete: report it with its global model."""
        metrics = self.inner.aggregate_evaluate(server_round + self.offset, replies)
        if self.arrays is not None:
            self.on_round_done(server_round + self.offset, self.arrays)
        return metrics
