"""Cycles: the operational and every parallel candidate forecast the same cases, window
by window, and are verified against whatever observations exist.

One cycle covers one valid-time window ``[window_start, window_end)`` of the
routine's cycle grid (``cycles.length`` from ``cycles.start``). Running it:

1. **claim** (one short transaction): the cycle row is created if needed and
   claimed with one conditional ``UPDATE ... WHERE locked_by IS NULL`` (or the
   claim is older than ``NUMEX_CYCLE_LOCK_TIMEOUT``), so however many
   ``numex scheduler`` processes run, each cycle runs once. Status ``running``;
   a :class:`~numex.db.CycleRun` records the attempt.
2. **forecast** (no transaction open): the routine's cases for the window are
   read from its data (loaded once per process), every candidate's model
   (loaded once per process by the MLflow bridge) predicts them in a worker
   thread with a timeout. A parallel candidate that raises, times out, returns
   NaN, infinity or the wrong number of values fails *for that cycle only*
   (a :class:`~numex.db.CandidateCycleResult` with status ``failed``, which counts
   in its failure rate); the operational candidate and the others carry on. A
   failing operational candidate fails the cycle — status ``failed``, the error,
   an audit event and a critical :class:`~numex.db.Alert`.
3. **store and verify** (one transaction): cases, forecasts, the results, the
   routine data's targets as observations (source ``routine data``), the count of
   verified cases, the new status (``forecast``, or ``verified`` once every case
   has an observation), an audit event; the claim is released.

Idempotent and resumable: a cycle that is done (forecast, verified, failed) is
skipped unless a re-run is asked for. A re-run is recorded (``CycleRun.is_rerun``,
audit ``cycle.rerun``); forecasts already stored stay as they are; candidates
without a result in that cycle — or whose attempt failed — are run. A failure a
re-run recovers still counts (``CandidateCycleResult.failures``). A backfill
interrupted part-way leaves finished cycles done and releases the one in hand,
so running it again carries on where it stopped; a cycle whose claimer died is
retried once its claim is stale.

Small cycles are run in batches (consecutive windows up to a case budget) so a
backfill of years of daily cycles costs a few predict calls and transactions per
batch rather than per cycle; a candidate that fails on a batch is retried cycle by
cycle, so its failure stays confined to the cycles it failed in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from numex import mlflow_bridge, specs
from numex.db import (
    Alert,
    Candidate,
    CandidateCycleResult,
    Cycle,
    CycleRun,
    Forecast,
    Observation,
    Routine,
    utcnow,
)
from numex.services import audit, forecasts
from numex.services.errors import Conflict, InvalidInput, NotFound, NumexError
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

log = logging.getLogger(__name__)

DONE_STATUSES = ("forecast", "verified", "failed")
#: Cases per batch of small cycles; a bigger cycle runs on its own.
BATCH_CASES = 5_000
#: At most this many cycles per batch.
BATCH_CYCLES = 64

Progress = Callable[["CycleOutcome"], None]


# --- outcomes -------------------------------------------------------------------------------


@dataclass
class CandidateOutcome:
    """How one candidate fared in one cycle run (``kept``: it already had a result)."""

    candidate_id: int
    name: str
    stage: str
    status: str  # ok, failed, kept
    n_forecasts: int = 0
    error: str | None = None
    duration_ms: float | None = None
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CycleOutcome:
    """What happened to one cycle window.

    ``action``: ``ran`` (first run), ``rerun`` (asked for, on a cycle that was done),
    ``resumed`` (its previous attempt never finished), ``skipped`` (already done),
    ``busy`` (another process holds it) or ``lost`` (its claim went stale and another
    process took it over before this one could store).
    """

    routine: str
    window_start: datetime
    window_end: datetime
    action: str
    status: str
    cycle_id: int | None = None
    attempt: int = 0
    n_cases: int = 0
    n_verified: int = 0
    error: str | None = None
    candidates: list[CandidateOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "failed" and self.action in ("ran", "rerun", "resumed")

    @property
    def message(self) -> str:
        when = self.window_start.isoformat(sep=" ")
        head = f"{self.routine} cycle {when}"
        if self.action == "skipped":
            return f"{head}: already {self.status}; --rerun to run it again"
        if self.action == "busy":
            return f"{head}: being run by another process; left to it"
        if self.action == "lost":
            return f"{head}: claim lost to another process; nothing stored"
        parts = []
        for c in self.candidates:
            text = f"{c.name} {c.status}"
            if c.status == "failed" and c.error:
                text += f" ({c.error})"
            parts.append(text)
        verb = {"rerun": "re-run", "resumed": "resumed"}.get(self.action, "run")
        return (
            f"{head} {verb} (attempt {self.attempt}): {self.status}, {self.n_cases} cases, "
            f"{self.n_verified} verified; " + "; ".join(parts)
        )

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "candidates"}
        data["window_start"] = self.window_start.isoformat()
        data["window_end"] = self.window_end.isoformat()
        data["candidates"] = [c.to_dict() for c in self.candidates]
        data["message"] = self.message
        return data


@dataclass
class BackfillReport:
    """Every cycle window of a backfill (or a scheduler pass) and what happened to it."""

    routine: str
    outcomes: list[CycleOutcome] = field(default_factory=list)
    #: Why the routine's cycles could not be run at all (a scheduler pass goes on).
    error: str | None = None

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def failed(self) -> list[CycleOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def candidate_failures(self) -> int:
        return sum(
            c.status == "failed"
            for o in self.outcomes
            for c in o.candidates
            if c.stage != "operational"
        )

    @property
    def message(self) -> str:
        if self.error:
            return f"{self.routine}: not run: {self.error}"
        ran = sum(o.action in ("ran", "rerun", "resumed") for o in self.outcomes)
        text = (
            f"{self.routine}: {len(self.outcomes)} cycle window(s): {ran} run, "
            f"{self.count('skipped')} already done, {self.count('busy')} busy elsewhere"
        )
        if self.count("lost"):
            text += f", {self.count('lost')} lost"
        text += f"; {len(self.failed)} failed"
        if self.candidate_failures:
            text += f"; {self.candidate_failures} parallel candidate failure(s)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "routine": self.routine,
            "message": self.message,
            "cycles": len(self.outcomes),
            "failed": len(self.failed),
            "error": self.error,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


# --- the routine's data, once per process ---------------------------------------------------


@dataclass
class RoutineData:
    """A routine's data prepared for cycles: sorted by time, with case rows built."""

    spec: specs.RoutineSpec
    frame: pd.DataFrame
    times: np.ndarray  # datetime64[ns], sorted
    cases: forecasts.CaseRows
    target: np.ndarray  # float, NaN where unknown

    def rows(self, start: datetime, end: datetime) -> np.ndarray:
        """Positions of the rows whose time falls in ``[start, end)``."""
        low = np.searchsorted(
            self.times, np.datetime64(pd.Timestamp(start).to_datetime64()), "left"
        )
        high = np.searchsorted(self.times, np.datetime64(pd.Timestamp(end).to_datetime64()), "left")
        return np.arange(low, high)


