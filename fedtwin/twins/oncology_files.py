"""Oncology twin model files: one self-describing safetensors file, or a run directory.

A model file is ``safetensors`` (never pickle) whose string metadata says what it holds:
``twin_kind`` (``"oncology-twin"``), ``format_version`` (``"1"``), ``config`` (the
:class:`~fedtwin.twins.OncologyTwinConfig` as JSON) and ``patient_type`` (whether the twin was
trained with the simulator's patient type as an input, ``"observed"``, or without it,
``"unknown"``: a FHIR export has no such field). A run directory holds that file as
``model.safetensors`` next to a ``model_card.json`` with ``model_kind`` ``"oncology-twin"`` and
the file's ``version_hash``, like a glucose run (:mod:`fedtwin.twins.runfile`), so each twin
kind's loader refuses the other's directory with one line.

Loading checks, in order, and stops at the first failure:

1. the path exists; a directory has ``model.safetensors`` (and, if present, a model card of
   kind ``"oncology-twin"``);
2. the file is safetensors and its metadata names an ``"oncology-twin"`` (a glucose twin file,
   recognised by its ``twin`` metadata, is named as such) of a known ``format_version``;
3. ``config`` and ``patient_type`` are valid;
4. a card's ``version_hash`` equals the file's SHA-256
   (:class:`~fedtwin.errors.VerificationError` otherwise: the files do not belong together);
5. the tensors fill exactly that architecture (no tensor missing, extra or misshapen).

Every other failure is a :class:`~fedtwin.errors.ConfigError` whose one line names the file.
Files are written under a temporary name and renamed, so a reader never sees half a model.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import OncologyTwin, OncologyTwinConfig
from fedtwin.twins.runfile import file_sha256, model_file_metadata, verify_card_hash

ONCOLOGY_MODEL_KIND = "oncology-twin"
FORMAT_VERSION = "1"
MODEL_FILE = "model.safetensors"
MODEL_CARD_FILE = "model_card.json"
_GLUCOSE_KIND = "glucose-twin"


class PatientTypeInput(enum.StrEnum):
    """Whether the twin reads the simulator's patient type (1, 2, 3) or was trained blind to it."""

    OBSERVED = "observed"
    UNKNOWN = "unknown"


#: The type fed to a twin trained without patient types (a constant input it learns to ignore).
UNKNOWN_PATIENT_TYPE = 2


@dataclass(frozen=True, eq=False)
class OncologyModel:
    """A loaded oncology twin.

    Attributes
    ----------
    twin : OncologyTwin
        The network, in eval mode.
    patient_type : PatientTypeInput
        Whether forecasts need the patient's type.
    path : Path
        The safetensors file it came from.
    version_hash : str
        ``sha256:<hex>`` of that file.
    card : Mapping[str, Any]
        The run directory's model card (empty for a bare file).
    """

    twin: OncologyTwin
    patient_type: PatientTypeInput
    path: Path
    version_hash: str
    card: Mapping[str, Any]

    @property
    def config(self) -> OncologyTwinConfig:
        """The twin's architecture."""
        return self.twin.config


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{card_path}: not readable JSON ({error})") from error
    if not isinstance(card, dict):
        raise ConfigError(f"{card_path}: not a JSON object")
    kind = card.get("model_kind")
    if kind != ONCOLOGY_MODEL_KIND:
        raise ConfigError(
            f"{card_path}: model_kind is {kind!r}, this command needs an "
            f"{ONCOLOGY_MODEL_KIND!r} model"
        )
    return card


