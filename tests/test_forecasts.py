"""Forecast storage: cases once per key, forecasts never overwritten, the paired frame the
scorecard reads (cycle and online forecasts alike), per-cycle scores."""

from __future__ import annotations

import math
import uuid
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from numex.db import Case, Cycle, Forecast, Observation, PredictionRequest
from numex.scoring.scorecard import build_scorecard
from numex.services import cycles, forecasts
from numex.services.errors import Conflict, InvalidInput
from numex.services.observations import load_observations
from numex.services.routines import get_routine
from numex.services.runtime import Actor
from tests.cycle_fixtures import ROUTINE, ticks_data

OPS = Actor.system("ops-test")
PAIR_COLUMNS = ["cycle", "case", "candidate", "reference", "observation", "lead", "season"]


def _routine(session):
    return get_routine(session, ROUTINE)


def test_upsert_cases_is_idempotent_and_keeps_row_order(rt, ticks):
    frame = ticks_data().iloc[[5, 1, 3]]
    with rt.transaction() as session:
        first = forecasts.upsert_cases(session, _routine(session), frame)
    with rt.transaction() as session:
        again = forecasts.upsert_cases(session, _routine(session), frame.iloc[::-1])
        keys = dict(session.execute(select(Case.id, Case.key)).all())
        attributes = session.scalar(select(Case.attributes).where(Case.id == int(first[0])))
        count = session.scalar(select(func.count()).select_from(Case))
    assert list(again) == list(first[::-1])
    assert count == 3
    assert [keys[i] for i in first] == [
        "2021-01-03T00:00:00|2",
        "2021-01-01T00:00:00|2",
        "2021-01-02T00:00:00|2",
    ]
    assert attributes == {"segments": {"lead": 2, "season": "DJF"}}


def test_bulk_paths_for_many_rows_store_once_and_refuse_duplicates(rt, ticks):
    # Enough rows for the bulk paths (COPY on PostgreSQL, by valid-time range lookups).
    n_days = 700
    days = pd.date_range("2019-01-01", periods=n_days, freq="D")
    frame = pd.DataFrame(
        {"valid_time": np.repeat(days, 2), "lead": np.tile([1, 2], n_days), "x": 1.0, "day": 1}
    )
    with rt.transaction() as session:
        ids = forecasts.upsert_cases(session, _routine(session), frame)
        request = _request(session, ticks.ids["op"], len(frame))
        forecasts.store_forecasts(
            session,
            prediction_request_id=request,
            candidate_id=ticks.ids["op"],
            case_ids=ids,
            values=np.arange(len(ids), dtype=float),
        )
        forecasts.store_routine_observations(session, ids, np.full(len(ids), 2.0))
    with rt.transaction() as session:
        again = forecasts.upsert_cases(session, _routine(session), frame)
        forecasts.store_routine_observations(session, ids, np.full(len(ids), 3.0))  # kept: 2.0
        observed = session.execute(
            select(func.count(), func.sum(Observation.value)).select_from(Observation)
        ).one()
        stored = session.scalar(select(func.count()).select_from(Forecast))
    assert len(set(ids)) == 2 * n_days and list(again) == list(ids)
    assert tuple(observed) == (2 * n_days, 4.0 * n_days) and stored == 2 * n_days
    with rt.transaction() as session, pytest.raises(Conflict, match="never overwritten"):
        forecasts.store_forecasts(
            session,
            prediction_request_id=request,
            candidate_id=ticks.ids["op"],
            case_ids=ids,
            values=np.zeros(len(ids)),
        )


def _request(session, operational_id: int, n_records: int) -> int:
    request = PredictionRequest(
        request_key=uuid.uuid4().hex,
        routine_id=_routine(session).id,
        operational_candidate_id=operational_id,
        n_records=n_records,
    )
    session.add(request)
    session.flush()
    return request.id


def test_a_case_given_twice_or_without_its_key_is_refused(rt, ticks):
    frame = ticks_data().iloc[[0, 0]]
    with rt.transaction() as session, pytest.raises(InvalidInput, match="more than once"):
        forecasts.upsert_cases(session, _routine(session), frame)
    with rt.transaction() as session, pytest.raises(InvalidInput, match="need column"):
        forecasts.upsert_cases(session, _routine(session), frame.drop(columns="lead"))


def test_stored_forecasts_are_never_overwritten_and_must_be_finite(rt, ticks):
    cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS)
    op = ticks.ids["op"]
    with rt.read() as session:
        cycle_id = session.scalar(select(Cycle.id))
        case_ids = forecasts._lookup_case_ids(
            session, _routine(session).id, np.array(["2021-01-12T00:00:00|1"], object), None
        )
    with rt.transaction() as session, pytest.raises(Conflict, match="never overwritten"):
        forecasts.store_forecasts(
            session, cycle_id=cycle_id, candidate_id=op, case_ids=case_ids, values=[1.0]
        )
    with rt.transaction() as session, pytest.raises(InvalidInput, match="1 NaN"):
        forecasts.store_forecasts(
            session, cycle_id=cycle_id, candidate_id=op, case_ids=case_ids, values=[math.nan]
        )
    with rt.transaction() as session, pytest.raises(InvalidInput, match="exactly one"):
        forecasts.store_forecasts(session, candidate_id=op, case_ids=case_ids, values=[1.0])
    with rt.transaction() as session, pytest.raises(InvalidInput, match="2 values for 1"):
        forecasts.store_forecasts(
            session, cycle_id=cycle_id, candidate_id=op, case_ids=case_ids, values=[1.0, 2.0]
        )


