"""Routines, experiment registration, lineage, bring-your-own models and bootstrap,
against a real local MLflow store."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sqlalchemy import select

from numex import mlflow_bridge, specs
from numex.db import AuditEvent, Candidate, Routine, StageTransition
from numex.services import audit, experiments
from numex.services.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from numex.services.runtime import Actor
from tests.experiment_fixtures import small_data, write_small_routine

SYSTEM = Actor.system("test")


@pytest.fixture
def tiny(tmp_path):
    return write_small_routine(tmp_path / "experiments")


@pytest.fixture
def loaded(rt, tiny):
    experiments.load_routine(rt, tiny, SYSTEM)
    return tiny


@pytest.fixture
def ridge(rt, loaded):
    return experiments.register_experiment(rt, loaded / "ridge.yaml", SYSTEM)


def _events(rt, action):
    with rt.read() as session:
        return session.scalars(select(AuditEvent).where(AuditEvent.action == action)).all()


# --- routines ------------------------------------------------------------------------


def test_loading_a_routine_creates_it_and_again_says_unchanged(rt, tiny):
    first = experiments.load_routine(rt, tiny / "routine.yaml", SYSTEM)
    assert (first.status, first.version) == ("created", 1)
    again = experiments.load_routine(rt, tiny, SYSTEM)
    assert (again.status, again.version) == ("unchanged", 1)
    assert "unchanged" in again.message
    with rt.read() as session:
        routine = session.scalar(select(Routine).where(Routine.name == "tiny"))
        assert routine.registered_model_name == "numex.tiny"
        assert len(routine.versions) == 1
        assert routine.current.digest == specs.spec_digest(specs.load_routine(tiny))
    assert len(_events(rt, "routine.created")) == 1


def test_a_changed_routine_definition_is_recorded_as_version_2(rt, loaded):
    path = loaded / "routine.yaml"
    path.write_text(path.read_text().replace("metrics: [rmse, mae, bias]", "metrics: [mae, rmse]"))
    result = experiments.load_routine(rt, loaded, SYSTEM)
    assert (result.status, result.version, result.changed_fields) == ("updated", 2, ["metrics"])
    with rt.read() as session:
        routine = session.scalar(select(Routine).where(Routine.name == "tiny"))
        assert [v.version for v in routine.versions] == [1, 2]
        assert routine.versions[0].definition["metrics"] == ["rmse", "mae", "bias"]
        assert routine.current.definition["metrics"] == ["mae", "rmse"]
    (event,) = _events(rt, "routine.version_added")
    assert event.payload["changed"] == ["metrics"]


def test_a_routine_whose_data_is_missing_is_refused_naming_the_file(rt, tiny):
    (tiny / "data.csv").unlink()
    with pytest.raises(specs.SpecError, match=r"data\.source.*data\.csv does not exist"):
        experiments.load_routine(rt, tiny, SYSTEM)


def test_a_routine_whose_data_lacks_a_declared_column_is_refused(rt, tiny):
    small_data().drop(columns="x2").to_csv(tiny / "data.csv", index=False)
    with pytest.raises(specs.SpecError, match=r"column 'x2' is not in the data"):
        experiments.load_routine(rt, tiny, SYSTEM)


def test_a_stored_definition_reads_back_as_the_same_spec(rt, loaded):
    with rt.read() as session:
        routine = session.scalar(select(Routine).where(Routine.name == "tiny"))
        spec = experiments.routine_spec(routine)
    assert specs.spec_digest(spec) == specs.spec_digest(specs.load_routine(loaded))
    assert spec.folder == loaded.resolve()


# --- registering experiments ---------------------------------------------------------


def test_registration_records_lineage_in_numex_and_mlflow(rt, loaded, ridge):
    with rt.read() as session:
        candidate = session.get(Candidate, ridge.candidate_id)
        assert candidate.name == "ridge"
        assert candidate.stage == "experiment"
        assert candidate.source == "experiment"
        assert candidate.author == "sam"
        assert candidate.features == ["x1", "x2", "lead"]
        assert candidate.params["alpha"] == 1.0
        assert candidate.params["seed"] == 0
        assert candidate.spec["estimator"]["class"] == "sklearn.linear_model.Ridge"
        spec = specs.load_experiment(loaded / "ridge.yaml")
        assert candidate.spec_digest == specs.spec_digest(spec)
        assert candidate.data_digest.startswith("sha256:")
        # The tiny routine is not in a git checkout: no code version to record.
        assert (candidate.code_commit, candidate.code_dirty) == (None, None)
        assert candidate.model_uri == "models:/numex.tiny/1"
        assert (candidate.registered_model_name, candidate.model_version) == ("numex.tiny", "1")
        scores = candidate.offline_scores
        run_id, data_digest, lineage = (
            candidate.mlflow_run_id,
            candidate.data_digest,
            candidate.lineage_digest,
        )
    assert scores["period"] == "2020-10-01..2020-12-31"
    assert scores["n_cases"] == 184
    assert set(scores["overall"]) == {"rmse", "mae", "bias"}
    assert set(scores["segments"]["lead"]) == {"1", "2"}
    assert scores["segments"]["lead"]["1"]["n_cases"] == 92
    assert set(scores["segments"]["season"]) == {"SON", "DJF"}

    run = mlflow_bridge.run_info(rt.settings, run_id)
    assert run["status"] == "FINISHED"
    assert run["params"]["alpha"] == "1.0"
    assert run["params"]["numex.features"] == "x1,x2,lead"
    assert run["metrics"]["holdout_rmse"] == pytest.approx(scores["overall"]["rmse"])
    assert run["metrics"]["holdout_mae/lead/2"] == pytest.approx(
        scores["segments"]["lead"]["2"]["mae"]
    )
    assert run["tags"][mlflow_bridge.TAG_ROUTINE] == "tiny"
    assert run["tags"][mlflow_bridge.TAG_CANDIDATE] == "ridge"
    assert run["tags"][mlflow_bridge.TAG_DATA_DIGEST] == data_digest
    assert run["tags"][mlflow_bridge.TAG_LINEAGE_DIGEST] == lineage
    assert run["tags"][mlflow_bridge.TAG_CODE_COMMIT] == ""
    (dataset,) = run["inputs"]
    assert (dataset["name"], dataset["context"]) == ("tiny-training", "training")
    assert run["tags"]["numex.training_digest"].removeprefix("sha256:")[:32] == dataset["digest"]
    assert run["tags"]["numex.holdout_digest"].startswith("sha256:")
    version = mlflow_bridge.model_version_info(rt.settings, "numex.tiny", "1")
    assert version["run_id"] == run_id
    assert version["tags"][mlflow_bridge.TAG_CANDIDATE] == "ridge"
    assert version["tags"][mlflow_bridge.TAG_STAGE] == "experiment"

    (event,) = _events(rt, "candidate.registered")
    assert event.entity_id == str(ridge.candidate_id)
    assert event.payload["lineage_digest"] == lineage
    assert event.payload["mlflow_run_id"] == run_id
    assert audit.verify(rt).ok


def test_offline_scores_match_scikit_learn_on_the_holdout(rt, loaded, ridge):
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    routine = specs.load_routine(loaded)
    frame = specs.load_routine_data(routine)
    training = specs.training_frame(frame, routine)
    holdout = specs.holdout_frame(frame, routine)
    model = Ridge(alpha=1.0).fit(training[["x1", "x2", "lead"]], training["y"])
    forecast = model.predict(holdout[["x1", "x2", "lead"]])
    overall = ridge.offline_scores["overall"]
    assert overall["rmse"] == pytest.approx(root_mean_squared_error(holdout["y"], forecast))
    assert overall["mae"] == pytest.approx(mean_absolute_error(holdout["y"], forecast))
    assert overall["bias"] == pytest.approx(float(np.mean(forecast - holdout["y"])))


def test_the_same_spec_data_and_code_again_is_refused_naming_the_candidate(rt, loaded, ridge):
    with pytest.raises(Conflict, match=r"already registered as candidate ridge \(#1"):
        experiments.register_experiment(rt, loaded / "ridge.yaml", SYSTEM)
    with rt.read() as session:
        assert len(session.scalars(select(Candidate)).all()) == 1


def test_a_changed_spec_is_a_new_candidate_under_a_free_name(rt, loaded, ridge):
    path = loaded / "ridge.yaml"
    path.write_text(path.read_text().replace("alpha: 1.0", "alpha: 5.0"))
    again = experiments.register_experiment(rt, path, SYSTEM)
    assert again.name == "ridge-2"
    assert again.model_uri == "models:/numex.tiny/2"
    assert again.lineage_digest != ridge.lineage_digest
    assert "already exists" in again.notes[0]


def test_retraining_with_the_same_seed_gives_identical_predictions(rt, loaded):
    routine = specs.load_routine(loaded)
    experiment = specs.load_experiment(loaded / "forest.yaml", routine)
    frame = specs.load_routine_data(routine)
    training = specs.training_frame(frame, routine, experiment)
    holdout = specs.holdout_frame(frame, routine)[experiment.features]
    first = experiments.train_experiment(experiment, routine, training).predict(holdout)
    second = experiments.train_experiment(experiment, routine, training).predict(holdout)
    np.testing.assert_array_equal(first, second)
    reseeded = experiment.model_copy(update={"seed": experiment.seed + 1})
    other = experiments.train_experiment(reseeded, routine, training).predict(holdout)
    assert not np.array_equal(first, other)

    # The model MLflow keeps forecasts exactly what retraining forecasts.
    registered = experiments.register_experiment(rt, loaded / "forest.yaml", SYSTEM)
    logged = mlflow_bridge.load_model(rt.settings, registered.model_uri)
    np.testing.assert_array_equal(logged.predict(holdout), first)


def test_registering_against_an_unloaded_routine_says_how_to_load_it(rt, tiny):
    with pytest.raises(NotFound, match="no routine 'tiny'"):
        experiments.register_experiment(rt, tiny / "ridge.yaml", SYSTEM)


def test_registering_after_routine_yaml_changed_asks_to_record_it_first(rt, loaded):
    path = loaded / "routine.yaml"
    path.write_text(path.read_text().replace("A tiny synthetic", "A small synthetic"))
    with pytest.raises(Conflict, match="numex routine load"):
        experiments.register_experiment(rt, loaded / "ridge.yaml", SYSTEM)


def test_an_invalid_experiment_spec_is_refused_before_any_training(rt, loaded):
    path = loaded / "bad.yaml"
    path.write_text((loaded / "ridge.yaml").read_text().replace("Ridge", "NoSuchModel"))
    with pytest.raises(specs.SpecError, match="estimator"):
        experiments.register_experiment(rt, path, SYSTEM)
    assert mlflow_bridge.client(rt.settings).get_experiment_by_name("numex/tiny") is None


def test_a_viewer_may_not_register(rt, loaded):
    viewer = Actor(name="vic", user_id=None, roles=frozenset({"viewer"}))
    with pytest.raises(PermissionDenied, match="vic may not register an experiment"):
        experiments.register_experiment(rt, loaded / "ridge.yaml", viewer)


def test_when_numex_cannot_record_the_candidate_the_mlflow_run_is_marked_orphaned(
    rt, loaded, monkeypatch
):
    def fail(*_args, **_kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(experiments, "_record_candidate", fail)
    with pytest.raises(RuntimeError, match="database went away"):
        experiments.register_experiment(rt, loaded / "ridge.yaml", SYSTEM)
    client = mlflow_bridge.client(rt.settings)
    (run,) = client.search_runs([client.get_experiment_by_name("numex/tiny").experiment_id])
    assert run.info.status == "FAILED"
    assert "database went away" in run.data.tags[mlflow_bridge.TAG_ORPHAN]
    version = mlflow_bridge.model_version_info(rt.settings, "numex.tiny", "1")
    assert mlflow_bridge.TAG_ORPHAN in version["tags"]


def test_a_concurrent_twin_registration_is_refused_and_its_run_marked_orphaned(
    rt, loaded, ridge, monkeypatch
):
    # As if both started before either had recorded its candidate: the check before
    # training finds nothing; the database's unique lineage refuses the second insert.
    real, calls = experiments._existing, []

    def first_finds_nothing(*args):
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(experiments, "_existing", first_finds_nothing)
    with pytest.raises(Conflict, match=r"already registered as candidate ridge \(#1"):
        experiments.register_experiment(rt, loaded / "ridge.yaml", SYSTEM, name="ridge-twin")
    client = mlflow_bridge.client(rt.settings)
    runs = client.search_runs([client.get_experiment_by_name("numex/tiny").experiment_id])
    statuses = sorted((r.data.tags[mlflow_bridge.TAG_CANDIDATE], r.info.status) for r in runs)
    assert statuses == [("ridge", "FINISHED"), ("ridge-twin", "FAILED")]
    with rt.read() as session:
        assert [c.name for c in session.scalars(select(Candidate))] == ["ridge"]


# --- code version --------------------------------------------------------------------


def _git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


def test_code_version_is_the_commit_and_whether_the_tree_is_dirty(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    assert experiments.code_version(folder) == experiments.CodeVersion(None, None)
    _git(folder, "init", "-q")
    (folder / "model.py").write_text("x = 1\n")
    _git(folder, "add", "model.py")
    _git(folder, "commit", "-q", "-m", "first")
    clean = experiments.code_version(folder)
    assert len(clean.commit) == 40 and clean.dirty is False
    (folder / "model.py").write_text("x = 2\n")
    assert experiments.code_version(folder) == experiments.CodeVersion(clean.commit, True)


def test_lineage_changes_with_any_of_its_parts():
    code = experiments.CodeVersion("a" * 40, False)
    base = dict(routine_digest="r", spec_digest="s", data_digest="d", code=code)
    digest = experiments.lineage_digest(**base)
    assert digest == experiments.lineage_digest(**base)
    for change in (
        {"routine_digest": "r2"},
        {"spec_digest": "s2"},
        {"data_digest": "d2"},
        {"code": experiments.CodeVersion("a" * 40, True)},
        {"code": experiments.CodeVersion("b" * 40, False)},
    ):
        assert experiments.lineage_digest(**{**base, **change}) != digest


# --- bring your own model ------------------------------------------------------------


def _own_model(settings, columns):
    """Log a model trained outside numex on ``columns`` of the tiny data; its URI."""
    frame = small_data().assign(wind=1.0)
    model = Ridge().fit(frame[columns], frame["y"])
    logged = mlflow_bridge.log_training_run(
        settings,
        experiment_name="somebody-elses",
        run_name="own",
        model=model,
        params={},
        metrics={},
        tags={},
        datasets=[],
        signature_input=frame[columns].head(5),
        signature_output=model.predict(frame[columns].head(5)),
    )
    return logged


def test_a_model_from_mlflow_becomes_a_candidate_with_its_signature_features(rt, loaded):
    logged = _own_model(rt.settings, ["x1", "x2"])
    own = mlflow_bridge.register_model_version(
        rt.settings, name="team.model", source_uri=logged.model_uri
    )
    result = experiments.register_model_uri(rt, "tiny", own.uri, SYSTEM, name="team-ridge")
    assert result.name == "team-ridge"
    assert result.model_uri == "models:/numex.tiny/1"
    assert result.notes == ["the model leaves out routine feature(s) lead"]
    assert set(result.offline_scores["overall"]) == {"rmse", "mae", "bias"}
    with rt.read() as session:
        candidate = session.get(Candidate, result.candidate_id)
        assert candidate.source == "model_uri"
        assert candidate.features == ["x1", "x2"]
        assert candidate.mlflow_run_id == logged.run_id
        assert candidate.params == {"model_uri": own.uri}
    version = mlflow_bridge.model_version_info(rt.settings, "numex.tiny", "1")
    assert version["run_id"] == logged.run_id
    assert version["tags"]["numex.registered_from"] == own.uri

    with pytest.raises(Conflict, match="already registered as candidate team-ridge"):
        experiments.register_model_uri(rt, "tiny", f"runs:/{logged.run_id}/model", SYSTEM)


def test_a_model_whose_signature_does_not_fit_is_refused_naming_the_columns(rt, loaded):
    logged = _own_model(rt.settings, ["x1", "wind"])
    with pytest.raises(InvalidInput) as refused:
        experiments.register_model_uri(rt, "tiny", f"runs:/{logged.run_id}/model", SYSTEM)
    message = str(refused.value)
    assert "expects column(s) wind that the routine does not provide" in message
    assert "leaves out x2, lead" in message
    assert refused.value.details["missing"] == ["wind"]
    with rt.read() as session:
        assert session.scalars(select(Candidate)).all() == []


def test_a_model_uri_mlflow_does_not_know_is_refused_naming_it(rt, loaded):
    with pytest.raises(InvalidInput, match="models:/nobody/4"):
        experiments.register_model_uri(rt, "tiny", "models:/nobody/4", SYSTEM)
    with pytest.raises(InvalidInput, match="not an MLflow model URI"):
        experiments.register_model_uri(rt, "tiny", "s3://bucket/model", SYSTEM)


# --- bootstrap -----------------------------------------------------------------------


def test_bootstrap_makes_the_first_operational_candidate_through_recorded_moves(rt, loaded, ridge):
    moves = experiments.bootstrap(rt, "tiny", "ridge", SYSTEM, reason="first model")
    assert [(m["from"], m["to"], m["kind"]) for m in moves] == [
        ("experiment", "parallel", "bootstrap"),
        ("parallel", "operational", "bootstrap"),
    ]
    with rt.read() as session:
        assert session.get(Candidate, ridge.candidate_id).stage == "operational"
        transitions = session.scalars(select(StageTransition)).all()
        assert [t.reason for t in transitions] == ["first model", "first model"]
    (event,) = _events(rt, "routine.bootstrapped")
    assert event.payload["candidate"] == "ridge"
    assert len(_events(rt, "candidate.stage_changed")) == 2


def test_bootstrap_is_refused_once_a_routine_has_an_operational_candidate(rt, loaded, ridge):
    forest = experiments.register_experiment(rt, loaded / "forest.yaml", SYSTEM)
    experiments.bootstrap(rt, "tiny", str(ridge.candidate_id), SYSTEM)
    with pytest.raises(Conflict, match=r"already has an operational candidate: ridge \(#1\)"):
        experiments.bootstrap(rt, "tiny", "forest", SYSTEM)
    with rt.read() as session:
        assert session.get(Candidate, forest.candidate_id).stage == "experiment"


def test_bootstrap_of_an_unknown_candidate_lists_the_known_ones(rt, loaded, ridge):
    with pytest.raises(NotFound, match="no candidate 'nope'; its candidates: ridge"):
        experiments.bootstrap(rt, "tiny", "nope", SYSTEM)


def test_only_ops_or_admin_bootstrap(rt, loaded, ridge):
    scientist = Actor(name="sam", user_id=None, roles=frozenset({"scientist"}))
    with pytest.raises(PermissionDenied, match="needs role ops or admin"):
        experiments.bootstrap(rt, "tiny", "ridge", scientist)


# --- reading -------------------------------------------------------------------------


def test_candidates_are_listed_by_routine_and_stage(rt, loaded, ridge):
    forest = experiments.register_experiment(rt, loaded / "forest.yaml", SYSTEM)
    experiments.bootstrap(rt, "tiny", "ridge", SYSTEM)
    assert [c["name"] for c in experiments.list_candidates(rt)] == ["forest", "ridge"]
    assert [c["name"] for c in experiments.list_candidates(rt, "tiny", "operational")] == ["ridge"]
    assert experiments.list_candidates(rt, stage="retired") == []
    with pytest.raises(InvalidInput, match="unknown stage 'live'"):
        experiments.list_candidates(rt, stage="live")
    shown = experiments.get_candidate(rt, forest.candidate_id)
    assert shown["lineage"]["mlflow_run_id"] == forest.mlflow_run_id
    assert shown["routine_version"] == 1
    json.dumps(shown, allow_nan=False)
    with pytest.raises(NotFound, match="no candidate #99"):
        experiments.get_candidate(rt, 99)
