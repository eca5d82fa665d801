"""Routine and experiment specs: validation messages, the demo routine, its data, digests."""

from __future__ import annotations

import copy
import csv
import pickle
import re
import socket
import subprocess
import sys
import textwrap
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from numex import specs
from numex.models import Persistence
from numex.specs import SpecError

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "seattle-tmax"
ROUTINE_FILE = "experiments/seattle-tmax/routine.yaml"
VALID_METRICS = "bias, mae, rmse, sde, brier, log_loss, accuracy"
VALID_CHECKS = (
    "min_cycles, min_cases, significant_improvement, no_significant_degradation, "
    "offline_not_worse, max_failure_rate"
)
DEMO_FEATURES = "tmax_obs, tmax_lag1, tmax_lag2, tmax_mean7, precip_obs, doy_sin, doy_cos, lead"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo() -> tuple[specs.RoutineSpec, pd.DataFrame]:
    routine = specs.load_routine(DEMO)
    return routine, specs.load_routine_data(routine)


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A working directory with ``experiments/`` in it, so messages name relative files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments" / "seattle-tmax").mkdir(parents=True)
    return tmp_path


def demo_routine() -> dict:
    return yaml.safe_load((DEMO / "routine.yaml").read_text())


def demo_experiment(name: str = "ridge") -> dict:
    return yaml.safe_load((DEMO / f"{name}.yaml").read_text())


def write(path: str, content: dict | str) -> Path:
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    return file


def routine_problems(spec: dict | str, path: str = ROUTINE_FILE) -> SpecError:
    write(path, spec)
    with pytest.raises(SpecError) as caught:
        specs.load_routine(Path(path).parent)
    return caught.value


def experiment_problems(spec: dict | str, name: str = "candidate") -> SpecError:
    write(ROUTINE_FILE, demo_routine())
    path = write(f"experiments/seattle-tmax/{name}.yaml", spec)
    with pytest.raises(SpecError) as caught:
        specs.load_experiment(path)
    return caught.value


def lines(error: SpecError) -> list[str]:
    return str(error).splitlines()


# --------------------------------------------------------------------------- bad routine specs


def test_unknown_metric_names_file_field_value_and_valid_metrics(workspace):
    spec = demo_routine()
    spec["metrics"] = ["rmse", "rsme"]
    error = routine_problems(spec)
    line = Path(ROUTINE_FILE).read_text().splitlines().index("- rsme") + 1
    assert lines(error) == [
        f"{ROUTINE_FILE}: metrics[1]: 'rsme' is not a metric; valid: {VALID_METRICS} (line {line})"
    ]
    (problem,) = error.problems
    assert (problem.file, problem.field, problem.value) == (ROUTINE_FILE, "metrics[1]", "rsme")


def test_name_must_be_a_slug(workspace):
    spec = demo_routine() | {"name": "Seattle_TMax"}
    error = routine_problems(spec)
    assert str(error).startswith(
        f"{ROUTINE_FILE}: name: 'Seattle_TMax' is not a valid name; "
        "valid: lowercase letters, digits and single hyphens"
    )


def test_name_must_match_the_routine_folder(workspace):
    spec = demo_routine() | {"name": "seattle-tmin"}
    error = routine_problems(spec)
    assert lines(error) == [
        f"{ROUTINE_FILE}: name: 'seattle-tmin' is not its folder's name; "
        "valid: seattle-tmax (line 1)"
    ]


def test_missing_required_field_is_named(workspace):
    spec = demo_routine()
    del spec["target"]
    assert lines(routine_problems(spec)) == [f"{ROUTINE_FILE}: target: required field is missing"]


def test_unknown_top_level_field_is_named_with_the_valid_fields(workspace):
    spec = demo_routine() | {"colour": "blue"}
    error = routine_problems(spec)
    assert lines(error)[0].startswith(
        f"{ROUTINE_FILE}: colour: unknown top-level field 'colour'; valid fields: name, title, "
        "data, time_column, case_keys, target, features, training, holdout, cycles, metrics, "
        "segments, gates, task"
    )


def test_holdout_overlapping_training_is_refused(workspace):
    spec = demo_routine()
    spec["holdout"] = {"start": date(2013, 6, 1), "end": date(2013, 12, 31)}
    error = routine_problems(spec)
    assert lines(error)[0].startswith(
        f"{ROUTINE_FILE}: holdout: 2013-06-01..2013-12-31 overlaps training "
        "2012-01-01..2013-06-30; valid: a holdout period outside the training period"
    )