_data_cache: dict[tuple[str, str, str | None], RoutineData] = {}
_data_lock = threading.Lock()


def routine_data(routine: Routine) -> RoutineData:
    """The routine's data for its current definition, loaded and prepared once per process."""
    from numex.services.experiments import routine_spec

    version = routine.current
    key = (routine.name, version.digest, routine.source_dir)
    with _data_lock:
        cached = _data_cache.get(key)
        if cached is not None:
            return cached
        spec = routine_spec(routine)
        frame = specs.load_routine_data(spec)
        times = forecasts._naive_utc(frame[spec.time_column])
        order = np.argsort(times.to_numpy(), kind="stable")
        frame = frame.iloc[order].reset_index(drop=True)
        times = times.iloc[order].reset_index(drop=True)
        target = pd.to_numeric(frame[spec.target], errors="coerce").to_numpy(dtype=float)
        prepared = RoutineData(
            spec=spec,
            frame=frame,
            times=times.to_numpy(dtype="datetime64[ns]"),
            cases=forecasts.case_rows(frame, spec),
            target=np.where(np.isfinite(target), target, np.nan),
        )
        _data_cache[key] = prepared
        return prepared


def clear_data_cache() -> None:
    """Forget loaded routine data (tests; after the data changed on disk)."""
    with _data_lock:
        _data_cache.clear()


# --- windows --------------------------------------------------------------------------------


