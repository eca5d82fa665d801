"""The scorecard grid: scores, paired tests, symbols, exclusions, serialisation."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    root_mean_squared_error,
)

from numex.scoring import Scorecard, build_scorecard
from numex.scoring import scorecard as scorecard_module

from .synthetic import make_pairs

REGRESSION = ["rmse", "mae", "bias", "sde", "mse", "msess"]
BINARY = ["brier", "log_loss", "accuracy"]


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return make_pairs(n_cycles=80, leads=3, improvement=0.15, seed=1)


@pytest.fixture(scope="module")
def card(pairs) -> Scorecard:
    meta = {"routine": "seattle-tmax", "candidate": 7, "reference": 3}
    return build_scorecard(pairs, REGRESSION, ["lead", "season"], meta=meta)


def per_cycle_difference(pairs: pd.DataFrame, loss) -> pd.Series:
    """d_t by a plain pandas group-by: an implementation independent of numex's."""
    frame = pairs.assign(
        lc=loss(pairs["candidate"], pairs["observation"]),
        lr=loss(pairs["reference"], pairs["observation"]),
    )
    means = frame.groupby("cycle")[["lc", "lr"]].mean().sort_index()
    return means["lc"] - means["lr"]


def test_grid_has_overall_then_each_segment_value(card):
    assert card.columns == (
        "overall",
        "lead=1",
        "lead=2",
        "lead=3",
        "season=DJF",
        "season=JJA",
        "season=MAM",
        "season=SON",
    )
    assert len(card.cells) == len(REGRESSION) * len(card.columns)
    assert card.primary_metric == "rmse"
    cell = card.cell("mae", "lead=2")
    assert (cell.segment, cell.value) == ("lead", "2")


def test_scores_match_scikit_learn_overall_and_per_segment(card, pairs):
    for column, rows in [("overall", pairs), ("lead=3", pairs[pairs["lead"] == 3])]:
        obs, cand, ref = rows["observation"], rows["candidate"], rows["reference"]
        mae = card.cell("mae", column)
        assert mae.candidate_score == pytest.approx(mean_absolute_error(obs, cand))
        assert mae.reference_score == pytest.approx(mean_absolute_error(obs, ref))
        rmse = card.cell("rmse", column)
        assert rmse.candidate_score == pytest.approx(root_mean_squared_error(obs, cand))
        assert rmse.n_cases == len(rows)


def test_rmse_change_is_the_rmse_ratio_minus_one(card):
    cell = card.cell("rmse")
    expected = 100 * (cell.candidate_score / cell.reference_score - 1)
    assert cell.change_percent == pytest.approx(expected)
    assert cell.change == pytest.approx(cell.candidate_score - cell.reference_score)


def test_rmse_is_tested_on_the_per_cycle_mean_squared_error(card, pairs):
    d = per_cycle_difference(pairs, lambda f, o: (f - o) ** 2)
    cell = card.cell("rmse")
    assert cell.mean_difference == pytest.approx(d.mean())
    assert card.cycle_series("rmse").difference == pytest.approx(tuple(d))


def test_iid_scorecard_matches_scipy_t_test_on_pandas_differences(pairs):
    card = build_scorecard(pairs, ["mae"], method="iid")
    d = per_cycle_difference(pairs, lambda f, o: (f - o).abs())
    expected = stats.ttest_1samp(d, 0.0)
    cell = card.cell("mae")
    assert cell.t_statistic == pytest.approx(expected.statistic)
    assert cell.p_value == pytest.approx(expected.pvalue)
    assert cell.n_cycles == d.size
    assert cell.n_eff == d.size


def test_bias_compares_distance_from_zero_per_cycle(card, pairs):
    error_c = pairs["candidate"] - pairs["observation"]
    error_r = pairs["reference"] - pairs["observation"]
    by_cycle = pd.DataFrame({"c": error_c, "r": error_r, "cycle": pairs["cycle"]})
    means = by_cycle.groupby("cycle").mean()
    d = means["c"].abs() - means["r"].abs()
    cell = card.cell("bias")
    assert cell.mean_difference == pytest.approx(d.mean())
    assert cell.candidate_score == pytest.approx(error_c.mean())
    assert cell.change == pytest.approx(abs(error_c.mean()) - abs(error_r.mean()))