def test_period_must_start_on_or_before_its_end(workspace):
    spec = demo_routine()
    spec["training"] = {"start": date(2013, 6, 30), "end": date(2012, 1, 1)}
    error = routine_problems(spec)
    assert lines(error)[0].startswith(
        f"{ROUTINE_FILE}: training: start 2013-06-30 is after end 2012-01-01; "
        "valid: start on or before end"
    )


def test_unknown_gate_check_is_named_with_the_valid_checks(workspace):
    spec = demo_routine()
    spec["gates"]["operational"]["checks"][0] = {"min_cycle": 30}
    error = routine_problems(spec)
    assert lines(error)[0].startswith(
        f"{ROUTINE_FILE}: gates.operational.checks[0].min_cycle: 'min_cycle' is not a gate "
        f"check; valid: {VALID_CHECKS}"
    )


def test_gate_parameter_of_the_wrong_type_names_its_dotted_field(workspace):
    spec = demo_routine()
    spec["gates"]["operational"]["checks"][1]["significant_improvement"]["level"] = "high"
    error = routine_problems(spec)
    assert lines(error)[0].startswith(
        f"{ROUTINE_FILE}: gates.operational.checks[1].significant_improvement.level: "
        "'high' is not valid; must be a number"
    )


BAD_GATES = {
    "negative_sign_offs": (
        ["parallel", "sign_offs"],
        -1,
        "gates.parallel.sign_offs: -1 is not valid; must be ≥ 0",
    ),
    "level_not_below_one": (
        ["operational", "checks", 2, "no_significant_degradation", "level"],
        1.5,
        "gates.operational.checks[2].no_significant_degradation.level: 1.5 is not valid; "
        "must be < 1.0",
    ),
    "failure_rate_is_not_a_boolean": (
        ["operational", "checks", 3, "max_failure_rate"],
        True,
        "gates.operational.checks[3].max_failure_rate: True is not valid; must be a number",
    ),
    "min_cycles_is_an_integer": (
        ["operational", "checks", 0, "min_cycles"],
        "thirty",
        "gates.operational.checks[0].min_cycles: 'thirty' is not valid; must be an integer",
    ),
    "check_without_parameters": (
        ["operational", "checks", 0, "min_cycles"],
        None,
        "gates.operational.checks[0]: check 'min_cycles' needs parameters; valid: min_cycles: 30",
    ),
    "check_metric_not_scored_by_the_routine": (
        ["parallel", "checks", 0, "offline_not_worse", "metric"],
        "brier",
        "gates.parallel.checks[0].offline_not_worse.metric: 'brier' is not one of the "
        "routine's metrics; valid: rmse, mae, bias",
    ),
}


@pytest.mark.parametrize("where, value, expected", BAD_GATES.values(), ids=BAD_GATES.keys())
def test_bad_gate_parameters_are_named(workspace, where, value, expected):
    spec = demo_routine()
    node = spec["gates"]
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    assert lines(routine_problems(spec))[0].startswith(f"{ROUTINE_FILE}: {expected}")


def test_check_with_two_names_and_unknown_stage_are_refused(workspace):
    spec = demo_routine()
    spec["gates"]["operational"]["checks"].append({"min_cycles": 3, "min_cases": 4})
    spec["gates"]["staging"] = {"sign_offs": 1}
    text = str(routine_problems(spec))
    assert "gates.operational.checks[4]: {'min_cycles': 3, 'min_cases': 4} is not a check" in text
    assert "gates.staging: 'staging' is not a gated stage; valid: parallel, operational" in text


def test_segment_derivation_must_be_known(workspace):
    spec = demo_routine()
    spec["segments"][1] = {"name": "week", "derive": "week-of-year"}
    assert lines(routine_problems(spec))[0].startswith(
        f"{ROUTINE_FILE}: segments[1].derive: 'week-of-year' is not a derivation; "
        "valid: season, month, hour-of-day"
    )


def test_metrics_must_suit_the_task(workspace):
    spec = demo_routine() | {"task": "probabilistic", "metrics": ["brier", "mae"]}
    spec["gates"]["parallel"]["checks"] = []
    spec["gates"]["operational"]["checks"] = []
    assert lines(routine_problems(spec))[0].startswith(
        f"{ROUTINE_FILE}: metrics[1]: 'mae' does not score a probabilistic forecast "
        "(task: probabilistic); valid: brier, log_loss, accuracy"
    )


def test_target_cannot_be_a_feature(workspace):
    spec = demo_routine()
    spec["features"] = [*spec["features"], "tmax"]
    assert lines(routine_problems(spec))[0].startswith(
        f"{ROUTINE_FILE}: features[8]: 'tmax' is the target; valid: any other column"
    )