def _moment(value: Any, what: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as error:
        raise InvalidInput(
            f"{what} {value!r} is not a time; valid: a date like 2014-01-01 or a date-time "
            "like 2014-01-01T06:00"
        ) from error
    if pd.isna(stamp):
        raise InvalidInput(f"{what} is missing")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def window_at(spec: specs.RoutineSpec, at: Any) -> tuple[datetime, datetime]:
    """The cycle window holding ``at``; InvalidInput when ``at`` is outside the cycle period."""
    stamp = _moment(at, "--at")
    try:
        start, end = specs.cycle_window(spec, stamp)
    except ValueError as error:
        raise InvalidInput(f"routine {spec.name}: {error}") from None
    return start.to_pydatetime(), end.to_pydatetime()


def windows_between(
    spec: specs.RoutineSpec, start: Any, end: Any
) -> list[tuple[datetime, datetime]]:
    """The routine's cycle windows that start in ``[start, end]``; an ``end`` given as a
    bare date includes that whole day."""
    first = _moment(start, "--from")
    last = _moment(end, "--to")
    if isinstance(end, str) and len(end.strip()) == 10:
        last = last + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    if last < first:
        raise InvalidInput(f"--to {end} is before --from {start}")
    return [
        (s.to_pydatetime(), e.to_pydatetime())
        for s, e in specs.cycle_windows(spec)
        if first <= s <= last
    ]


# --- candidates and predictions -------------------------------------------------------------


@dataclass(frozen=True)
class _Runner:
    """A candidate as a cycle sees it (a snapshot taken at claim time)."""

    id: int
    name: str
    stage: str
    model_uri: str
    features: tuple[str, ...]


class CandidateTimeout(Exception):
    pass


def _call_with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """``fn()`` in a daemon worker thread; CandidateTimeout after ``timeout`` seconds
    (the thread is abandoned — Python cannot stop it — and ends on its own)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # handed to the caller
            box["error"] = error

    worker = threading.Thread(target=target, name="numex-predict", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CandidateTimeout(f"timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _describe(error: BaseException) -> str:
    """One line for people: the error's type and message, with MLflow's data dumps cut."""
    if isinstance(error, CandidateTimeout):
        return str(error)
    text = " ".join(str(error).split())
    if "Error: " in text:  # MLflow schema errors quote the whole input first
        text = text[text.rindex("Error: ") + len("Error: ") :]
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


#: MLflow signature column types → the dtype numex hands the model.
_SIGNATURE_DTYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "object",
}


def model_inputs(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s columns as the model's signature declares them (an int column becomes
    float64 where the signature says double, and so on), so MLflow's schema check sees
    exactly the types the model was logged with. Columns it cannot convert are left as
    they are for the model to refuse with its own message."""
    metadata = getattr(model, "metadata", None)
    schema = metadata.get_input_schema() if metadata is not None else None
    if schema is None or not schema.has_input_names():
        return frame
    wanted = {}
    for name, kind in schema.input_types_dict().items():
        dtype = _SIGNATURE_DTYPES.get(getattr(kind, "name", str(kind)))
        if name in frame.columns and dtype and frame[name].dtype != dtype:
            wanted[name] = dtype
    if not wanted:
        return frame
    try:
        return frame.astype(wanted)
    except (TypeError, ValueError):
        return frame


@dataclass
class _Prediction:
    values: np.ndarray | None = None
    error: str | None = None
    duration_ms: float = 0.0


def _predict_cycles(
    model: Any,
    inputs: pd.DataFrame,
    spans: Sequence[tuple[int, int]],
    timeout: float,
) -> list[_Prediction]:
    """Predict the concatenated cases of several cycles (``spans`` index ``inputs``) in one
    call; when that call fails as a whole, retry cycle by cycle so a failure stays with the
    cycles it belongs to. A timeout is not retried: it is every cycle's failure."""

    def one_call(frame: pd.DataFrame, n: int) -> tuple[np.ndarray | None, str | None, float]:
        began = time.perf_counter()
        try:
            output = _call_with_timeout(lambda: model.predict(frame), timeout)
            values = forecasts.check_values(output, n, finite=False)
            return values, None, (time.perf_counter() - began) * 1000
        except CandidateTimeout as error:
            return None, str(error), (time.perf_counter() - began) * 1000
        except Exception as error:  # the model's own failure, recorded for this cycle
            return None, _describe(error), (time.perf_counter() - began) * 1000

    total = spans[-1][1] - spans[0][0] if spans else 0
    values, error, took = one_call(inputs, total)
    if error is None or len(spans) == 1 or error.startswith("timed out"):
        share = took / max(len(spans), 1)
        results = []
        for low, high in spans:
            if error is not None:
                results.append(_Prediction(error=error, duration_ms=share))
                continue
            try:
                checked = forecasts.check_values(values[low:high], high - low)
                results.append(_Prediction(values=checked, duration_ms=share))
            except ValueError as bad:
                results.append(_Prediction(error=str(bad), duration_ms=share))
        return results
    results = []
    for low, high in spans:
        part, error, took = one_call(inputs.iloc[low:high], high - low)
        if error is None:
            try:
                part = forecasts.check_values(part, high - low)
            except ValueError as bad:
                part, error = None, str(bad)
        results.append(_Prediction(values=part, error=error, duration_ms=took))
    return results


# --- claiming -------------------------------------------------------------------------------


@dataclass
class _Claimed:
    cycle_id: int
    window_start: datetime
    window_end: datetime
    prior_status: str
    attempt: int
    action: str  # ran, rerun, resumed
    run_id: int = 0
    results: dict[int, tuple[str, int]] = field(
        default_factory=dict
    )  # candidate → (status, failures)


def _runners(session: Session, routine: Routine) -> list[_Runner]:
    found = session.scalars(
        select(Candidate)
        .where(Candidate.routine_id == routine.id, Candidate.stage.in_(("operational", "parallel")))
        .order_by(Candidate.id)
    ).all()
    operational = [c for c in found if c.stage == "operational"]
    if not operational:
        raise Conflict(
            f"routine {routine.name} has no operational candidate, so it has no cycles to run; "
            f"make one operational first (`numex routine bootstrap {routine.name} CANDIDATE`)"
        )
    ordered = operational + [c for c in found if c.stage == "parallel"]
    return [_Runner(c.id, c.name, c.stage, c.model_uri, tuple(c.features or ())) for c in ordered]


def _ensure_cycles(
    session: Session, routine_id: int, windows: Sequence[tuple[datetime, datetime]]
) -> None:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.connection().execute(
        insert(Cycle.__table__).on_conflict_do_nothing(
            index_elements=["routine_id", "window_start"]
        ),
        [
            {
                "routine_id": routine_id,
                "window_start": start,
                "window_end": end,
                "status": "pending",
                "runs": 0,
                "n_cases": 0,
                "n_verified": 0,
            }
            for start, end in windows
        ],
    )


def _claim(
    rt: Runtime,
    routine_name: str,
    windows: Sequence[tuple[datetime, datetime]],
    actor: Actor,
    token: str,
    rerun: bool,
) -> tuple[int, list[_Runner], list[_Claimed], list[CycleOutcome]]:
    """Claim the claimable cycles among ``windows``; the rest come back as outcomes."""
    stale = _stale_before(rt)
    now = utcnow()
    with rt.transaction() as session:
        routine = get_routine(session, routine_name)
        runners = _runners(session, routine)
        _ensure_cycles(session, routine.id, windows)
        starts = [start for start, _ in windows]
        rows = {
            c.window_start: c
            for c in session.scalars(
                select(Cycle).where(Cycle.routine_id == routine.id, Cycle.window_start.in_(starts))
            )
        }
        prior = {c.id: (c.status, c.locked_by) for c in rows.values()}
        free = or_(Cycle.locked_by.is_(None), Cycle.locked_at < stale)
        if rerun:
            claimable = free
        else:
            claimable = or_(
                and_(Cycle.status == "pending", Cycle.locked_by.is_(None)),
                and_(Cycle.status == "running", Cycle.locked_at < stale),
            )
        candidates = [c.id for c in rows.values()]
        if session.get_bind().dialect.name == "postgresql":
            # Lock what is claimable now and skip rows another claimer holds: no waiting
            # on, and no deadlock with, a scheduler claiming an overlapping batch.
            candidates = session.scalars(
                select(Cycle.id)
                .where(Cycle.id.in_(candidates), claimable)
                .order_by(Cycle.id)
                .with_for_update(skip_locked=True)
            ).all()
        claimed_rows = session.execute(
            update(Cycle)
            .where(Cycle.id.in_(candidates), claimable)
            .values(
                locked_by=token,
                locked_at=now,
                status="running",
                runs=Cycle.runs + 1,
                started_at=now,
            )
            .returning(Cycle.id, Cycle.runs)
            .execution_options(synchronize_session=False)
        ).all()
        attempts = dict(claimed_rows)
        claimed: list[_Claimed] = []
        others: list[CycleOutcome] = []
        for start, end in windows:
            row = rows[start]
            if row.id not in attempts:
                session.refresh(row)
                busy = row.locked_by is not None and row.status in ("running", "pending")
                others.append(
                    CycleOutcome(
                        routine=routine.name,
                        window_start=start,
                        window_end=end,
                        action="busy" if busy else "skipped",
                        status=row.status,
                        cycle_id=row.id,
                        attempt=row.runs,
                        n_cases=row.n_cases,
                        n_verified=row.n_verified,
                        error=row.error,
                    )
                )
                continue
            status, holder = prior[row.id]
            action = "ran"
            if status in DONE_STATUSES:
                action = "rerun"
            elif status == "running" or holder is not None or attempts[row.id] > 1:
                action = "resumed"
            claimed.append(_Claimed(row.id, start, end, status, attempts[row.id], action))
        if claimed:
            ids = [c.cycle_id for c in claimed]
            results: dict[int, dict[int, tuple[str, int]]] = {}
            for cycle_id, candidate_id, status, failures in session.execute(
                select(
                    CandidateCycleResult.cycle_id,
                    CandidateCycleResult.candidate_id,
                    CandidateCycleResult.status,
                    CandidateCycleResult.failures,
                ).where(CandidateCycleResult.cycle_id.in_(ids))
            ):
                results.setdefault(cycle_id, {})[candidate_id] = (status, failures)
            runs = []
            for c in claimed:
                c.results = results.get(c.cycle_id, {})
                note = ""
                if c.action == "resumed":
                    note = "resumed: an earlier attempt did not finish"
                run = CycleRun(
                    cycle_id=c.cycle_id,
                    attempt=c.attempt,
                    is_rerun=c.action == "rerun",
                    status="running",
                    actor=actor.name,
                    note=note,
                    started_at=now,
                )
                session.add(run)
                runs.append(run)
            session.flush()
            for c, run in zip(claimed, runs, strict=True):
                c.run_id = run.id
        return routine.id, runners, claimed, others


def _stale_before(rt: Runtime) -> datetime:
    return utcnow() - pd.Timedelta(seconds=rt.settings.cycle_lock_timeout_s).to_pytimedelta()


def _release(rt: Runtime, claimed: Sequence[_Claimed], token: str, reason: str) -> None:
    """Give back cycles this process claimed but did not finish (their status as before)."""
    try:
        with rt.transaction() as session:
            for c in claimed:
                restored = c.prior_status if c.prior_status in DONE_STATUSES else "pending"
                session.execute(
                    update(Cycle)
                    .where(Cycle.id == c.cycle_id, Cycle.locked_by == token)
                    .values(status=restored, locked_by=None, locked_at=None)
                )
                session.execute(
                    update(CycleRun)
                    .where(CycleRun.id == c.run_id)
                    .values(status="interrupted", finished_at=utcnow(), note=reason[:2000])
                )
    except Exception:  # the claims go stale and are retried later; say so, don't mask
        log.exception("could not release %d claimed cycle(s)", len(claimed))


# --- running ------------------------------------------------------------------------------


def _run_batch(
    rt: Runtime,
    routine_name: str,
    data: RoutineData,
    windows: Sequence[tuple[datetime, datetime]],
    actor: Actor,
    rerun: bool,
) -> list[CycleOutcome]:
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    routine_id, runners, claimed, outcomes = _claim(rt, routine_name, windows, actor, token, rerun)
    if not claimed:
        return outcomes
    try:
        predictions = _forecast(rt, data, runners, claimed)
        outcomes += _store(
            rt, routine_id, routine_name, data, runners, claimed, predictions, actor, token
        )
    except BaseException as error:
        _release(rt, claimed, token, f"interrupted: {_describe(error)}")
        raise
    outcomes.sort(key=lambda o: o.window_start)
    return outcomes


def _needs(claimed: _Claimed, runner: _Runner) -> bool:
    status = claimed.results.get(runner.id, (None, 0))[0]
    return status != "ok"


def _forecast(
    rt: Runtime,
    data: RoutineData,
    runners: Sequence[_Runner],
    claimed: Sequence[_Claimed],
) -> dict[tuple[int, int], _Prediction]:
    """Every needed (cycle, candidate) prediction, keyed by (cycle id, candidate id)."""
    rows = {c.cycle_id: data.rows(c.window_start, c.window_end) for c in claimed}
    predictions: dict[tuple[int, int], _Prediction] = {}
    timeout = rt.settings.candidate_timeout_s
    for runner in runners:
        wanted = [c for c in claimed if _needs(c, runner) and len(rows[c.cycle_id])]
        if not wanted:
            continue
        features = list(runner.features or data.spec.features)
        missing = [f for f in features if f not in data.frame.columns]
        message = None
        if missing:
            message = f"needs column(s) {', '.join(missing)} that the routine data does not have"
        else:
            try:
                model = mlflow_bridge.load_model(rt.settings, runner.model_uri)
            except Exception as error:  # cannot load: this candidate fails in each cycle
                message = f"cannot load model: {_describe(error)}"
        if message is not None:
            for c in wanted:
                predictions[c.cycle_id, runner.id] = _Prediction(error=message)
            continue
        positions = np.concatenate([rows[c.cycle_id] for c in wanted])
        spans, low = [], 0
        for c in wanted:
            spans.append((low, low + len(rows[c.cycle_id])))
            low += len(rows[c.cycle_id])
        inputs = model_inputs(model, data.frame.iloc[positions][features].reset_index(drop=True))
        for c, prediction in zip(
            wanted, _predict_cycles(model, inputs, spans, timeout), strict=True
        ):
            predictions[c.cycle_id, runner.id] = prediction
    return predictions


def _store(
    rt: Runtime,
    routine_id: int,
    routine_name: str,
    data: RoutineData,
    runners: Sequence[_Runner],
    claimed: Sequence[_Claimed],
    predictions: dict[tuple[int, int], _Prediction],
    actor: Actor,
    token: str,
) -> list[CycleOutcome]:
    now = utcnow()
    outcomes: list[CycleOutcome] = []
    with rt.transaction() as session:
        routine = session.get(Routine, routine_id)
        held_query = select(Cycle.id).where(
            Cycle.id.in_([c.cycle_id for c in claimed]), Cycle.locked_by == token
        )
        if session.get_bind().dialect.name == "postgresql":
            held_query = held_query.with_for_update()
        held = set(session.scalars(held_query))
        lost = [c for c in claimed if c.cycle_id not in held]
        mine = [c for c in claimed if c.cycle_id in held]
        for c in lost:
            outcomes.append(
                CycleOutcome(
                    routine_name,
                    c.window_start,
                    c.window_end,
                    "lost",
                    "running",
                    c.cycle_id,
                    c.attempt,
                )
            )
            session.execute(
                update(CycleRun)
                .where(CycleRun.id == c.run_id)
                .values(
                    status="lost",
                    finished_at=now,
                    note="claim went stale and another process took the cycle over; nothing stored",
                )
            )
        rows = {c.cycle_id: data.rows(c.window_start, c.window_end) for c in mine}
        positions = np.concatenate([rows[c.cycle_id] for c in mine]) if mine else np.array([], int)
        case_ids = forecasts.upsert_cases(session, routine, data.cases.take(positions))
        ids_of: dict[int, np.ndarray] = {}
        low = 0
        for c in mine:
            ids_of[c.cycle_id] = case_ids[low : low + len(rows[c.cycle_id])]
            low += len(rows[c.cycle_id])

        chunks: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        new_results: list[dict[str, Any]] = []
        per_cycle: dict[int, list[CandidateOutcome]] = {c.cycle_id: [] for c in mine}
        for c in mine:
            for runner in runners:
                prior_status, prior_failures = c.results.get(runner.id, (None, 0))
                if prior_status == "ok":
                    per_cycle[c.cycle_id].append(
                        CandidateOutcome(
                            runner.id, runner.name, runner.stage, "kept", failures=prior_failures
                        )
                    )
                    continue
                prediction = predictions.get((c.cycle_id, runner.id))
                if prediction is None:  # an empty window: nothing to forecast, no attempt
                    continue
                ok = prediction.error is None
                n = len(prediction.values) if ok else 0
                failures = prior_failures + (0 if ok else 1)
                if ok:
                    chunks.append((c.cycle_id, runner.id, ids_of[c.cycle_id], prediction.values))
                values = {
                    "stage": runner.stage,
                    "status": "ok" if ok else "failed",
                    "n_forecasts": n,
                    "error": prediction.error,
                    "duration_ms": round(prediction.duration_ms, 3),
                    "failures": failures,
                }
                if prior_status is None:
                    new_results.append(
                        {
                            "cycle_id": c.cycle_id,
                            "candidate_id": runner.id,
                            "created_at": now,
                            **values,
                        }
                    )
                else:
                    if ok:
                        values["error"] = _recovered(session, c.cycle_id, runner.id)
                    session.execute(
                        update(CandidateCycleResult)
                        .where(
                            CandidateCycleResult.cycle_id == c.cycle_id,
                            CandidateCycleResult.candidate_id == runner.id,
                        )
                        .values(**values)
                    )
                per_cycle[c.cycle_id].append(
                    CandidateOutcome(
                        runner.id,
                        runner.name,
                        runner.stage,
                        "ok" if ok else "failed",
                        n,
                        prediction.error,
                        round(prediction.duration_ms, 3),
                        failures,
                    )
                )
        if new_results:
            session.execute(CandidateCycleResult.__table__.insert(), new_results)
        if chunks:
            sizes = [len(ids) for _, _, ids, _ in chunks]
            forecasts.insert_forecast_rows(
                session,
                cycle_ids=np.repeat([cycle for cycle, _, _, _ in chunks], sizes).astype(np.int64),
                prediction_request_ids=np.full(sum(sizes), -1, dtype=np.int64),
                candidate_ids=np.repeat([cand for _, cand, _, _ in chunks], sizes).astype(np.int64),
                case_ids=np.concatenate([ids for _, _, ids, _ in chunks]),
                values=np.concatenate([values for _, _, _, values in chunks]),
            )
        forecasts.store_routine_observations(session, case_ids, data.target[positions])
        verified = verified_counts(session, [c.cycle_id for c in mine])
        operational = runners[0]
        cycle_rows: list[dict[str, Any]] = []
        run_rows: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []  # audited together, one event per batch
        for c in mine:
            candidates = per_cycle[c.cycle_id]
            n_cases = len(rows[c.cycle_id])
            n_verified = verified.get(c.cycle_id, 0)
            op = next((o for o in candidates if o.candidate_id == operational.id), None)
            error = None
            if op is not None and op.status == "failed":
                status = "failed"
                error = f"operational candidate {op.name} failed: {op.error}"
            else:
                status = _verification_status(n_cases, n_verified)
            cycle_rows.append(
                {
                    "b_id": c.cycle_id,
                    "status": status,
                    "n_cases": n_cases,
                    "n_verified": n_verified,
                    "error": error,
                    "finished_at": now,
                    "verified_at": now if status == "verified" else None,
                }
            )
            run_rows.append(
                {"b_id": c.run_id, "status": status, "note": _run_note(c, candidates, error)}
            )
            entry = {
                "cycle_id": c.cycle_id,
                "window_start": c.window_start.isoformat(),
                "attempt": c.attempt,
                "status": status,
                "n_cases": n_cases,
                "n_verified": n_verified,
                "failed": {o.name: o.error for o in candidates if o.status == "failed"},
            }
            if status == "failed" or c.action == "rerun":
                audit.record(
                    session,
                    actor,
                    "cycle.failed" if status == "failed" else "cycle.rerun",
                    "cycle",
                    c.cycle_id,
                    {
                        **entry,
                        "rerun": c.action == "rerun",
                        "previous_status": c.prior_status,
                        "candidates": {o.name: o.status for o in candidates},
                        "error": error,
                    },
                    routine=routine_name,
                )
            else:
                plain.append({**entry, "resumed": c.action == "resumed"})
            if status == "failed":
                session.add(
                    Alert(
                        routine_id=routine_id,
                        candidate_id=operational.id,
                        kind="cycle_failed",
                        severity="critical",
                        message=f"cycle {c.window_start.isoformat(sep=' ')} of {routine_name} "
                        f"failed: {error}",
                    )
                )
                log.error("%s cycle %s failed: %s", routine_name, c.window_start, error)
            outcomes.append(
                CycleOutcome(
                    routine=routine_name,
                    window_start=c.window_start,
                    window_end=c.window_end,
                    action=c.action,
                    status=status,
                    cycle_id=c.cycle_id,
                    attempt=c.attempt,
                    n_cases=n_cases,
                    n_verified=n_verified,
                    error=error,
                    candidates=candidates,
                )
            )
        connection = session.connection()
        cycles_table, runs_table = Cycle.__table__, CycleRun.__table__
        if cycle_rows:
            connection.execute(
                cycles_table.update()
                .where(cycles_table.c.id == bindparam("b_id"))
                .values(locked_by=None, locked_at=None),
                cycle_rows,
            )
            connection.execute(
                runs_table.update()
                .where(runs_table.c.id == bindparam("b_id"))
                .values(finished_at=utcnow()),
                run_rows,
            )
        if plain:
            audit.record(
                session,
                actor,
                "cycles.run",
                "routine",
                routine_id,
                {
                    "candidates": [r.name for r in runners],
                    "operational": operational.name,
                    "cycles": plain,
                },
                routine=routine_name,
            )
    return outcomes


def _recovered(session: Session, cycle_id: int, candidate_id: int) -> str | None:
    earlier = session.scalar(
        select(CandidateCycleResult.error).where(
            CandidateCycleResult.cycle_id == cycle_id,
            CandidateCycleResult.candidate_id == candidate_id,
        )
    )
    return f"recovered on a re-run; earlier failure: {earlier}" if earlier else None


def _run_note(c: _Claimed, candidates: Sequence[CandidateOutcome], error: str | None) -> str:
    parts = []
    if c.action == "rerun":
        kept = [o.name for o in candidates if o.status == "kept"]
        run = [o.name for o in candidates if o.status != "kept"]
        parts.append(
            f"re-run of a {c.prior_status} cycle; kept: {', '.join(kept) or 'none'}; "
            f"run: {', '.join(run) or 'none'}"
        )
    elif c.action == "resumed":
        parts.append("resumed: an earlier attempt did not finish")
    failed = [f"{o.name}: {o.error}" for o in candidates if o.status == "failed"]
    if failed:
        parts.append("failed: " + "; ".join(failed))
    if error:
        parts.append(error)
    return " | ".join(parts)[:4000]


def _verification_status(n_cases: int, n_verified: int) -> str:
    return "verified" if n_cases and n_verified >= n_cases else "forecast"


def verified_counts(session: Session, cycle_ids: Sequence[int]) -> dict[int, int]:
    """Per cycle: how many of the cases it forecast have an observation."""
    counts: dict[int, int] = {}
    ids = list(cycle_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        counts.update(
            session.execute(
                select(Forecast.cycle_id, func.count(func.distinct(Forecast.case_id)))
                .join(Observation, Observation.case_id == Forecast.case_id)
                .where(Forecast.cycle_id.in_(chunk))
                .group_by(Forecast.cycle_id)
            ).all()
        )
    return counts


def reverify(session: Session, routine: Routine, cycle_ids: Sequence[int]) -> dict[str, int]:
    """Recount the verified cases of these cycles and move each between ``forecast`` and
    ``verified`` (a failed cycle keeps its status; a running one is left to its runner).
    Returns how many were looked at and how many became verified."""
    counts = verified_counts(session, cycle_ids)
    now = utcnow()
    became = 0
    ids = list(cycle_ids)
    for start in range(0, len(ids), 500):
        for cycle in session.scalars(select(Cycle).where(Cycle.id.in_(ids[start : start + 500]))):
            if cycle.status in ("running", "pending"):
                continue
            cycle.n_verified = counts.get(cycle.id, 0)
            if cycle.status == "failed":
                continue
            status = _verification_status(cycle.n_cases, cycle.n_verified)
            if status == "verified" and cycle.status != "verified":
                cycle.verified_at = now
                became += 1
            cycle.status = status
    session.flush()
    return {"cycles": len(ids), "verified_now": became}


# --- public entry points -------------------------------------------------------------------


def _batches(
    data: RoutineData, windows: Sequence[tuple[datetime, datetime]]
) -> list[list[tuple[datetime, datetime]]]:
    batches: list[list[tuple[datetime, datetime]]] = []
    current: list[tuple[datetime, datetime]] = []
    cases = 0
    for window in windows:
        n = len(data.rows(*window))
        if current and (cases + n > BATCH_CASES or len(current) >= BATCH_CYCLES):
            batches.append(current)
            current, cases = [], 0
        current.append(window)
        cases += n
    if current:
        batches.append(current)
    return batches


def _prepare(rt: Runtime, routine_name: str, actor: Actor) -> RoutineData:
    actor.require("ops", "admin", to="run cycles")
    with rt.read() as session:
        routine = get_routine(session, routine_name)
        _ = routine.current  # load the versions while the session is open
        return routine_data(routine)


def run_cycle(
    rt: Runtime, routine: str, at: Any, actor: Actor, rerun: bool = False
) -> CycleOutcome:
    """Run the cycle of ``routine`` whose window holds the time ``at``.

    A cycle that is already done is skipped (``action="skipped"``) unless ``rerun``;
    one held by another process comes back as ``busy``. See the module docstring for
    what a run, a re-run and a failure record. Needs role ops (or admin).
    """
    data = _prepare(rt, routine, actor)
    window = window_at(data.spec, at)
    (outcome,) = _run_batch(rt, routine, data, [window], actor, rerun)
    return outcome


def backfill(
    rt: Runtime,
    routine: str,
    start: Any,
    end: Any,
    actor: Actor,
    progress: Progress | None = None,
    *,
    rerun: bool = False,
) -> BackfillReport:
    """Run every cycle of ``routine`` whose window starts in ``[start, end]`` (an ``end``
    given as a date includes its day), oldest first, in batches.

    Cycles already done are skipped (unless ``rerun``), so a backfill interrupted part-way
    carries on where it stopped when run again. ``progress`` is called once per window
    with its :class:`CycleOutcome`. Needs role ops (or admin).
    """
    data = _prepare(rt, routine, actor)
    windows = windows_between(data.spec, start, end)
    return _run_windows(rt, routine, data, windows, actor, progress, rerun=rerun)


def _run_windows(
    rt: Runtime,
    routine: str,
    data: RoutineData,
    windows: Sequence[tuple[datetime, datetime]],
    actor: Actor,
    progress: Progress | None,
    *,
    rerun: bool = False,
) -> BackfillReport:
    report = BackfillReport(routine)
    for batch in _batches(data, windows):
        for outcome in _run_batch(rt, routine, data, batch, actor, rerun):
            report.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return report


def due_windows(
    rt: Runtime, routine: str, now: datetime | None = None
) -> list[tuple[datetime, datetime]]:
    """The routine's cycle windows that have ended by ``now`` and still need running:
    never run, given back unfinished, or claimed by a process that went quiet."""
    now = now or utcnow()
    stale = _stale_before(rt)
    with rt.read() as session:
        found = get_routine(session, routine)
        data = routine_data(found)
        state = {
            start: (status, locked_at)
            for start, status, locked_at in session.execute(
                select(Cycle.window_start, Cycle.status, Cycle.locked_at).where(
                    Cycle.routine_id == found.id
                )
            )
        }
    due = []
    for start, end in specs.cycle_windows(data.spec):
        start, end = start.to_pydatetime(), end.to_pydatetime()
        if end > now:
            break
        status, locked_at = state.get(start, ("pending", None))
        abandoned = status == "running" and (locked_at is None or locked_at < stale)
        if status == "pending" or abandoned:
            due.append((start, end))
    return due


def run_due(
    rt: Runtime,
    actor: Actor,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> list[BackfillReport]:
    """One scheduler pass: run the due cycles of every routine that has an operational
    candidate. A routine whose data cannot be loaded is reported and skipped."""
    actor.require("ops", "admin", to="run cycles")
    with rt.read() as session:
        names = session.scalars(
            select(Routine.name)
            .join(Candidate, Candidate.routine_id == Routine.id)
            .where(Candidate.stage == "operational")
            .order_by(Routine.name)
        ).all()
    reports = []
    for name in names:
        try:
            windows = due_windows(rt, name, now)
            if not windows:
                reports.append(BackfillReport(name))
                continue
            data = _prepare(rt, name, actor)
            reports.append(_run_windows(rt, name, data, windows, actor, progress))
        except (NumexError, ValueError) as error:  # this routine's problem; the others go on
            log.error("scheduler: routine %s skipped: %s", name, error)
            reports.append(BackfillReport(name, error=str(error)))
    return reports


# --- reading ------------------------------------------------------------------------------


def failure_counts(
    session: Session, candidate_id: int, *, stage: str | None = None
) -> tuple[int, int]:
    """``(failures, attempts)`` of a candidate over the cycles it was run in.

    ``attempts``: cycles with a result for the candidate; ``failures``: those in which
    it failed — including failures a later re-run recovered. ``stage`` restricts to
    cycles run while the candidate was at that stage (e.g. ``parallel`` for the
    operational gate's ``max_failure_rate``).
    """
    query = select(func.count(), func.coalesce(func.sum(_failed_flag()), 0)).where(
        CandidateCycleResult.candidate_id == candidate_id
    )
    if stage is not None:
        query = query.where(CandidateCycleResult.stage == stage)
    attempts, failures = session.execute(query).one()
    return int(failures or 0), int(attempts or 0)


def _failed_flag():
    """1 for a result that failed, now or before a re-run recovered it; else 0."""
    failed = or_(CandidateCycleResult.status == "failed", CandidateCycleResult.failures > 0)
    return case((failed, 1), else_=0)


@dataclass
class CyclePage:
    cycles: list[dict[str, Any]]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page)) if self.per_page else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "page": self.page,
            "per_page": self.per_page,
            "total": self.total,
            "pages": self.pages,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def list_cycles(
    rt: Runtime,
    routine: str,
    *,
    page: int = 1,
    per_page: int = 50,
    status: str | None = None,
    newest_first: bool = True,
) -> CyclePage:
    """A page of the routine's cycles with each candidate's result in it."""
    if page < 1 or per_page < 1:
        raise InvalidInput("page and per_page must be positive integers")
    with rt.read() as session:
        found = get_routine(session, routine)
        query = select(Cycle).where(Cycle.routine_id == found.id)
        if status:
            query = query.where(Cycle.status == status)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        order = Cycle.window_start.desc() if newest_first else Cycle.window_start
        cycles = session.scalars(
            query.order_by(order).limit(per_page).offset((page - 1) * per_page)
        ).all()
        results: dict[int, list[dict[str, Any]]] = {}
        if cycles:
            for result, name in session.execute(
                select(CandidateCycleResult, Candidate.name)
                .join(Candidate, Candidate.id == CandidateCycleResult.candidate_id)
                .where(CandidateCycleResult.cycle_id.in_([c.id for c in cycles]))
                .order_by(CandidateCycleResult.candidate_id)
            ):
                results.setdefault(result.cycle_id, []).append(
                    {
                        "candidate_id": result.candidate_id,
                        "candidate": name,
                        "stage": result.stage,
                        "status": result.status,
                        "n_forecasts": result.n_forecasts,
                        "failures": result.failures,
                        "error": result.error,
                        "duration_ms": result.duration_ms,
                    }
                )
        rows = [
            {
                "id": c.id,
                "window_start": _iso(c.window_start),
                "window_end": _iso(c.window_end),
                "status": c.status,
                "runs": c.runs,
                "n_cases": c.n_cases,
                "n_verified": c.n_verified,
                "error": c.error,
                "started_at": _iso(c.started_at),
                "finished_at": _iso(c.finished_at),
                "verified_at": _iso(c.verified_at),
                "candidates": results.get(c.id, []),
            }
            for c in cycles
        ]
    return CyclePage(rows, total, page, per_page)


def find_cycle(session: Session, routine: Routine, reference: str | int) -> Cycle:
    """A cycle of ``routine`` by id or by a time inside its window."""
    text = str(reference).strip()
    if text.isdigit():
        cycle = session.scalar(
            select(Cycle).where(Cycle.routine_id == routine.id, Cycle.id == int(text))
        )
    else:
        stamp = _moment(text, "cycle")
        cycle = session.scalar(
            select(Cycle).where(
                Cycle.routine_id == routine.id,
                Cycle.window_start <= stamp.to_pydatetime(),
                Cycle.window_end > stamp.to_pydatetime(),
            )
        )
    if cycle is None:
        raise NotFound(
            f"routine {routine.name} has no cycle {reference!r}; give a cycle id or a time "
            "inside a cycle's window that has been run"
        )
    return cycle


def candidate_failure_summary(session: Session, routine: Routine) -> list[dict[str, Any]]:
    """Per candidate of the routine that ran in cycles: attempts, failures, failure rate."""
    rows = session.execute(
        select(
            Candidate.id,
            Candidate.name,
            Candidate.stage,
            func.count(CandidateCycleResult.id),
            func.coalesce(func.sum(_failed_flag()), 0),
        )
        .join(CandidateCycleResult, CandidateCycleResult.candidate_id == Candidate.id)
        .where(Candidate.routine_id == routine.id)
        .group_by(Candidate.id, Candidate.name, Candidate.stage)
        .order_by(Candidate.id)
    ).all()
    return [
        {
            "candidate_id": cid,
            "candidate": name,
            "stage": stage,
            "attempts": int(attempts),
            "failures": int(failures),
            "failure_rate": (int(failures) / int(attempts)) if attempts else None,
        }
        for cid, name, stage, attempts, failures in rows
    ]


def routine_section(
    rt: Runtime, routine: str, *, recent: int = 15, chart_cycles: int = 2000
) -> dict[str, Any]:
    """What the routine page shows about its cycles: counts by status, the latest cycles,
    each candidate's failure rate, and per-cycle scores (RMSE, MAE, bias) of every
    candidate for the chart (the latest ``chart_cycles`` cycles)."""
    with rt.read() as session:
        found = get_routine(session, routine)
        by_status = dict(
            session.execute(
                select(Cycle.status, func.count())
                .where(Cycle.routine_id == found.id)
                .group_by(Cycle.status)
            ).all()
        )
        failures = candidate_failure_summary(session, found)
        newest = session.scalars(
            select(Cycle.window_start)
            .where(Cycle.routine_id == found.id)
            .order_by(Cycle.window_start.desc())
            .offset(chart_cycles - 1)
            .limit(1)
        ).first()
        scores = forecasts.cycle_scores(session, found, start=newest)
        names = dict(
            session.execute(
                select(Candidate.id, Candidate.name).where(Candidate.routine_id == found.id)
            ).all()
        )
        stages = dict(
            session.execute(
                select(Candidate.id, Candidate.stage).where(Candidate.routine_id == found.id)
            ).all()
        )
    series = []
    for candidate_id, part in scores.groupby("candidate_id", sort=True):
        series.append(
            {
                "candidate_id": int(candidate_id),
                "candidate": names.get(int(candidate_id), f"#{candidate_id}"),
                "stage": stages.get(int(candidate_id)),
                "cycles": [t.isoformat() for t in pd.to_datetime(part["window_start"])],
                "n": part["n"].astype(int).tolist(),
                "rmse": [_finite(v) for v in part["rmse"]],
                "mae": [_finite(v) for v in part["mae"]],
                "bias": [_finite(v) for v in part["bias"]],
            }
        )
    series.sort(key=lambda s: (s["stage"] != "operational", s["candidate_id"]))
    return {
        "routine": routine,
        "total": sum(by_status.values()),
        "by_status": {status: by_status.get(status, 0) for status in _STATUS_ORDER},
        "recent": list_cycles(rt, routine, per_page=recent).cycles,
        "failures": failures,
        "chart": series,
    }


_STATUS_ORDER = ("verified", "forecast", "failed", "running", "pending")


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
