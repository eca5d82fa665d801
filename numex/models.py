"""Small reusable estimators that routines can name in an experiment spec.

They are plain scikit-learn estimators in an importable module, so a fitted one
pickles by reference and reloads in any process that has numex installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted


class Persistence(RegressorMixin, BaseEstimator):
    """Persistence forecast: the forecast is the latest observation, as is.

    Predicts the value of one input column unchanged (for the demo routine,
    ``tmax_obs``: today's maximum temperature is the forecast for tomorrow's).
    Nothing is learnt; ``fit`` only records which column to read, so that
    ``predict`` works on a DataFrame (by column name) and on a plain array (by
    the column's position among ``feature_names_in_``).

    Parameters
    ----------
    column:
        The input column to persist: a name, or a position when fitted on an
        array without column names.
    """

    def __init__(self, column: str | int = 0) -> None:
        self.column = column

    def fit(self, X: Any, y: Any = None) -> Persistence:
        if isinstance(X, pd.DataFrame):
            names = [str(name) for name in X.columns]
            self.feature_names_in_ = np.asarray(names, dtype=object)
            self.n_features_in_ = len(names)
        else:
            self.n_features_in_ = _as_2d(X).shape[1]
        self.column_index_ = self._index_of_column()
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "column_index_")
        if isinstance(X, pd.DataFrame) and hasattr(self, "feature_names_in_"):
            name = self.feature_names_in_[self.column_index_]
            if name not in X.columns:
                present = ", ".join(map(str, X.columns))
                raise ValueError(f"Persistence needs column {name!r}; the input has {present}")
            return X[name].to_numpy(dtype=float)
        values = _as_2d(X)
        if values.shape[1] != self.n_features_in_:
            raise ValueError(
                f"Persistence was fitted on {self.n_features_in_} features; "
                f"the input has {values.shape[1]}"
            )
        return values[:, self.column_index_].astype(float)

    def _index_of_column(self) -> int:
        names = getattr(self, "feature_names_in_", None)
        if isinstance(self.column, str):
            if names is None:
                raise ValueError(
                    f"Persistence(column={self.column!r}) needs named inputs (a DataFrame); "
                    "give a column position to fit on a plain array"
                )
            if self.column not in list(names):
                raise ValueError(
                    f"Persistence(column={self.column!r}): no such input column; "
                    f"valid: {', '.join(names)}"
                )
            return list(names).index(self.column)
        if isinstance(self.column, int | np.integer) and 0 <= self.column < self.n_features_in_:
            return int(self.column)
        raise ValueError(
            f"Persistence(column={self.column!r}): not a column name or a position "
            f"in 0..{self.n_features_in_ - 1}"
        )


def _as_2d(X: Any) -> np.ndarray:
    values = np.asarray(X)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D input (rows × features), got shape {values.shape}")
    return values