def test_yaml_syntax_error_is_reported_with_file_and_line(workspace):
    text = "name: seattle-tmax\ntitle: t\n  data: {source: data:load_cases}\n"
    assert lines(routine_problems(text)) == [
        f"{ROUTINE_FILE}: line 3, column 7: invalid YAML: mapping values are not allowed here"
    ]
    assert routine_problems(text).problems[0].line == 3


def test_every_problem_is_collected_with_its_line(workspace):
    text = textwrap.dedent(
        """\
        name: seattle-tmax
        title: t
        data: {source: data:load_cases}
        time_column: valid_date
        case_keys: [valid_date, lead]
        target: tmax
        features: [tmax_obs, lead]
        training: {start: 2012-01-01, end: 2013-06-30}
        holdout: {start: 2013-01-01, end: 2013-12-31}
        cycles: {length: 1X, start: 2014-01-01, end: 2015-12-31}
        metrics: [rsme]
        gates:
          parallel: {sign_offs: 1}
          operational: {sign_offs: two}
        colour: blue
        """
    )
    error = routine_problems(text)
    found = {(problem.field, problem.line) for problem in error.problems}
    assert found == {
        ("cycles.length", 10),
        ("metrics[0]", 11),
        ("gates.operational.sign_offs", 14),
        ("colour", 15),
        ("holdout", 9),  # a cross-check still runs on the fields that are valid
    }


def test_duplicate_yaml_keys_are_refused(workspace):
    text = (DEMO / "routine.yaml").read_text() + "target: tmin\n"
    assert "target: 'target' is given twice; the later value would silently win" in str(
        routine_problems(text)
    )


def test_missing_routine_file_is_named(workspace):
    with pytest.raises(SpecError, match=r"experiments/nowhere/routine\.yaml: no such routine"):
        specs.load_routine("experiments/nowhere")


# --------------------------------------------------------------------------- bad experiment specs

EXPERIMENT_FILE = "experiments/seattle-tmax/candidate.yaml"


def test_experiment_routine_must_match_its_routine(workspace):
    spec = demo_experiment() | {"routine": "seattle-tmin"}
    assert lines(experiment_problems(spec)) == [
        f"{EXPERIMENT_FILE}: routine: 'seattle-tmin' is not this experiment's routine; "
        "valid: seattle-tmax (line 1)"
    ]


def test_experiment_features_outside_the_routine_are_each_named(workspace):
    spec = demo_experiment() | {"features": ["tmax_obs", "humidity", "tmax_lag9"]}
    assert [line.split(" (line")[0] for line in lines(experiment_problems(spec))] == [
        f"{EXPERIMENT_FILE}: features[1]: 'humidity' is not a feature of routine "
        f"'seattle-tmax'; valid: {DEMO_FEATURES}",
        f"{EXPERIMENT_FILE}: features[2]: 'tmax_lag9' is not a feature of routine "
        f"'seattle-tmax'; valid: {DEMO_FEATURES}",
    ]


def test_estimator_class_that_does_not_exist_is_named_with_a_suggestion(workspace):
    spec = demo_experiment() | {"estimator": {"class": "sklearn.linear_model.Ridgee"}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.class: module 'sklearn.linear_model' has no 'Ridgee'; "
        "valid: a class in sklearn.linear_model; did you mean sklearn.linear_model.Ridge"
    )


def test_estimator_module_that_does_not_exist_is_named(workspace):
    spec = demo_experiment() | {"estimator": {"class": "sklearn.linear_modell.Ridge"}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.class: cannot import module 'sklearn.linear_modell'"
    )


@pytest.mark.parametrize(
    "path, name",
    [("sklearn.preprocessing.StandardScaler", "StandardScaler"), ("pathlib.Path", "Path")],
)
def test_class_that_is_not_an_estimator_is_refused(workspace, path, name):
    spec = demo_experiment() | {"estimator": {"class": path}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.class: {name} is not an estimator (it needs fit and "
        "predict); valid: a scikit-learn style estimator class"
    )


def test_unknown_estimator_parameter_lists_the_valid_ones(workspace):
    spec = demo_experiment() | {
        "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alfa": 1.0}}
    }
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.params.alfa: 'alfa' is not a parameter of "
        "sklearn.linear_model.Ridge; valid: alpha, copy_X, fit_intercept"
    )


def test_bad_estimator_parameter_value_is_caught_when_loading(workspace):
    spec = demo_experiment() | {
        "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alpha": -2}}
    }
    error = experiment_problems(spec)
    assert lines(error)[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.params.alpha: The 'alpha' parameter of Ridge must be"
    )
    assert error.problems[0].value == -2


