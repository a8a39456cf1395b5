import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedtwin.cohorts import (
    BasalBolusPlan,
    OpenLoopPlan,
    ScenarioConfig,
    SiteSpec,
    draw_scenario,
    replay,
    site_population,
)
from fedtwin.twins import GlucoseTwin
from fedtwin.twins.whatif import (
    Bolus,
    Carbs,
    GlucosePlan,
    Objective,
    PlansFile,
    compare_plans,
)

ANCHOR_MIN, HORIZON_MIN, MEAL_G = 240, 360, 80.0


def _plans() -> list[GlucosePlan]:
    meal = (Carbs(at_min=0, grams=60.0),)
    return [
        GlucosePlan(name="no bolus", carbs=meal),
        GlucosePlan(name="bolus 6 U", carbs=meal, boluses=(Bolus(at_min=0, units=6.0),)),
        GlucosePlan(name="late bolus", carbs=meal, boluses=(Bolus(at_min=30, units=6.0),)),
        GlucosePlan(name="low basal", basal_u_per_h=0.3, carbs=meal),
    ]


def test_schedule_puts_basal_boluses_and_carbs_in_their_bins() -> None:
    plan = GlucosePlan.model_validate(
        {
            "name": "p",
            "basal_changes": [{"from_min": 60, "u_per_h": 0.6}],
            "boluses": [{"at_min": 10, "units": 4}],
            "carbs": [{"at_min": 10, "grams": 50}, {"at_min": 10, "grams": 10}],
        }
    )
    schedule = plan.schedule(24, current_basal_u_per_h=1.2)
    assert torch.allclose(schedule[0, :12], torch.tensor([0.1, 0.1, 4.1] + [0.1] * 9))
    assert torch.allclose(schedule[0, 12:], torch.full((12,), 0.05))
    assert schedule[1, 2] == 60.0 and schedule[1].sum() == 60.0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"plans": [{"name": "a", "bolus": [{"at_min": 0, "units": 1}]}]}, "Extra inputs"),
        ({"plans": [{"name": "a", "boluses": [{"at_min": 0, "units": 1, "x": 1}]}]}, "Extra"),
        ({"plans": [{"name": "a"}], "colour": "red"}, "Extra inputs"),
        ({"plans": [{"name": "a", "carbs": [{"at_min": 7, "grams": 1}]}]}, "multiple of 5"),
        ({"horizon_min": 60, "plans": [{"name": "a", "carbs": [{"at_min": 60, "grams": 1}]}]},
         "after horizon_min"),
        ({"plans": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"plans": []}, "at least 1"),
    ],
)  # fmt: skip
def test_plans_file_is_closed_and_checked(document: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PlansFile.model_validate(document)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2000) | st.floats(-1e3, 1e3) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "plans", "boluses", "carbs", "at_min", "units", "grams", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(document=JSON)
def test_any_json_document_is_a_plans_file_or_a_validation_error(document: object) -> None:
    try:
        parsed = PlansFile.model_validate(document)
    except ValidationError:
        return
    assert all(plan.last_event_min() < parsed.horizon_min for plan in parsed.plans)


def test_objective_rewards_time_in_range_and_penalises_time_below() -> None:
    trajectory = torch.tensor([[100.0] * 6 + [200.0] * 2 + [60.0] * 2])
    assert float(Objective().score(trajectory)[0]) == pytest.approx(0.6 - 3.0 * 0.2)


def test_batched_plans_give_exactly_what_each_plan_gives_alone(trained_twin: GlucoseTwin) -> None:
    history = torch.stack(
        [140.0 + 10 * torch.sin(torch.arange(24.0) / 4), torch.full((24,), 0.08), torch.zeros(24)]
    )
    kwargs = {"current_basal_u_per_h": 1.0, "horizon_min": 1440, "samples": 0}
    together = compare_plans(trained_twin, history, _plans(), **kwargs)
    for outcome in together.outcomes:
        plan = next(p for p in _plans() if p.name == outcome.name)
        alone = compare_plans(trained_twin, history, [plan], **kwargs).best
        assert alone.score_mean == pytest.approx(outcome.score_mean, abs=1e-5)
        assert torch.allclose(
            torch.from_numpy(alone.mean_mg_dl), torch.from_numpy(outcome.mean_mg_dl), atol=1e-3
        )
    assert [o.rank for o in together.outcomes] == [1, 2, 3, 4]
    assert len(together.minutes_ahead) == 288


