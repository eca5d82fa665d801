"""Forecast storage: cases, forecasts and observations at scale, and the queries the
scorecard and the routine page read.

Rows are written in bulk, never one ORM object at a time: on SQLite one
``executemany`` per table on the session's connection; on PostgreSQL ``COPY``
through the raw psycopg connection (into a temporary table first where rows may
already exist, then ``INSERT ... SELECT ... ON CONFLICT``). Everything runs in
the caller's transaction.

A **case** is stored once per routine under its canonical key
(:func:`numex.specs.case_keys`), with its valid time and, in ``attributes``,
its scorecard segment values: ``{"segments": {"lead": 1, "season": "DJF"}}``.

A **forecast** comes from exactly one origin: a cycle (``cycle_id``) or an
online request (``prediction_request_id``). Both pair with observations the
same way, through the case.

An **observation** is the truth for a case, one per case. A different value for
a case that already has one is a *correction*: applied only when the caller asks
(the observations service does, and audits each one), otherwise kept and
reported as a conflict — never a silent overwrite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Text, and_, bindparam, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from numex import specs
from numex.db import (
    Candidate,
    Case,
    Cycle,
    Forecast,
    Observation,
    PredictionRequest,
    Routine,
    utcnow,
)
from numex.services.errors import Conflict, InvalidInput

#: ``Case.attributes`` key holding the segment values.
SEGMENTS = "segments"
#: Observation source for targets read from the routine's own data during a cycle.
ROUTINE_DATA_SOURCE = "routine data"
#: Above this many keys a lookup reads the routine's cases by valid-time range instead of
#: sending the keys themselves.
_KEY_LOOKUP_LIMIT = 500
#: Keys per ``IN (...)`` list.
IN_CHUNK = 500
#: How SQLAlchemy writes a DateTime on SQLite; rows written in bulk must match it exactly.
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


# --- cases ------------------------------------------------------------------------------


@dataclass
class CaseRows:
    """Cases ready to store: canonical keys, naive-UTC valid times, attributes as JSON text.

    All three arrays are aligned with the rows of the frame they were built from.
    """

    keys: np.ndarray  # object (str)
    valid_times: np.ndarray  # datetime64[ns]
    attributes: np.ndarray  # object (JSON text)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: np.ndarray | slice) -> CaseRows:
        return CaseRows(self.keys[index], self.valid_times[index], self.attributes[index])

    @classmethod
    def concat(cls, parts: Sequence[CaseRows]) -> CaseRows:
        if not parts:
            return cls(np.array([], dtype=object), np.array([], "datetime64[ns]"), np.array([]))
        return cls(
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.valid_times for p in parts]),
            np.concatenate([p.attributes for p in parts]),
        )


def _json_native(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _naive_utc(values: pd.Series) -> pd.Series:
    times = pd.to_datetime(values)
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.astype("datetime64[ns]")


def case_rows(frame: pd.DataFrame, routine: specs.RoutineSpec) -> CaseRows:
    """Keys, valid times and segment attributes of every row of ``frame``.

    ``frame`` needs the routine's case key columns and time column; a segment whose
    column is absent is stored as null. Raises InvalidInput naming missing columns or
    rows whose key cannot be read.
    """
    needed = list(dict.fromkeys([*routine.case_keys, routine.time_column]))
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise InvalidInput(
            f"cases of routine {routine.name} need column(s) {', '.join(missing)}; "
            f"columns present: {', '.join(map(str, frame.columns)) or 'none'}"
        )
    try:
        keys = specs.case_keys(frame, routine).to_numpy(dtype=object)
        times = _naive_utc(frame[routine.time_column])
    except (ValueError, TypeError) as error:
        raise InvalidInput(f"cases of routine {routine.name}: {error}") from error
    if times.isna().any():
        raise InvalidInput(f"cases of routine {routine.name}: a case's time is missing")
    present = [s for s in routine.segments if s.column is None or s.column in frame.columns]
    partial = routine.model_copy(update={"segments": present})
    segments = specs.segment_values(frame, partial) if present else pd.DataFrame(index=frame.index)
    names = [s.name for s in routine.segments]
    columns = []
    for name in names:
        if name in segments:
            values = segments[name].astype(object)
            columns.append(values.where(values.notna(), None).tolist())
        else:
            columns.append([None] * len(frame))
    # Few distinct segment combinations: serialise each once.
    combos = pd.Series(
        list(zip(*columns, strict=True)) if names else [()] * len(frame), dtype=object
    )
    texts = {
        combo: json.dumps(
            {SEGMENTS: {n: _json_native(v) for n, v in zip(names, combo, strict=True)}}
        )
        for combo in combos.unique()
    }
    attributes = combos.map(texts).to_numpy(dtype=object)
    return CaseRows(keys, times.to_numpy(dtype="datetime64[ns]"), attributes)


def upsert_cases(
    session: Session,
    routine: Routine,
    frame: pd.DataFrame | CaseRows,
    spec: specs.RoutineSpec | None = None,
) -> np.ndarray:
    """Store the cases of ``frame`` (new keys inserted, existing ones left as they are) and
    return their ids, aligned with the rows of ``frame``.

    ``frame`` has the routine's key and time columns (segment columns are read when
    present), or is a :class:`CaseRows` built by :func:`case_rows`. A key repeated
    within ``frame`` is an InvalidInput.
    """
    rows = frame if isinstance(frame, CaseRows) else case_rows(frame, spec or _spec(routine))
    if len(rows) == 0:
        return np.array([], dtype=np.int64)
    repeated = (
        pd.Series(rows.keys).duplicated() if len(set(rows.keys.tolist())) < len(rows) else None
    )
    if repeated is not None:
        example = rows.keys[repeated.to_numpy()][0]
        raise InvalidInput(
            f"{int(repeated.sum())} case(s) are given more than once, e.g. {example!r}; "
            "each case may appear once"
        )
    _insert_cases(session, routine.id, rows)
    ids = _lookup_case_ids(session, routine.id, rows.keys, rows.valid_times)
    if (ids < 0).any():  # cannot happen unless a concurrent delete: say so, never guess
        raise Conflict("cases vanished while they were being stored; try again")
    return ids


def _insert_cases(session: Session, routine_id: int, rows: CaseRows) -> None:
    times = pd.DatetimeIndex(rows.valid_times)
    sqlite = session.connection().dialect.name == "sqlite"
    _bulk_insert(
        session,
        "cases",
        ["routine_id", "key", "valid_time", "attributes"],
        ["bigint", "varchar", "timestamp", "json"],
        list(
            zip(
                [routine_id] * len(rows),
                rows.keys.tolist(),
                times.strftime(SQLITE_TIME).tolist() if sqlite else times.to_pydatetime().tolist(),
                rows.attributes.tolist(),
                strict=True,
            )
        ),
        conflict="ON CONFLICT (routine_id, key) DO NOTHING",
    )


def _lookup_case_ids(
    session: Session, routine_id: int, keys: np.ndarray, valid_times: np.ndarray | None
) -> np.ndarray:
    """Case ids for ``keys`` (-1 where the routine has no such case)."""
    found: dict[str, int] = {}
    if len(keys) == 0:
        return np.array([], dtype=np.int64)
    if valid_times is not None and len(keys) > _KEY_LOOKUP_LIMIT:
        low, high = pd.Timestamp(valid_times.min()), pd.Timestamp(valid_times.max())
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            sql = "SELECT key, id FROM cases WHERE routine_id = ? AND valid_time BETWEEN ? AND ?"
            bounds = (low.strftime(SQLITE_TIME), high.strftime(SQLITE_TIME))
        else:
            sql = "SELECT key, id FROM cases WHERE routine_id = %s AND valid_time BETWEEN %s AND %s"
            bounds = (low.to_pydatetime(), high.to_pydatetime())
        # Plain tuples from the driver: a cycle's worth of cases is read back in one go.
        result = connection.exec_driver_sql(sql, (routine_id, *bounds))
        found.update(result.cursor.fetchall())
        result.close()
    wanted = [key for key in dict.fromkeys(keys.tolist()) if key not in found]
    connection = session.connection()  # Core rows: no ORM processing for two columns
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        found.update(
            connection.execute(
                select(Case.key, Case.id).where(Case.routine_id == routine_id, Case.key.in_(chunk))
            ).all()
        )
    return np.fromiter((found.get(key, -1) for key in keys.tolist()), np.int64, len(keys))


# --- forecasts ----------------------------------------------------------------------------


def check_values(values: Any, n_expected: int, *, finite: bool = True) -> np.ndarray:
    """``values`` as a 1-D float array of length ``n_expected`` with only finite numbers
    (``finite=False``: any numbers).

    Raises ValueError saying what is wrong (the shape, the count, how many NaN or
    infinite values and where the first is): the message a candidate failure records.
    """
    if isinstance(values, pd.DataFrame):
        if values.shape[1] != 1:
            raise ValueError(f"returned {values.shape[1]} columns; expected one value per case")
        values = values.iloc[:, 0]
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"returned values that are not numbers ({error})") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"returned an array of shape {array.shape}; expected one value per case")
    if len(array) != n_expected:
        raise ValueError(f"returned {len(array)} values for {n_expected} cases")
    bad = ~np.isfinite(array)
    if finite and bad.any():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(bad.sum()) - n_nan
        kinds = " and ".join(
            part
            for part in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "")
            if part
        )
        raise ValueError(
            f"returned {kinds} value(s) among {n_expected} (first at case #{int(np.argmax(bad))})"
        )
    return array


def store_forecasts(
    session: Session,
    *,
    candidate_id: int,
    case_ids: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    cycle_id: int | None = None,
    prediction_request_id: int | None = None,
) -> int:
    """Store one candidate's forecasts for ``case_ids`` under one origin: a cycle
    (``cycle_id``) or an online request (``prediction_request_id``), exactly one of them.

    Values must be finite, one per case; a case given twice, or forecasts that already
    exist for this origin, candidate and case, are refused (InvalidInput / Conflict):
    a stored forecast is never overwritten. Returns the number of rows stored.
    """
    if (cycle_id is None) == (prediction_request_id is None):
        raise InvalidInput("a forecast comes from exactly one cycle or one prediction request")
    case_ids = np.asarray(case_ids, dtype=np.int64)
    try:
        array = check_values(values, len(case_ids))
    except ValueError as error:
        raise InvalidInput(f"forecasts of candidate #{candidate_id}: {error}") from None
    if len(np.unique(case_ids)) != len(case_ids):
        raise InvalidInput(f"forecasts of candidate #{candidate_id}: a case is given twice")
    n = len(case_ids)
    insert_forecast_rows(
        session,
        cycle_ids=np.full(n, cycle_id if cycle_id is not None else -1, dtype=np.int64),
        prediction_request_ids=np.full(
            n, prediction_request_id if prediction_request_id is not None else -1, dtype=np.int64
        ),
        candidate_ids=np.full(n, candidate_id, dtype=np.int64),
        case_ids=case_ids,
        values=array,
    )
    return n


def insert_forecast_rows(
    session: Session,
    *,
    cycle_ids: np.ndarray,
    prediction_request_ids: np.ndarray,
    candidate_ids: np.ndarray,
    case_ids: np.ndarray,
    values: np.ndarray,
) -> None:
    """Bulk-insert already checked forecast rows (-1 in an origin column means NULL).

    The fast path under :func:`store_forecasts`, for callers (cycles) that store many
    origins and candidates at once. Duplicates raise Conflict.
    """
    if len(case_ids) == 0:
        return
    cycles = [None if v < 0 else v for v in cycle_ids.tolist()]
    requests = [None if v < 0 else v for v in prediction_request_ids.tolist()]
    rows = list(
        zip(
            cycles,
            requests,
            candidate_ids.tolist(),
            case_ids.tolist(),
            values.tolist(),
            strict=True,
        )
    )
    try:
        _bulk_insert(
            session,
            "forecasts",
            ["cycle_id", "prediction_request_id", "candidate_id", "case_id", "value"],
            ["bigint", "bigint", "bigint", "bigint", "double precision"],
            rows,
        )
    except (IntegrityError, _driver_integrity_error()) as error:
        raise Conflict(
            "some of these forecasts are already stored (same origin, candidate and case); "
            "stored forecasts are never overwritten"
        ) from error


# --- observations -------------------------------------------------------------------------


@dataclass
class ObservationReport:
    """What storing a batch of observations did.

    ``unknown_keys`` are keys of cases the routine does not have (not stored);
    ``conflicts`` are cases that already had a different value, kept because
    corrections were not asked for; ``corrections`` are values that replaced an
    earlier one. ``case_ids`` are the cases whose observation is new or changed.
    """

    received: int = 0
    stored: int = 0
    unchanged: int = 0
    corrected: int = 0
    conflicts: int = 0
    unknown: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    case_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    #: Aligned with the keys given: whether that observation is new or corrected.
    changed: np.ndarray = field(default_factory=lambda: np.array([], dtype=bool))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("case_ids", "changed")}


def store_observations(
    session: Session,
    routine: Routine,
    keys: np.ndarray,
    values: np.ndarray,
    *,
    source: str,
    valid_times: np.ndarray | None = None,
    correct: bool = False,
    case_ids: np.ndarray | None = None,
    max_listed: int = 100,
) -> ObservationReport:
    """Store observations given by case key (checked values: finite floats, unique keys).

    Observations for keys the routine has no case for are *not* stored and are
    reported (``unknown``, the first ``max_listed`` in ``unknown_keys``). An
    existing observation with the same value is left alone; with a different value
    it is replaced when ``correct`` (listed in ``corrections`` with old and new
    value) or kept and counted in ``conflicts``. ``case_ids`` may be given when the
    caller already knows them.
    """
    keys = np.asarray(keys, dtype=object)
    values = np.asarray(values, dtype=float)
    report = ObservationReport(received=len(keys), changed=np.zeros(len(keys), dtype=bool))
    if len(keys) == 0:
        return report
    if case_ids is None:
        case_ids = _lookup_case_ids(session, routine.id, keys, valid_times)
    known = case_ids >= 0
    report.unknown = int((~known).sum())
    report.unknown_keys = keys[~known][:max_listed].tolist()
    ids, vals, known_keys = case_ids[known], values[known], keys[known]
    existing = _existing_observations(session, ids)
    old = pd.Series(ids).map(existing).to_numpy(dtype=float)  # NaN where none yet
    new = np.isnan(old)
    same = ~new & (old == vals)
    differ = ~new & ~same
    report.unchanged = int(same.sum())
    _insert_observations(session, ids[new], vals[new], source)
    report.stored = int(new.sum())
    changed_ids = ids[new]
    if differ.any():
        if correct:
            session.connection().execute(
                Observation.__table__.update()
                .where(Observation.case_id == bindparam("b_case_id"))
                .values(value=bindparam("b_value"), source=source, received_at=utcnow()),
                [
                    {"b_case_id": int(i), "b_value": float(v)}
                    for i, v in zip(ids[differ], vals[differ], strict=True)
                ],
            )
            report.corrected = int(differ.sum())
            report.corrections = [
                {"case": k, "old": float(o), "new": float(v)}
                for k, o, v in zip(known_keys[differ], old[differ], vals[differ], strict=True)
            ][:max_listed]
            changed_ids = np.concatenate([changed_ids, ids[differ]])
        else:
            report.conflicts = int(differ.sum())
    report.case_ids = changed_ids
    changed = new | (differ if correct else np.zeros(len(new), dtype=bool))
    report.changed[np.flatnonzero(known)[changed]] = True
    return report


def _existing_observations(session: Session, case_ids: np.ndarray) -> dict[int, float]:
    found: dict[int, float] = {}
    unique = np.unique(case_ids).tolist()
    if not unique:
        return found
    if len(unique) > _KEY_LOOKUP_LIMIT:
        # One range scan over the primary-key span beats thousands of IN lists.
        rows = session.execute(
            select(Observation.case_id, Observation.value).where(
                Observation.case_id.between(unique[0], unique[-1])
            )
        ).all()
        wanted = set(unique)
        found.update((i, v) for i, v in rows if i in wanted)
        return found
    for start in range(0, len(unique), IN_CHUNK):
        chunk = unique[start : start + IN_CHUNK]
        found.update(
            session.execute(
                select(Observation.case_id, Observation.value).where(Observation.case_id.in_(chunk))
            ).all()
        )
    return found


def _insert_observations(
    session: Session,
    case_ids: np.ndarray,
    values: np.ndarray,
    source: str,
    *,
    skip_existing: bool = False,
) -> None:
    if len(case_ids) == 0:
        return
    now = utcnow()
    n = len(case_ids)
    sqlite = session.connection().dialect.name == "sqlite"
    _bulk_insert(
        session,
        "observations",
        ["case_id", "value", "source", "received_at"],
        ["bigint", "double precision", "varchar", "timestamp"],
        list(
            zip(
                case_ids.tolist(),
                values.tolist(),
                [source] * n,
                [now.strftime(SQLITE_TIME) if sqlite else now] * n,
                strict=True,
            )
        ),
        conflict="ON CONFLICT (case_id) DO NOTHING" if skip_existing else "",
    )


def store_routine_observations(session: Session, case_ids: np.ndarray, values: np.ndarray) -> int:
    """Store the routine data's targets as observations of these cases, where a case has
    none yet (an observation already there is kept). NaN targets are skipped.
    Returns how many rows were offered."""
    keep = np.isfinite(values)
    _insert_observations(
        session, case_ids[keep], values[keep], ROUTINE_DATA_SOURCE, skip_existing=True
    )
    return int(keep.sum())


# --- bulk paths -------------------------------------------------------------------------

#: From this many rows on, PostgreSQL gets COPY; fewer (an online request) go as one
#: executemany, which costs less than setting up a COPY.
_COPY_FROM = 1000


def _bulk_insert(
    session: Session,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows: list[tuple],
    *,
    conflict: str = "",
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order; times as SQLite text or datetimes) in
    the session's transaction by the fastest plain path of the backend: executemany on
    SQLite, COPY on PostgreSQL (through a temporary table when ``conflict`` is given)."""
    if not rows:
        return
    connection = session.connection()
    postgres = connection.dialect.name == "postgresql"
    if postgres and len(rows) >= _COPY_FROM:
        if conflict:
            _copy_then_insert(session, table, columns, types, rows, conflict=conflict)
        else:
            _copy(session, table, columns, rows)
        return
    marks = ", ".join(["%s" if postgres else "?"] * len(columns))
    connection.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) {conflict}".rstrip(), rows
    )