def load_oncology_twin(path: Path) -> OncologyModel:
    """Load and check an oncology twin from a model file or run directory (steps 1-5 above).

    Parameters
    ----------
    path : Path
        A ``.safetensors`` file, or a directory holding ``model.safetensors``.

    Returns
    -------
    OncologyModel
        The twin, in eval mode.

    Raises
    ------
    ConfigError
        Missing file, another twin kind, unknown format, bad metadata or tensor set.
    VerificationError
        The file does not match its run directory's model card.
    """
    # (1): the file, and the card of a run directory.
    card: dict[str, Any] = {}
    model_path = path
    if path.is_dir():
        model_path = path / MODEL_FILE
        if (path / MODEL_CARD_FILE).is_file():
            card = _read_card(path / MODEL_CARD_FILE)
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: no such model file")
    # (2): the kind of twin and the format.
    metadata = model_file_metadata(model_path)
    kind = metadata.get("twin_kind")
    if kind is None and "twin" in metadata:
        kind = _GLUCOSE_KIND
    if kind != ONCOLOGY_MODEL_KIND:
        raise ConfigError(
            f"{model_path}: holds a {kind or 'model of no known twin kind'!r}"
            f", this command needs an {ONCOLOGY_MODEL_KIND!r} model"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{model_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    # (3): architecture and patient-type input.
    try:
        config = OncologyTwinConfig.model_validate_json(metadata.get("config", ""))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        raise ConfigError(f"{model_path}: config.{where}: {first['msg']}") from error
    try:
        patient_type = PatientTypeInput(metadata.get("patient_type", ""))
    except ValueError as error:
        raise ConfigError(
            f"{model_path}: patient_type must be 'observed' or 'unknown', "
            f"got {metadata.get('patient_type')!r}"
        ) from error
    # (4): the file belongs to its card.
    version_hash = verify_card_hash(model_path, card)
    # (5): the tensors fill the architecture exactly.
    twin = OncologyTwin(config)
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{model_path}: not a safetensors model file") from error
    expected_keys = set(twin.state_dict())
    missing = sorted(expected_keys - set(tensors))
    extra = sorted(set(tensors) - expected_keys)
    if missing or extra:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {extra[0]!r}"
        raise ConfigError(f"{model_path}: does not hold the twin its config describes ({what})")
    try:
        twin.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        shapes = twin.state_dict()
        bad = next(k for k in sorted(tensors) if tuple(tensors[k].shape) != tuple(shapes[k].shape))
        raise ConfigError(
            f"{model_path}: tensor {bad!r} has shape {list(tensors[bad].shape)}, "
            f"the config needs {list(shapes[bad].shape)}"
        ) from error
    twin.eval()
    return OncologyModel(twin, patient_type, model_path, version_hash, card)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def save_oncology_twin(
    path: Path,
    twin: OncologyTwin,
    *,
    patient_type: PatientTypeInput = PatientTypeInput.OBSERVED,
    card_fields: Mapping[str, Any] | None = None,
) -> str:
    """Write an oncology twin; return its version hash ``sha256:<hex>``.

    Parameters
    ----------
    path : Path
        A path ending in ``.safetensors`` gets a single self-describing file; any other path is
        a run directory (created) with ``model.safetensors`` and ``model_card.json``.
    twin : OncologyTwin
        The trained twin.
    patient_type : PatientTypeInput, default OBSERVED
        Whether the twin was trained with patient types as input.
    card_fields : Mapping or None, optional
        Extra model-card entries (run directory only), e.g. how it was trained.
    """
    metadata = {
        "twin_kind": ONCOLOGY_MODEL_KIND,
        "format_version": FORMAT_VERSION,
        "config": twin.config.model_dump_json(),
        "patient_type": patient_type.value,
    }
    as_directory = path.suffix != ".safetensors"
    if as_directory:
        path.mkdir(parents=True, exist_ok=True)
    model_path = path / MODEL_FILE if as_directory else path
    partial = model_path.with_name(model_path.name + ".partial")
    tensors = {k: v.detach().contiguous().cpu() for k, v in twin.state_dict().items()}
    save_file(tensors, str(partial), metadata=metadata)
    version_hash = file_sha256(partial)
    partial.replace(model_path)
    if as_directory:
        card = {
            "model_kind": ONCOLOGY_MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "version_hash": version_hash,
            "architecture": twin.config.model_dump(mode="json"),
            "patient_type": patient_type.value,
            **(card_fields or {}),
        }
        _write_atomically(path / MODEL_CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return version_hash
