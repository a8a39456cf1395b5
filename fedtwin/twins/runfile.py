"""Load a trained glucose twin from a run directory (and write one, for local training).

A run directory holds ``model.safetensors`` (never pickle) and ``model_card.json`` as
:mod:`fedtwin.federation.outputs` writes them. Loading checks, in order, and stops at the first
failure:

1. the run directory and its model card exist and the card is a JSON object;
2. the card's ``model_kind`` is ``"glucose-twin"`` (another twin kind is refused);
3. its ``architecture`` is a valid :class:`~fedtwin.twins.GlucoseTwinConfig`;
4. ``model.safetensors`` exists and its SHA-256 equals the card's ``version_hash``
   (a mismatch is a :class:`~fedtwin.errors.VerificationError`: the files do not belong
   together or were altered);
5. the tensors fill exactly that architecture;
6. the optional ``calibration`` entry is a valid
   :class:`~fedtwin.twins.calibration.CalibrationScales` covering the model's horizon.

Bad input (1-3, 5, 6) raises :class:`~fedtwin.errors.ConfigError`, which names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.twins.calibration import CalibrationScales
from fedtwin.twins.glucose import GlucoseTwin, GlucoseTwinConfig

MODEL_KIND = "glucose-twin"
MODEL_FILE = "model.safetensors"
MODEL_CARD_FILE = "model_card.json"
CALIBRATION_KEY = "calibration"


@dataclass(frozen=True, eq=False)
class TwinRun:
    """A loaded glucose twin.

    Attributes
    ----------
    model : GlucoseTwin
        The network, in eval mode.
    calibration : CalibrationScales or None
        Std factors from the model card, if the run fitted them.
    card : Mapping[str, Any]
        The whole model card.
    version_hash : str
        ``sha256:<hex>`` of ``model.safetensors``.
    """

    model: GlucoseTwin
    calibration: CalibrationScales | None
    card: Mapping[str, Any]
    version_hash: str

    @property
    def config(self) -> GlucoseTwinConfig:
        """The twin's architecture."""
        return self.model.config


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return f"{where}: {first['msg']}"


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a model file (the model card's ``version_hash`` form)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def verify_card_hash(model_path: Path, card: Mapping[str, Any]) -> str:
    """The model file's hash; VerificationError if the card names another one."""
    version_hash = file_sha256(model_path)
    expected = card.get("version_hash")
    if expected is not None and expected != version_hash:
        raise VerificationError(
            f"{model_path}: SHA-256 {version_hash} does not match the card's version_hash"
        )
    return version_hash


def model_file_metadata(model_path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``twin_kind`` names an oncology twin's kind)."""
    try:
        with safe_open(str(model_path), framework="pt") as handle:  # type: ignore[no-untyped-call]
            metadata = handle.metadata()
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"{model_path}: not a safetensors model file") from error
    return dict(metadata or {})


def load_twin_run(run_dir: Path) -> TwinRun:
    """Load and check the twin of ``run_dir`` (steps 1-6 of the module docstring).

    Raises
    ------
    ConfigError
        Missing files, another model kind, a bad architecture, calibration or tensor set.
    VerificationError
        ``model.safetensors`` does not match the card's ``version_hash``.
    """
    card_path, model_path = run_dir / MODEL_CARD_FILE, run_dir / MODEL_FILE
    # (1): the card exists and is a JSON object.
    if run_dir.is_file():
        held = model_file_metadata(run_dir).get("twin_kind", "model of no known twin kind")
        raise ConfigError(
            f"{run_dir}: a model file holding a {held!r}, not a run directory; this command "
            f"needs the run directory of a {MODEL_KIND!r} model"
        )
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{card_path}: missing (not the run of a trained twin)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{card_path}: not readable JSON ({error})") from error
    if not isinstance(card, dict):
        raise ConfigError(f"{card_path}: not a JSON object")
    # (2): the kind of twin.
    kind = card.get("model_kind")
    if kind != MODEL_KIND:
        raise ConfigError(
            f"{card_path}: model_kind is {kind!r}, this command needs a {MODEL_KIND!r} model"
        )
    # (3): the architecture.
    try:
        config = GlucoseTwinConfig.model_validate(card.get("architecture"))
    except ValidationError as error:
        raise ConfigError(f"{card_path}: architecture.{_first_error(error)}") from error
    # (4): the model file belongs to this card.
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: missing")
    version_hash = verify_card_hash(model_path, card)
    # (5): the tensors fill the architecture exactly.
    model = GlucoseTwin(config)
    try:
        model.load_state_dict(load_file(str(model_path)), strict=True)
    except (RuntimeError, SafetensorError, OSError) as error:
        raise ConfigError(f"{model_path}: does not hold the card's architecture") from error
    model.eval()
    # (6): the optional calibration.
    calibration = None
    if card.get(CALIBRATION_KEY) is not None:
        try:
            calibration = CalibrationScales.model_validate(card[CALIBRATION_KEY])
        except ValidationError as error:
            raise ConfigError(f"{card_path}: calibration.{_first_error(error)}") from error
        if len(calibration.std_scale) < config.horizon_steps:
            raise ConfigError(
                f"{card_path}: calibration covers {len(calibration.std_scale)} horizon steps, "
                f"the model {config.horizon_steps}"
            )
    return TwinRun(model=model, calibration=calibration, card=card, version_hash=version_hash)


def write_twin_run(
    run_dir: Path,
    model: GlucoseTwin,
    *,
    calibration: CalibrationScales | None = None,
    card_fields: Mapping[str, Any] | None = None,
) -> str:
    """Write ``model.safetensors`` and a minimal model card; return the version hash.

    For models trained outside a federated run (tests, benchmarks, a pooled reference); the
    card has the keys :func:`load_twin_run` reads plus ``card_fields``. Files are written
    under temporary names and renamed.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / (MODEL_FILE + ".partial")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(partial), metadata={"twin": model.config.model_dump_json()})
    version_hash = file_sha256(partial)
    partial.replace(run_dir / MODEL_FILE)
    card: dict[str, Any] = {
        "model_kind": MODEL_KIND,
        "version_hash": version_hash,
        "architecture": model.config.model_dump(mode="json"),
        **(card_fields or {}),
    }
    if calibration is not None:
        card[CALIBRATION_KEY] = calibration.model_dump(mode="json")
    card_partial = run_dir / (MODEL_CARD_FILE + ".partial")
    with card_partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(card, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    card_partial.replace(run_dir / MODEL_CARD_FILE)
    return version_hash