def test_nested_pipeline_step_problems_name_their_path(workspace):
    spec = demo_experiment()
    steps = spec["estimator"]["params"]["steps"]
    steps[0][1]["class"] = "sklearn.preprocessing.StandardScalar"
    steps[1][1]["params"]["random_state"] = 3
    assert [line.split(" (line")[0] for line in lines(experiment_problems(spec))] == [
        f"{EXPERIMENT_FILE}: estimator.params.steps[0][1].class: module 'sklearn.preprocessing' "
        "has no 'StandardScalar'; valid: a class in sklearn.preprocessing; did you mean "
        "sklearn.preprocessing.StandardScaler?",
        f"{EXPERIMENT_FILE}: estimator.params.steps[1][1].params.random_state: the seed is set "
        "once, by the top-level 'seed' field; valid: remove random_state from params",
    ]


def test_estimator_needs_exactly_one_of_class_and_factory(workspace):
    spec = demo_experiment() | {
        "estimator": {"class": "sklearn.linear_model.Ridge", "factory": "models:ridge"}
    }
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator: give exactly one of 'class'"
    )


def test_factory_without_that_function_lists_the_functions_there(workspace):
    write("experiments/seattle-tmax/models.py", "def ridge_pipeline():\n    pass\n")
    spec = demo_experiment() | {"estimator": {"factory": "models:ridge"}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.factory: module 'models' has no function 'ridge'; "
        "valid: ridge_pipeline"
    )


def test_factory_returning_a_non_estimator_is_refused(workspace):
    write("experiments/seattle-tmax/models.py", "def ridge():\n    return 42\n")
    spec = demo_experiment() | {"estimator": {"factory": "models:ridge"}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: estimator.factory: models:ridge returned a int, which is not an "
        "estimator"
    )


def test_experiment_training_must_not_overlap_the_holdout(workspace):
    spec = demo_experiment() | {"training": {"start": "2012-01-01", "end": "2013-08-31"}}
    assert lines(experiment_problems(spec))[0].startswith(
        f"{EXPERIMENT_FILE}: training: 2012-01-01..2013-08-31 overlaps the routine's holdout "
        "2013-07-01..2013-12-31; valid: a training period outside holdout"
    )


def test_experiment_problems_are_collected_past_a_type_error(workspace):
    spec = demo_experiment() | {
        "seed": 1.5,
        "routine": "seattle-tmin",
        "estimator": {"class": "sklearn.linear_model.Ridgee"},
    }
    fields = [problem.field for problem in experiment_problems(spec).problems]
    assert fields == ["seed", "routine", "estimator.class"]


# --------------------------------------------------------------------------- data problems


def csv_routine(workspace: Path, frame: pd.DataFrame | None) -> specs.RoutineSpec:
    spec = demo_routine()
    spec["data"] = {"source": "cases.csv"}
    write(ROUTINE_FILE, spec)
    if frame is not None:
        frame.to_csv(workspace / "experiments/seattle-tmax/cases.csv", index=False)
    return specs.load_routine("experiments/seattle-tmax")


def test_missing_data_file_is_named(workspace):
    routine = csv_routine(workspace, None)
    with pytest.raises(SpecError) as caught:
        specs.load_routine_data(routine)
    assert lines(caught.value) == [
        f"{ROUTINE_FILE}: data.source: file experiments/seattle-tmax/cases.csv does not exist; "
        "valid: a data file in experiments/seattle-tmax"
    ]


def test_data_lacking_a_declared_column_names_it_and_the_columns_present(workspace, demo):
    _, data = demo
    routine = csv_routine(workspace, data.drop(columns=["tmax_mean7", "lead"]).head(30))
    with pytest.raises(SpecError) as caught:
        specs.load_routine_data(routine)
    present = (
        "valid_date, issue_date, tmax, tmax_obs, tmax_lag1, tmax_lag2, precip_obs, doy_sin, doy_cos"
    )
    assert lines(caught.value) == [
        f"{ROUTINE_FILE}: case_keys[1]: column 'lead' is not in the data from "
        f"experiments/seattle-tmax/cases.csv; columns present: {present}",
        f"{ROUTINE_FILE}: features[3]: column 'tmax_mean7' is not in the data from "
        f"experiments/seattle-tmax/cases.csv; columns present: {present}",
    ]