def test_paired_frame_is_exactly_the_scorecard_input(rt, ticks):
    better = ticks.add("better", "better")
    cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-19", OPS)
    with rt.read() as session:
        pairs = forecasts.paired_frame(session, _routine(session), better, ticks.ids["op"])
        verified = forecasts.paired_frame(
            session, _routine(session), better, ticks.ids["op"], verified_only=True
        )
        window = forecasts.paired_frame(
            session,
            _routine(session),
            better,
            ticks.ids["op"],
            datetime(2021, 1, 12),
            datetime(2021, 1, 14),
        )
    assert list(pairs.columns) == PAIR_COLUMNS
    assert len(pairs) == 20 and len(verified) == 14 and len(window) == 4
    first = pairs.iloc[0]
    assert first["cycle"] == pd.Timestamp("2021-01-10") and first["case"] == "2021-01-10T00:00:00|1"
    # better forecasts x + 0.4, the operational x, the observation is x + 0.5
    assert first["candidate"] == pytest.approx(10.5) and first["reference"] == pytest.approx(10.1)
    assert first["observation"] == pytest.approx(10.6)
    assert pairs["observation"].isna().sum() == 6  # the three late days
    assert set(pairs["lead"]) == {1, 2} and set(pairs["season"]) == {"DJF"}
    card = build_scorecard(pairs, ["rmse", "mae"], ["lead", "season"])
    assert card.n_cycles == 7


def test_online_forecasts_pair_with_observations_like_cycle_forecasts(rt, ticks):
    better = ticks.add("better", "better")
    op = ticks.ids["op"]
    cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS)
    records = pd.DataFrame(
        {
            "valid_time": pd.to_datetime(["2021-01-12", "2021-01-22T06:00"], format="ISO8601"),
            "lead": [1, 1],
            "x": [12.1, 22.1],
            "day": [12, 22],
        }
    )
    with rt.transaction() as session:
        routine = _routine(session)
        request = PredictionRequest(
            request_key=uuid.uuid4().hex,
            routine_id=routine.id,
            operational_candidate_id=op,
            n_records=2,
        )
        session.add(request)
        session.flush()
        case_ids = forecasts.upsert_cases(session, routine, records)
        for candidate, offset in ((op, 0.0), (better, 0.4)):
            forecasts.store_forecasts(
                session,
                prediction_request_id=request.id,
                candidate_id=candidate,
                case_ids=case_ids,
                values=records["x"].to_numpy() + offset,
            )
    load = load_observations(
        rt,
        ROUTINE,
        [{"valid_time": "2021-01-22T06:00:00", "lead": 1, "y": 22.6}],
        OPS,
    )
    assert (load.stored, load.unknown) == (1, 0)
    with rt.read() as session:
        pairs = forecasts.paired_frame(session, _routine(session), better, op)
        cycle_only = forecasts.paired_frame(
            session, _routine(session), better, op, include_online=False
        )
        late = forecasts.paired_frame(session, _routine(session), better, op, datetime(2021, 1, 20))
    assert len(cycle_only) == 2 and len(pairs) == 4  # the cycle's two + the request's two
    online = pairs[pairs["case"] == "2021-01-22T06:00:00|1"].iloc[0]
    assert online["cycle"] == pd.Timestamp("2021-01-22")  # the window holding its valid time
    assert online["observation"] == pytest.approx(22.6)
    assert online["candidate"] - online["reference"] == pytest.approx(0.4)
    twice = pairs[pairs["case"] == "2021-01-12T00:00:00|1"]
    assert len(twice) == 2 and twice["cycle"].nunique() == 1  # once per occasion
    assert list(late["case"]) == ["2021-01-22T06:00:00|1"]


def test_cycle_scores_pool_each_cycles_cases_per_candidate(rt, ticks):
    better = ticks.add("better", "better")
    worse = ticks.add("worse", "worse")
    cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-12", OPS)
    with rt.read() as session:
        scores = forecasts.cycle_scores(session, _routine(session))
    assert len(scores) == 9 and set(scores["n"]) == {2}
    by_candidate = scores.groupby("candidate_id")[["rmse", "mae", "bias"]].mean()
    assert by_candidate.loc[ticks.ids["op"]].tolist() == pytest.approx([0.5, 0.5, -0.5])
    assert by_candidate.loc[better].tolist() == pytest.approx([0.1, 0.1, -0.1])
    assert by_candidate.loc[worse].tolist() == pytest.approx([1.5, 1.5, -1.5])
