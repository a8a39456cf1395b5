"""Virtual population tables, batching and age groups."""

from __future__ import annotations

import pytest
import torch

from fedtwin.cohorts import AgeGroup, VirtualPatientParams, all_patient_names, names_in_group
from fedtwin.cohorts.population import age_group_of
from fedtwin.errors import ConfigError


def test_thirty_named_subjects_in_three_groups() -> None:
    names = all_patient_names()
    assert len(names) == 30
    for group in AgeGroup:
        members = names_in_group(group)
        assert members == tuple(f"{group.value}#{i:03d}" for i in range(1, 11))
        assert all(age_group_of(n) is group for n in members)


def test_published_values_of_adolescent_001() -> None:
    p = VirtualPatientParams.select(["adolescent#001"])
    assert p["BW"].dtype == torch.float64
    assert float(p["BW"][0]) == 68.706
    assert float(p["u2ss"][0]) == 1.21697571391
    assert float(p.carb_ratio_g_per_u[0]) == 12.0
    assert float(p.correction_factor_mg_dl_per_u[0]) == 15.0360283441
    assert float(p.age_years[0]) == 18.0
    assert float(p.total_daily_insulin_u[0]) == 36.7339146827
    assert p.initial_state.shape == (1, 13)
    assert float(p.initial_state[0, 3]) == 250.621836
    assert "x0_1" not in p.params and "patient_history" not in p.params


def test_select_keeps_order_and_repeats() -> None:
    names = ["child#003", "adult#010", "child#003"]
    p = VirtualPatientParams.select(names)
    assert p.names == tuple(names) and p.batch_size == 3 and len(p) == 3
    assert all(t.shape == (3,) for t in p.params.values())
    assert torch.equal(p.initial_state[0], p.initial_state[2])
    assert not torch.equal(p.initial_state[0], p.initial_state[1])
    assert p.age_groups == (AgeGroup.CHILD, AgeGroup.ADULT, AgeGroup.CHILD)
    whole = VirtualPatientParams.population()
    i = all_patient_names().index("adult#010")
    assert float(p["Vg"][1]) == float(whole["Vg"][i])


def test_steady_state_glucose_is_gb() -> None:
    p = VirtualPatientParams.population()
    gsub = p.initial_state[:, 12] / p["Vg"]
    assert torch.allclose(gsub, p.basal_glucose_mg_dl, rtol=1e-9)


def test_batches_do_not_alias() -> None:
    a = VirtualPatientParams.select(["adult#001"])
    a["BW"][0] = -1.0
    assert float(VirtualPatientParams.select(["adult#001"])["BW"][0]) == 102.32


@pytest.mark.parametrize("bad", [[], ["adult#011"], "adult#001"])
def test_bad_names_raise(bad: list[str] | str) -> None:
    with pytest.raises(ConfigError):
        VirtualPatientParams.select(bad)


def test_unknown_parameter_and_name_raise() -> None:
    with pytest.raises(ConfigError):
        VirtualPatientParams.select(["adult#001"])["nope"]
    with pytest.raises(ConfigError):
        age_group_of("teen#001")
