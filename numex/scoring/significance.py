"""Paired significance of a score difference between two forecasts.

The input is the series of per-cycle differences ``d_t = L_C(t) − L_R(t)``,
``t = 1 … n``, over the cycles in which both forecasts were made and verified
(in cycle order). With

* ``d̄ = Σ d_t / n`` and ``s² = Σ (d_t − d̄)² / (n − 1)``,
* ``r_k = Σ_{t=1}^{n−k} (d_t − d̄)(d_{t+k} − d̄) / Σ_{t=1}^{n} (d_t − d̄)²``
  (lag-k autocorrelation, the usual biased estimator),

the standard error of ``d̄`` is ``SE = k·s/√n`` with an inflation factor ``k``
for the serial correlation of the series, chosen by ``method``:

* ``iid``: ``k = 1`` (independent cycles).
* ``ar1``: ``k² = (1 + r1)/(1 − r1)``.
* ``ar2`` (default; Geer 2016, Tellus A 68, 30229): Yule–Walker AR(2)
  ``φ1 = r1(1 − r2)/(1 − r1²)``, ``φ2 = (r2 − r1²)/(1 − r1²)`` and
  ``k² = (1 − r1φ1 − r2φ2)/(1 − φ1 − φ2)²``.
* ``dm``: Diebold & Mariano (1995) with the Harvey, Leybourne & Newbold (1997)
  small-sample correction: long-run variance ``V = γ0 + 2 Σ_{j=1}^{h−1} γj``
  (``γj = Σ_{t=j+1}^{n} (d_t − d̄)(d_{t−j} − d̄)/n``), statistic
  ``DM* = c·d̄/√(V/n)`` with ``c = √((n + 1 − 2h + h(h − 1)/n)/n)``, i.e.
  ``SE = √(V/n)/c``. For ``h = 1`` this is exactly the iid t-test.

Guards for degenerate series (all deliberate, see docs/statistics.md):

* ``ar1``/``ar2``: ``k²`` is clamped to ``[1, n]``. Below 1 (negative lag
  correlation) the SE would claim more independent cycles than there are,
  which in a verification series of a few hundred cycles is mostly sampling
  noise, so numex never lets it make a result *more* significant than the
  iid test. Where the fit is degenerate — ``|r1| ≥ 1``, a non-stationary
  AR(2) (``φ1 + φ2 ≥ 1``, ``φ2 − φ1 ≥ 1`` or ``|φ2| ≥ 1``), or a non-positive
  or non-finite ``k²`` — ``k² = n``: the series is treated as worth one
  independent cycle, which leaves the cell without a verdict.
* ``dm``: a non-positive long-run variance (possible when ``h > 1`` and the
  autocovariances are negative) falls back to ``γ0``.
* A constant series (``s = 0``) has ``r1 = r2 = 0`` and ``SE = 0``: ``p = 1``
  if ``d̄ = 0``, else ``p = 0`` (an exact, deterministic difference).

From the SE: ``t = d̄/SE`` with ``n − 1`` degrees of freedom, the two-sided
``p = 2·F_t(−|t|; n − 1)``, the interval ``d̄ ± t(1 − α/2; n − 1)·SE`` at each
confidence level ``1 − α``, and the effective sample size
``n_eff = n·(s/√n / SE)² = s²/SE²`` (``n/k²`` for the AR methods).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

METHODS: tuple[str, ...] = ("iid", "ar1", "ar2", "dm")
DEFAULT_METHOD = "ar2"
#: 95 % and the "3 sigma" 99.7 % of a weather-centre scorecard.
DEFAULT_LEVELS: tuple[float, ...] = (0.95, 0.997)


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval ``[low, high]`` at confidence ``level``."""

    level: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"level": self.level, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PairedTest:
    """The result of a paired test on per-cycle differences ``d_t``.

    Fields that cannot be computed are None: everything but ``n`` for an empty
    series, everything but ``n`` and ``mean`` for a single cycle. ``t_statistic``
    is None when ``SE = 0`` (then ``p`` is 0 or 1, see the module docstring).
    """

    method: str
    n: int
    mean: float | None
    sd: float | None
    r1: float | None
    r2: float | None
    inflation: float | None
    standard_error: float | None
    n_eff: float | None
    t_statistic: float | None
    dof: int | None
    p_value: float | None
    intervals: tuple[Interval, ...] = ()

    def significant(self, level: float) -> bool:
        """Whether ``d̄ ≠ 0`` at confidence ``level``: ``p < 1 − level``."""
        return self.p_value is not None and self.p_value < 1.0 - level

    def interval(self, level: float) -> Interval | None:
        for interval in self.intervals:
            if math.isclose(interval.level, level):
                return interval
        return None