def _driver_integrity_error() -> type[Exception]:
    """psycopg's own IntegrityError: COPY runs on the raw connection, so a duplicate
    surfaces as the driver's error, not SQLAlchemy's."""
    try:
        from psycopg.errors import IntegrityError as PsycopgIntegrityError
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return IntegrityError
    return PsycopgIntegrityError


def _copy(session: Session, table: str, columns: Sequence[str], rows) -> None:
    """``COPY table (columns) FROM STDIN`` on the session's own connection (same
    transaction)."""
    raw = session.connection().connection.driver_connection
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _copy_then_insert(
    session: Session,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows,
    *,
    conflict: str,
) -> None:
    """COPY into a temporary table, then ``INSERT ... SELECT ... <conflict>``: COPY's speed
    with the target's conflict handling."""
    connection = session.connection()
    staging = f"_numex_stage_{table}"
    definition = ", ".join(f"{c} {t}" for c, t in zip(columns, types, strict=True))
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ({definition}) ON COMMIT DELETE ROWS"
    )
    connection.exec_driver_sql(f"TRUNCATE {staging}")
    _copy(session, staging, columns, rows)
    listed = ", ".join(columns)
    connection.exec_driver_sql(
        f"INSERT INTO {table} ({listed}) SELECT {listed} FROM {staging} {conflict}"
    )