def test_sde_cycle_values_average_to_the_error_variance(card, pairs):
    # Equal cases per cycle, so the mean of the per-cycle values is the case mean.
    series = card.cycle_series("sde")
    error_c = pairs["candidate"] - pairs["observation"]
    assert np.mean(series.candidate) == pytest.approx(np.var(error_c, ddof=0))
    assert card.cell("sde").candidate_score == pytest.approx(np.std(error_c, ddof=0))


def test_skill_score_cell_reports_the_skill_and_tests_the_mse(card):
    skill, mse = card.cell("msess"), card.cell("mse")
    assert skill.candidate_score == pytest.approx(1 - mse.candidate_score / mse.reference_score)
    assert skill.reference_score == 0.0
    assert skill.change_percent is None
    assert skill.p_value == pytest.approx(mse.p_value)
    assert skill.verdict == mse.verdict == "better"


def test_binary_scores_match_scikit_learn():
    pairs = make_pairs(n_cycles=60, leads=4, improvement=0.5, seed=2, binary=True)
    card = build_scorecard(pairs, BINARY)
    obs, cand = pairs["observation"], pairs["candidate"]
    assert card.cell("brier").candidate_score == pytest.approx(brier_score_loss(obs, cand))
    assert card.cell("log_loss").candidate_score == pytest.approx(log_loss(obs, cand))
    predicted = (cand >= 0.5).astype(float)
    assert card.cell("accuracy").candidate_score == pytest.approx(accuracy_score(obs, predicted))


def test_higher_accuracy_is_shown_as_better():
    pairs = make_pairs(n_cycles=300, leads=4, improvement=0.8, seed=4, binary=True)
    cell = build_scorecard(pairs, ["accuracy"]).cell("accuracy")
    assert cell.mean_difference > 0
    assert cell.verdict == "better"
    assert cell.symbol in ("▲", "△")


def test_a_clear_improvement_is_significant_at_99_7_percent(card):
    cell = card.cell("rmse")
    assert cell.p_value < 0.003
    assert cell.symbol == "▲"
    assert cell.verdict == cell.direction == "better"
    assert cell.interval(0.997).high < 0


def test_a_clear_degradation_is_red(pairs):
    swapped = pairs.rename(columns={"candidate": "reference", "reference": "candidate"})
    cell = build_scorecard(swapped, ["rmse"]).cell("rmse")
    assert cell.symbol == "▼"
    assert cell.verdict == "worse"


def pairs_with_t(t: float, n: int = 30) -> pd.DataFrame:
    """One case per cycle whose MAE differences d_t have iid t-statistic ``t``."""
    z = np.random.default_rng(5).normal(0.0, 0.1, size=n)
    d = z - z.mean() + t * z.std(ddof=1) / np.sqrt(n)
    return pd.DataFrame(
        {"cycle": np.arange(n), "candidate": 1.0 + d, "reference": 1.0, "observation": 0.0}
    )


@pytest.mark.parametrize(("t", "symbol"), [(-2.5, "△"), (2.5, "▽"), (-4.0, "▲"), (1.0, "·")])
def test_symbol_follows_the_significance_level(t, symbol):
    cell = build_scorecard(pairs_with_t(t), ["mae"], method="iid").cell("mae")
    assert cell.t_statistic == pytest.approx(t)
    assert cell.symbol == symbol
    assert cell.verdict == {"△": "better", "▲": "better", "▽": "worse", "·": None}[symbol]


def test_below_the_floor_there_is_no_verdict(pairs):
    card = build_scorecard(pairs, ["rmse"], floor=1e6)
    cell = card.cell("rmse")
    assert cell.symbol == ""
    assert cell.verdict is None
    assert cell.p_value is not None  # the numbers are still there
    assert card.family.size == 0


def test_intervals_are_given_in_difference_units_and_percent(card):
    cell = card.cell("mae")
    interval, percent = cell.interval(0.95), cell.intervals_percent[0]
    reference_mean = np.mean(card.cycle_series("mae").reference)
    assert percent.low == pytest.approx(100 * interval.low / reference_mean)
    assert [i.level for i in cell.intervals] == [0.95, 0.997]
    assert card.cell("bias").intervals_percent == ()