def test_csv_source_loads_with_its_time_column_as_datetimes(workspace, demo):
    _, data = demo
    routine = csv_routine(workspace, data.head(30))
    loaded = specs.load_routine_data(routine)
    assert pd.api.types.is_datetime64_any_dtype(loaded["valid_date"])
    assert (
        specs.case_keys(loaded, routine).tolist()
        == specs.case_keys(data.head(30), routine).tolist()
    )


def test_repeated_case_keys_are_refused(workspace, demo):
    _, data = demo
    routine = csv_routine(workspace, pd.concat([data.head(3), data.head(1)]))
    with pytest.raises(SpecError, match=r"case_keys: 1 row\(s\) .* repeat a case key, e\.g\. "):
        specs.load_routine_data(routine)


@pytest.mark.parametrize(
    "body, message",
    [
        ("def load():\n    raise OSError('disk on fire')\n", "source:load() failed: OSError: disk"),
        ("def load():\n    return [1, 2]\n", "source:load() returned a list; valid: a pandas"),
    ],
)
def test_failing_data_loader_is_reported(workspace, body, message):
    spec = demo_routine()
    spec["data"] = {"source": "source:load"}
    write(ROUTINE_FILE, spec)
    write("experiments/seattle-tmax/source.py", body)
    routine = specs.load_routine("experiments/seattle-tmax")
    with pytest.raises(SpecError, match=re.escape(f"data.source: {message}")):
        specs.load_routine_data(routine)


# --------------------------------------------------------------------------- the demo routine


def test_demo_routine_and_its_experiments_load(demo):
    routine, _ = demo
    assert routine.name == "seattle-tmax"
    assert routine.metrics == ["rmse", "mae", "bias"] and routine.primary_metric == "rmse"
    assert [segment.name for segment in routine.segments] == ["lead", "season"]
    operational = routine.gates.for_stage("operational")
    assert operational.sign_offs == 2
    assert [check.name for check in operational.checks] == [
        "min_cycles",
        "significant_improvement",
        "no_significant_degradation",
        "max_failure_rate",
    ]
    assert operational.checks[0].params == 30
    assert operational.checks[1].params.level == 0.95
    assert routine.gates.parallel.checks[0].offline_not_worse.metric == "rmse"
    names = [path.stem for path in specs.experiment_files(routine)]
    assert names == ["gbm", "persistence", "ridge"]
    for name in names:
        experiment = specs.load_experiment(DEMO / f"{name}.yaml", routine)
        assert experiment.name == name and experiment.routine == routine.name
        assert set(experiment.features) <= set(routine.features)
        assert experiment.training == routine.training
    assert specs.load_experiment(DEMO / "ridge.yaml").features == routine.features


def test_demo_data_has_every_case_after_the_warm_up(demo):
    routine, data = demo
    days = 1461  # 2012-01-01 .. 2015-12-31
    warm_up = 6  # the 7-day mean needs six earlier days
    assert len(data) == sum(days - warm_up - lead for lead in (1, 2, 3))
    assert data.groupby("lead")["valid_date"].min().to_dict() == {
        lead: pd.Timestamp("2012-01-07") + pd.Timedelta(days=lead) for lead in (1, 2, 3)
    }
    assert (data.groupby("lead")["valid_date"].max() == pd.Timestamp("2015-12-31")).all()
    assert not data[[*routine.features, routine.target]].isna().any().any()
    windows = specs.cycle_windows(routine)
    assert len(windows) == 730
    assert all(len(specs.split(data, routine, window)) == 3 for window in windows[:5])


def raw_observations() -> dict[date, tuple[float, float]]:
    from vega_datasets import local_data

    with open(local_data.seattle_weather.filepath, newline="") as handle:
        return {
            date.fromisoformat(row["date"].replace("/", "-")): (
                float(row["temp_max"]),
                float(row["precipitation"]),
            )
            for row in csv.DictReader(handle)
        }


def test_demo_features_use_only_observations_up_to_the_issue_date(demo):
    routine, data = demo
    raw = raw_observations()
    (case,) = data[(data["valid_date"] == "2014-03-10") & (data["lead"] == 2)].to_dict("records")
    issue = date(2014, 3, 8)
    assert case["issue_date"].date() == issue
    assert case["tmax"] == raw[date(2014, 3, 10)][0]
    assert case["tmax_obs"] == raw[issue][0]
    assert case["tmax_lag1"] == raw[issue - timedelta(days=1)][0]
    assert case["tmax_lag2"] == raw[issue - timedelta(days=2)][0]
    assert case["precip_obs"] == raw[issue][1]
    week = [raw[issue - timedelta(days=back)][0] for back in range(7)]
    assert case["tmax_mean7"] == pytest.approx(sum(week) / 7)

    # And for every case: the issue date is lead days before the valid date, and the
    # features equal the observations on (and before) it, never later ones.
    tmax = pd.Series({pd.Timestamp(day): values[0] for day, values in raw.items()})
    assert (data["issue_date"] == data["valid_date"] - pd.to_timedelta(data["lead"], "D")).all()
    assert np.allclose(data["tmax_obs"], tmax[data["issue_date"]].to_numpy())
    assert np.allclose(data["tmax_lag2"], tmax[data["issue_date"] - pd.Timedelta(days=2)])
    assert np.allclose(data["tmax_mean7"], tmax.rolling(7).mean()[data["issue_date"]].to_numpy())