# --- queries ------------------------------------------------------------------------------


def _spec(routine: Routine) -> specs.RoutineSpec:
    from numex.services.experiments import routine_spec

    return routine_spec(routine)


def cycle_labels(valid_times: np.ndarray | pd.Series, routine: specs.RoutineSpec) -> np.ndarray:
    """The cycle an online forecast counts in: the start of the routine's cycle window
    holding its valid time (the routine's cycle grid, extended beyond its cycle period)."""
    times = pd.to_datetime(pd.Series(valid_times)).to_numpy(dtype="datetime64[ns]")
    first = np.datetime64(routine.cycles.first.to_datetime64(), "ns")
    step = routine.cycles.step.to_timedelta64().astype("timedelta64[ns]").astype(np.int64)
    offsets = (times - first).astype(np.int64)
    return first + (np.floor_divide(offsets, step) * step).astype("timedelta64[ns]")


def paired_frame(
    session: Session,
    routine: Routine,
    candidate_id: int,
    reference_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    verified_only: bool = False,
    include_online: bool = True,
) -> pd.DataFrame:
    """The paired cases of ``candidate_id`` against ``reference_id``: the exact input of
    :func:`numex.scoring.scorecard.build_scorecard`.

    Columns: ``cycle`` (the window start of the cycle, a Timestamp), ``case`` (the
    case key), ``candidate``, ``reference``, ``observation`` (floats; NaN where the
    case has no observation yet — the scorecard excludes and counts those; pass
    ``verified_only`` to leave them out) and one column per segment of the routine.

    A pair is one occasion on which *both* forecast the case: the same cycle, or the
    same online request. Online forecasts count in the cycle whose window holds the
    case's valid time (:func:`cycle_labels`), so they sit beside cycle forecasts in
    the per-cycle statistics; a case forecast in a cycle and again online appears
    once per occasion. ``start``/``end`` bound the cycle (window start) as
    ``[start, end)``. Rows are ordered by cycle, then case.
    """
    spec = _spec(routine)
    segment_names = [s.name for s in spec.segments]
    # The pairs are read as Core rows on the session's connection (ORM row processing
    # doubled the time of the scorecard page); flush first, as the ORM's autoflush would.
    session.flush()
    parts = [_cycle_pairs(session, routine, candidate_id, reference_id, start, end)]
    if include_online:
        parts.append(_online_pairs(session, routine, spec, candidate_id, reference_id, start, end))
    columns = ["cycle", "case", "candidate", "reference", "observation", "attributes"]
    frames = [pd.DataFrame(p, columns=columns) for p in parts if len(p)]
    if frames:
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    else:
        frame = pd.DataFrame(columns=columns)
    frame["cycle"] = pd.to_datetime(frame["cycle"]).astype("datetime64[ns]")
    for column in ("candidate", "reference", "observation"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["case"] = frame["case"].astype(object)
    if verified_only:
        frame = frame[frame["observation"].notna()]
    segments = _segments_of(frame["attributes"], segment_names)
    frame = frame.drop(columns="attributes")
    for name in segment_names:
        frame[name] = segments[name].to_numpy()
    return frame.sort_values(["cycle", "case"], kind="stable").reset_index(drop=True)


def _segments_of(attributes: pd.Series, names: Sequence[str]) -> pd.DataFrame:
    """Segment columns from the attributes' JSON text, each distinct text parsed once."""
    codes, uniques = pd.factorize(attributes, use_na_sentinel=True)
    parsed = []
    for text in uniques:
        try:
            values = (json.loads(text) or {}).get(SEGMENTS, {}) if text else {}
        except (TypeError, ValueError):
            values = {}
        parsed.append([values.get(name) for name in names])
    table = pd.DataFrame(parsed, columns=list(names), dtype=object)
    if len(table) == 0 or len(codes) == 0:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in names})
    picked = table.iloc[np.where(codes < 0, 0, codes)].reset_index(drop=True)
    picked.loc[codes < 0, :] = None
    for name in names:  # whole-number segments (e.g. lead) back to integers
        column = picked[name]
        if column.map(lambda v: isinstance(v, int) and not isinstance(v, bool)).all():
            picked[name] = column.astype(np.int64)
    return picked