def test_percent_interval_of_rmse_contains_its_change(card):
    cell = card.cell("rmse")
    percent = cell.intervals_percent[0]
    assert percent.low < cell.change_percent < percent.high


def test_family_reports_sidak_and_unadjusted_levels(card):
    m = card.family.size
    assert m == sum(cell.symbol != "" for cell in card.cells)
    level = card.family.levels[0]
    assert level.level == 0.95
    assert level.per_cell_level == pytest.approx(0.95 ** (1 / m))
    assert level.familywise_if_unadjusted == pytest.approx(0.95**m)


def test_pairs_with_nan_are_excluded_and_counted(pairs):
    holed = pairs.copy()
    holed.loc[[0, 5], "candidate"] = np.nan
    holed.loc[[5, 9], "reference"] = np.nan
    holed.loc[[12], "observation"] = np.nan
    card = build_scorecard(holed, ["mae"], ["lead"])
    assert card.excluded.candidate_missing == 2
    assert card.excluded.reference_missing == 2
    assert card.excluded.observation_missing == 1
    assert card.excluded.total == 4
    assert card.n_cases == len(pairs) - 4
    overall = card.cell("mae")
    assert overall.n_excluded == 4 and overall.n_cases == len(pairs) - 4
    excluded_leads = holed.loc[[0, 5, 9, 12], "lead"]
    for lead in (1, 2, 3):
        assert card.cell("mae", f"lead={lead}").n_excluded == int((excluded_leads == lead).sum())
    kept = holed.drop(index=[0, 5, 9, 12])
    assert overall.candidate_score == pytest.approx(
        mean_absolute_error(kept["observation"], kept["candidate"])
    )


def test_a_segment_with_every_pair_missing_is_an_empty_cell(pairs):
    holed = pairs.copy()
    holed.loc[holed["lead"] == 3, "observation"] = np.nan
    cell = build_scorecard(holed, ["rmse"], ["lead"]).cell("rmse", "lead=3")
    assert cell.n_cases == 0 and cell.n_excluded == (pairs["lead"] == 3).sum()
    assert cell.candidate_score is None and cell.p_value is None
    assert cell.symbol == "" and cell.verdict is None


def test_missing_segment_values_get_their_own_column(pairs):
    holed = pairs.assign(region=np.where(pairs["lead"] == 1, None, "north"))
    card = build_scorecard(holed, ["mae"], ["region"])
    assert "region=missing" in card.columns
    assert card.cell("mae", "region=missing").n_cases == (pairs["lead"] == 1).sum()


def test_cycle_series_are_in_cycle_order_with_the_confidence_band(card):
    series = card.cycle_series("rmse")
    assert list(series.cycles) == sorted(series.cycles)
    assert series.mean_difference == card.cell("rmse").mean_difference
    assert series.intervals == card.cell("rmse").intervals
    assert sum(series.n_cases) == card.cell("rmse").n_cases
    diffs = np.subtract(series.candidate, series.reference)
    assert diffs == pytest.approx(series.difference)


def test_date_cycles_are_written_as_iso_dates(pairs):
    dated = pairs.assign(cycle=pd.Timestamp("2014-01-01") + pd.to_timedelta(pairs["cycle"], "D"))
    card = build_scorecard(dated, ["mae"])
    assert card.cycle_series("mae").cycles[0] == "2014-01-01T00:00:00"
    json.loads(card.to_canonical_json())


def test_summing_per_segment_column_gives_the_same_grid(pairs, monkeypatch):
    crossed = build_scorecard(pairs, ["rmse", "sde", "bias"], ["lead", "season"])
    monkeypatch.setattr(scorecard_module, "_MAX_CROSSED_GROUPS", 0)
    separate = build_scorecard(pairs, ["rmse", "sde", "bias"], ["lead", "season"])
    assert crossed.to_canonical_json() == separate.to_canonical_json()


def test_canonical_json_is_sorted_compact_and_free_of_nan(card):
    text = card.to_canonical_json()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data["meta"] == {"routine": "seattle-tmax", "candidate": 7, "reference": 3}