def test_probability_of_being_best_sums_to_one(trained_twin: GlucoseTwin) -> None:
    history = torch.stack([torch.full((24,), 150.0), torch.full((24,), 0.08), torch.zeros(24)])
    comparison = compare_plans(
        trained_twin, history, _plans(), current_basal_u_per_h=1.0, samples=300,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert sum(o.p_best for o in comparison.outcomes) == pytest.approx(1.0)
    assert all(o.score_sd > 0 for o in comparison.outcomes)
    scores = [o.score_mean for o in comparison.outcomes]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_twin_picks_the_truly_better_plan_for_a_large_meal(trained_twin: GlucoseTwin) -> None:
    # Eight new virtual adults fasting since midnight; at 04:00 they eat 80 g, with or
    # without the bolus their carb ratio calls for. The simulator replays each patient
    # from the same checkpoint under both plans: the true counterfactuals.
    spec = SiteSpec(site_id="twin-whatif", n_patients=8, days=1.0, seed=5)
    params = site_population(spec)
    scenario = draw_scenario(
        params, ScenarioConfig(meals=()), minutes=ANCHOR_MIN + HORIZON_MIN, seed=5
    )
    before = replay(
        params, BasalBolusPlan(), scenario=scenario, until_minute=ANCHOR_MIN, substeps=1
    )
    basal = BasalBolusPlan().basal_u_per_min(params.basal_u_per_min)
    bolus = BasalBolusPlan().pump.bolus_u(MEAL_G / params.carb_ratio_g_per_u)
    truth = {}
    for name, dose in (("no bolus", torch.zeros_like(bolus)), ("bolus", bolus)):
        carbs = torch.zeros(params.batch_size, HORIZON_MIN, dtype=torch.float64)
        insulin = basal[:, None].repeat(1, HORIZON_MIN)
        carbs[:, 0], insulin[:, 0] = MEAL_G, insulin[:, 0] + dose
        truth[name] = replay(
            params, OpenLoopPlan(carbs, insulin, start_minute=ANCHOR_MIN),
            scenario=scenario, start=before.final, substeps=1,
        )  # fmt: skip
    length = trained_twin.config.history_steps
    objective, agree, clear_cut = Objective(), 0, 0
    for row in range(params.batch_size):
        true_score = {n: float(objective.score(t.bg_mg_dl[row].float())) for n, t in truth.items()}
        if abs(true_score["bolus"] - true_score["no bolus"]) < 0.3:
            continue  # not clear-cut
        clear_cut += 1
        cgm = torch.cat([before.cgm_mg_dl[row, -(length - 1) :], truth["bolus"].cgm_mg_dl[row, :1]])
        history = torch.stack(
            [cgm, before.insulin_u[row, -length:], before.carbs_announced_g[row, -length:]]
        )
        meal = (Carbs(at_min=0, grams=MEAL_G),)
        plans = [
            GlucosePlan(name="no bolus", carbs=meal),
            GlucosePlan(
                name="bolus", carbs=meal, boluses=(Bolus(at_min=0, units=float(bolus[row])),)
            ),
        ]
        comparison = compare_plans(
            trained_twin, history, plans, current_basal_u_per_h=60.0 * float(basal[row]),
            horizon_min=HORIZON_MIN,
        )  # fmt: skip
        agree += comparison.best.name == max(true_score, key=true_score.__getitem__)
    assert clear_cut >= 5
    assert agree >= 0.8 * clear_cut
