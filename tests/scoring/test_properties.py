"""Properties any honest paired comparison must have, checked with hypothesis."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numex.scoring import METHODS, build_scorecard

from .synthetic import make_pairs

REGRESSION = ["rmse", "mae", "bias", "sde", "mse", "msess"]
MIRROR = {"▲": "▼", "△": "▽", "·": "·", "": "", "▼": "▲", "▽": "△"}
fast = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**32 - 1)
cycles = st.integers(3, 60)
leads = st.integers(1, 3)
improvements = st.floats(-0.5, 0.5)
methods = st.sampled_from(METHODS)


def swap(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs.rename(columns={"candidate": "reference", "reference": "candidate"})


def sign(x: float | None) -> int:
    return 0 if not x else int(math.copysign(1, x))


@fast
@given(seed=seeds, n_cycles=cycles, n_leads=leads, improvement=improvements, method=methods)
def test_swapping_candidate_and_reference_flips_the_change_and_keeps_the_p_value(
    seed, n_cycles, n_leads, improvement, method
):
    pairs = make_pairs(n_cycles, n_leads, improvement, seed)
    forward = build_scorecard(pairs, REGRESSION, ["lead"], method=method)
    backward = build_scorecard(swap(pairs), REGRESSION, ["lead"], method=method)
    for a, b in zip(forward.cells, backward.cells, strict=True):
        assert a.mean_difference == pytest.approx(-b.mean_difference, abs=1e-12)
        assert sign(a.change) == -sign(b.change)
        assert sign(a.change_percent) == -sign(b.change_percent)
        if a.metric != "msess":  # a ratio-based skill score does not simply negate
            assert a.change == pytest.approx(-b.change, abs=1e-12)
        if a.p_value is None:
            assert b.p_value is None
        else:
            assert a.p_value == pytest.approx(b.p_value, rel=1e-9, abs=1e-300)
        assert b.symbol == MIRROR[a.symbol]
        assert a.n_eff == b.n_eff


@fast
@given(seed=seeds, n_cycles=cycles, n_leads=leads, method=methods)
def test_identical_forecasts_show_no_change_and_no_significance(seed, n_cycles, n_leads, method):
    pairs = make_pairs(n_cycles, n_leads, 0.0, seed)
    pairs["candidate"] = pairs["reference"]
    card = build_scorecard(pairs, REGRESSION, ["lead", "season"], method=method)
    for cell in card.cells:
        assert cell.mean_difference == 0.0
        assert cell.change == 0.0
        assert cell.change_percent in (0.0, None)
        assert cell.symbol in ("·", "")
        assert cell.verdict is None and cell.direction is None
        assert cell.p_value in (1.0, None)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=seeds, improvement=st.floats(0.3, 0.6), method=methods)
def test_a_constant_improvement_becomes_significant_as_the_sample_grows(seed, improvement, method):
    rng = np.random.default_rng(seed)
    n = 6000
    reference_error = rng.normal(0.0, 1.0, n)
    candidate_error = rng.normal(0.0, math.sqrt(1.0 - improvement), n)
    pairs = pd.DataFrame(
        {
            "cycle": np.arange(n),
            "candidate": candidate_error,
            "reference": reference_error,
            "observation": 0.0,
        }
    )
    few = build_scorecard(pairs.iloc[:6], ["mse"], method=method).cell("mse")
    many = build_scorecard(pairs, ["mse"], method=method).cell("mse")
    assert few.symbol == ""  # n_eff below the floor of 10: no verdict yet
    assert many.symbol == "▲" and many.verdict == "better"
    assert many.p_value < 0.003


@fast
@given(
    seed=seeds,
    n_cycles=cycles,
    n_leads=leads,
    improvement=improvements,
    holes=st.floats(0.0, 0.4),
    data=st.data(),
)
def test_pairs_with_a_missing_value_are_excluded_and_counted(
    seed, n_cycles, n_leads, improvement, holes, data
):
    pairs = make_pairs(n_cycles, n_leads, improvement, seed)
    rng = np.random.default_rng(data.draw(seeds))
    holed = pairs.copy()
    for column in ("candidate", "reference", "observation"):
        holed.loc[rng.uniform(size=len(pairs)) < holes / 3, column] = np.nan
    missing = holed[["candidate", "reference", "observation"]].isna()
    kept = holed[~missing.any(axis=1)]

    card = build_scorecard(holed, REGRESSION, ["lead"])
    assert card.excluded.total == int(missing.any(axis=1).sum())
    assert card.excluded.candidate_missing == int(missing["candidate"].sum())
    assert card.excluded.reference_missing == int(missing["reference"].sum())
    assert card.excluded.observation_missing == int(missing["observation"].sum())
    assert card.n_cases == len(kept)
    assert card.cell("rmse").n_excluded == card.excluded.total
    assert card.cell("rmse").n_cases + card.cell("rmse").n_excluded == len(pairs)

    if len(kept) == 0:
        assert all(cell.n_cases == 0 for cell in card.cells)
        return
    clean = build_scorecard(kept, REGRESSION, ["lead"])
    for cell in card.cells:
        if cell.column in clean.columns:
            assert replace(cell, n_excluded=0) == clean.cell(cell.metric, cell.column)
        else:
            assert cell.n_cases == 0