def _pairs_query(origin: str, moment, candidate_id: int, reference_id: int):
    """The candidate's and reference's forecasts of the same cases on the same occasion
    (``origin``: "cycle_id" or "prediction_request_id"), with each case's observation:
    rows of (moment, case key, candidate, reference, observation, case attributes)."""
    f = Forecast.__table__.alias("f")
    r = Forecast.__table__.alias("r")
    return (
        select(
            moment,
            Case.key,
            f.c.value,
            r.c.value,
            Observation.value,
            cast(Case.attributes, Text),
        )
        .select_from(f)
        .join(
            r,
            and_(
                r.c[origin] == f.c[origin],
                r.c.candidate_id == reference_id,
                r.c.case_id == f.c.case_id,
            ),
        )
        .join(Case, Case.id == f.c.case_id)
        .outerjoin(Observation, Observation.case_id == f.c.case_id)
        .where(f.c.candidate_id == candidate_id, f.c[origin].is_not(None)),
        f,
    )


def _cycle_pairs(session, routine, candidate_id, reference_id, start, end) -> list:
    query, f = _pairs_query("cycle_id", Cycle.window_start, candidate_id, reference_id)
    query = query.join(Cycle, Cycle.id == f.c.cycle_id).where(Cycle.routine_id == routine.id)
    if start is not None:
        query = query.where(Cycle.window_start >= start)
    if end is not None:
        query = query.where(Cycle.window_start < end)
    # Plain tuples: a DataFrame built from Row objects probes every row's attributes.
    return [tuple(row) for row in session.connection().execute(query).all()]