def check_method(method: str) -> str:
    """``method`` if it is a known standard-error method, else ValueError naming them."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    return method


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Confidence levels as a sorted tuple, each strictly between 0 and 1."""
    checked = tuple(sorted(float(level) for level in levels))
    if not checked:
        raise ValueError("levels: give at least one confidence level, e.g. 0.95")
    for level in checked:
        if not 0.0 < level < 1.0:
            raise ValueError(f"levels: {level!r} is not a confidence level in (0, 1)")
    return checked


def autocorrelation(series: ArrayLike, lag: int) -> float:
    """Lag-``k`` autocorrelation ``r_k = Σ (d_t − d̄)(d_{t+k} − d̄) / Σ (d_t − d̄)²``.

    0 when the series is shorter than ``lag + 1`` or constant.
    """
    d = np.asarray(series, dtype=np.float64)
    if lag < 1:
        raise ValueError(f"lag must be at least 1, got {lag}")
    if d.size <= lag:
        return 0.0
    centred = d - d.mean()
    denominator = float(centred @ centred)
    if denominator <= 0.0:
        return 0.0
    return float(centred[:-lag] @ centred[lag:]) / denominator


def variance_inflation(r1: float, r2: float, method: str, n: int) -> float:
    """The factor ``k²`` with ``SE² = k²·s²/n`` for ``iid``, ``ar1`` or ``ar2``.

    ``ar1``: ``k² = (1 + r1)/(1 − r1)``; ``ar2`` (Geer 2016):
    ``φ1 = r1(1 − r2)/(1 − r1²)``, ``φ2 = (r2 − r1²)/(1 − r1²)``,
    ``k² = (1 − r1φ1 − r2φ2)/(1 − φ1 − φ2)²``. Clamped to ``[1, n]``, and ``n``
    for a degenerate fit (see the module docstring).
    """
    check_method(method)
    if method == "iid":
        return 1.0
    if method == "dm":
        raise ValueError("dm has no AR inflation factor; use paired_test(..., method='dm')")
    ceiling = float(max(n, 1))
    if not abs(r1) < 1.0:
        return ceiling
    if method == "ar1":
        k2 = (1.0 + r1) / (1.0 - r1)
    else:
        phi1 = r1 * (1.0 - r2) / (1.0 - r1 * r1)
        phi2 = (r2 - r1 * r1) / (1.0 - r1 * r1)
        stationary = phi1 + phi2 < 1.0 and phi2 - phi1 < 1.0 and abs(phi2) < 1.0
        if not stationary:
            return ceiling
        k2 = (1.0 - r1 * phi1 - r2 * phi2) / (1.0 - phi1 - phi2) ** 2
    if not math.isfinite(k2) or k2 <= 0.0:
        return ceiling
    return min(max(k2, 1.0), ceiling)


def _dm_standard_error(centred: np.ndarray, n: int, h: int) -> float | None:
    """``SE = √(V/n)/c`` of Diebold–Mariano with the HLN correction ``c``."""
    gamma0 = float(centred @ centred) / n
    variance = gamma0
    for j in range(1, h):
        variance += 2.0 * float(centred[j:] @ centred[:-j]) / n
    if variance <= 0.0:
        variance = gamma0
    correction = (n + 1 - 2 * h + h * (h - 1) / n) / n
    if correction <= 0.0:
        return None
    return math.sqrt(variance / n) / math.sqrt(correction)


