"""The MLflow bridge against a real local MLflow store (a copy of the session template)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from numex import mlflow_bridge
from numex.models import Persistence


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50), "lead": 1})
    return x.assign(y=2 * x["a"] - x["b"])


def _log(settings, frame, model=None, **overrides):
    features = frame[["a", "b", "lead"]]
    model = model or Ridge().fit(features, frame["y"])
    kwargs = dict(
        experiment_name="numex/bridge-test",
        run_name="ridge",
        model=model,
        params={"alpha": 1.0, "estimator": "sklearn.linear_model.Ridge"},
        metrics={"holdout_rmse": 0.5, "holdout_rmse/lead/1": 0.4, "holdout_bias": None},
        tags={mlflow_bridge.TAG_ROUTINE: "bridge-test", mlflow_bridge.TAG_CANDIDATE: "ridge"},
        datasets=[
            mlflow_bridge.DatasetLog(
                frame, name="bridge-training", digest="sha256:" + "ab" * 32, context="training"
            )
        ],
        signature_input=features.head(5),
        signature_output=model.predict(features.head(5)),
    )
    kwargs.update(overrides)
    return mlflow_bridge.log_training_run(settings, **kwargs), model


def test_training_run_records_params_metrics_tags_and_dataset(settings, frame):
    logged, _ = _log(settings, frame)
    run = mlflow_bridge.run_info(settings, logged.run_id)
    assert run["status"] == "FINISHED"
    assert run["params"]["alpha"] == "1.0"
    assert run["metrics"] == {"holdout_rmse": 0.5, "holdout_rmse/lead/1": 0.4}
    assert run["tags"][mlflow_bridge.TAG_ROUTINE] == "bridge-test"
    assert run["inputs"] == [
        {"name": "bridge-training", "digest": "ab" * 16, "context": "training"}
    ]
    assert logged.model_uri.startswith("models:/m-")


def test_experiments_keep_artifacts_under_the_numex_artifact_root(settings, frame):
    logged, _ = _log(settings, frame)
    root = Path(settings.mlflow_artifact_root.removeprefix("file://"))
    files = {p.name for p in root.rglob("*") if p.is_file()}
    assert {"MLmodel", "model.pkl", "requirements.txt"} <= files
    experiment = mlflow_bridge.client(settings).get_experiment(logged.experiment_id)
    assert experiment.artifact_location.startswith(settings.mlflow_artifact_root)


def test_model_is_logged_with_explicit_pinned_requirements(settings, frame):
    import sklearn

    model = make_pipeline(StandardScaler(), Persistence(column=0))
    model.fit(frame[["a", "b", "lead"]], frame["y"])
    requirements = mlflow_bridge.pip_requirements_for(model)
    assert f"scikit-learn=={sklearn.__version__}" in requirements
    assert any(r.startswith("mlflow==") for r in requirements)
    assert all("==" in r for r in requirements)
    _log(settings, frame, model=model)
    root = Path(settings.mlflow_artifact_root.removeprefix("file://"))
    written = next(root.rglob("requirements.txt")).read_text().split()
    assert f"scikit-learn=={sklearn.__version__}" in written


def test_registered_version_loads_once_and_predicts_like_the_model(settings, frame):
    logged, model = _log(settings, frame)
    version = mlflow_bridge.register_model_version(
        settings,
        name="numex.bridge-test",
        source_uri=logged.model_uri,
        tags={mlflow_bridge.TAG_STAGE: "experiment"},
    )
    assert version.uri == "models:/numex.bridge-test/1"
    info = mlflow_bridge.model_version_info(settings, version.name, version.version)
    assert info["run_id"] == logged.run_id
    assert info["tags"][mlflow_bridge.TAG_STAGE] == "experiment"

    loaded = mlflow_bridge.load_model(settings, version.uri)
    assert mlflow_bridge.load_model(settings, version.uri) is loaded
    features = frame[["a", "b", "lead"]]
    np.testing.assert_allclose(loaded.predict(features), model.predict(features))
    assert mlflow_bridge.signature_columns(loaded) == ["a", "b", "lead"]
    assert mlflow_bridge.model_signature_columns(settings, version.uri) == ["a", "b", "lead"]


def test_model_uris_resolve_to_their_run_and_version(settings, frame):
    logged, _ = _log(settings, frame)
    version = mlflow_bridge.register_model_version(
        settings, name="numex.bridge-test", source_uri=logged.model_uri
    )
    by_version = mlflow_bridge.resolve_model_uri(settings, version.uri)
    assert (by_version.run_id, by_version.version) == (logged.run_id, "1")
    by_run = mlflow_bridge.resolve_model_uri(settings, f"runs:/{logged.run_id}/model")
    assert by_run.run_id == logged.run_id
    mlflow_bridge.set_alias(settings, version.name, "operational", version.version)
    by_alias = mlflow_bridge.resolve_model_uri(settings, "models:/numex.bridge-test@operational")
    assert by_alias.version == "1"
    assert mlflow_bridge.get_alias(settings, version.name, "operational") == "1"
    mlflow_bridge.delete_alias(settings, version.name, "operational")
    assert mlflow_bridge.get_alias(settings, version.name, "operational") is None


def test_unknown_model_uri_is_named_in_the_error(settings):
    with pytest.raises(mlflow_bridge.MlflowBridgeError, match="models:/nothing/3"):
        mlflow_bridge.resolve_model_uri(settings, "models:/nothing/3")
    with pytest.raises(mlflow_bridge.MlflowBridgeError, match="runs:/0123abc/model"):
        mlflow_bridge.resolve_model_uri(settings, "runs:/0123abc/model")


def test_orphaned_run_is_marked_failed_with_the_reason(settings, frame):
    logged, _ = _log(settings, frame)
    version = mlflow_bridge.register_model_version(
        settings, name="numex.bridge-test", source_uri=logged.model_uri
    )
    mlflow_bridge.mark_orphaned(
        settings, run_id=logged.run_id, model_version=version, reason="database down"
    )
    run = mlflow_bridge.run_info(settings, logged.run_id)
    assert run["status"] == "FAILED"
    assert run["tags"][mlflow_bridge.TAG_ORPHAN] == "database down"
    info = mlflow_bridge.model_version_info(settings, version.name, version.version)
    assert info["tags"][mlflow_bridge.TAG_ORPHAN] == "database down"


def test_run_links_need_the_mlflow_ui_url(settings):
    assert mlflow_bridge.run_url(settings, "1", "abc") is None
    settings.mlflow_ui_url = "http://mlflow.example:5000/"
    assert mlflow_bridge.run_url(settings, "1", "abc") == (
        "http://mlflow.example:5000/#/experiments/1/runs/abc"
    )
    assert mlflow_bridge.model_version_url(settings, "numex.x", "2") == (
        "http://mlflow.example:5000/#/models/numex.x/versions/2"
    )


def test_a_tracking_server_keeps_its_own_artifact_store(settings):
    settings.mlflow_tracking_uri = "http://127.0.0.1:5999"
    settings.mlflow_artifact_root = (settings.home / "mlartifacts").as_uri()
    assert mlflow_bridge._artifact_location(settings, "numex/x") is None
    settings.mlflow_artifact_root = "s3://bucket/numex"
    assert mlflow_bridge._artifact_location(settings, "numex/x") == "s3://bucket/numex/numex%2Fx"
