"""``fedtwin twin forecast``: rolling forecasts of one patient from a device CSV.

Checks everything (horizon, model, history, gaps) before writing; the CSV is written to a
temporary name and renamed, so a failure never leaves a partial file under ``--out``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from fedtwin.errors import ConfigError

OUT_COLUMNS = ("origin", "time", "glucose_mg_dl", "lower_mg_dl", "upper_mg_dl")
BATCH_ORIGINS = 4096


def check_horizon(horizon_min: int, model_horizon_min: int | None = None) -> int:
    """Horizon steps for ``--horizon-min`` (a multiple of 5 within the model's horizon)."""
    if horizon_min < 5 or horizon_min % 5:
        raise ConfigError(f"--horizon-min: must be a positive multiple of 5, got {horizon_min}")
    if model_horizon_min is not None and horizon_min > model_horizon_min:
        raise ConfigError(
            f"--horizon-min: {horizon_min} exceeds the model's horizon of {model_horizon_min} min"
        )
    return horizon_min // 5


def run_forecast_command(
    model_dir: Path,
    history_path: Path,
    out: Path,
    horizon_min: int,
    *,
    last: bool,
    basal_only: bool,
) -> int:
    """Write rolling (or ``last``) forecasts; return the number of origins written."""
    check_horizon(horizon_min)
    import numpy as np
    import torch

    from fedtwin.twins.calibration import gaussian_quantile
    from fedtwin.twins.history import (
        check_gaps,
        forecast_origins,
        forecast_times,
        origin_plans,
        origin_windows,
        read_history,
    )
    from fedtwin.twins.rollout import rollout
    from fedtwin.twins.runfile import load_twin_run

    run = load_twin_run(model_dir)
    config = run.config
    steps = check_horizon(horizon_min, config.horizon_min)
    history = read_history(history_path)
    origins = forecast_origins(history, config)
    if last:
        origins = origins[-1:]
    check_gaps(history, int(origins[0]) - config.history_steps, history.n_bins - 1)
    z = gaussian_quantile(0.90)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(OUT_COLUMNS)
            for start in range(0, len(origins), BATCH_ORIGINS):
                chunk = origins[start : start + BATCH_ORIGINS]
                windows = origin_windows(history, chunk, config)
                plans = origin_plans(
                    history, chunk, windows, config.horizon_steps, basal_only=basal_only
                )
                with torch.no_grad():
                    course = rollout(run.model, windows, plans, run.calibration)
                mean = course.mean_mg_dl[:, :steps].double().numpy()
                std = course.std_mg_dl[:, :steps].double().numpy()
                lower, upper = np.maximum(mean - z * std, 0.0), mean + z * std
                for row, origin in enumerate(chunk.tolist()):
                    stamp = history.time_of(origin).isoformat()
                    times = forecast_times(history, origin, steps)
                    for k in range(steps):
                        writer.writerow(
                            (
                                stamp,
                                times[k].isoformat(),
                                f"{mean[row, k]:.1f}",
                                f"{lower[row, k]:.1f}",
                                f"{upper[row, k]:.1f}",
                            )
                        )
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"--out: cannot write {out} ({error.strerror or error})") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return len(origins)
