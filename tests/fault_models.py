"""Models that fail on purpose, for cycle and serving tests.

:class:`FaultModel` is an MLflow ``python_function`` model forecasting ``x`` (times a
scale, plus an offset) that misbehaves — raises, returns NaN, infinity, one value too
few, or sleeps — on the cases of chosen days (every day when none are given).
"""

from __future__ import annotations

import time

import mlflow.pyfunc
import numpy as np
import pandas as pd


class FaultModel(mlflow.pyfunc.PythonModel):
    """Forecast ``scale * x + offset``; misbehave (``mode``) on the cases of ``days``."""

    def __init__(
        self,
        mode: str = "ok",
        days: tuple[int, ...] | None = None,
        scale: float = 1.0,
        offset: float = 0.0,
        seconds: float = 5.0,
    ) -> None:
        self.mode, self.days, self.scale, self.offset, self.seconds = (
            mode,
            days,
            scale,
            offset,
            seconds,
        )

    def predict(self, context, model_input: pd.DataFrame, params=None):
        x = model_input["x"].to_numpy(dtype=float)
        values = self.scale * x + self.offset
        hit = (
            np.isin(model_input["day"].to_numpy(), self.days)
            if self.days is not None
            else np.ones(len(x), dtype=bool)
        )
        if self.mode == "ok" or not hit.any():
            return values
        if self.mode == "raise":
            raise RuntimeError(f"injected fault on day(s) {sorted(set(model_input['day'][hit]))}")
        if self.mode == "nan":
            values[hit] = np.nan
        elif self.mode == "inf":
            values[hit] = np.inf
        elif self.mode == "short":
            return values[:-1]
        elif self.mode == "sleep":
            time.sleep(self.seconds)
        return values


#: name → the FaultModel saved under it.
MODELS = {
    "operational": FaultModel(),
    "better": FaultModel(offset=0.4),
    "worse": FaultModel(offset=-1.0),
    "raises_12_15": FaultModel("raise", days=(12, 15), offset=0.3),
    "raises_13": FaultModel("raise", days=(13,)),
    "nan_14": FaultModel("nan", days=(14,)),
    "inf_14": FaultModel("inf", days=(14,)),
    "short_14": FaultModel("short", days=(14,)),
    "sleeps": FaultModel("sleep", seconds=3.0),
}