def test_demo_data_loads_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    routine = specs.load_routine(DEMO)
    assert len(specs.load_routine_data(routine)) == 4359


def test_demo_periods_split_the_data_without_overlap(demo):
    routine, data = demo
    training, holdout = specs.training_frame(data, routine), specs.holdout_frame(data, routine)
    assert training["valid_date"].max() == pd.Timestamp("2013-06-30")
    assert holdout["valid_date"].min() == pd.Timestamp("2013-07-01")
    assert holdout["valid_date"].max() == pd.Timestamp("2013-12-31")
    assert len(training) + len(holdout) == (data["valid_date"] < "2014-01-01").sum()
    start, end = specs.cycle_window(routine, "2015-06-01T13:00")
    assert (start, end) == (pd.Timestamp("2015-06-01"), pd.Timestamp("2015-06-02"))
    assert specs.split(data, routine, (start, end))["lead"].tolist() == [1, 2, 3]


def test_all_three_demo_candidates_train_and_forecast_sensibly(demo):
    routine, data = demo
    holdout = specs.holdout_frame(data, routine)
    rmse = {}
    for name in ("persistence", "ridge", "gbm"):
        experiment = specs.load_experiment(DEMO / f"{name}.yaml", routine)
        model = specs.train(
            specs.build_estimator(experiment),
            specs.training_frame(data, routine, experiment),
            experiment.features,
            routine.target,
            experiment.seed,
        )
        error = model.predict(holdout[experiment.features]) - holdout[routine.target]
        rmse[name] = float(np.sqrt(np.mean(error**2)))
    assert all(1.0 < value < 5.0 for value in rmse.values()), rmse
    assert rmse["ridge"] < rmse["persistence"]


def test_retraining_with_the_same_seed_gives_identical_forecasts(demo):
    routine, data = demo
    experiment = specs.load_experiment(DEMO / "gbm.yaml", routine)
    training = specs.training_frame(data, routine).head(600)  # enough to tell seeds apart
    holdout = specs.holdout_frame(data, routine)[experiment.features]

    def forecasts(seed: int) -> np.ndarray:
        estimator = specs.build_estimator(experiment)
        model = specs.train(estimator, training, experiment.features, routine.target, seed)
        return model.predict(holdout)

    first = forecasts(experiment.seed)
    assert np.array_equal(first, forecasts(experiment.seed))
    assert not np.array_equal(first, forecasts(experiment.seed + 1))
    assert specs.build_estimator(experiment).random_state == experiment.seed


# --------------------------------------------------------------------------- digests and keys


def test_digests_are_stable_and_follow_changes(demo, workspace):
    routine, data = demo
    assert specs.data_digest(data) == specs.data_digest(specs.load_routine_data(routine))
    assert specs.data_digest(data) == specs.data_digest(data[data.columns[::-1]])
    changed = data.copy()
    changed.loc[100, "tmax"] += 0.1
    assert specs.data_digest(changed) != specs.data_digest(data)
    assert specs.data_digest(data).startswith("sha256:") and len(specs.data_digest(data)) == 71

    digest = specs.spec_digest(routine)
    assert digest == specs.spec_digest(specs.load_routine(DEMO))
    # Comments, key order and layout are not the spec; its values are.
    reordered = dict(reversed(list(demo_routine().items())))
    write(ROUTINE_FILE, "# a comment\n" + yaml.safe_dump(reordered, sort_keys=False))
    assert specs.spec_digest(specs.load_routine("experiments/seattle-tmax")) == digest
    gates_changed = demo_routine()
    gates_changed["gates"]["operational"]["sign_offs"] = 3
    write(ROUTINE_FILE, gates_changed)
    assert specs.spec_digest(specs.load_routine("experiments/seattle-tmax")) != digest

    ridge = demo_experiment("ridge")
    write("experiments/seattle-tmax/ridge.yaml", ridge)
    before = specs.spec_digest(specs.load_experiment("experiments/seattle-tmax/ridge.yaml"))
    ridge["estimator"]["params"]["steps"][1][1]["params"]["alpha"] = 2.0
    write("experiments/seattle-tmax/ridge.yaml", ridge)
    after = specs.spec_digest(specs.load_experiment("experiments/seattle-tmax/ridge.yaml"))
    assert before != after


