"""The CLI for routines, experiments, candidates and the demo."""

from __future__ import annotations

import json

import pytest

from numex import mlflow_bridge
from tests.experiment_fixtures import small_data, write_small_routine


@pytest.fixture
def tiny(tmp_path):
    return write_small_routine(tmp_path / "experiments")


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_routine_load_then_experiment_register_then_candidate_list_and_show(runner, tiny):
    loaded = _json(runner.invoke("routine", "load", str(tiny), "--json"))
    assert (loaded["status"], loaded["version"]) == ("created", 1)
    again = runner.invoke("routine", "load", str(tiny / "routine.yaml"))
    assert "routine tiny unchanged (version 1)" in again.stdout

    registered = runner.invoke("experiment", "register", str(tiny / "ridge.yaml"), "--json")
    data = _json(registered)
    assert data["name"] == "ridge"
    assert data["model_uri"] == "models:/numex.tiny/1"
    assert "training ridge" in registered.stderr  # progress goes to stderr

    listed = _json(runner.invoke("candidate", "list", "--routine", "tiny", "--json"))
    assert [(c["id"], c["name"], c["stage"]) for c in listed] == [(1, "ridge", "experiment")]
    assert set(listed[0]["offline"]) == {"rmse", "mae", "bias"}
    assert _json(runner.invoke("candidate", "list", "--stage", "operational", "--json")) == []

    shown = _json(runner.invoke("candidate", "show", "1", "--json"))
    assert shown["lineage"]["mlflow_run_id"] == data["mlflow_run_id"]
    assert shown["offline_scores"]["segments"]["lead"]["1"]["n_cases"] == 92

    text = runner.invoke("candidate", "show", "1")
    assert "#1 ridge  routine tiny  stage experiment" in text.stdout
    assert "code: not a git checkout" in text.stdout


def test_registering_twice_exits_non_zero_naming_the_candidate(runner, tiny):
    runner.invoke("routine", "load", str(tiny))
    runner.invoke("experiment", "register", str(tiny / "ridge.yaml"))
    again = runner.invoke("experiment", "register", str(tiny / "ridge.yaml"))
    assert again.exit_code == 1
    assert "already registered as candidate ridge (#1" in again.stderr


def test_a_bad_spec_exits_non_zero_with_the_field_and_file(runner, tiny):
    runner.invoke("routine", "load", str(tiny))
    bad = tiny / "bad.yaml"
    bad.write_text((tiny / "ridge.yaml").read_text().replace("seed: 0", "seed: -1"))
    result = runner.invoke("experiment", "register", str(bad))
    assert result.exit_code == 1
    assert "bad.yaml" in result.stderr and "seed" in result.stderr
    assert "Traceback" not in result.output


def test_bootstrap_and_its_refusal(runner, tiny):
    runner.invoke("routine", "load", str(tiny))
    runner.invoke("experiment", "register", str(tiny / "ridge.yaml"))
    moves = _json(runner.invoke("routine", "bootstrap", "tiny", "ridge", "--json"))
    assert [m["to"] for m in moves] == ["parallel", "operational"]
    again = runner.invoke("routine", "bootstrap", "tiny", "ridge")
    assert again.exit_code == 1
    assert "already has an operational candidate: ridge (#1)" in again.stderr
    listed = _json(runner.invoke("routine", "list", "--json"))
    assert listed[0]["operational"]["name"] == "ridge"


def test_candidate_register_refuses_a_model_with_wrong_columns(runner, tiny, settings):
    from sklearn.linear_model import Ridge

    runner.invoke("routine", "load", str(tiny))
    frame = small_data().assign(wind=1.0)
    model = Ridge().fit(frame[["x1", "wind"]], frame["y"])
    logged = mlflow_bridge.log_training_run(
        settings,
        experiment_name="elsewhere",
        run_name="own",
        model=model,
        params={},
        metrics={},
        tags={},
        datasets=[],
        signature_input=frame[["x1", "wind"]].head(3),
        signature_output=model.predict(frame[["x1", "wind"]].head(3)),
    )
    uri = f"runs:/{logged.run_id}/model"
    result = runner.invoke("candidate", "register", "--routine", "tiny", "--model-uri", uri)
    assert result.exit_code == 1
    assert "wind" in result.stderr and "does not provide" in result.stderr


def test_candidate_register_accepts_a_fitting_model(runner, tiny, settings):
    from sklearn.linear_model import Ridge

    runner.invoke("routine", "load", str(tiny))
    frame = small_data()
    model = Ridge().fit(frame[["x1", "x2", "lead"]], frame["y"])
    logged = mlflow_bridge.log_training_run(
        settings,
        experiment_name="elsewhere",
        run_name="own",
        model=model,
        params={},
        metrics={},
        tags={},
        datasets=[],
        signature_input=frame[["x1", "x2", "lead"]].head(3),
        signature_output=model.predict(frame[["x1", "x2", "lead"]].head(3)),
    )
    uri = f"runs:/{logged.run_id}/model"
    data = _json(
        runner.invoke(
            "candidate", "register", "--routine", "tiny", "--model-uri", uri, "--name", "own",
            "--json",
        )
    )  # fmt: skip
    assert (data["name"], data["model_uri"]) == ("own", "models:/numex.tiny/1")


def test_unknown_candidate_and_routine_are_clear_errors(runner):
    shown = runner.invoke("candidate", "show", "42")
    assert shown.exit_code == 1 and "no candidate #42" in shown.stderr
    listed = runner.invoke("candidate", "list", "--routine", "nope")
    assert listed.exit_code == 1 and "no routine 'nope'" in listed.stderr


@pytest.mark.slow
def test_demo_load_registers_three_candidates_and_is_idempotent(runner):
    first = _json(runner.invoke("demo", "load", "--json"))
    assert first["changed"] is True
    candidates = _json(runner.invoke("candidate", "list", "--routine", "seattle-tmax", "--json"))
    # ridge and gbm run in the parallel routine through the 2014-2015 cycles (demo action).
    assert sorted((c["name"], c["stage"]) for c in candidates) == [
        ("gbm", "parallel"),
        ("persistence", "operational"),
        ("ridge", "parallel"),
    ]
    cycles = _json(runner.invoke("cycle", "list", "seattle-tmax", "--per-page", "1", "--json"))
    assert cycles["total"] == 730 and cycles["cycles"][0]["status"] == "verified"
    again = runner.invoke("demo", "load")
    assert again.exit_code == 0
    assert "nothing changed" in again.stdout
    assert len(_json(runner.invoke("candidate", "list", "--json"))) == 3
    assert _json(runner.invoke("audit", "verify", "--json"))["ok"] is True