def _online_pairs(session, routine, spec, candidate_id, reference_id, start, end) -> list:
    query, f = _pairs_query("prediction_request_id", Case.valid_time, candidate_id, reference_id)
    query = query.join(PredictionRequest, PredictionRequest.id == f.c.prediction_request_id).where(
        PredictionRequest.routine_id == routine.id
    )
    # Coarse bounds on the valid time (a cycle window is at most one step long) ...
    step = spec.cycles.step.to_pytimedelta()
    if start is not None:
        query = query.where(Case.valid_time >= start)
    if end is not None:
        query = query.where(Case.valid_time < end + step)
    rows = session.connection().execute(query).all()
    if not rows:
        return []
    labels = cycle_labels(np.array([row[0] for row in rows], dtype="datetime64[ns]"), spec)
    # ... and the exact ones on the cycle the forecast counts in.
    keep = np.ones(len(rows), dtype=bool)
    if start is not None:
        keep &= labels >= np.datetime64(pd.Timestamp(start).to_datetime64(), "ns")
    if end is not None:
        keep &= labels < np.datetime64(pd.Timestamp(end).to_datetime64(), "ns")
    return [(label, *row[1:]) for label, row, kept in zip(labels, rows, keep, strict=True) if kept]


def cycle_scores(
    session: Session,
    routine: Routine,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Per cycle and candidate, over the cycle's verified cases: ``n``, ``mae``,
    ``rmse`` and ``bias`` (forecast − observation), computed in the database.

    Columns: ``cycle_id``, ``window_start``, ``candidate_id``, ``n``, ``bias``,
    ``mae``, ``rmse``; ordered by window start and candidate.
    """
    error = Forecast.value - Observation.value
    query = (
        select(
            Forecast.cycle_id,
            Cycle.window_start,
            Forecast.candidate_id,
            func.count().label("n"),
            func.sum(error).label("sum_e"),
            func.sum(func.abs(error)).label("sum_abs"),
            func.sum(error * error).label("sum_sq"),
        )
        .join(Cycle, Cycle.id == Forecast.cycle_id)
        .join(Observation, Observation.case_id == Forecast.case_id)
        .where(Cycle.routine_id == routine.id)
        .group_by(Forecast.cycle_id, Cycle.window_start, Forecast.candidate_id)
        .order_by(Cycle.window_start, Forecast.candidate_id)
    )
    if start is not None:
        query = query.where(Cycle.window_start >= start)
    if end is not None:
        query = query.where(Cycle.window_start < end)
    frame = pd.DataFrame(
        session.execute(query).all(),
        columns=["cycle_id", "window_start", "candidate_id", "n", "sum_e", "sum_abs", "sum_sq"],
    )
    n = frame["n"].astype(float)
    frame["bias"] = frame["sum_e"].astype(float) / n
    frame["mae"] = frame["sum_abs"].astype(float) / n
    frame["rmse"] = np.sqrt(frame["sum_sq"].astype(float) / n)
    return frame.drop(columns=["sum_e", "sum_abs", "sum_sq"])


@dataclass
class ForecastPage:
    """One page of stored forecasts with the total count."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page)) if self.per_page else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "forecasts": self.rows,
            "page": self.page,
            "per_page": self.per_page,
            "total": self.total,
            "pages": self.pages,
        }


