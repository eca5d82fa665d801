"""Verification metrics: per-case quantities, per-cycle values and scores.

Every metric is built from *per-case quantities* that add up over cases (the
error ``e = f − o``, ``|e|``, ``e²``, the log loss, a correct/incorrect flag).
The scorecard sums those quantities per cycle × segment with one
``np.bincount`` each, and a metric turns the sums into

* a **per-cycle value** ``L(t)`` — the quantity the paired test works on,
  ``d_t = L_C(t) − L_R(t)`` (see :mod:`numex.scoring.significance`), and
* a **score** over all paired cases of a cell (what the grid shows).

Sign conventions differ between metrics (a lower RMSE is better, a higher
accuracy is better, a bias is better the closer it is to zero), so each metric
says which direction of ``d̄`` means "candidate better"; the scorecard colours
by that, never by the raw sign.

The formulas, per metric (``e = f − o``; ``p`` a probability, ``o ∈ {0, 1}``):

=========  ===========================  ==============================  ==================
metric     score over N cases           per-cycle value L(t)            candidate better
=========  ===========================  ==============================  ==================
bias       ``b = Σe / N``               ``|Σ_t e / n_t|``               ``|b|`` smaller
mae        ``Σ|e| / N``                 ``Σ_t |e| / n_t``               smaller
mse        ``Σe² / N``                  ``Σ_t e² / n_t``                smaller
rmse       ``√(Σe² / N)``               ``Σ_t e² / n_t`` (the MSE)      smaller
sde        ``√(Σ(e − ē)² / N)``         ``Σ_t (e − ē)² / n_t``          smaller
msess      ``1 − MSE_C / MSE_R``        ``Σ_t e² / n_t`` (the MSE)      larger
brier      ``Σ(p − o)² / N``            ``Σ_t (p − o)² / n_t``          smaller
log_loss   ``−Σ log p̃ / N``             ``−Σ_t log p̃ / n_t``            smaller
accuracy   ``Σ[ŷ = o] / N``             ``Σ_t [ŷ = o] / n_t``           larger
=========  ===========================  ==============================  ==================

with ``p̃ = p`` where ``o = 1`` and ``1 − p`` where ``o = 0``, ``p`` clipped to
``[ε, 1 − ε]`` (``ε`` = float64 machine epsilon, as scikit-learn does), and the
predicted class ``ŷ = [p ≥ 0.5]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: Probabilities are clipped to ``[EPSILON, 1 − EPSILON]`` before the log loss.
EPSILON = float(np.finfo(np.float64).eps)
#: A probability at or above this predicts the event (for accuracy).
THRESHOLD = 0.5


# --- per-case quantities -----------------------------------------------------------


def _error(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    return forecast - observation


def _abs_error(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    return np.abs(forecast - observation)


def _sq_error(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    error = forecast - observation
    return error * error


def _centred(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    # Shifting every error by the forecast's mean error over all paired cases
    # keeps Σ(e − c)² free of cancellation when the bias dwarfs the spread;
    # the exact per-cell centring is done from the sums (see _sde_cycle).
    error = forecast - observation
    return error - error.mean() if error.size else error


def _centred_sq(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    centred = _centred(forecast, observation)
    return centred * centred


def _log_loss(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    p = np.clip(forecast, EPSILON, 1.0 - EPSILON)
    return -np.log(np.where(observation == 1.0, p, 1.0 - p))


def _correct(forecast: FloatArray, observation: FloatArray) -> FloatArray:
    return ((forecast >= THRESHOLD) == (observation == 1.0)).astype(np.float64)


#: The per-case quantities metrics are built from, by name.
QUANTITIES: dict[str, Callable[[FloatArray, FloatArray], FloatArray]] = {
    "error": _error,
    "abs_error": _abs_error,
    "sq_error": _sq_error,
    "centred_error": _centred,
    "centred_sq_error": _centred_sq,
    "log_loss": _log_loss,
    "correct": _correct,
}

Sums = Mapping[str, FloatArray]


# --- per-cycle values and scores ---------------------------------------------------


def _mean_of(quantity: str) -> Callable[[Sums, FloatArray], FloatArray]:
    def cycle_value(sums: Sums, n: FloatArray) -> FloatArray:
        return sums[quantity] / n

    return cycle_value


def _abs_bias_cycle(sums: Sums, n: FloatArray) -> FloatArray:
    return np.abs(sums["error"] / n)


def _sde_cycle(sums: Sums, n: FloatArray) -> FloatArray:
    # Σ_t (e − ē)² = S2_t − 2·ē·S1_t + n_t·ē², with ē the cell's mean (shifted)
    # error over all its cycles, so that the cycle values average to SDE².
    s1, s2 = sums["centred_error"], sums["centred_sq_error"]
    mean = s1.sum() / n.sum()
    return np.maximum(s2 - 2.0 * mean * s1 + n * mean * mean, 0.0) / n


def _total_mean(sums: Sums, n: FloatArray, quantity: str) -> float:
    return float(sums[quantity].sum() / n.sum())


def _sde_score(sums: Sums, n: FloatArray) -> float:
    return math.sqrt(float(_sde_cycle(sums, n) @ n / n.sum()))


@dataclass(frozen=True)
class Metric:
    """One verification metric.

    ``higher_is_better`` is about the *score*; ``difference_higher_is_better``
    about the paired per-cycle difference ``d_t = L_C(t) − L_R(t)`` the test
    works on. They differ for ``msess`` (a skill score, tested on the MSE).
    ``percent`` says how a bound on ``d̄`` is shown as a percent of the
    reference: ``"ratio"`` → ``100·bound/L̄_R``; ``"root"`` (a score that is
    the root of the tested mean) → ``100·(√(1 + bound/L̄_R) − 1)``; ``None`` →
    not shown.
    """

    name: str
    title: str
    kind: str  # "continuous" or "binary": what the observation must be
    higher_is_better: bool
    difference_higher_is_better: bool
    quantities: tuple[str, ...]
    #: ``L(t)`` from per-cycle sums of the quantities and case counts ``n_t``.
    cycle_value: Callable[[Sums, FloatArray], FloatArray]
    #: The score over all cases behind per-cycle sums with counts ``n_t``.
    total_score: Callable[[Sums, FloatArray], float]
    percent: str | None

    def scores(self, candidate: Sums, reference: Sums, n: FloatArray) -> tuple[float, float]:
        """Candidate and reference scores over the same paired cases."""
        if self.name == "msess":
            mse_c = _total_mean(candidate, n, "sq_error")
            mse_r = _total_mean(reference, n, "sq_error")
            return (1.0 - mse_c / mse_r if mse_r > 0 else math.nan), 0.0
        return self.total_score(candidate, n), self.total_score(reference, n)

    def change(self, candidate_score: float, reference_score: float) -> float:
        """Candidate minus reference score; for bias ``|b_C| − |b_R|``."""
        if self.name == "bias":
            return abs(candidate_score) - abs(reference_score)
        return candidate_score - reference_score

    def change_percent(self, candidate_score: float, reference_score: float) -> float | None:
        """Change in percent of the reference score: ``100·(S_C / S_R − 1)``.

        For bias ``100·(|b_C| / |b_R| − 1)``; for ``msess`` there is none (the
        reference's skill against itself is 0). None when ``S_R`` is 0.
        """
        if self.name == "msess":
            return None
        if self.name == "bias":
            candidate_score, reference_score = abs(candidate_score), abs(reference_score)
        if reference_score == 0 or not math.isfinite(reference_score):
            return None
        return 100.0 * (candidate_score / reference_score - 1.0)

    def bound_percent(self, bound: float, reference_mean: float) -> float | None:
        """A bound on ``d̄`` as percent of the reference's mean cycle value ``L̄_R``."""
        if self.percent is None or reference_mean <= 0 or not math.isfinite(reference_mean):
            return None
        ratio = bound / reference_mean
        if self.percent == "ratio":
            return 100.0 * ratio
        return 100.0 * (math.sqrt(max(1.0 + ratio, 0.0)) - 1.0)


def _mean_metric(
    name: str,
    title: str,
    quantity: str,
    *,
    kind: str = "continuous",
    higher_is_better: bool = False,
    root: bool = False,
) -> Metric:
    def score(sums: Sums, n: FloatArray) -> float:
        mean = _total_mean(sums, n, quantity)
        return math.sqrt(mean) if root else mean

    return Metric(
        name=name,
        title=title,
        kind=kind,
        higher_is_better=higher_is_better,
        difference_higher_is_better=higher_is_better,
        quantities=(quantity,),
        cycle_value=_mean_of(quantity),
        total_score=score,
        percent="root" if root else "ratio",
    )


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            name="bias",
            title="Bias (mean error)",
            kind="continuous",
            higher_is_better=False,  # in |bias|
            difference_higher_is_better=False,
            quantities=("error",),
            cycle_value=_abs_bias_cycle,
            total_score=lambda sums, n: _total_mean(sums, n, "error"),
            percent=None,
        ),
        _mean_metric("mae", "Mean absolute error", "abs_error"),
        _mean_metric("mse", "Mean squared error", "sq_error"),
        _mean_metric("rmse", "Root mean squared error", "sq_error", root=True),
        Metric(
            name="sde",
            title="Standard deviation of the error",
            kind="continuous",
            higher_is_better=False,
            difference_higher_is_better=False,
            quantities=("centred_error", "centred_sq_error"),
            cycle_value=_sde_cycle,
            total_score=_sde_score,
            percent="root",
        ),
        Metric(
            name="msess",
            title="MSE skill score against the reference",
            kind="continuous",
            higher_is_better=True,
            difference_higher_is_better=False,  # tested on the MSE difference
            quantities=("sq_error",),
            cycle_value=_mean_of("sq_error"),
            total_score=lambda sums, n: _total_mean(sums, n, "sq_error"),
            percent=None,
        ),
        _mean_metric("brier", "Brier score", "sq_error", kind="binary"),
        _mean_metric("log_loss", "Log loss", "log_loss", kind="binary"),
        _mean_metric("accuracy", "Accuracy", "correct", kind="binary", higher_is_better=True),
    )
}