def test_digest_is_sha256_of_the_canonical_json_and_follows_the_content(card, pairs):
    assert card.digest().startswith("sha256:") and len(card.digest()) == 7 + 64
    again = build_scorecard(pairs, REGRESSION, ["lead", "season"], meta=dict(card.meta))
    assert again.digest() == card.digest()
    assert replace(card, meta={"routine": "other"}).digest() != card.digest()


def test_round_trip_through_dict_and_canonical_json(card):
    assert Scorecard.from_dict(card.to_dict()) == card
    parsed = Scorecard.from_dict(json.loads(card.to_canonical_json()))
    assert parsed.digest() == card.digest()


def test_csv_has_one_row_per_cell(card):
    rows = list(csv.DictReader(io.StringIO(card.to_csv())))
    assert len(rows) == len(card.cells)
    first = rows[0]
    assert (first["metric"], first["column"], first["symbol"]) == ("rmse", "overall", "▲")
    assert float(first["ci95_low"]) == pytest.approx(card.cell("rmse").interval(0.95).low)
    assert float(first["ci99.7_high_percent"]) == pytest.approx(
        card.cell("rmse").intervals_percent[1].high
    )
    assert first["change_percent"] != "" and rows[2]["segment"] == "lead"


def test_constant_improvement_on_every_case_is_exactly_significant():
    observation = np.zeros(60)
    pairs = pd.DataFrame(
        {
            "cycle": np.arange(60),
            "candidate": np.full(60, 1.0),
            "reference": np.full(60, 2.0),
            "observation": observation,
        }
    )
    cell = build_scorecard(pairs, ["mae"]).cell("mae")
    assert cell.p_value == 0.0 and cell.t_statistic is None
    assert cell.symbol == "▲"
    assert not math.isnan(
        json.loads(build_scorecard(pairs, ["mae"]).to_canonical_json())["n_cases"]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": ["rsme"]}, r"unknown metric 'rsme'"),
        ({"metrics": []}, r"at least one metric"),
        ({"segments": ["region"]}, r"no column 'region'"),
        ({"segments": ["candidate"]}, r"pair column"),
        ({"method": "ar9"}, r"unknown method"),
        ({"floor": -1}, r"floor"),
        ({"levels": (0.95, 99.7)}, r"99.7"),
        ({"meta": {"when": object()}}, r"meta"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(pairs, change, message):
    arguments = {"metrics": ["mae"], "segments": ["lead"], **change}
    with pytest.raises(ValueError, match=message):
        build_scorecard(pairs, **arguments)


def test_missing_pair_columns_are_named(pairs):
    with pytest.raises(ValueError, match="observation"):
        build_scorecard(pairs.drop(columns="observation"), ["mae"])


def test_text_forecasts_are_refused(pairs):
    with pytest.raises(ValueError, match="'candidate' must hold numbers"):
        build_scorecard(pairs.assign(candidate="warm"), ["mae"])


def test_cases_without_a_cycle_are_refused(pairs):
    holed = pairs.astype({"cycle": float})
    holed.loc[3, "cycle"] = np.nan
    with pytest.raises(ValueError, match="'cycle' has missing values"):
        build_scorecard(holed, ["mae"])


def test_binary_metrics_refuse_continuous_observations(pairs):
    with pytest.raises(ValueError, match="brier"):
        build_scorecard(pairs, ["brier"])


def test_no_pairs_give_an_empty_grid_without_verdicts():
    empty = pd.DataFrame(
        {"cycle": [], "candidate": [], "reference": [], "observation": [], "lead": []}
    )
    card = build_scorecard(empty, ["rmse", "bias"], ["lead"])
    assert card.n_cases == card.n_cycles == card.family.size == 0
    assert [cell.symbol for cell in card.cells] == ["", ""]
    assert card.cycle_series("rmse").cycles == ()
    assert Scorecard.from_dict(json.loads(card.to_canonical_json())).digest() == card.digest()


def test_a_single_cycle_gives_scores_but_no_test():
    one = pd.DataFrame(
        {"cycle": [1, 1], "candidate": [1.0, 2.0], "reference": [1.5, 2.5], "observation": 1.0}
    )
    cell = build_scorecard(one, ["mae"]).cell("mae")
    assert (cell.candidate_score, cell.reference_score, cell.change_percent) == (0.5, 1.0, -50.0)
    assert cell.p_value is None and cell.symbol == "" and cell.direction == "better"
