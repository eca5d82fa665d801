"""A small routine for cycle tests and models that fail on purpose.

``write_ticks_routine(root)`` writes ``<root>/ticks/``: daily cases in January 2021 ×
two lead times, ten daily cycles (2021-01-10 .. 2021-01-19). The target is missing
for 2021-01-17 .. 2021-01-19, so those cycles wait for late observations.

The models of :mod:`tests.fault_models` are saved once per test session with
``mlflow.pyfunc.save_model`` (no tracking store) and candidates point at them by path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from numex.db import Candidate, Routine
from numex.services import experiments, stages
from numex.services.runtime import Actor, Runtime

ROUTINE = "ticks"
DAYS = pd.date_range("2021-01-01", "2021-01-31", freq="D")
CYCLE_DAYS = pd.date_range("2021-01-10", "2021-01-19", freq="D")
LATE_DAYS = pd.date_range("2021-01-17", "2021-01-19", freq="D")
LEADS = (1, 2)

ROUTINE_YAML = """\
name: ticks
title: Ten daily cycles of a tiny synthetic routine
data: {source: data.csv}
time_column: valid_time
case_keys: [valid_time, lead]
target: y
features: [x, day]
training: {start: 2021-01-01, end: 2021-01-05}
holdout: {start: 2021-01-06, end: 2021-01-09}
cycles: {length: 1D, start: 2021-01-10, end: 2021-01-19}
metrics: [rmse, mae]
segments:
  - {name: lead, column: lead}
  - {name: season, derive: season}
gates:
  parallel:
    sign_offs: 1
    checks: []
  operational:
    sign_offs: 2
    checks:
      - max_failure_rate: 0.01
"""


def ticks_data() -> pd.DataFrame:
    rows = []
    for day in DAYS:
        for lead in LEADS:
            x = float(day.day) + lead / 10
            y = np.nan if day in LATE_DAYS else x + 0.5
            rows.append({"valid_time": day, "lead": lead, "x": x, "day": day.day, "y": y})
    return pd.DataFrame(rows)


def write_ticks_routine(root: Path) -> Path:
    folder = Path(root) / ROUTINE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routine.yaml").write_text(ROUTINE_YAML)
    ticks_data().to_csv(folder / "data.csv", index=False, date_format="%Y-%m-%d")
    return folder


def save_models(folder: Path) -> dict[str, str]:
    """Save every model of :data:`tests.fault_models.MODELS` under ``folder``; name → path."""
    import mlflow.pyfunc

    from tests.fault_models import MODELS

    paths = {}
    for name, model in MODELS.items():
        path = Path(folder) / name
        mlflow.pyfunc.save_model(str(path), python_model=model, pip_requirements=[])
        paths[name] = str(path)
    return paths


def load_ticks(rt: Runtime, folder: Path) -> Routine:
    experiments.load_routine(rt, folder, Actor.system("test"))
    with rt.read() as session:
        return session.scalar(select(Routine).where(Routine.name == ROUTINE))


def add_candidate(rt: Runtime, name: str, model_uri: str, stage: str = "parallel") -> int:
    """A candidate of the ticks routine at ``stage`` (moved there through the stage
    service, as a test action), pointing at ``model_uri``."""
    actor = Actor.system("test")
    with rt.transaction() as session:
        routine = session.scalar(select(Routine).where(Routine.name == ROUTINE))
        candidate = Candidate(
            routine_id=routine.id,
            routine_version_id=routine.current.id,
            name=name,
            author="sam",
            lineage_digest="sha256:" + hashlib.sha256(name.encode()).hexdigest(),
            model_uri=model_uri,
            features=["x", "day"],
        )
        session.add(candidate)
        session.flush()
        path = {"experiment": [], "parallel": ["parallel"]}.get(stage, ["parallel", stage])
        for step in path:
            stages.move(session, candidate, step, kind="test", actor=actor, reason="test setup")
        return candidate.id


# --- pytest fixtures (tests/conftest.py imports them) ----------------------------------


class Ticks:
    """The ticks routine loaded in a test's database, with its operational candidate."""

    def __init__(self, rt: Runtime, folder: Path, models: dict[str, str]) -> None:
        self.rt, self.folder, self.models = rt, folder, models
        self.ids: dict[str, int] = {}

    def add(self, name: str, model: str, stage: str = "parallel") -> int:
        self.ids[name] = add_candidate(self.rt, name, self.models[model], stage)
        return self.ids[name]


@pytest.fixture(scope="session")
def fault_models(tmp_path_factory) -> dict[str, str]:
    """Every FaultModel saved once per session; name → path."""
    return save_models(tmp_path_factory.mktemp("fault-models"))


@pytest.fixture
def ticks(rt, tmp_path, fault_models) -> Ticks:
    """The ticks routine with candidate ``op`` operational (a well-behaved model)."""
    folder = write_ticks_routine(tmp_path / "experiments")
    load_ticks(rt, folder)
    routine = Ticks(rt, folder, fault_models)
    routine.add("op", "operational", "operational")
    return routine