#: Other spellings accepted for a metric name.
ALIASES: dict[str, str] = {"logloss": "log_loss"}


def get_metric(name: str) -> Metric:
    """The metric called ``name`` (or an alias); ValueError naming the valid names otherwise."""
    try:
        return METRICS[ALIASES.get(name, name)]
    except (KeyError, TypeError):
        valid = ", ".join(METRICS)
        raise ValueError(f"unknown metric {name!r}; valid metrics: {valid}") from None


def canonical_name(name: str) -> str:
    """The registry name of metric ``name`` (aliases resolved; unknown names unchanged)."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def check_observations(metric: Metric, forecast: FloatArray, observation: FloatArray) -> None:
    """Refuse data a binary metric cannot score: ``o ∉ {0, 1}`` or ``p ∉ [0, 1]``."""
    if metric.kind != "binary":
        return
    if not np.all((observation == 0.0) | (observation == 1.0)):
        bad = observation[(observation != 0.0) & (observation != 1.0)][0]
        raise ValueError(
            f"metric {metric.name!r} needs observations 0 or 1 (the event did not/did "
            f"happen); found {bad!r}"
        )
    if not np.all((forecast >= 0.0) & (forecast <= 1.0)):
        bad = forecast[(forecast < 0.0) | (forecast > 1.0)][0]
        raise ValueError(
            f"metric {metric.name!r} needs forecasts that are probabilities in [0, 1]; "
            f"found {bad!r}"
        )


def case_values(name: str, forecast: ArrayLike, observation: ArrayLike) -> FloatArray:
    """Per-case loss of metric ``name`` (e.g. ``|e|`` for mae, ``e²`` for rmse).

    For metrics built from two quantities (sde) this is the centred squared
    error ``(e − ē)²``; pairs with a NaN are not dropped here (see
    :func:`score`).
    """
    metric = get_metric(name)
    f = np.asarray(forecast, dtype=np.float64)
    o = np.asarray(observation, dtype=np.float64)
    check_observations(metric, f, o)
    return QUANTITIES[metric.quantities[-1]](f, o)


def score(name: str, forecast: ArrayLike, observation: ArrayLike) -> float:
    """Score of one forecast against the observations over all cases.

    Pairs where either value is NaN are left out. For ``msess`` (which needs a
    reference) use :func:`skill_score`.
    """
    metric = get_metric(name)
    if metric.name == "msess":
        raise ValueError("msess compares two forecasts: use skill_score(candidate, reference, o)")
    f = np.asarray(forecast, dtype=np.float64).ravel()
    o = np.asarray(observation, dtype=np.float64).ravel()
    keep = ~(np.isnan(f) | np.isnan(o))
    f, o = f[keep], o[keep]
    if f.size == 0:
        return math.nan
    check_observations(metric, f, o)
    sums = {q: np.array([QUANTITIES[q](f, o).sum()]) for q in metric.quantities}
    return metric.total_score(sums, np.array([float(f.size)]))


def skill_score(candidate: ArrayLike, reference: ArrayLike, observation: ArrayLike) -> float:
    """MSE skill score of the candidate against the reference: ``1 − MSE_C / MSE_R``.

    1 is perfect, 0 no better than the reference, negative worse.
    """
    c = np.asarray(candidate, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    o = np.asarray(observation, dtype=np.float64).ravel()
    keep = ~(np.isnan(c) | np.isnan(r) | np.isnan(o))
    mse_r = float(_sq_error(r[keep], o[keep]).mean()) if keep.any() else math.nan
    mse_c = float(_sq_error(c[keep], o[keep]).mean()) if keep.any() else math.nan
    return 1.0 - mse_c / mse_r if mse_r > 0 else math.nan
