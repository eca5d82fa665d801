"""Verified cycles written straight into the database for scorecard tests (no models,
no MLflow), together with the same pairs as a DataFrame so a test can score them with
:func:`numex.scoring.build_scorecard` independently of the database.

The routine is the ``tiny`` routine of :mod:`tests.promotion_fixtures` (metrics rmse,
mae, bias; segments lead and season). Cycles are daily from 2021-01-01, two cases each
(lead 1 and 2); a candidate forecasts observation + N(0, sd²), so a candidate with a
much smaller sd than the operational one is clearly better, a much larger one clearly
worse. Every ``MISSING_EVERY``-th case has no observation yet (excluded and counted).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import insert

from numex.db import Case, Cycle, Forecast, Observation
from numex.services.runtime import Runtime
from tests.promotion_fixtures import LEADS, add_candidate, make_routine

START = datetime(2021, 1, 1)
MISSING_EVERY = 37
SEASONS = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM"}


class Cycles:
    """The ``tiny`` routine with ``persistence`` operational (sd 3), ``good`` (sd 1) and
    ``bad`` (sd 6) parallel and ``draft`` an experiment that never forecast; ``n`` verified
    daily cycles."""

    NOISE = {"persistence": 3.0, "good": 1.0, "bad": 6.0}

    def __init__(self, rt: Runtime, n: int = 90, *, seed: int = 7, name: str = "tiny") -> None:
        self.rt, self.name = rt, name
        self.routine_id = make_routine(rt, name=name)
        self.ids = {
            "persistence": add_candidate(rt, self.routine_id, "persistence", "operational"),
            "good": add_candidate(rt, self.routine_id, "good", "parallel"),
            "bad": add_candidate(rt, self.routine_id, "bad", "parallel"),
            "draft": add_candidate(rt, self.routine_id, "draft", "experiment"),
        }
        rng = np.random.default_rng(seed)
        rows = []
        for day in range(n):
            start = START + timedelta(days=day)
            for lead in LEADS:
                rows.append(
                    {
                        "cycle": pd.Timestamp(start),
                        "case": f"{start.date().isoformat()}|{lead}",
                        "lead": lead,
                        "season": SEASONS[start.month],
                    }
                )
        self.cases = pd.DataFrame(rows)
        truth = rng.normal(10.0, 5.0, len(self.cases))
        self.forecasts = {
            name: truth + rng.normal(0.0, sd, len(self.cases)) for name, sd in self.NOISE.items()
        }
        observation = truth.copy()
        observation[MISSING_EVERY - 1 :: MISSING_EVERY] = np.nan
        self.cases["observation"] = observation
        self._store()

    def _store(self) -> None:
        with self.rt.transaction() as session:
            cycle_ids = {}
            for start in self.cases["cycle"].drop_duplicates():
                cycle = Cycle(
                    routine_id=self.routine_id,
                    window_start=start.to_pydatetime(),
                    window_end=(start + pd.Timedelta(days=1)).to_pydatetime(),
                    status="verified",
                    runs=1,
                    n_cases=len(LEADS),
                    n_verified=len(LEADS),
                )
                session.add(cycle)
                cycle_ids[start] = cycle
            cases = []
            for row in self.cases.itertuples():
                case = Case(
                    routine_id=self.routine_id,
                    key=row.case,
                    valid_time=row.cycle.to_pydatetime(),
                    attributes={"segments": {"lead": int(row.lead), "season": row.season}},
                )
                session.add(case)
                cases.append(case)
            session.flush()
            observations = [
                {"case_id": case.id, "value": float(value), "source": "test"}
                for case, value in zip(cases, self.cases["observation"], strict=True)
                if not np.isnan(value)
            ]
            session.execute(insert(Observation), observations)
            forecasts = [
                {
                    "cycle_id": cycle_ids[row.cycle].id,
                    "candidate_id": self.ids[name],
                    "case_id": case.id,
                    "value": float(values[i]),
                }
                for name, values in self.forecasts.items()
                for i, (row, case) in enumerate(zip(self.cases.itertuples(), cases, strict=True))
            ]
            session.execute(insert(Forecast), forecasts)

    def pairs(
        self, candidate: str, reference: str = "persistence", start=None, end=None
    ) -> pd.DataFrame:
        """The paired cases of ``candidate`` against ``reference`` with cycles in
        ``[start, end)``, built from the generated values (not from the database)."""
        frame = self.cases.assign(
            candidate=self.forecasts[candidate], reference=self.forecasts[reference]
        )
        if start is not None:
            frame = frame[frame["cycle"] >= pd.Timestamp(start)]
        if end is not None:
            frame = frame[frame["cycle"] < pd.Timestamp(end)]
        return frame.reset_index(drop=True)