def test_case_keys_are_canonical_and_agree_with_case_key(demo):
    routine, data = demo
    head = data.head(4)
    keys = specs.case_keys(head, routine)
    assert keys.tolist() == [
        "2012-01-08T00:00:00|1",
        "2012-01-09T00:00:00|1",
        "2012-01-09T00:00:00|2",
        "2012-01-10T00:00:00|1",
    ]
    assert keys.tolist() == [specs.case_key(row, routine) for _, row in head.iterrows()]
    # The same case however its values arrive (strings from JSON, floats, a zone-aware time).
    assert specs.case_key({"valid_date": "2012-01-08", "lead": 1.0}, routine) == keys.iloc[0]
    as_json = pd.DataFrame({"valid_date": ["2012-01-08T00:00:00"], "lead": [1]})
    assert specs.case_keys(as_json, routine).tolist() == [keys.iloc[0]]
    zoned = pd.DataFrame(
        {"valid_date": [pd.Timestamp("2012-01-08 01:00", tz="Europe/Berlin")], "lead": [1]}
    )
    assert specs.case_keys(zoned, routine).tolist() == [keys.iloc[0]]
    assert specs.case_keys(data, routine).is_unique


def test_segment_values_give_lead_and_meteorological_season(demo):
    routine, _ = demo
    frame = pd.DataFrame(
        {
            "valid_date": pd.to_datetime(["2014-12-01", "2014-02-28", "2014-03-01", "2014-08-31"]),
            "lead": [1, 2, 3, 1],
        },
        index=[10, 11, 12, 13],
    )
    values = specs.segment_values(frame, routine)
    assert list(values.columns) == ["lead", "season"]
    assert values.index.tolist() == [10, 11, 12, 13]
    assert values["season"].tolist() == ["DJF", "DJF", "MAM", "JJA"]
    assert values["lead"].tolist() == [1, 2, 3, 1]


def test_period_with_a_date_end_includes_that_whole_day():
    period = specs.Period(start="2013-01-01", end=date(2013, 6, 30))
    assert period.last == pd.Timestamp("2013-06-30 23:59:59.999999999")
    timed = specs.Period(start="2013-01-01", end="2013-06-30T12:00")
    assert timed.last == pd.Timestamp("2013-06-30 12:00")
    assert period.overlaps(specs.Period(start="2013-06-30T18:00", end="2013-07-02"))
    assert not timed.overlaps(specs.Period(start="2013-06-30T18:00", end="2013-07-02"))


# --------------------------------------------------------------------------- estimators


def test_persistence_predicts_its_column_on_frames_and_arrays():
    frame = pd.DataFrame({"lead": [1, 2], "tmax_obs": [10.5, 12.0]})
    model = Persistence(column="tmax_obs").fit(frame, [0.0, 0.0])
    assert model.feature_names_in_.tolist() == ["lead", "tmax_obs"]
    assert model.predict(frame).tolist() == [10.5, 12.0]
    assert model.predict(frame[["tmax_obs", "lead"]]).tolist() == [10.5, 12.0]
    assert model.predict(frame.to_numpy()).tolist() == [10.5, 12.0]
    assert Persistence(column=0).fit(np.array([[3.0, 1.0]])).predict([[4.0, 2.0]]).tolist() == [4.0]
    with pytest.raises(ValueError, match="no such input column; valid: lead, tmax_obs"):
        Persistence(column="tmin_obs").fit(frame)
    with pytest.raises(ValueError, match="fitted on 2 features; the input has 3"):
        model.predict(np.zeros((1, 3)))


def test_routine_local_factories_do_not_collide_between_routines(tmp_path):
    for name, alpha in (("alpha-one", 1.0), ("alpha-two", 2.0)):
        folder = tmp_path / name
        folder.mkdir()
        spec = demo_routine() | {"name": name}
        write(str(folder / "routine.yaml"), spec)
        write(
            str(folder / "models.py"),
            "from sklearn.linear_model import Ridge\n\n"
            f"def ridge():\n    return Ridge(alpha={alpha})\n",
        )
        write(
            str(folder / "candidate.yaml"),
            demo_experiment() | {"routine": name, "estimator": {"factory": "models:ridge"}},
        )
    alphas = [
        specs.build_estimator(specs.load_experiment(tmp_path / name / "candidate.yaml")).alpha
        for name in ("alpha-one", "alpha-two")
    ]
    assert alphas == [1.0, 2.0]


