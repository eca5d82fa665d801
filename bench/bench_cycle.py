"""Benchmark: one cycle of 100,000 cases with 3 candidates, against a raw bulk insert.

    .venv/bin/python bench/bench_cycle.py            # SQLite; print the figures
    .venv/bin/python bench/bench_cycle.py --write    # also update docs/benchmarks.md
    NUMEX_BENCH_POSTGRES_URL=postgresql+psycopg://user@host:5432/postgres \\
        .venv/bin/python bench/bench_cycle.py        # SQLite, then PostgreSQL

A synthetic routine (seeded): 100,000 cases in one daily cycle window (keys
``valid_time`` × ``station``), three features, a target, segments ``region`` (10)
and ``season``. Three candidates — operational and two parallel, scikit-learn
models saved with MLflow and loaded through the bridge — forecast every case.

Timed, on a fresh database each repeat (best and median of the repeats):

* the cycle: :func:`numex.services.cycles.run_cycle` from claim to commit, with the
  routine's data and the models already loaded (as in a running scheduler);
* its store phase alone (the one transaction writing cases, forecasts,
  observations, results and the audit event), and its stored rows per second;
* raw: the same rows — the same cases, 3 × 100,000 forecasts and the observations —
  inserted in one transaction into an equally fresh database of the same schema with
  the fastest plain path: ``executemany`` on the sqlite3 connection, ``COPY`` on
  PostgreSQL, from ready-made tuples. Goal: numex's store ≥ 0.5 × the raw rate.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("NUMEX_SECRET_KEY", "bench")

from sqlalchemy import create_engine, select, text  # noqa: E402

from numex import schema  # noqa: E402
from numex.config import load_settings  # noqa: E402
from numex.db import Candidate, Cycle, Routine  # noqa: E402
from numex.services import cycles, experiments, stages  # noqa: E402
from numex.services.runtime import Actor, Runtime  # noqa: E402

N_CASES = 100_000
N_CANDIDATES = 3
SEED = 20240101
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
COMMAND = ".venv/bin/python bench/bench_cycle.py"
ACTOR = Actor.system("bench")

ROUTINE_YAML = """\
name: bench-cycle
title: One big synthetic cycle
data: {source: data.parquet}
time_column: valid_time
case_keys: [valid_time, station]
target: y
features: [f1, f2, f3]
training: {start: 2023-12-01, end: 2023-12-15}
holdout: {start: 2023-12-16, end: 2023-12-31}
cycles: {length: 1D, start: 2024-01-01, end: 2024-01-01}
metrics: [rmse, mae]
segments:
  - {name: region, column: region}
  - {name: season, derive: season}
gates:
  parallel: {sign_offs: 1, checks: []}
  operational: {sign_offs: 2, checks: []}
"""


def write_routine(folder: Path, n_cases: int) -> Path:
    rng = np.random.default_rng(SEED)
    station = np.arange(n_cases)
    minutes = rng.integers(0, 24 * 60, n_cases)
    frame = pd.DataFrame(
        {
            "valid_time": pd.Timestamp("2024-01-01") + pd.to_timedelta(minutes, "min"),
            "station": station,
            "region": station % 10,
            "f1": rng.normal(10, 3, n_cases),
            "f2": rng.normal(0, 1, n_cases),
            "f3": rng.normal(5, 2, n_cases),
        }
    )
    frame["y"] = (
        0.8 * frame["f1"] - 0.3 * frame["f2"] + 0.1 * frame["f3"] + rng.normal(0, 1, n_cases)
    )
    folder = folder / "bench-cycle"
    folder.mkdir(parents=True)
    (folder / "routine.yaml").write_text(ROUTINE_YAML)
    frame.to_parquet(folder / "data.parquet", index=False)
    return folder


def save_models(folder: Path, data: pd.DataFrame) -> list[str]:
    """Three fitted scikit-learn models saved with MLflow (signature included)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.tree import DecisionTreeRegressor

    sample = data.sample(5000, random_state=0)
    X, y = sample[["f1", "f2", "f3"]], sample["y"]
    paths = []
    for name, model in (
        ("linear", LinearRegression()),
        ("ridge", Ridge(alpha=1.0)),
        ("tree", DecisionTreeRegressor(max_depth=8, random_state=0)),
    ):
        model.fit(X, y)
        path = folder / name
        mlflow.sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(X, model.predict(X)),
            pip_requirements=[],
            serialization_format="cloudpickle",
        )
        paths.append(str(path))
    return paths


def add_candidates(rt: Runtime, model_paths: list[str]) -> None:
    with rt.transaction() as session:
        routine = session.scalar(select(Routine).where(Routine.name == "bench-cycle"))
        for index, path in enumerate(model_paths):
            candidate = Candidate(
                routine_id=routine.id,
                routine_version_id=routine.current.id,
                name=Path(path).name,
                lineage_digest="sha256:" + hashlib.sha256(path.encode()).hexdigest(),
                model_uri=path,
                features=["f1", "f2", "f3"],
            )
            session.add(candidate)
            session.flush()
            for stage in ["parallel", "operational"] if index == 0 else ["parallel"]:
                stages.move(session, candidate, stage, kind="bench", actor=ACTOR, reason="bench")


