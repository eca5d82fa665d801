"""Scores agree with scikit-learn; each metric knows which way is better."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    root_mean_squared_error,
)

from numex.scoring import METRICS, get_metric, score, skill_score
from numex.scoring.metrics import case_values

rng = np.random.default_rng(7)
OBS = rng.normal(10.0, 4.0, 500)
FORECAST = OBS + rng.normal(0.7, 2.0, 500)
OTHER = OBS + rng.normal(-0.2, 2.5, 500)
EVENT = (rng.uniform(size=500) < 0.4).astype(float)
PROB = np.clip(0.4 + 0.3 * (EVENT - 0.4) + rng.normal(0, 0.2, 500), 0.01, 0.99)


def test_mae_matches_scikit_learn():
    assert score("mae", FORECAST, OBS) == pytest.approx(mean_absolute_error(OBS, FORECAST))


def test_mse_and_rmse_match_scikit_learn():
    assert score("mse", FORECAST, OBS) == pytest.approx(mean_squared_error(OBS, FORECAST))
    assert score("rmse", FORECAST, OBS) == pytest.approx(root_mean_squared_error(OBS, FORECAST))


def test_bias_is_the_mean_error_and_sde_its_population_standard_deviation():
    error = FORECAST - OBS
    assert score("bias", FORECAST, OBS) == pytest.approx(sum(error) / len(error))
    assert score("sde", FORECAST, OBS) == pytest.approx(np.std(error, ddof=0))


def test_mse_splits_into_bias_squared_plus_sde_squared():
    total = score("bias", FORECAST, OBS) ** 2 + score("sde", FORECAST, OBS) ** 2
    assert total == pytest.approx(score("mse", FORECAST, OBS))


def test_sde_stays_accurate_when_the_bias_dwarfs_the_spread():
    observation = np.zeros(1000)
    forecast = 1e6 + np.tile([-1.0, 1.0], 500)
    assert score("sde", forecast, observation) == pytest.approx(1.0, rel=1e-9)


def test_skill_score_is_one_minus_the_mse_ratio():
    expected = 1 - mean_squared_error(OBS, FORECAST) / mean_squared_error(OBS, OTHER)
    assert skill_score(FORECAST, OTHER, OBS) == pytest.approx(expected)


def test_brier_matches_scikit_learn():
    assert score("brier", PROB, EVENT) == pytest.approx(brier_score_loss(EVENT, PROB))


def test_log_loss_matches_scikit_learn():
    assert score("log_loss", PROB, EVENT) == pytest.approx(log_loss(EVENT, PROB))


def test_log_loss_clips_certain_wrong_forecasts_like_scikit_learn():
    probability = np.array([0.0, 1.0, 0.3, 1.0])
    event = np.array([1.0, 0.0, 0.0, 1.0])
    expected = log_loss(event, probability)
    assert math.isfinite(expected)
    assert score("log_loss", probability, event) == pytest.approx(expected)


def test_accuracy_matches_scikit_learn_with_a_half_threshold():
    predicted = (PROB >= 0.5).astype(float)
    assert score("accuracy", PROB, EVENT) == pytest.approx(accuracy_score(EVENT, predicted))


def test_score_leaves_out_pairs_with_nan():
    forecast = np.array([1.0, np.nan, 3.0, 4.0])
    observation = np.array([0.0, 2.0, np.nan, 3.0])
    assert score("mae", forecast, observation) == pytest.approx(1.0)


def test_case_values_are_the_per_case_losses():
    assert case_values("mae", [1.0, 3.0], [2.0, 2.0]).tolist() == [1.0, 1.0]
    assert case_values("rmse", [1.0, 4.0], [2.0, 2.0]).tolist() == [1.0, 4.0]
    assert case_values("brier", [0.2, 0.9], [0.0, 1.0]) == pytest.approx([0.04, 0.01])


def test_each_metric_says_which_direction_is_better():
    assert METRICS["accuracy"].higher_is_better and METRICS["accuracy"].difference_higher_is_better
    assert METRICS["msess"].higher_is_better
    assert not METRICS["msess"].difference_higher_is_better  # tested on the MSE
    for name in ("bias", "mae", "mse", "rmse", "sde", "brier", "log_loss"):
        assert not METRICS[name].higher_is_better
        assert not METRICS[name].difference_higher_is_better


def test_rmse_change_percent_is_the_ratio_minus_one():
    rmse = get_metric("rmse")
    assert rmse.change_percent(0.9, 1.0) == pytest.approx(-10.0)
    assert rmse.change_percent(1.0, 0.0) is None


def test_bias_change_compares_distance_from_zero():
    bias = get_metric("bias")
    assert bias.change(-0.5, 1.0) == pytest.approx(-0.5)
    assert bias.change_percent(-0.5, 1.0) == pytest.approx(-50.0)


def test_root_metric_intervals_map_through_the_square_root():
    # RMSE_C/RMSE_R − 1 = √(1 + ΔMSE/MSE_R) − 1
    assert get_metric("rmse").bound_percent(-0.19, 1.0) == pytest.approx(-10.0)
    assert get_metric("mae").bound_percent(-0.19, 1.0) == pytest.approx(-19.0)
    assert get_metric("bias").bound_percent(-0.19, 1.0) is None


def test_unknown_metric_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown metric 'rsme'.*rmse"):
        score("rsme", FORECAST, OBS)


def test_binary_metric_refuses_observations_that_are_not_zero_or_one():
    with pytest.raises(ValueError, match=r"brier.*observations 0 or 1.*0\.5"):
        score("brier", [0.2, 0.3], [0.0, 0.5])


def test_binary_metric_refuses_forecasts_outside_zero_one():
    with pytest.raises(ValueError, match=r"log_loss.*probabilities in \[0, 1\].*1\.2"):
        score("log_loss", [0.2, 1.2], [0.0, 1.0])


def test_msess_needs_a_reference():
    with pytest.raises(ValueError, match="skill_score"):
        score("msess", FORECAST, OBS)


def test_logloss_is_accepted_as_another_spelling_of_log_loss():
    assert get_metric("logloss") is get_metric("log_loss")
    assert score("logloss", PROB, EVENT) == score("log_loss", PROB, EVENT)
