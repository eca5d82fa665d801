"""Registering an experiment through numex against doing the same with MLflow alone.

    .venv/bin/python bench/bench_register.py [--repeat 5] [--write]

Both sides do the same work on the demo routine (seattle-tmax, the ridge
experiment): load the routine's data, train the same pipeline on the training
period, forecast the holdout, score it, then ``mlflow.sklearn.log_model`` (same
signature, same explicit pip requirements, cloudpickle) and ``register_model``
in a run with the parameters, metrics and the dataset as an input.

numex additionally validates the specs, digests the data, looks up the lineage,
scores every segment, tags the run and the version, and records the candidate
and its audit event in its database. The two are timed alternately in one
process on fresh local stores (SQLite database, SQLite MLflow store), after one
untimed warm-up of each. ``--write`` replaces the "Experiment registration"
section of docs/benchmarks.md with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROUTINE = "seattle-tmax"
EXPERIMENT = "ridge"


def _stores(home: Path) -> None:
    """numex's database migrated, MLflow's store created (both untimed)."""
    os.environ["NUMEX_HOME"] = str(home)
    os.environ["NUMEX_DATABASE_URL"] = f"sqlite:///{home / 'numex.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ["NUMEX_MLFLOW_ARTIFACT_ROOT"] = (home / "mlartifacts").as_uri()
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from numex import schema
    from numex.config import load_settings

    schema.upgrade(load_settings().database_url)
    SqlAlchemyStore(os.environ["MLFLOW_TRACKING_URI"], os.environ["NUMEX_MLFLOW_ARTIFACT_ROOT"])


def _spec_copy(folder: Path, seed: int) -> Path:
    """The ridge spec under a new seed: new lineage, so numex registers it again."""
    text = (folder / f"{EXPERIMENT}.yaml").read_text()
    path = folder / f"{EXPERIMENT}-{seed}.yaml"
    path.write_text(
        re.sub(r"^name: .*$", f"name: {EXPERIMENT}-{seed}", text, flags=re.M).replace(
            "seed: 0", f"seed: {seed}"
        )
    )
    return path


def register_with_numex(rt, actor, spec_path: Path) -> str:
    from numex.services import experiments

    return experiments.register_experiment(rt, spec_path, actor).model_uri


def register_with_mlflow_alone(settings, folder: Path, run_name: str) -> str:
    """What a scientist would write with MLflow and scikit-learn only."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from numex import mlflow_bridge, specs
    from numex.scoring import metrics

    routine = specs.load_routine(folder)
    frame = specs.load_routine_data(routine)
    training = specs.training_frame(frame, routine)
    holdout = specs.holdout_frame(frame, routine)
    features, target = list(routine.features), routine.target
    training = training.dropna(subset=[*features, target])
    holdout = holdout.dropna(subset=[*features, target])

    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=1.0, random_state=0))])
    model.fit(training[features], training[target])
    forecast = model.predict(holdout[features])
    scores = {m: metrics.score(m, forecast, holdout[target]) for m in routine.metrics}

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.set_experiment("mlflow-alone")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name):
        mlflow.log_params({"alpha": 1.0, "seed": 0})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in scores.items()})
        mlflow.log_input(mlflow.data.from_pandas(training, name="training"), context="training")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            pip_requirements=mlflow_bridge.pip_requirements_for(model),
            signature=infer_signature(holdout[features].head(5), forecast[:5]),
            input_example=None,
            serialization_format="cloudpickle",
        )
    version = mlflow.register_model(info.model_uri, "mlflow-alone.seattle-tmax")
    return f"models:/{version.name}/{version.version}"


def run(repeat: int) -> dict:
    import logging

    from mlflow.utils.logging_utils import disable_logging

    from numex.config import load_settings
    from numex.services import experiments
    from numex.services.runtime import Actor, Runtime

    disable_logging()  # MLflow's own notices on both sides
    warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="numex-bench-"))
    try:
        folder = work / "experiments" / ROUTINE
        shutil.copytree(REPO / "experiments" / ROUTINE, folder)
        _stores(work / "var")
        settings = load_settings()
        rt = Runtime(settings)
        actor = Actor.system("bench")
        experiments.load_routine(rt, folder, actor)

        # Warm-up (imports, first MLflow experiment and registered model): untimed.
        register_with_numex(rt, actor, _spec_copy(folder, 1000))
        register_with_mlflow_alone(settings, folder, "warm-up")

        numex_times, mlflow_times = [], []
        for i in range(repeat):
            spec = _spec_copy(folder, i + 1)
            start = time.perf_counter()
            register_with_numex(rt, actor, spec)
            numex_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            register_with_mlflow_alone(settings, folder, f"run-{i}")
            mlflow_times.append(time.perf_counter() - start)
        rt.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"numex": numex_times, "mlflow": mlflow_times}


def describe(result: dict, repeat: int) -> str:
    import mlflow
    import sklearn

    n_med, m_med = statistics.median(result["numex"]), statistics.median(result["mlflow"])
    n_best, m_best = min(result["numex"]), min(result["mlflow"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join(
        [
            "Command: `.venv/bin/python bench/bench_register.py --write` (without `--write` it "
            "only prints).",
            "",
            f"The demo routine's ridge experiment (seattle-tmax), {repeat} registrations each, "
            "alternating, after one untimed warm-up of each; local SQLite database and SQLite "
            "MLflow store. Both sides load the data, train, score the holdout, log params, "
            "metrics, the dataset and the model (same signature and explicit pip requirements) "
            "and register a version. Goal: numex ≤ 1.2× MLflow alone. Wall times on a shared "
            "machine vary from run to run; the ratio, measured in the same run, is the figure.",
            "",
            f"- numex `register_experiment`: median {n_med:.3f} s, best {n_best:.3f} s",
            f"- MLflow alone: median {m_med:.3f} s, best {m_best:.3f} s",
            f"- ratio numex / MLflow: {n_med / m_med:.2f}× (median), {n_best / m_best:.2f}× (best)",
            f"- machine: CPython {platform.python_version()}, mlflow {mlflow.__version__}, "
            f"scikit-learn {sklearn.__version__}, {os.cpu_count()} CPUs ({platform.machine()}), "
            f"load average {load:.1f} at the end",
        ]
    )


def write_section(text: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## Experiment registration\n\n{text}\n"
    pattern = re.compile(r"^## Experiment registration\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _m: section + "\n", current).rstrip("\n") + "\n"
    else:
        updated = current.rstrip("\n") + "\n\n" + section
    path.write_text(updated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    result = run(args.repeat)
    text = describe(result, args.repeat)
    print(text)
    if args.write:
        write_section(text)
        print("\nwritten to docs/benchmarks.md")


if __name__ == "__main__":
    main()
