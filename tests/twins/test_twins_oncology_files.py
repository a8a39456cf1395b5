"""Oncology twin model files: round trip, kind and format checks, tensor checks, card hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, OncologyTwin, OncologyTwinConfig
from fedtwin.twins.oncology import TumourSeries
from fedtwin.twins.oncology_files import (
    MODEL_CARD_FILE,
    MODEL_FILE,
    PatientTypeInput,
    load_oncology_twin,
    save_oncology_twin,
)
from fedtwin.twins.runfile import load_twin_run, write_twin_run

SMALL = OncologyTwinConfig(
    horizon_days=4, treatment_lag_days=3, channels=8, hidden=16, dilations=(1, 2)
)
GLUCOSE = GlucoseTwinConfig(history_steps=12, horizon_steps=6, channels=8, dilations=(1, 2))


def _randomised(config: OncologyTwinConfig = SMALL, seed: int = 0) -> OncologyTwin:
    torch.manual_seed(seed)
    twin = OncologyTwin(config)
    for head in (twin.growth, twin.response, twin.scale):
        torch.nn.init.normal_(head.weight, std=0.3)
    return twin.eval()


def _history() -> tuple[TumourSeries, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    volume = torch.exp(torch.cumsum(0.05 * torch.randn(3, 20, generator=generator), 1))
    chemo = torch.rand(3, 20, generator=generator) < 0.3
    radio = torch.rand(3, 20, generator=generator) < 0.3
    series = TumourSeries(volume, chemo, radio, torch.tensor([1, 2, 3]))
    plan = torch.rand(3, 9, generator=generator) < 0.5
    return series, plan, ~plan


@pytest.mark.parametrize("name", ["twin.safetensors", "run"])
def test_save_then_load_gives_identical_forecasts(tmp_path: Path, name: str) -> None:
    twin = _randomised()
    history, chemo, radio = _history()
    save_oncology_twin(tmp_path / name, twin, patient_type=PatientTypeInput.UNKNOWN)
    loaded = load_oncology_twin(tmp_path / name)
    before, after = (
        twin.forecast(history, chemo, radio),
        loaded.twin.forecast(history, chemo, radio),
    )
    assert loaded.config == SMALL and loaded.patient_type is PatientTypeInput.UNKNOWN
    assert torch.equal(before.mean_log, after.mean_log)
    assert torch.equal(before.std_log, after.std_log)


def test_run_directory_card_names_the_kind_and_hash(tmp_path: Path) -> None:
    version = save_oncology_twin(tmp_path / "run", _randomised(), card_fields={"epochs": 3})
    card = json.loads((tmp_path / "run" / MODEL_CARD_FILE).read_text())
    assert card["model_kind"] == "oncology-twin" and card["version_hash"] == version
    assert card["epochs"] == 3 and not list((tmp_path / "run").glob("*.partial"))


def test_glucose_run_directory_is_refused_naming_its_card(tmp_path: Path) -> None:
    write_twin_run(tmp_path, GlucoseTwin(GLUCOSE))
    with pytest.raises(ConfigError, match=r"model_card\.json: model_kind is 'glucose-twin'"):
        load_oncology_twin(tmp_path)


def test_glucose_model_file_is_refused_as_glucose(tmp_path: Path) -> None:
    write_twin_run(tmp_path, GlucoseTwin(GLUCOSE))
    with pytest.raises(ConfigError, match=r"model\.safetensors: holds a 'glucose-twin'"):
        load_oncology_twin(tmp_path / MODEL_FILE)


def test_glucose_loader_refuses_an_oncology_run(tmp_path: Path) -> None:
    save_oncology_twin(tmp_path, _randomised())
    with pytest.raises(ConfigError, match="model_kind is 'oncology-twin'"):
        load_twin_run(tmp_path)


def _write_raw(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> Path:
    base = {
        "twin_kind": "oncology-twin",
        "format_version": "1",
        "config": SMALL.model_dump_json(),
        "patient_type": "observed",
    }
    save_file(tensors, str(path), metadata={**base, **metadata})
    return path


def test_missing_tensor_is_refused_naming_file_and_tensor(tmp_path: Path) -> None:
    tensors = dict(_randomised().state_dict())
    del tensors["growth.bias"]
    path = _write_raw(tmp_path / "m.safetensors", tensors)
    with pytest.raises(ConfigError, match=r"m\.safetensors: .*missing tensor 'growth\.bias'"):
        load_oncology_twin(path)


def test_tensors_of_another_architecture_are_refused(tmp_path: Path) -> None:
    wider = _randomised(SMALL.model_copy(update={"channels": 16}))
    path = _write_raw(tmp_path / "m.safetensors", dict(wider.state_dict()))
    with pytest.raises(ConfigError, match=r"m\.safetensors: tensor '.*' has shape"):
        load_oncology_twin(path)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"twin_kind": "heart-twin"}, "holds a 'heart-twin'"),
        ({"format_version": "9"}, "format_version '9' is not supported"),
        ({"config": '{"channels": 2}'}, r"config\.channels"),
        ({"patient_type": "maybe"}, "patient_type must be"),
    ],
)
def test_bad_metadata_is_one_line_naming_the_file(
    tmp_path: Path, metadata: dict[str, str], message: str
) -> None:
    path = _write_raw(tmp_path / "m.safetensors", dict(_randomised().state_dict()), **metadata)
    with pytest.raises(ConfigError, match=message) as caught:
        load_oncology_twin(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_not_a_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_text("day,volume\n")
    with pytest.raises(ConfigError, match="not a safetensors model file"):
        load_oncology_twin(path)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such model file"):
        load_oncology_twin(tmp_path / "absent.safetensors")


def test_model_file_altered_after_its_card_fails_verification(tmp_path: Path) -> None:
    save_oncology_twin(tmp_path, _randomised(seed=0))
    save_oncology_twin(tmp_path / "other.safetensors", _randomised(seed=1))
    (tmp_path / "other.safetensors").replace(tmp_path / MODEL_FILE)
    with pytest.raises(VerificationError, match="does not match the card"):
        load_oncology_twin(tmp_path)
