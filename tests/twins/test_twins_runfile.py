import json
from pathlib import Path

import pytest
import torch

from fedtwin.errors import ConfigError, VerificationError
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig
from fedtwin.twins.calibration import CalibrationScales
from fedtwin.twins.runfile import load_twin_run, write_twin_run

CONFIG = GlucoseTwinConfig(history_steps=16, horizon_steps=6, channels=8, dilations=(1, 2))


def _run(tmp_path: Path, calibration: CalibrationScales | None = None) -> tuple[Path, GlucoseTwin]:
    torch.manual_seed(0)
    model = GlucoseTwin(CONFIG)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.1)
    write_twin_run(tmp_path, model, calibration=calibration)
    return tmp_path, model


def _edit_card(run_dir: Path, **changes: object) -> None:
    card_path = run_dir / "model_card.json"
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def test_written_run_loads_the_same_weights_and_calibration(tmp_path: Path) -> None:
    scales = CalibrationScales(std_scale=(1.1,) * 6, windows=100)
    run_dir, model = _run(tmp_path, scales)
    run = load_twin_run(run_dir)
    assert run.calibration == scales
    assert run.config == CONFIG
    for name, tensor in model.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], tensor)
    assert not any(p.name.endswith(".partial") for p in run_dir.iterdir())


def test_a_model_of_another_twin_kind_is_refused(tmp_path: Path) -> None:
    run_dir, _ = _run(tmp_path)
    _edit_card(run_dir, model_kind="oncology-twin")
    with pytest.raises(ConfigError, match="model_kind is 'oncology-twin'"):
        load_twin_run(run_dir)


def test_a_model_file_that_does_not_match_the_card_hash_fails_verification(
    tmp_path: Path,
) -> None:
    run_dir, _ = _run(tmp_path)
    _edit_card(run_dir, version_hash="sha256:" + "0" * 64)
    with pytest.raises(VerificationError, match="does not match"):
        load_twin_run(run_dir)


def test_an_architecture_that_does_not_fit_the_tensors_is_refused(tmp_path: Path) -> None:
    run_dir, _ = _run(tmp_path)
    _edit_card(run_dir, architecture={**CONFIG.model_dump(mode="json"), "channels": 16})
    with pytest.raises(ConfigError, match="architecture"):
        load_twin_run(run_dir)


def test_calibration_shorter_than_the_horizon_is_refused(tmp_path: Path) -> None:
    run_dir, _ = _run(tmp_path, CalibrationScales(std_scale=(1.0, 1.0), windows=10))
    with pytest.raises(ConfigError, match="calibration covers 2"):
        load_twin_run(run_dir)


def test_a_directory_without_a_model_card_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_card\.json: missing"):
        load_twin_run(tmp_path)