def t_quantile(probability: float, dof: float) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom."""
    return float(special.stdtrit(dof, probability))


def two_sided_p(t: float, dof: float) -> float:
    """Two-sided p-value of Student's t: ``2·F_t(−|t|; dof)``."""
    return float(2.0 * special.stdtr(dof, -abs(t)))


def paired_test(
    differences: ArrayLike,
    method: str = DEFAULT_METHOD,
    levels: Sequence[float] = DEFAULT_LEVELS,
    *,
    h: int = 1,
) -> PairedTest:
    """Test ``d̄ = 0`` for the per-cycle differences ``d_t`` (in cycle order).

    ``SE = k·s/√n`` with ``k`` from ``method`` (``iid``, ``ar1``, ``ar2`` or
    ``dm`` with forecast horizon ``h``); ``t = d̄/SE`` on ``n − 1`` degrees of
    freedom; interval ``d̄ ± t(1 − α/2; n − 1)·SE``; ``n_eff = s²/SE²``. See the
    module docstring for the formulas and the guards.
    """
    check_method(method)
    levels = check_levels(levels)
    if h < 1 or int(h) != h:
        raise ValueError(f"h (forecast horizon in cycles) must be a positive integer, got {h!r}")
    d = np.asarray(differences, dtype=np.float64).ravel()
    if np.isnan(d).any():
        raise ValueError("differences contain NaN: leave out the unpaired cycles first")
    n = int(d.size)
    empty = PairedTest(method, n, None, None, None, None, None, None, None, None, None, None)
    if n == 0:
        return empty
    mean = float(d.mean())
    if n == 1:
        return PairedTest(method, 1, mean, None, None, None, None, None, None, None, None, None)

    centred = d - mean
    sum_sq = float(centred @ centred)
    sd = math.sqrt(sum_sq / (n - 1))
    r1, r2 = autocorrelation(d, 1), autocorrelation(d, 2)
    iid_se = sd / math.sqrt(n)
    if method == "dm":
        se = _dm_standard_error(centred, n, h)
        if se is None:
            return PairedTest(method, n, mean, sd, r1, r2, None, None, None, None, None, None)
        inflation = se / iid_se if iid_se > 0 else 1.0
    else:
        inflation = math.sqrt(variance_inflation(r1, r2, method, n))
        se = inflation * iid_se
    # n_eff = s²/SE² = n/k², written so that iid gives exactly n.
    n_eff = n / (inflation * inflation)

    dof = n - 1
    if se > 0:
        t: float | None = mean / se
        p = two_sided_p(mean / se, dof)
    else:
        t = 0.0 if mean == 0 else None
        p = 1.0 if mean == 0 else 0.0
    intervals = tuple(
        Interval(level, mean - half, mean + half)
        for level in levels
        for half in [t_quantile(1.0 - (1.0 - level) / 2.0, dof) * se]
    )
    return PairedTest(method, n, mean, sd, r1, r2, inflation, se, n_eff, t, dof, p, intervals)


def sidak_level(familywise_level: float, m: int) -> float:
    """Per-test confidence level giving ``familywise_level`` over ``m`` tests.

    Šidák: ``(1 − α_fw)^(1/m)``, i.e. per-test ``α = 1 − (1 − α_fw)^(1/m)``
    (exact for independent tests, conservative for positively dependent ones).
    """
    if m < 1:
        raise ValueError(f"the number of tests must be at least 1, got {m}")
    if not 0.0 < familywise_level < 1.0:
        raise ValueError(f"familywise_level {familywise_level!r} is not in (0, 1)")
    # 1 − α computed as exp(log1p(−α_fw)/m) stays accurate for tiny α.
    return math.exp(math.log1p(-(1.0 - familywise_level)) / m)


def familywise_level(per_test_level: float, m: int) -> float:
    """Family-wise confidence of ``m`` independent tests each at ``per_test_level``.

    ``(1 − α)^m``: the chance that none of ``m`` true-null cells is flagged.
    """
    if m < 1:
        raise ValueError(f"the number of tests must be at least 1, got {m}")
    if not 0.0 < per_test_level < 1.0:
        raise ValueError(f"per_test_level {per_test_level!r} is not in (0, 1)")
    return per_test_level**m
