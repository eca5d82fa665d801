"""Paired tests agree with scipy, statsmodels and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.tsa.stattools import acf, diebold_mariano_test

from numex.scoring import autocorrelation, familywise_level, paired_test, sidak_level
from numex.scoring.significance import variance_inflation

# A short, positively autocorrelated series for the hand computations.
SERIES = [0.2, 0.25, 0.19, 0.45, 0.44, 0.18, 0.33, 0.82, 1.08, 0.62, 0.03, -0.19, -0.09, -0.96]
SERIES += [-0.82, -1.11]


def hand_mean(d):
    return sum(d) / len(d)


def hand_sd(d):
    m = hand_mean(d)
    return math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))


def hand_r(d, k):
    m = hand_mean(d)
    numerator = 0.0
    for t in range(len(d) - k):
        numerator += (d[t] - m) * (d[t + k] - m)
    return numerator / sum((x - m) ** 2 for x in d)


def test_iid_test_matches_scipy_one_sample_t_test():
    d = np.random.default_rng(3).normal(0.15, 1.0, 80)
    result = paired_test(d, "iid", levels=(0.95,))
    reference = stats.ttest_1samp(d, 0.0)
    assert result.t_statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    low, high = reference.confidence_interval(confidence_level=0.95)
    assert result.interval(0.95).low == pytest.approx(low, rel=1e-12)
    assert result.interval(0.95).high == pytest.approx(high, rel=1e-12)
    assert result.n_eff == 80


def test_autocorrelation_matches_a_hand_loop_and_statsmodels():
    expected = acf(np.array(SERIES), nlags=2, adjusted=False, fft=False)
    for lag in (1, 2):
        assert autocorrelation(SERIES, lag) == pytest.approx(hand_r(SERIES, lag), rel=1e-12)
        assert autocorrelation(SERIES, lag) == pytest.approx(expected[lag], rel=1e-12)


def test_ar1_standard_error_matches_hand_computation():
    n, r1 = len(SERIES), hand_r(SERIES, 1)
    assert r1 > 0
    se = hand_sd(SERIES) / math.sqrt(n) * math.sqrt((1 + r1) / (1 - r1))
    result = paired_test(SERIES, "ar1")
    assert result.standard_error == pytest.approx(se, rel=1e-12)
    assert result.n_eff == pytest.approx(n * (1 - r1) / (1 + r1), rel=1e-12)
    t = hand_mean(SERIES) / se
    assert result.t_statistic == pytest.approx(t, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-10)


def test_ar2_standard_error_matches_geer_by_hand():
    n = len(SERIES)
    r1, r2 = hand_r(SERIES, 1), hand_r(SERIES, 2)
    phi1 = r1 * (1 - r2) / (1 - r1**2)
    phi2 = (r2 - r1**2) / (1 - r1**2)
    k2 = (1 - r1 * phi1 - r2 * phi2) / (1 - phi1 - phi2) ** 2
    assert k2 > 1
    se = math.sqrt(k2) * hand_sd(SERIES) / math.sqrt(n)
    result = paired_test(SERIES, "ar2", levels=(0.95, 0.997))
    assert result.standard_error == pytest.approx(se, rel=1e-12)
    assert result.n_eff == pytest.approx(n / k2, rel=1e-12)
    for level in (0.95, 0.997):
        half = stats.t.ppf(1 - (1 - level) / 2, n - 1) * se
        assert result.interval(level).low == pytest.approx(hand_mean(SERIES) - half, rel=1e-10)
        assert result.interval(level).high == pytest.approx(hand_mean(SERIES) + half, rel=1e-10)


def test_effective_sample_size_relates_the_iid_and_inflated_standard_errors():
    result = paired_test(SERIES, "ar2")
    iid_se = result.sd / math.sqrt(result.n)
    assert result.n_eff == pytest.approx(result.n * (iid_se / result.standard_error) ** 2)


def test_dm_with_horizon_one_matches_statsmodels_harvey_adjusted():
    rng = np.random.default_rng(11)
    y = rng.normal(size=60)
    a, b = y + rng.normal(size=60), y + 1.2 * rng.normal(size=60)
    reference = diebold_mariano_test(y, a, b, lags=0, harvey_adj=True, horizon=1)
    d = (y - a) ** 2 - (y - b) ** 2
    result = paired_test(d, "dm", h=1)
    assert result.t_statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)


def test_dm_with_longer_horizon_matches_hand_computation():
    d, h = SERIES, 3
    n, m = len(d), hand_mean(d)
    gamma = [sum((d[t] - m) * (d[t - j] - m) for t in range(j, n)) / n for j in range(h)]
    variance = gamma[0] + 2 * sum(gamma[1:])
    dm = m / math.sqrt(variance / n)
    hln = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    result = paired_test(d, "dm", h=h)
    assert result.t_statistic == pytest.approx(hln, rel=1e-12)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(hln), n - 1), rel=1e-10)


def test_negative_autocorrelation_never_makes_a_result_more_significant_than_iid():
    alternating = [1.0, -0.6, 1.1, -0.5, 0.9, -0.7, 1.2, -0.4, 1.0, -0.6, 1.1, -0.5]
    assert autocorrelation(alternating, 1) < 0
    iid = paired_test(alternating, "iid")
    for method in ("ar1", "ar2"):
        result = paired_test(alternating, method)
        assert result.standard_error == pytest.approx(iid.standard_error)
        assert result.n_eff == pytest.approx(len(alternating))


def test_a_trending_series_is_worth_only_a_few_effective_cycles():
    trend = np.linspace(-1.0, 1.0, 50) + 0.3
    result = paired_test(trend, "ar2")
    assert result.n_eff < 3
    assert not result.significant(0.95)
    assert paired_test(trend, "iid").significant(0.95)


@pytest.mark.parametrize(
    ("r1", "r2", "method"),
    [(1.0, 0.5, "ar2"), (-1.0, 0.5, "ar1"), (0.9, -0.9, "ar2"), (0.5, 0.99, "ar2")],
)
def test_degenerate_autocorrelations_give_the_largest_inflation(r1, r2, method):
    assert variance_inflation(r1, r2, method, 40) == 40


def test_inflation_is_never_below_one():
    assert variance_inflation(-0.4, 0.1, "ar1", 40) == 1.0
    assert variance_inflation(-0.4, 0.1, "ar2", 40) == 1.0


def test_constant_zero_difference_is_not_significant():
    result = paired_test([0.0] * 20, "ar2")
    assert result.p_value == 1.0
    assert result.standard_error == 0.0
    assert result.t_statistic == 0.0


def test_constant_nonzero_difference_is_exactly_significant():
    result = paired_test([-0.25] * 20, "ar2")
    assert result.p_value == 0.0
    assert result.t_statistic is None
    assert result.interval(0.95).low == result.interval(0.95).high == -0.25


def test_too_short_series_leave_the_statistics_empty():
    assert paired_test([], "ar2").mean is None
    single = paired_test([0.5], "ar2")
    assert single.mean == 0.5
    assert single.standard_error is None and single.p_value is None


def test_unknown_method_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown method 'ar3'.*iid, ar1, ar2, dm"):
        paired_test(SERIES, "ar3")


def test_levels_must_be_inside_zero_one():
    with pytest.raises(ValueError, match="1.5"):
        paired_test(SERIES, "iid", levels=(0.95, 1.5))


def test_sidak_level_keeps_the_familywise_level():
    for m in (1, 2, 12, 100):
        per_cell = sidak_level(0.95, m)
        assert 1 - per_cell == pytest.approx(1 - (1 - 0.05) ** (1 / m), rel=1e-12)
        assert familywise_level(per_cell, m) == pytest.approx(0.95, rel=1e-12)
    assert sidak_level(0.95, 1) == pytest.approx(0.95)


def test_familywise_level_of_unadjusted_cells_shrinks_with_the_grid():
    assert familywise_level(0.95, 20) == pytest.approx(0.95**20)
    with pytest.raises(ValueError):
        sidak_level(0.95, 0)