@contextlib.contextmanager
def fresh_database(home: Path, postgres: str | None):
    """A migrated database URL (SQLite file, or a new database on the server)."""
    if postgres is None:
        path = home / f"numex-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        schema.upgrade(url)
        yield url
        return
    name = f"numex_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    try:
        schema.upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def runtime_for(home: Path, url: str) -> Runtime:
    settings = load_settings(home=home, database_url=url)
    settings.experiments_dir = home
    return Runtime(settings)


def prepared_runtime(home: Path, url: str, folder: Path, model_paths: list[str]) -> Runtime:
    rt = runtime_for(home, url)
    experiments.load_routine(rt, folder, ACTOR)
    add_candidates(rt, model_paths)
    return rt


def run_numex(home, url, folder, model_paths) -> dict[str, float]:
    """One cycle through numex; seconds for the whole run and for its store phase."""
    rt = prepared_runtime(home, url, folder, model_paths)
    timings: dict[str, float] = {}
    real_store = cycles._store

    def timed_store(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real_store(*args, **kwargs)
        finally:
            timings["store"] = time.perf_counter() - began

    cycles._store = timed_store
    try:
        began = time.perf_counter()
        outcome = cycles.run_cycle(rt, "bench-cycle", "2024-01-01", ACTOR)
        timings["cycle"] = time.perf_counter() - began
    finally:
        cycles._store = real_store
    assert outcome.status == "verified" and outcome.n_cases == N_CASES, outcome.message
    assert all(c.status == "ok" for c in outcome.candidates), outcome.message
    timings["predict"] = sum(c.duration_ms for c in outcome.candidates) / 1000
    with rt.read() as session:
        timings["rows"] = float(
            sum(
                session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("cases", "forecasts", "observations")
            )
        )
    rt.close()
    return timings


def raw_rows(data: pd.DataFrame, routine_id: int, cycle_id: int, candidate_ids: list[int]):
    """The rows numex stores, as ready-made tuples for the raw insert."""
    from numex import specs
    from numex.services import forecasts

    spec = specs.load_routine(data.attrs["folder"])
    case_rows = forecasts.case_rows(data, spec)
    times = pd.DatetimeIndex(case_rows.valid_times)
    n = len(data)
    case_ids = list(range(1, n + 1))
    rng = np.random.default_rng(1)
    values = [rng.normal(10, 3, n).tolist() for _ in candidate_ids]
    return {
        "cases": (
            list(
                zip(
                    [routine_id] * n,
                    case_rows.keys.tolist(),
                    times.strftime("%Y-%m-%d %H:%M:%S.%f").tolist(),
                    case_rows.attributes.tolist(),
                    strict=True,
                )
            ),
            list(
                zip(
                    [routine_id] * n,
                    case_rows.keys.tolist(),
                    times.to_pydatetime().tolist(),
                    case_rows.attributes.tolist(),
                    strict=True,
                )
            ),
        ),
        "forecasts": [
            (cycle_id, None, candidate, case, value)
            for candidate, column in zip(candidate_ids, values, strict=True)
            for case, value in zip(case_ids, column, strict=True)
        ],
        "observations": [
            (case, value, "routine data", "2024-01-02 00:00:00.000000")
            for case, value in zip(case_ids, data["y"].tolist(), strict=True)
        ],
    }


def run_raw(home, url, folder, model_paths, data) -> dict[str, float]:
    """The same rows inserted raw into a fresh database of the same schema."""
    rt = prepared_runtime(home, url, folder, model_paths)
    with rt.transaction() as session:
        routine = session.scalar(select(Routine).where(Routine.name == "bench-cycle"))
        cycle = Cycle(
            routine_id=routine.id,
            window_start=pd.Timestamp("2024-01-01").to_pydatetime(),
            window_end=pd.Timestamp("2024-01-02").to_pydatetime(),
        )
        session.add(cycle)
        session.flush()
        routine_id, cycle_id = routine.id, cycle.id
        candidate_ids = list(session.scalars(select(Candidate.id).order_by(Candidate.id)))
    rows = raw_rows(data, routine_id, cycle_id, candidate_ids)
    n_rows = len(rows["cases"][0]) + len(rows["forecasts"]) + len(rows["observations"])
    raw = rt.engine.raw_connection()
    try:
        began = time.perf_counter()
        if rt.dialect == "sqlite":
            cursor = raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(
                "INSERT INTO cases (routine_id, key, valid_time, attributes) VALUES (?, ?, ?, ?)",
                rows["cases"][0],
            )
            cursor.executemany(
                "INSERT INTO forecasts (cycle_id, prediction_request_id, candidate_id, case_id, "
                "value) VALUES (?, ?, ?, ?, ?)",
                rows["forecasts"],
            )
            cursor.executemany(
                "INSERT INTO observations (case_id, value, source, received_at) "
                "VALUES (?, ?, ?, ?)",
                rows["observations"],
            )
            cursor.execute("COMMIT")
        else:
            connection = raw.driver_connection
            with connection.cursor() as cursor:
                for table, columns, data_rows in (
                    ("cases", "routine_id, key, valid_time, attributes", rows["cases"][1]),
                    (
                        "forecasts",
                        "cycle_id, prediction_request_id, candidate_id, case_id, value",
                        rows["forecasts"],
                    ),
                    ("observations", "case_id, value, source, received_at", rows["observations"]),
                ):
                    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in data_rows:
                            copy.write_row(row)
            connection.commit()
        seconds = time.perf_counter() - began
    finally:
        raw.close()
        rt.close()
    return {"store": seconds, "rows": float(n_rows)}


def describe(times: list[float]) -> str:
    return f"best {min(times):.3f} s, median {statistics.median(times):.3f} s"


def bench_backend(label: str, postgres: str | None, repeats: int, home, folder, models, data):
    numex_runs, raw_runs = [], []
    for _ in range(repeats):
        with fresh_database(home, postgres) as url:
            numex_runs.append(run_numex(home, url, folder, models))
        with fresh_database(home, postgres) as url:
            raw_runs.append(run_raw(home, url, folder, models, data))
    rows = numex_runs[0]["rows"]
    assert rows == raw_runs[0]["rows"], (rows, raw_runs[0]["rows"])
    numex_rate = rows / min(r["store"] for r in numex_runs)
    raw_rate = rows / min(r["store"] for r in raw_runs)
    return [
        f"- {label}: the cycle (claim, {N_CANDIDATES} candidates forecast, store, verify): "
        f"{describe([r['cycle'] for r in numex_runs])}; of which predicting "
        f"{describe([r['predict'] for r in numex_runs])}",
        f"- {label}: numex's store phase, {int(rows):,} rows (cases, forecasts, observations): "
        f"{describe([r['store'] for r in numex_runs])} — {numex_rate:,.0f} rows/s",
        f"- {label}: raw {'executemany' if postgres is None else 'COPY'} of the same rows: "
        f"{describe([r['store'] for r in raw_runs])} — {raw_rate:,.0f} rows/s; "
        f"numex stores at **{numex_rate / raw_rate:.2f}×** the raw rate (goal ≥ 0.5×)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("NUMEX_BENCH_POSTGRES_URL"),
        help="a PostgreSQL server URL (default: NUMEX_BENCH_POSTGRES_URL) to bench it too",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="numex-bench-cycle-") as tmp:
        home = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
        folder = write_routine(home, N_CASES)
        data = pd.read_parquet(folder / "data.parquet")
        data.attrs["folder"] = str(folder)
        models = save_models(home / "models", data)
        print(f"data: {N_CASES:,} cases in one cycle window, {N_CANDIDATES} candidates")
        lines = bench_backend("SQLite", None, args.repeats, home, folder, models, data)
        print("\n".join(lines))
        if args.postgres:
            pg = bench_backend(
                "PostgreSQL", args.postgres, args.repeats, home, folder, models, data
            )
            print("\n".join(pg))
            lines += pg
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f} at the end of the run"
    )
    print(f"machine: {machine}")
    if args.write:
        write_section(lines, machine, bool(args.postgres))
        print(f"wrote the Cycles section of {DOCS}")


