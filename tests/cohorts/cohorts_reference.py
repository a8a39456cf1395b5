"""simglucose 0.2.11 reference runs for the fedtwin.cohorts oracle tests."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

ReferenceRunner = Callable[
    [str, npt.NDArray[np.float64], npt.NDArray[np.float64]], npt.NDArray[np.float64]
]


def simglucose_gsub(
    name: str, cho_g: npt.NDArray[np.float64], insulin_u_per_min: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Step simglucose's T1DPatient minute by minute; return Gsub before each step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient

        patient = T1DPatient.withName(name)
        out = np.empty(len(cho_g), dtype=np.float64)
        for t, (cho, insulin) in enumerate(zip(cho_g, insulin_u_per_min, strict=True)):
            out[t] = patient.observation.Gsub
            patient.step(Action(CHO=float(cho), insulin=float(insulin)))
    return out