def list_forecasts(
    session: Session,
    routine: Routine,
    *,
    candidate_id: int | None = None,
    cycle_id: int | None = None,
    page: int = 1,
    per_page: int = 100,
) -> ForecastPage:
    """Stored forecasts of a routine (cycle and online), oldest first, one page at a time,
    each with its case, valid time, candidate, origin and observation (None when not
    verified yet)."""
    query = (
        select(
            Forecast.id,
            Forecast.cycle_id,
            Forecast.prediction_request_id,
            Forecast.candidate_id,
            Candidate.name,
            Case.key,
            Case.valid_time,
            Forecast.value,
            Observation.value,
        )
        .join(Candidate, Candidate.id == Forecast.candidate_id)
        .join(Case, Case.id == Forecast.case_id)
        .outerjoin(Observation, Observation.case_id == Forecast.case_id)
        .where(Candidate.routine_id == routine.id)
    )
    if candidate_id is not None:
        query = query.where(Forecast.candidate_id == candidate_id)
    if cycle_id is not None:
        query = query.where(Forecast.cycle_id == cycle_id)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.execute(
        query.order_by(Forecast.id).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return ForecastPage(
        rows=[
            {
                "id": row[0],
                "cycle_id": row[1],
                "prediction_request_id": row[2],
                "candidate_id": row[3],
                "candidate": row[4],
                "case": row[5],
                "valid_time": row[6].isoformat(),
                "value": row[7],
                "observation": row[8],
            }
            for row in rows
        ],
        total=total or 0,
        page=page,
        per_page=per_page,
    )


def forecast_page(
    rt,
    routine: str,
    *,
    candidate: str | int | None = None,
    cycle: str | int | None = None,
    page: int = 1,
    per_page: int = 100,
) -> ForecastPage:
    """:func:`list_forecasts` for a routine by name, with ``candidate`` (a name or id) and
    ``cycle`` (an id or a time inside its window); NotFound names what exists."""
    from numex.services.cycles import find_cycle
    from numex.services.routines import get_routine

    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidInput(f"page must be ≥ 1 and per_page between 1 and {MAX_PER_PAGE}")
    with rt.read() as session:
        found = get_routine(session, routine)
        candidate_id = None
        if candidate not in (None, ""):
            candidate_id = _candidate_id(session, found, candidate)
        cycle_id = find_cycle(session, found, cycle).id if cycle not in (None, "") else None
        return list_forecasts(
            session,
            found,
            candidate_id=candidate_id,
            cycle_id=cycle_id,
            page=page,
            per_page=per_page,
        )


#: Largest page the forecast and cycle listings serve.
MAX_PER_PAGE = 1000


def _candidate_id(session: Session, routine: Routine, reference: str | int) -> int:
    from numex.services.errors import NotFound

    text = str(reference).strip().lstrip("#")
    query = select(Candidate.id).where(Candidate.routine_id == routine.id)
    found = session.scalar(
        query.where(Candidate.id == int(text))
        if text.isdigit()
        else query.where(Candidate.name == text)
    )
    if found is None:
        names = session.scalars(
            select(Candidate.name).where(Candidate.routine_id == routine.id).order_by(Candidate.id)
        ).all()
        raise NotFound(
            f"routine {routine.name} has no candidate {reference!r}; its candidates: "
            f"{', '.join(names) or 'none yet'}"
        )
    return found