RELOAD = """
import pickle, sys, warnings
import numpy as np
warnings.simplefilter("ignore")  # fitted with column names, given a plain array here
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        model, X, expected = pickle.load(handle)
    assert np.allclose(model.predict(X), expected), path
print("ok")
"""


@pytest.mark.slow
def test_fitted_estimators_reload_in_a_fresh_process(demo, tmp_path):
    import cloudpickle  # MLflow's own dependency: always installed

    routine, data = demo
    folder = tmp_path / "seattle-tmax"
    folder.mkdir()
    write(str(folder / "routine.yaml"), demo_routine())
    # A factory whose class lives only in the routine folder must travel by value.
    write(
        str(folder / "models.py"),
        "from sklearn.base import BaseEstimator, RegressorMixin\n\n"
        "class Mean(RegressorMixin, BaseEstimator):\n"
        "    def fit(self, X, y):\n        self.mean_ = float(y.mean())\n        return self\n"
        "    def predict(self, X):\n        return [self.mean_] * len(X)\n\n"
        "def mean():\n    return Mean()\n",
    )
    write(
        str(folder / "mean.yaml"),
        demo_experiment() | {"name": "mean", "estimator": {"factory": "models:mean"}},
    )
    training = specs.training_frame(data, routine)
    holdout = specs.holdout_frame(data, routine)
    paths = []
    for file in (DEMO / "persistence.yaml", DEMO / "ridge.yaml", folder / "mean.yaml"):
        experiment = specs.load_experiment(file)
        model = specs.train(
            specs.build_estimator(experiment), training, experiment.features, routine.target
        )
        X = holdout[experiment.features].head(20)
        expected = np.asarray(model.predict(X))
        path = tmp_path / f"{file.stem}.pkl"
        # A plain array spares the fresh process importing pandas.
        path.write_bytes(cloudpickle.dumps((model, X.to_numpy(), expected)))
        paths.append(str(path))
    result = subprocess.run(
        [sys.executable, "-c", RELOAD, *paths], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_train_leaves_out_cases_not_yet_observed(demo):
    routine, data = demo
    frame = specs.training_frame(data, routine).copy()
    frame.loc[frame.index[:10], routine.target] = np.nan
    experiment = specs.load_experiment(DEMO / "ridge.yaml", routine)
    model = specs.train(specs.build_estimator(experiment), frame, experiment.features, "tmax", 0)
    assert model[-1].n_features_in_ == len(experiment.features)
    with pytest.raises(ValueError, match="lacks column"):
        specs.train(specs.build_estimator(experiment), frame, ["humidity"], "tmax")


def test_copying_demo_specs_keeps_them_valid(workspace):
    # The fixtures above build on the demo files; they must stay valid as written.
    spec = copy.deepcopy(demo_routine())
    write(ROUTINE_FILE, spec)
    assert specs.load_routine("experiments/seattle-tmax").name == "seattle-tmax"


def test_parsed_specs_round_trip_through_their_json_form(demo):
    # Services store a routine's definition as JSON and read it back later.
    routine, _ = demo
    dumped = routine.model_dump(mode="json", by_alias=True)
    assert dumped["gates"]["operational"]["checks"][0] == {"min_cycles": 30}
    for options in ({}, {"exclude_none": True}):
        again = specs.RoutineSpec.model_validate(
            routine.model_dump(mode="json", by_alias=True, **options)
        )
        assert again.model_dump() == routine.model_dump()
        assert specs.spec_digest(again) == specs.spec_digest(routine)
    experiment = specs.load_experiment(DEMO / "ridge.yaml", routine)
    again = specs.ExperimentSpec.model_validate(experiment.model_dump(mode="json", by_alias=True))
    assert specs.spec_digest(again) == specs.spec_digest(experiment)
    assert again.estimator.class_ == "sklearn.pipeline.Pipeline"


def test_spec_errors_serialise_for_an_api_body(workspace):
    spec = demo_routine()
    spec["metrics"] = ["rsme"]
    error = routine_problems(spec)
    body = error.to_dict()
    assert body["error"] == str(error)
    assert body["problems"][0] | {"line": None} == {
        "file": ROUTINE_FILE,
        "field": "metrics[0]",
        "value": "rsme",
        "message": f"'rsme' is not a metric; valid: {VALID_METRICS}",
        "line": None,
    }
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
