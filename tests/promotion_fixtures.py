"""A small routine for gate tests, written straight into the database (no MLflow, no
training): candidates as rows, verified cycles as Cycle/Case/Forecast/Observation rows.

A candidate's forecasts are the observation plus Gaussian noise of a chosen standard
deviation, so a candidate with less noise than the operational one is significantly
better after a few dozen cycles.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from numex.db import (
    Candidate,
    CandidateCycleResult,
    Case,
    Cycle,
    Forecast,
    Observation,
    Routine,
    RoutineVersion,
    User,
)
from numex.services.runtime import Runtime

ROUTINE = "tiny"
START = datetime(2021, 1, 1)
LEADS = (1, 2)

DEFINITION: dict[str, Any] = {
    "name": ROUTINE,
    "title": "A tiny synthetic routine",
    "data": {"source": "data.csv"},
    "time_column": "valid_date",
    "case_keys": ["valid_date", "lead"],
    "target": "y",
    "features": ["x1", "x2", "lead"],
    "training": {"start": "2020-01-01", "end": "2020-09-30"},
    "holdout": {"start": "2020-10-01", "end": "2020-12-31"},
    "cycles": {"start": "2021-01-01", "end": "2021-12-31", "length": "1D"},
    "metrics": ["rmse", "mae", "bias"],
    "segments": [{"name": "lead", "column": "lead"}, {"name": "season", "derive": "season"}],
    "gates": {
        "parallel": {"sign_offs": 1, "checks": [{"offline_not_worse": {"metric": "rmse"}}]},
        "operational": {
            "sign_offs": 2,
            "checks": [
                {"min_cycles": 30},
                {"significant_improvement": {"metric": "rmse", "level": 0.95}},
                {"no_significant_degradation": {"metrics": ["mae"], "level": 0.95}},
                {"max_failure_rate": 0.05},
            ],
        },
    },
    "task": "regression",
}


def definition(gates: dict[str, Any] | None = None) -> dict[str, Any]:
    result = copy.deepcopy(DEFINITION)
    if gates is not None:
        result["gates"] = gates
    return result


def make_routine(rt: Runtime, gates: dict[str, Any] | None = None, name: str = ROUTINE) -> int:
    with rt.transaction() as session:
        routine = Routine(name=name, title="tiny", registered_model_name=f"numex.{name}")
        session.add(routine)
        session.flush()
        session.add(
            RoutineVersion(
                routine_id=routine.id,
                version=1,
                definition={**definition(gates), "name": name},
                digest="sha256:tiny",
            )
        )
        return routine.id


def user_id(rt: Runtime, username: str) -> int:
    with rt.read() as session:
        return session.scalar(select(User.id).where(User.username == username))


def add_candidate(
    rt: Runtime,
    routine_id: int,
    name: str,
    stage: str,
    *,
    author: str = "",
    author_id: int | None = None,
    rmse: float = 2.0,
) -> int:
    with rt.transaction() as session:
        version_id = session.scalar(
            select(RoutineVersion.id).where(RoutineVersion.routine_id == routine_id)
        )
        candidate = Candidate(
            routine_id=routine_id,
            routine_version_id=version_id,
            name=name,
            stage=stage,
            author=author,
            author_id=author_id,
            lineage_digest=f"sha256:lineage-{name}",
            spec_digest=f"sha256:spec-{name}",
            data_digest="sha256:data",
            code_commit="abc123",
            code_dirty=False,
            params={"alpha": 1.0},
            features=["x1", "x2", "lead"],
            offline_scores={"overall": {"rmse": rmse, "mae": rmse * 0.8}, "n_cases": 100},
            mlflow_run_id=f"run-{name}",
            model_uri=f"models:/numex.tiny/{name}",
            registered_model_name="numex.tiny",
            model_version="1",
        )
        session.add(candidate)
        session.flush()
        return candidate.id


def add_cycles(
    rt: Runtime,
    routine_id: int,
    noise: dict[int, float],
    n: int,
    *,
    seed: int = 0,
    failed: dict[int, int] | None = None,
) -> None:
    """``n`` more verified daily cycles after the routine's last one; candidate ``c``
    forecasts observation + N(0, noise[c]²) for every case (2 lead times per cycle);
    ``failed[c]`` of its cycle results are recorded as failures."""
    rng = np.random.default_rng(seed)
    failed = dict(failed or {})
    with rt.transaction() as session:
        last = session.scalar(
            select(func.max(Cycle.window_start)).where(Cycle.routine_id == routine_id)
        )
        first = START if last is None else last + timedelta(days=1)
        for day in range(n):
            start = first + timedelta(days=day)
            cycle = Cycle(
                routine_id=routine_id,
                window_start=start,
                window_end=start + timedelta(days=1),
                status="verified",
                runs=1,
                n_cases=len(LEADS),
                n_verified=len(LEADS),
            )
            session.add(cycle)
            session.flush()
            for lead in LEADS:
                case = Case(
                    routine_id=routine_id,
                    key=f"{start.date().isoformat()}|{lead}",
                    valid_time=start,
                    attributes={"segments": {"lead": lead, "season": "DJF"}},
                )
                session.add(case)
                session.flush()
                truth = float(rng.normal(10.0, 5.0))
                session.add(Observation(case_id=case.id, value=truth, source="test"))
                for candidate_id, sd in noise.items():
                    value = truth + float(rng.normal(0.0, sd))
                    session.add(
                        Forecast(
                            cycle_id=cycle.id,
                            candidate_id=candidate_id,
                            case_id=case.id,
                            value=value,
                        )
                    )
            for candidate_id in noise:
                stage = session.get(Candidate, candidate_id).stage
                fail = failed.get(candidate_id, 0) > 0
                if fail:
                    failed[candidate_id] -= 1
                session.add(
                    CandidateCycleResult(
                        cycle_id=cycle.id,
                        candidate_id=candidate_id,
                        stage=stage,
                        status="failed" if fail else "ok",
                        n_forecasts=len(LEADS),
                    )
                )


class World:
    """A routine with an operational candidate (persistence, noisy), a parallel one (ridge,
    by sara, better) and an experiment (forest, by sam), plus verified cycles."""

    def __init__(
        self,
        rt: Runtime,
        *,
        gates: dict[str, Any] | None = None,
        cycles: int = 40,
        name: str = ROUTINE,
    ) -> None:
        self.rt = rt
        self.name = name
        self.routine_id = make_routine(rt, gates, name)
        self.operational = add_candidate(
            rt, self.routine_id, "persistence", "operational", rmse=3.0
        )
        self.parallel = add_candidate(
            rt,
            self.routine_id,
            "ridge",
            "parallel",
            author="sara",
            author_id=user_id(rt, "sara"),
            rmse=1.0,
        )
        self.experiment = add_candidate(
            rt, self.routine_id, "forest", "experiment", author="sam", rmse=1.5
        )
        self.seed = 0
        if cycles:
            self.add_cycles(cycles)

    def add_cycles(self, n: int, **kwargs: Any) -> None:
        self.seed += 1
        add_cycles(
            self.rt,
            self.routine_id,
            {self.operational: 3.0, self.parallel: 1.0},
            n,
            seed=self.seed,
            **kwargs,
        )

    def actor(self, username: str):
        from numex.services import users

        return users.load_actor(self.rt, user_id(self.rt, username))

    def stage(self, candidate_id: int) -> str:
        with self.rt.read() as session:
            return session.get(Candidate, candidate_id).stage