def write_section(lines: list[str], machine: str, with_postgres: bool) -> None:
    """Replace (or add) the "## Cycles" section of docs/benchmarks.md, nothing else."""
    command = f"`{COMMAND} --write`"
    if with_postgres:
        command = f"`NUMEX_BENCH_POSTGRES_URL=postgresql+psycopg://… {COMMAND} --write`"
    section = "\n".join(
        [
            "## Cycles",
            "",
            f"Command: {command} (without `--write` it only prints; without the URL it "
            "benches SQLite alone).",
            "",
            f"One cycle of {N_CASES:,} cases with {N_CANDIDATES} candidates (operational + 2 "
            "parallel scikit-learn models loaded through MLflow), on a fresh database per "
            "repeat, routine data and models already loaded as in a running scheduler. "
            "Raw: the same cases, forecasts and observations inserted in one transaction "
            "into a fresh database of the same schema with `executemany` (SQLite) or `COPY` "
            "(PostgreSQL) from ready-made tuples. See the script's docstring. On "
            "PostgreSQL most of either's time is the foreign-key triggers and index "
            "upkeep of `forecasts` (four foreign keys, five indexes), not COPY itself.",
            "",
            *lines,
            f"- machine: {machine}",
            "",
        ]
    )
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n\n"
    start = text.find("## Cycles\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
