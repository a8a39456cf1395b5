"""Benchmark: counterfactual tumour twin on the CRN / Causal Transformer protocol, γ = 0 and 4.

For each γ the same run simulates train / validation / test patients (seeded), trains the twin
with its balancing representation (CRN-style gradient reversal) and the same twin unadjusted
(no reversal), and scores both, persistence ("last value") and the noise floor (the
simulator's noise-free replay, i.e. a twin that knew every patient parameter) on the same
rows: normalised RMSE (% of the 13 cm sphere volume) one-step factual and counterfactual, and
τ-step counterfactual (τ = 2 … 6, sliding treatment). It also checks the regimen ranking
against the simulator's replay of the same patients. Prints one JSON line per γ.

The papers train on 10,000 patients; 2 shared CPU cores afford fewer (``--train``, default
2,000); validation and test default to 300 and the papers' 1,000.

Example: ``OMP_NUM_THREADS=1 python bench/oncology_quality.py --gamma 0 4``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fedtwin.twins import (
    Balancing,
    OncologyProtocol,
    OncologyRegimen,
    OncologyScores,
    OncologyTrainingConfig,
    OncologyTwin,
    OncologyTwinConfig,
    RegimenObjective,
    oncology_twin_predictor,
    one_step_counterfactual_rows,
    score_oncology,
    simulate_tumour_cohort,
    sliding_treatment_counterfactual_rows,
    train_oncology_twin,
    tumour_persistence,
    validate_regimen_choice,
)

#: One-step normalised RMSE (%) of the Causal Transformer repository's updated results.
ANCHORS_PCT = {
    0.0: {"MSM": 1.091, "RMSN": 0.834, "CRN": 0.755, "G-Net": 0.795, "CT": 0.770},
    4.0: {"MSM": 1.981, "RMSN": 1.434, "CRN": 1.358, "G-Net": 1.319, "CT": 1.413},
}
REGIMEN_DAYS = 14
REGIMEN_ORIGIN_DAY = 14


def candidate_regimens() -> list[OncologyRegimen]:
    """Two weeks of common schedules, from nothing to chemo + radio."""
    weekly = OncologyRegimen.weekly
    return [
        weekly("none", REGIMEN_DAYS),
        weekly("chemo weekly", REGIMEN_DAYS, chemo_every_days=7),
        weekly("chemo every 2 days", REGIMEN_DAYS, chemo_every_days=2),
        weekly("radio 2/week", REGIMEN_DAYS, radio_fractions_per_week=2),
        weekly("radio 5/week", REGIMEN_DAYS, radio_fractions_per_week=5),
        weekly(
            "chemo weekly + radio 5/week",
            REGIMEN_DAYS,
            chemo_every_days=7,
            radio_fractions_per_week=5,
        ),
    ]


def ratios(model: OncologyScores, baseline: OncologyScores) -> dict[str, object]:
    """Model / baseline, per figure."""
    return {
        "one_step_factual": model.one_step_factual_pct / baseline.one_step_factual_pct,
        "one_step_counterfactual": model.one_step_counterfactual_pct
        / baseline.one_step_counterfactual_pct,
        "tau_step_counterfactual": [
            a / b
            for a, b in zip(
                model.tau_step_counterfactual_pct, baseline.tau_step_counterfactual_pct, strict=True
            )
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.0, 4.0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    training = OncologyTrainingConfig(epochs=args.epochs, batch_patients=32)
    objective = RegimenObjective()
    for gamma in args.gamma:
        started = time.perf_counter()
        protocol = OncologyProtocol(
            gamma=gamma,
            train_patients=args.train,
            val_patients=args.val,
            test_patients=args.test,
            seed=args.seed,
        )
        train = simulate_tumour_cohort(protocol, "train", protocol.train_patients)
        val = simulate_tumour_cohort(protocol, "val", protocol.val_patients)
        test = simulate_tumour_cohort(protocol, "test", protocol.test_patients)
        one_step = one_step_counterfactual_rows(test)
        sliding = sliding_treatment_counterfactual_rows(test, protocol.projection_horizon)
        results: dict[str, OncologyScores] = {}
        regimen_checks = {}
        train_s = {}
        for name, balancing in (
            ("twin", Balancing.GRADIENT_REVERSAL),
            ("unadjusted", Balancing.NONE),
        ):
            torch.manual_seed(args.seed)
            twin = OncologyTwin(OncologyTwinConfig(balancing=balancing))
            tic = time.perf_counter()
            train_oncology_twin(
                twin, train.series, training, torch.Generator().manual_seed(args.seed), val.series
            )
            train_s[name] = round(time.perf_counter() - tic, 1)
            results[name] = score_oncology(
                oncology_twin_predictor(twin), test.series, one_step, sliding
            )
            regimen_checks[name] = validate_regimen_choice(
                twin, test, candidate_regimens(), objective, REGIMEN_ORIGIN_DAY
            ).model_dump()
        results["persistence"] = score_oncology(tumour_persistence, test.series, one_step, sliding)
        results["noise_floor"] = score_oncology(
            tumour_persistence, test.series, one_step, sliding, expected=True
        )
        line = {
            "bench": "oncology_quality",
            "gamma": gamma,
            "metric": "normalised RMSE, % of the 13 cm sphere volume",
            "patients": {"train": args.train, "val": args.val, "test": args.test},
            "rows": {
                "one_step": int(one_step.patient.numel()),
                "sliding": int(sliding.patient.numel()),
            },
            "days": protocol.days,
            "seed": args.seed,
            **{name: s.model_dump() for name, s in results.items()},
            "ratio_to_persistence": ratios(results["twin"], results["persistence"]),
            "ratio_to_unadjusted": ratios(results["twin"], results["unadjusted"]),
            "anchor_one_step_pct": ANCHORS_PCT.get(gamma),
            "regimen_choice": regimen_checks,
            "objective": objective.model_dump(),
            "train_s": train_s,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
