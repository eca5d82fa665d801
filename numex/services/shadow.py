"""Online shadow serving: ``/predict`` answers with the operational candidate, and the same
records are forecast by every parallel candidate off the request path.

The request path (:func:`predict`) is kept lean:

1. validate the records against the routine (every feature and case key present, of the
   type the operational model's signature declares, finite) — a 400 naming each bad
   record and field;
2. forecast with the operational candidate (model loaded once per process);
3. one short transaction (on PostgreSQL a single statement, one round trip): check that
   the routine's candidates are still the ones the per-process snapshot holds, upsert
   the cases, store the request and the operational forecasts under it; and hand the
   records to the :class:`ShadowWorker` with
   ``put_nowait``. When its bounded queue is full the shadow work is dropped and
   counted; the operational answer is never delayed or refused because of it.

The worker's threads forecast each parallel candidate and store the forecasts under
the same prediction request, so observations posted later pair them exactly like cycle
forecasts. A candidate that raises or returns the wrong number of values, NaN or
infinity is counted as a failure for that candidate (with its last error); the worker
carries on.

Counters (enqueued, dropped, done, failed, queue depth) are ``prometheus_client``
metrics, shown by ``GET /api/v1/shadow/stats`` and ``/metrics``. With several processes
(gunicorn) set ``PROMETHEUS_MULTIPROC_DIR`` and they are summed over every worker.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from sqlalchemy.orm import Session

from numex import mlflow_bridge, specs
from numex.db import Candidate, Forecast, PredictionRequest, Routine, utcnow
from numex.services import forecasts
from numex.services.errors import Conflict, InvalidInput, NotFound, NumexError
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

log = logging.getLogger(__name__)

#: Roles that may ask for forecasts (a viewer may look, not write requests and forecasts).
PREDICT_ROLES = ("scientist", "ops", "admin")
#: The most records one request may carry.
MAX_RECORDS = 10_000
#: At most this many bad records are described one by one in a 400's details.
MAX_REPORTED = 100
#: Jobs one worker thread forecasts and stores together (one transaction).
BATCH_SIZE = 256
#: The longest a worker thread waits for a gap between requests before each step.
MAX_YIELD_S = 0.05
#: How long a worker thread lets a batch gather after taking its first job, at most. Under
#: steady traffic a batch gathers this long; every model call and store has a fixed cost
#: (scikit-learn's input checks, a transaction), so longer batches cost less per request
#: (1 s against 0.25 s: about 10 % less CPU per request at 8 clients, bench_predict). The
#: forecasts are for verification hours or days later: a second's delay costs nothing.
LINGER_S = 1.0
#: A gathering worker thread stops waiting for more jobs after this long without one (or
#: three times the usual gap between jobs, when that is longer).
GATHER_QUIET_S = 0.01
#: Shadow statuses of a prediction request.
SHADOW_STATUSES = ("none", "queued", "dropped", "done", "failed")


class OperationalForecastFailed(NumexError):
    """The operational candidate could not forecast valid records: a fault on our side."""

    code = "operational_forecast_failed"
    status = 500


# --- the routine as served -------------------------------------------------------------


@dataclass(frozen=True)
class ServedCandidate:
    """A candidate as the serving path uses it."""

    id: int
    name: str
    stage: str
    model_uri: str
    model_version: str | None
    features: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "stage": self.stage,
            "model_uri": self.model_uri,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class Snapshot:
    """What one process knows about a routine it serves: its spec, its operational and
    parallel candidates, and the kind of value each input column takes. ``fingerprint``
    is checked in every request's transaction, so a promotion is seen by the next request.
    """

    routine_id: int
    routine: str
    spec: specs.RoutineSpec
    operational: ServedCandidate
    parallel: tuple[ServedCandidate, ...]
    kinds: dict[str, str]
    fingerprint: frozenset[tuple[int, str]]

    @functools.cached_property
    def fingerprint_text(self) -> str:
        """The fingerprint as ``_PG_STORE_REQUEST`` spells it: ``id:stage`` by stage, then
        id (built once per snapshot: every request on PostgreSQL sends it)."""
        ordered = sorted(
            self.fingerprint, key=lambda item: (item[1], item[0] is None, item[0] or 0)
        )
        return ",".join(f"{'' if id_ is None else id_}:{stage}" for id_, stage in ordered)

    @property
    def columns(self) -> list[str]:
        """The columns a record must carry: case keys first, then the routine's features."""
        return list(dict.fromkeys([*self.spec.case_keys, *self.spec.features]))


_SNAPSHOTS = "shadow.snapshots"
_KIND_OF_TYPE = {
    "double": "number",
    "float": "number",
    "long": "integer",
    "integer": "integer",
    "boolean": "boolean",
    "string": "string",
    "datetime": "datetime",
}


def _column_kinds(model: Any) -> dict[str, str]:
    """Column → kind ("number", "integer", ...) from a pyfunc model's input signature."""
    metadata = getattr(model, "metadata", None)
    schema = metadata.get_input_schema() if metadata is not None else None
    if schema is None or not schema.has_input_names():
        return {}
    kinds = {}
    for column in schema.inputs:
        type_name = getattr(getattr(column, "type", None), "name", "")
        kinds[column.name] = _KIND_OF_TYPE.get(type_name, "any")
    return kinds


def _served(candidate: Candidate) -> ServedCandidate:
    return ServedCandidate(
        id=candidate.id,
        name=candidate.name,
        stage=candidate.stage,
        model_uri=candidate.model_uri,
        model_version=candidate.model_version,
        features=tuple(candidate.features or ()),
    )


# --- storing, at the driver level ----------------------------------------------------
#
# The request path and the worker's batches run a handful of fixed statements through the
# DBAPI cursor of the session's transaction: building and compiling them with
# SQLAlchemy would cost more than running them (the request's transaction is the largest
# part of a /predict call). Written with ``?`` and given ``%s`` on PostgreSQL.

_SQL = {
    "fingerprint": "SELECT id, stage FROM candidates WHERE routine_id = ?"
    " AND stage IN ('operational', 'parallel')"
    " UNION ALL SELECT max(id), 'version' FROM routine_versions WHERE routine_id = ?",
    "insert_cases": "INSERT INTO cases (routine_id, key, valid_time, attributes)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (routine_id, key) DO NOTHING",
    "case_ids": "SELECT key, id FROM cases WHERE routine_id = ? AND key IN ({marks})",
    "insert_request": "INSERT INTO prediction_requests (request_key, routine_id,"
    " operational_candidate_id, n_records, shadow_status, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    "insert_forecasts": "INSERT INTO forecasts (prediction_request_id, candidate_id, case_id,"
    " value) VALUES (?, ?, ?, ?)",
    "set_status": "UPDATE prediction_requests SET shadow_status = ? WHERE id IN ({marks})",
}
#: PostgreSQL stores a whole request in one statement, run on its own (autocommit: one
#: round trip, no BEGIN or COMMIT): it checks the routine's candidates against the
#: snapshot's fingerprint (read by the same query as ``_SQL["fingerprint"]``), inserts
#: the new cases, reads every case id, and inserts the request and its forecasts only
#: when the fingerprint matched and every case id was found. One statement is one
#: transaction, so a request is stored whole or not at all.
_PG_STORE_REQUEST = """
WITH current AS (
    {fingerprint}
), fresh AS (
    SELECT coalesce(string_agg(concat(id, ':', stage), ',' ORDER BY stage COLLATE "C", id),
                    '') = %(fingerprint)s AS ok
    FROM current
), given AS (
    SELECT * FROM unnest(%(keys)s::text[], %(times)s::timestamp[], %(attributes)s::text[],
                         %(values)s::float8[]) AS g(key, valid_time, attributes, value)
), new_cases AS (
    INSERT INTO cases (routine_id, key, valid_time, attributes)
    SELECT %(routine_id)s, key, valid_time, attributes::json FROM given
    WHERE (SELECT ok FROM fresh)
    ON CONFLICT (routine_id, key) DO NOTHING
    RETURNING key, id
), case_ids AS (
    SELECT key, id FROM new_cases
    UNION ALL
    SELECT key, id FROM cases
    WHERE routine_id = %(routine_id)s AND key IN (SELECT key FROM given)
), complete AS (
    SELECT (SELECT ok FROM fresh) AND count(*) = %(n_records)s AS ok FROM case_ids
), request AS (
    INSERT INTO prediction_requests (request_key, routine_id, operational_candidate_id,
                                     n_records, shadow_status, created_at)
    SELECT %(request_key)s, %(routine_id)s, %(candidate_id)s, %(n_records)s,
           %(shadow_status)s, %(created_at)s
    WHERE (SELECT ok FROM complete)
    RETURNING id
), stored AS (
    INSERT INTO forecasts (prediction_request_id, candidate_id, case_id, value)
    SELECT request.id, %(candidate_id)s, case_ids.id, given.value
    FROM request CROSS JOIN given JOIN case_ids ON case_ids.key = given.key
)
SELECT request.id, case_ids.key, case_ids.id FROM request CROSS JOIN case_ids
""".replace("{fingerprint}", _SQL["fingerprint"].replace("?", "%(routine_id)s"))
_PG_INSERT_FORECASTS = (
    "INSERT INTO forecasts (prediction_request_id, candidate_id, case_id, value)"
    " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::float8[])"
)
_PG_SET_STATUS = "UPDATE prediction_requests SET shadow_status = %s WHERE id = ANY(%s)"


@functools.lru_cache(maxsize=256)
def _statement(name: str, marks: int, sqlite: bool) -> str:
    """``_SQL[name]`` with ``marks`` placeholders in its ``IN (...)``, in the driver's
    parameter style; built once per shape."""
    sql = _SQL[name].format(marks=", ".join("?" * marks))
    return sql if sqlite else sql.replace("?", "%s")


class _Driver:
    """The session's transaction at the DBAPI level, for the serving path's statements."""

    def __init__(self, session: Session) -> None:
        connection = session.connection()
        self.sqlite = connection.dialect.name == "sqlite"
        self.cursor = connection.connection.driver_connection.cursor()

    def _sql(self, name: str, marks: int = 0) -> str:
        return _statement(name, marks, self.sqlite)

    def _time(self, value: datetime) -> Any:
        return value.strftime(forecasts.SQLITE_TIME) if self.sqlite else value

    def relaxed_commit(self) -> None:
        """On PostgreSQL, let this transaction's commit return before its WAL record is
        flushed to disk (``synchronous_commit = off``, this transaction only): what
        SQLite in WAL mode with ``synchronous=NORMAL`` does for every numex transaction.
        For shadow forecasts, which may be dropped anyway: a crash of numex loses nothing
        committed; a crash of the database server or its machine may lose the last
        fraction of a second of them, and never leaves them half written."""
        if not self.sqlite:
            self.cursor.execute("SET LOCAL synchronous_commit = off")

    def store_request(
        self,
        snap: Snapshot,
        request_key: str,
        cases: forecasts.CaseRows,
        values: np.ndarray,
        shadow_status: str,
    ) -> tuple[int, np.ndarray]:
        """Store a request, its new cases and its operational forecasts in the session's
        transaction (SQLite; PostgreSQL takes :func:`_pg_store_request`); returns the
        request's id and the case ids (aligned with ``cases``). Raises _Stale when the
        routine's candidates are no longer the snapshot's."""
        if self.fingerprint(snap.routine_id) != snap.fingerprint:
            raise _Stale
        case_ids = self.upsert_cases(snap.routine_id, cases)
        request_id = self.insert_request(request_key, snap, len(cases), shadow_status)
        self.insert_forecasts(
            (request_id, snap.operational.id, case_id, value)
            for case_id, value in zip(case_ids.tolist(), values.tolist(), strict=True)
        )
        return request_id, case_ids

    def fingerprint(self, routine_id: int) -> frozenset[tuple[int, str]]:
        """The routine's operational and parallel candidates (id, stage) and its current
        definition version: what a snapshot is valid for."""
        self.cursor.execute(self._sql("fingerprint"), (routine_id, routine_id))
        return frozenset((row[0], row[1]) for row in self.cursor.fetchall())

    def upsert_cases(self, routine_id: int, cases: forecasts.CaseRows) -> np.ndarray:
        """Store the cases not stored yet (existing ones are left as they are) and return
        the ids of all, aligned with ``cases``."""
        keys = cases.keys.tolist()
        times = cases.valid_times.astype("datetime64[us]").tolist()
        self.cursor.executemany(
            self._sql("insert_cases"),
            [
                (routine_id, key, self._time(when), attributes)
                for key, when, attributes in zip(
                    keys, times, cases.attributes.tolist(), strict=True
                )
            ],
        )
        found: dict[str, int] = {}
        for start in range(0, len(keys), forecasts.IN_CHUNK):
            chunk = keys[start : start + forecasts.IN_CHUNK]
            self.cursor.execute(self._sql("case_ids", len(chunk)), (routine_id, *chunk))
            found.update(self.cursor.fetchall())
        if len(found) < len(set(keys)):  # only a concurrent delete could do this: say so
            raise Conflict("cases vanished while they were being stored; try again")
        return np.fromiter((found[key] for key in keys), np.int64, len(keys))

    def insert_request(
        self, request_key: str, snap: Snapshot, n_records: int, shadow_status: str
    ) -> int:
        self.cursor.execute(
            self._sql("insert_request"),
            (
                request_key,
                snap.routine_id,
                snap.operational.id,
                n_records,
                shadow_status,
                self._time(utcnow()),
            ),
        )
        return int(self.cursor.fetchone()[0])

    def insert_forecasts(self, rows: Iterable[tuple[int, int, int, float]]) -> None:
        """Forecast rows (prediction request id, candidate id, case id, checked value)."""
        rows = list(rows)
        if self.sqlite:
            self.cursor.executemany(self._sql("insert_forecasts"), rows)
        elif rows:  # one statement over arrays: far less work for the server than N inserts
            columns = [list(column) for column in zip(*rows, strict=True)]
            self.cursor.execute(_PG_INSERT_FORECASTS, columns)

    def set_status(self, request_ids: list[int], status: str) -> None:
        if not self.sqlite:
            self.cursor.execute(_PG_SET_STATUS, (status, request_ids))
            return
        for start in range(0, len(request_ids), forecasts.IN_CHUNK):
            chunk = request_ids[start : start + forecasts.IN_CHUNK]
            self.cursor.execute(self._sql("set_status", len(chunk)), (status, *chunk))

    def store_shadow(
        self, rows: list[tuple[int, int, int, float]], statuses: dict[int, str]
    ) -> None:
        """Shadow forecasts and the new shadow status of their requests; on PostgreSQL
        in one round trip, committed without waiting for the WAL flush (see
        :meth:`relaxed_commit`)."""
        with contextlib.ExitStack() as stack:
            if not self.sqlite:
                stack.enter_context(self.cursor.connection.pipeline())
            self.relaxed_commit()
            self.insert_forecasts(rows)
            for status in ("done", "failed"):
                ids = [request_id for request_id, s in statuses.items() if s == status]
                if ids:
                    self.set_status(ids, status)


@contextlib.contextmanager
def _autocommit(rt: Runtime) -> Iterator[Any]:
    """A pooled PostgreSQL connection in autocommit mode (each statement its own
    transaction), handed back to the pool as it was taken."""
    pooled = rt.engine.raw_connection()
    try:
        connection = pooled.driver_connection
        connection.autocommit = True
        try:
            yield connection
        finally:
            if not connection.closed:  # a broken one is discarded by the pool on return
                connection.autocommit = False
    finally:
        pooled.close()


def _pg_store_request(
    rt: Runtime,
    snap: Snapshot,
    request_key: str,
    cases: forecasts.CaseRows,
    values: np.ndarray,
    shadow_status: str,
) -> tuple[int, np.ndarray]:
    """:meth:`_Driver.store_request` on PostgreSQL: one statement, one round trip, its own
    transaction. Raises _Stale (having stored no request) when the routine's candidates
    are no longer the snapshot's or a concurrent request stored one of the same new cases
    after this statement began (it is there for the next try)."""
    keys = cases.keys.tolist()
    params = {
        "fingerprint": snap.fingerprint_text,
        "keys": keys,
        "times": cases.valid_times.astype("datetime64[us]").tolist(),
        "attributes": cases.attributes.tolist(),
        "values": values.tolist(),
        "routine_id": snap.routine_id,
        "request_key": request_key,
        "candidate_id": snap.operational.id,
        "n_records": len(keys),
        "shadow_status": shadow_status,
        "created_at": utcnow(),
    }
    with _autocommit(rt) as connection:
        rows = connection.execute(_PG_STORE_REQUEST, params).fetchall()
    if not rows:
        raise _Stale
    found = {key: case_id for _request_id, key, case_id in rows}
    return rows[0][0], np.fromiter((found[key] for key in keys), np.int64, len(keys))


def _load_snapshot(rt: Runtime, routine_name: str) -> Snapshot:
    from numex.services.experiments import routine_spec

    with rt.read() as session:
        routine = get_routine(session, routine_name)
        spec = routine_spec(routine)
        rows = session.scalars(
            select(Candidate)
            .where(
                Candidate.routine_id == routine.id,
                Candidate.stage.in_(("operational", "parallel")),
            )
            .order_by(Candidate.id)
        ).all()
        fingerprint = _Driver(session).fingerprint(routine.id)
        routine_id = routine.id
    operational = next((_served(c) for c in rows if c.stage == "operational"), None)
    if operational is None:
        raise Conflict(
            f"routine {routine_name} has no operational candidate, so it cannot forecast; "
            f"make one operational first (`numex routine bootstrap {routine_name} CANDIDATE`)"
        )
    parallel = tuple(_served(c) for c in rows if c.stage == "parallel")
    model = _model(rt, operational)
    kinds: dict[str, str] = {}
    # The operational model's signature decides what a valid record is; columns only a
    # parallel candidate reads take that candidate's declared kind.
    for candidate in parallel:
        try:
            kinds.update(_column_kinds(_model(rt, candidate)))
        except Exception:  # its failure is counted when the worker forecasts with it
            log.warning("parallel candidate %s could not be loaded", candidate.name)
    kinds.update(_column_kinds(model))
    for column in spec.features:
        kinds.setdefault(column, "number")
    for column in spec.case_keys:
        kinds[column] = "datetime" if column == spec.time_column else kinds.get(column, "key")
    return Snapshot(
        routine_id=routine_id,
        routine=routine_name,
        spec=spec,
        operational=operational,
        parallel=parallel,
        kinds=kinds,
        fingerprint=fingerprint,
    )


def snapshot(rt: Runtime, routine_name: str, *, refresh: bool = False) -> Snapshot:
    """The routine as this process serves it, loaded on first use (and on ``refresh``)."""
    cache: dict[str, Snapshot] = rt.cache.setdefault(_SNAPSHOTS, {})
    found = None if refresh else cache.get(routine_name)
    if found is None:
        found = _load_snapshot(rt, routine_name)
        cache[routine_name] = found
    return found


def _model(rt: Runtime, candidate: ServedCandidate) -> Any:
    return mlflow_bridge.load_model(rt.settings, candidate.model_uri)


# --- validating records ----------------------------------------------------------------


def _problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not a valid ``kind``, or None when it is."""
    if value is None:
        return "is null"
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"is {_shown(value)}; expected a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"is {value}; expected a finite number"
        if kind == "integer" and isinstance(value, float) and not value.is_integer():
            return f"is {value}; expected a whole number"
        return None
    if kind == "datetime":
        if not isinstance(value, str):
            return f"is {_shown(value)}; expected an ISO 8601 date-time text"
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError):
            return f"is {_shown(value)}; expected an ISO 8601 date-time, e.g. 2015-06-01"
        return "is not a date-time" if pd.isna(stamp) else None
    if kind == "boolean":
        return None if isinstance(value, bool) else f"is {_shown(value)}; expected true or false"
    if kind == "string":
        return None if isinstance(value, str) else f"is {_shown(value)}; expected a text"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value}; expected a finite value"
    if isinstance(value, dict | list):
        return f"is {_shown(value)}; expected a single value"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_records(records: Any, snap: Snapshot) -> list[dict[str, Any]]:
    """The records, when every one carries the routine's case keys and features with
    valid values; else InvalidInput naming every bad record (its index) and field
    (missing, null, wrong type, NaN, infinite).

    ``details`` of the error: ``{"records": [{"index": 3, "problems": {"lead": "is
    missing"}}, ...], "n_invalid": N, "n_records": M, "required": [...]}``.
    """
    columns = snap.columns
    if not isinstance(records, list) or not records:
        raise InvalidInput(
            'send JSON {"records": [{...}, ...]}: a non-empty list of objects, each with '
            f"the fields {', '.join(columns)}",
            details={"required": columns},
        )
    if len(records) > MAX_RECORDS:
        raise InvalidInput(
            f"{len(records)} records in one request; at most {MAX_RECORDS} are accepted",
            details={"n_records": len(records), "max_records": MAX_RECORDS},
        )
    kinds = snap.kinds
    bad: list[dict[str, Any]] = []
    n_invalid = 0
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems = {"": f"is {_shown(record)}; expected an object with the fields"}
        else:
            problems = {}
            for column in columns:
                if column not in record:
                    problems[column] = "is missing"
                    continue
                problem = _problem(record[column], kinds.get(column, "any"))
                if problem:
                    problems[column] = problem
        if problems:
            n_invalid += 1
            if len(bad) < MAX_REPORTED:
                bad.append({"index": index, "problems": problems})
    if bad:
        shown = "; ".join(
            f"record {entry['index']}: "
            + ", ".join(f"{name or 'the record'} {why}" for name, why in entry["problems"].items())
            for entry in bad[:5]
        )
        more = f"; and {n_invalid - 5} more" if n_invalid > 5 else ""
        raise InvalidInput(
            f"{n_invalid} of {len(records)} record(s) are invalid: {shown}{more}",
            details={
                "records": bad,
                "n_invalid": n_invalid,
                "n_records": len(records),
                "required": columns,
            },
        )
    return records


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


@functools.lru_cache(maxsize=256)
def _column_index(columns: tuple[str, ...]) -> pd.Index:
    """The column labels of a frame, built once per column set: pandas makes text labels
    an Arrow-backed string index, which costs more than the rest of a one-record frame
    (about 90 of 110 µs). An index is immutable, so frames may share it."""
    return pd.Index(columns)


def records_frame(
    records: list[dict[str, Any]], columns: Sequence[str], kinds: dict[str, str]
) -> pd.DataFrame:
    """Valid records as a frame of ``columns``, numbers typed as the signatures declare."""
    labels = _column_index(tuple(columns))
    if all(kinds.get(column) == "number" for column in columns):
        # One float block: a fraction of the cost of a frame built column by column.
        block = np.array([[record[c] for c in columns] for record in records], dtype=np.float64)
        return pd.DataFrame(block.reshape(len(records), len(columns)), columns=labels, copy=False)
    data: dict[str, Any] = {}
    for column in columns:
        values = [record[column] for record in records]
        kind = kinds.get(column)
        if kind == "integer":
            data[column] = np.array(values, dtype=np.int64)
        elif kind == "datetime":
            # Parsed one by one (formats and zones may differ), as naive UTC.
            data[column] = np.array([_utc(v).to_datetime64() for v in values], "datetime64[ns]")
        elif kind == "number":
            data[column] = np.array(values, dtype=np.float64)
        else:
            data[column] = np.array(values, dtype=object)
    return pd.DataFrame(data, columns=labels, copy=False)


#: Up to this many records the cases are built record by record in plain Python (the
#: request path's usual size); larger requests take the vectorised path.
SMALL_REQUEST = 32


def _small_case_rows(records: list[dict], snap: Snapshot) -> forecasts.CaseRows:
    """What :func:`numex.services.forecasts.case_rows` returns for the frame of the valid
    ``records``, computed record by record: for a handful of records this is many times
    faster than the vectorised path (a test holds the two equal)."""
    spec = snap.spec
    present = set(snap.columns)
    cast = {
        column: int if kind == "integer" else float
        for column, kind in snap.kinds.items()
        if kind in ("integer", "number") and column in present
    }
    keys, times, attributes = [], [], []
    texts: dict[tuple[Any, ...], str] = {}
    for record in records:
        row = {column: cast[column](v) if column in cast else v for column, v in record.items()}
        stamp = row[spec.time_column] = _utc(row[spec.time_column])
        keys.append(specs.case_key(row, spec))
        times.append(stamp.to_datetime64())
        combo = []
        for segment in spec.segments:
            if segment.column is not None:
                value = row[segment.column] if segment.column in present else None
            elif segment.derive == "season":
                value = specs.SEASON_OF_MONTH[stamp.month]
            elif segment.derive == "month":
                value = stamp.month
            else:
                value = stamp.hour
            combo.append(value)
        combo_key = tuple(combo)
        text = texts.get(combo_key)
        if text is None:
            values = dict(zip((s.name for s in spec.segments), combo, strict=True))
            text = texts[combo_key] = json.dumps({forecasts.SEGMENTS: values})
        attributes.append(text)
    return forecasts.CaseRows(
        np.array(keys, dtype=object),
        np.array(times, dtype="datetime64[ns]"),
        np.array(attributes, dtype=object),
    )


def _cases(records: list[dict], snap: Snapshot) -> forecasts.CaseRows:
    """The records' cases (keys, valid times, segments); InvalidInput naming records that
    repeat a case."""
    if len(records) <= SMALL_REQUEST:
        rows = _small_case_rows(records, snap)
    else:
        rows = forecasts.case_rows(records_frame(records, snap.columns, snap.kinds), snap.spec)
    keys = rows.keys.tolist()
    if len(set(keys)) != len(keys):
        seen: dict[str, int] = {}
        repeats = []
        for index, key in enumerate(keys):
            if key in seen:
                repeats.append({"index": index, "same_as": seen[key], "case": key})
            else:
                seen[key] = index
        first = repeats[0]
        raise InvalidInput(
            f"{len(repeats)} record(s) repeat a case: record {first['index']} is the same case "
            f"({first['case']}) as record {first['same_as']}; send each case once",
            details={"repeated": repeats[:MAX_REPORTED]},
        )
    return rows


# --- forecasting -----------------------------------------------------------------------


def _forecast(
    rt: Runtime,
    candidate: ServedCandidate,
    records: list[dict],
    kinds: dict[str, str],
    inputs: pd.DataFrame | None = None,
) -> np.ndarray:
    """The candidate's forecast of every record (``inputs``: their frame, when built
    already), checked (one finite value per record): a ValueError from
    :func:`numex.services.forecasts.check_values` says what is wrong."""
    predict = _predictor(_model(rt, candidate))
    if inputs is None:
        inputs = records_frame(records, candidate.features, kinds)
    return forecasts.check_values(predict(inputs), len(records))


def _predictor(model: Any) -> Any:
    """What to call to forecast with a loaded pyfunc model: the scikit-learn model's own
    ``predict`` when MLflow wraps one, pyfunc's ``predict`` otherwise.

    Records reach a model only after :func:`validate_records` has checked them against
    the same signature and :func:`records_frame` has typed them as it declares, so
    pyfunc's own schema check, which costs more than the forecast, would repeat it.
    """
    if getattr(model, "loader_module", None) == "mlflow.sklearn":
        with contextlib.suppress(NotImplementedError, AttributeError):
            return model.get_raw_model().predict
    return model.predict


# --- the request path ------------------------------------------------------------------


@dataclass
class PredictResult:
    """The operational answer to one ``/predict`` call."""

    request_id: str
    routine: str
    candidate: dict[str, Any]
    forecasts: list[dict[str, Any]]
    shadow: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "routine": self.routine,
            "candidate": self.candidate,
            "forecasts": self.forecasts,
            "shadow": self.shadow,
        }


class _Stale(Exception):
    """The routine's candidates changed since this process took its snapshot (or, on
    PostgreSQL, a concurrent request stored one of the same new cases): try again."""


def predict(
    rt: Runtime,
    routine: str,
    records: Any,
    actor: Actor,
    *,
    worker: ShadowWorker | None = None,
) -> PredictResult:
    """Forecast ``records`` (a list of JSON objects) with ``routine``'s operational candidate.

    Stores a :class:`~numex.db.PredictionRequest`, the cases (from the records' key
    columns) and the operational forecasts in one transaction, then mirrors the records
    to every parallel candidate through ``worker`` (the runtime's :class:`ShadowWorker`
    by default), never waiting for it: a full queue drops the shadow work and counts it.

    Raises PermissionDenied (a viewer), NotFound (unknown routine), Conflict (no
    operational candidate), InvalidInput naming every bad record and field, and
    OperationalForecastFailed when the operational model fails on valid records.
    """
    actor.require(*PREDICT_ROLES, to="request forecasts")
    worker = worker or worker_for(rt)
    with worker.serving():
        return _predict(rt, routine, records, worker)


def _predict(rt: Runtime, routine: str, records: Any, worker: ShadowWorker) -> PredictResult:
    for attempt in range(3):
        snap = snapshot(rt, routine, refresh=attempt > 0)
        valid = validate_records(records, snap)
        cases = _cases(valid, snap)
        operational = snap.operational
        try:
            values = _forecast(rt, operational, valid, snap.kinds)
        except Exception as error:
            log.exception("operational candidate %s failed", operational.name)
            raise OperationalForecastFailed(
                f"the operational candidate {operational.name} (#{operational.id}) of routine "
                f"{routine} failed to forecast: {type(error).__name__}: {str(error)[:300]}"
            ) from error
        try:
            request_key, status = _store(rt, snap, valid, cases, values, worker)
        except _Stale:
            continue
        return PredictResult(
            request_id=request_key,
            routine=routine,
            candidate=operational.to_dict(),
            forecasts=[
                {"case": key, "value": float(value)}
                for key, value in zip(cases.keys.tolist(), values.tolist(), strict=True)
            ],
            shadow={"status": status, "candidates": [c.name for c in snap.parallel]},
        )
    raise Conflict(f"routine {routine}'s candidates keep changing; try again")


def _store(
    rt: Runtime,
    snap: Snapshot,
    records: list[dict],
    cases: forecasts.CaseRows,
    values: np.ndarray,
    worker: ShadowWorker,
) -> tuple[str, str]:
    """The request's one transaction; returns (request key, shadow status).

    SQLite: the shadow job is offered inside the transaction so the stored status says
    whether it was queued or dropped; the worker waits for the commit before it stores
    anything under the request (and skips the job if the transaction rolls back).
    PostgreSQL: the request is stored by one statement in one round trip, then the job is
    offered; a full queue is written into the request by a second statement.
    """
    request_key = uuid.uuid4().hex
    job = (
        ShadowJob(routine=snap.routine, records=records, kinds=snap.kinds, candidates=snap.parallel)
        if snap.parallel
        else None
    )
    status = "none" if job is None else "queued"
    if rt.dialect == "postgresql":
        request_id, case_ids = _pg_store_request(rt, snap, request_key, cases, values, status)
        if job is not None:
            job.request_id, job.case_ids = request_id, case_ids
            job.release()  # stored and committed already
            if not worker.offer(job):  # the queue is full: say so in the request
                status = "dropped"
                try:
                    with _autocommit(rt) as connection:
                        connection.execute(_PG_SET_STATUS, (status, [request_id]))
                except Exception:  # the answer is stored and goes out regardless
                    log.exception("could not mark prediction request %s dropped", request_key)
        return request_key, status
    try:
        with rt.transaction() as session:
            driver = _Driver(session)
            request_id, case_ids = driver.store_request(snap, request_key, cases, values, status)
            if job is not None:
                job.request_id, job.case_ids = request_id, case_ids
                if not worker.offer(job):  # the queue is full: say so in the request
                    status = "dropped"
                    driver.set_status([request_id], status)
    except BaseException:
        if job is not None:
            job.cancel()
        raise
    # Committed: the worker may now store forecasts under the request.
    if job is not None and status == "queued":
        job.release()
    return request_key, status


# --- the shadow worker -----------------------------------------------------------------


@dataclass
class ShadowJob:
    """Records to forecast with the parallel candidates, under one prediction request.

    Offered to the queue inside the request's transaction; the worker waits for
    :meth:`release` (sent after the commit) before storing, and skips a job whose
    transaction rolled back (:meth:`cancel`)."""

    routine: str
    records: list[dict[str, Any]]
    kinds: dict[str, str]
    candidates: tuple[ServedCandidate, ...]
    request_id: int = 0  # set before the request's transaction commits
    case_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    offered_at: float = field(default_factory=time.monotonic)
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)
    _committed: bool = field(default=False, repr=False)

    def release(self) -> None:
        self._committed = True
        self._ready.set()

    def cancel(self) -> None:
        self._ready.set()

    def wait(self, timeout: float) -> bool:
        """True once the request is committed; False if it was rolled back or never came."""
        return self._ready.wait(timeout) and self._committed


#: Put on the queue by :meth:`ShadowWorker.stop` to wake idle threads.
_WAKE: Any = object()
#: How long the worker waits for a request's transaction to commit before skipping it.
_COMMIT_WAIT_S = 30.0


class ShadowStats:
    """The worker's counters, as Prometheus metrics in their own registry.

    Counted per routine (and per candidate for forecasts and failures). In a
    ``PROMETHEUS_MULTIPROC_DIR`` set-up the values are summed over processes when read.
    """

    def __init__(self, capacity: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        options: dict[str, Any] = {"registry": self.registry, "namespace": "numex_shadow"}
        self.enqueued = Counter(
            "enqueued", "Prediction requests queued for the parallel candidates",
            ["routine"], **options,
        )  # fmt: skip
        self.dropped = Counter(
            "dropped", "Prediction requests whose shadow work was dropped (queue full or "
            "worker stopping)", ["routine", "reason"], **options,
        )  # fmt: skip
        self.done = Counter(
            "done", "Prediction requests whose shadow work finished", ["routine"], **options
        )
        self.forecasts = Counter(
            "forecasts", "Shadow forecasts stored", ["routine", "candidate"], **options
        )
        self.failed = Counter(
            "failed", "Shadow forecasts a parallel candidate failed to make (per request)",
            ["routine", "candidate"], **options,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "queue_depth", "Jobs waiting in the shadow queue", multiprocess_mode="livesum",
            **options,
        )  # fmt: skip
        self.queue_capacity = Gauge(
            "queue_capacity", "Bound of the shadow queue", multiprocess_mode="max", **options
        )
        self.queue_capacity.set(capacity)
        self.latency = Counter(
            "seconds", "Seconds from offering shadow work to storing it, summed", **options
        )
        self.last_stored = Gauge(
            "last_stored_timestamp_seconds", "Unix time of the latest stored batch of shadow "
            "forecasts", multiprocess_mode="max", **options,
        )  # fmt: skip
        self._lock = threading.Lock()
        self.last_errors: dict[str, dict[str, Any]] = {}

    def record_failure(self, routine: str, candidate: str, error: str) -> None:
        self.failed.labels(routine, candidate).inc()
        with self._lock:
            entry = self.last_errors.setdefault(f"{routine}/{candidate}", {"count": 0})
            entry.update(
                count=entry["count"] + 1,
                routine=routine,
                candidate=candidate,
                error=error[:500],
                at=datetime.now().astimezone().isoformat(timespec="seconds"),
            )


def _sum(samples: Iterable[Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for sample in samples:
        total[sample.name] = total.get(sample.name, 0.0) + sample.value
    return total


class ShadowWorker:
    """A bounded queue of shadow jobs and the daemon threads that forecast them.

    Started lazily on the first :meth:`offer` in each process (threads do not survive a
    fork, so a pre-forking server starts one per worker process) and stopped by
    :meth:`stop`, at interpreter exit, or at a test's teardown.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        queue_size: int | None = None,
        threads: int | None = None,
        batch_size: int = BATCH_SIZE,
        max_yield_s: float = MAX_YIELD_S,
        linger_s: float = LINGER_S,
    ) -> None:
        self.rt = rt
        self.capacity = max(1, queue_size or rt.settings.shadow_queue_size)
        self.n_threads = max(1, threads or rt.settings.shadow_workers)
        self.batch_size = max(1, batch_size)
        self.max_yield_s = max_yield_s
        self.linger_s = linger_s
        # Requests being served in this process: the threads yield to them (see serving).
        self._serving = 0
        self._serving_lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        # When jobs last came and how far apart they usually come (see _gather).
        self._last_offer = 0.0
        self._arrival_gap = 0.0
        self.stats = ShadowStats(self.capacity)
        self._queue: queue.Queue[ShadowJob] = queue.Queue(maxsize=self.capacity)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None

    # -- life cycle

    @property
    def running(self) -> bool:
        return self._pid == os.getpid() and any(t.is_alive() for t in self._threads)

    def start(self) -> None:
        """Start the threads (once per process; a forked child starts its own)."""
        with self._lock:
            if self._pid == os.getpid() and self._threads:
                return
            if self._pid is not None:  # inherited through a fork: the threads stayed behind
                self._queue = queue.Queue(maxsize=self.capacity)
            # Each generation of threads has its own stop signal: a thread that outlived a
            # stop (stuck in a model) still ends after its batch, whatever starts next.
            self._stopping = stopping = threading.Event()
            self._threads = [
                threading.Thread(
                    target=self._run, args=(stopping,), name=f"numex-shadow-{i}", daemon=True
                )
                for i in range(self.n_threads)
            ]
            self._pid = os.getpid()
            for thread in self._threads:
                thread.start()
            _started.add(self)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the threads finish the queued work for up to ``timeout`` seconds, then stop
        them; work still queued is counted as dropped (reason ``stopped``)."""
        if self._pid != os.getpid() or not self._threads:
            return
        self.drain(timeout)
        self._stopping.set()
        for _ in self._threads:  # wake idle threads now rather than at their next poll
            try:
                self._queue.put_nowait(_WAKE)
            except queue.Full:
                break
        deadline = time.monotonic() + max(timeout, 1.0)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left: list[ShadowJob] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if job is not _WAKE:
                left.append(job)
        for job in left:
            self.stats.dropped.labels(job.routine, "stopped").inc()
        if left:
            self._mark([job.request_id for job in left], "dropped")
        self.stats.queue_depth.set(0)
        with self._lock:
            self._threads = []
        _started.discard(self)

    def drain(self, timeout: float) -> bool:
        """Wait until every queued job is done; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    # -- the request side

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Mark a request being served. The threads start each step (a candidate's
        forecast, a store) only when no request is in flight in this process, or after
        ``max_yield_s`` at most: shadow work fills the gaps between requests instead of
        competing with them for the interpreter."""
        with self._serving_lock:
            self._serving += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._serving_lock:
                self._serving -= 1
                if self._serving == 0:
                    self._idle.set()

    def _yield_to_requests(self) -> None:
        self._idle.wait(self.max_yield_s)

    def offer(self, job: ShadowJob) -> bool:
        """Queue ``job`` without waiting; False (and counted as dropped) when full."""
        if not self.running:
            self.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.dropped.labels(job.routine, "queue_full").inc()
            return False
        now = time.monotonic()
        # The usual gap between jobs (a moving average; races between threads only blur it).
        self._arrival_gap += 0.2 * (min(now - self._last_offer, 1.0) - self._arrival_gap)
        self._last_offer = now
        self.stats.enqueued.labels(job.routine).inc()
        self.stats.queue_depth.set(self._queue.qsize())
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # -- the worker side

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            if first is not _WAKE:
                self._gather(stopping)
                while len(batch) < self.batch_size and batch[-1] is not _WAKE:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
            self._yield_to_requests()
            try:
                self._process([job for job in batch if job is not _WAKE])
            except Exception:  # never let one batch end the thread
                log.exception("shadow worker: a batch of %d job(s) failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()
                self.stats.queue_depth.set(self._queue.qsize())

    def _gather(self, stopping: threading.Event) -> None:
        """Let a batch gather behind the job just taken: one model call per candidate and
        one transaction then serve them all.

        Gathering stops once the batch is full, after ``linger_s``, or as soon as jobs stop
        coming: no job for three times the usual gap between them (at least
        ``GATHER_QUIET_S``), so when traffic pauses the forecasts are not held back. The
        thread sleeps between looks instead of waking for each job.
        """
        deadline = time.monotonic() + self.linger_s
        while self._queue.qsize() + 1 < self.batch_size:
            now = time.monotonic()
            quiet = max(GATHER_QUIET_S, 3 * self._arrival_gap)
            waited = now - self._last_offer
            if now >= deadline or waited >= quiet:
                return
            if stopping.wait(min(quiet - waited, deadline - now)):
                return

    def _process(self, batch: list[ShadowJob]) -> None:
        jobs = []
        for job in batch:
            if job.wait(timeout=_COMMIT_WAIT_S):
                jobs.append(job)
            else:  # its request's transaction rolled back: nothing to store under
                self.stats.dropped.labels(job.routine, "rolled_back").inc()
        if not jobs:
            return
        # Forecast candidate by candidate over the whole batch: one model call per
        # candidate, split back per request; a failing call is retried request by request
        # so a failure is charged to the requests it really concerns.
        outcomes: dict[int, dict[int, np.ndarray | str]] = {job.request_id: {} for job in jobs}
        by_candidate: dict[int, tuple[ServedCandidate, list[ShadowJob]]] = {}
        for job in jobs:
            for candidate in job.candidates:
                by_candidate.setdefault(candidate.id, (candidate, []))[1].append(job)
        frames: dict[tuple, pd.DataFrame] = {}
        for candidate, its_jobs in by_candidate.values():
            self._yield_to_requests()
            for job, result in self._forecast_jobs(candidate, its_jobs, frames):
                outcomes[job.request_id][candidate.id] = result
        rows: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        statuses: dict[int, str] = {}
        for job in jobs:
            failed = False
            for candidate in job.candidates:
                result = outcomes[job.request_id].get(candidate.id, "not forecast")
                if isinstance(result, str):
                    failed = True
                    self.stats.record_failure(job.routine, candidate.name, result)
                else:
                    rows.append((job.request_id, candidate.id, job.case_ids, result))
            statuses[job.request_id] = "failed" if failed else "done"
        self._yield_to_requests()
        try:
            with self.rt.transaction() as session:
                _Driver(session).store_shadow(
                    [
                        (request_id, candidate_id, case_id, value)
                        for request_id, candidate_id, case_ids, values in rows
                        for case_id, value in zip(case_ids.tolist(), values.tolist(), strict=True)
                    ],
                    statuses,
                )
        except Exception as error:
            log.exception("shadow worker: storing %d request(s) failed", len(jobs))
            for job in jobs:
                for candidate in job.candidates:
                    self.stats.record_failure(
                        job.routine, candidate.name, f"storing failed: {type(error).__name__}"
                    )
            return
        now = time.monotonic()
        self.stats.last_stored.set(time.time())
        names = {candidate.id: candidate.name for candidate, _ in by_candidate.values()}
        routine_of = {job.request_id: job.routine for job in jobs}
        for request_id, candidate_id, _case_ids, values in rows:
            self.stats.forecasts.labels(routine_of[request_id], names[candidate_id]).inc(
                len(values)
            )
        for job in jobs:
            self.stats.done.labels(job.routine).inc()
            self.stats.latency.inc(now - job.offered_at)

    def _forecast_jobs(
        self,
        candidate: ServedCandidate,
        jobs: list[ShadowJob],
        frames: dict[tuple, pd.DataFrame] | None = None,
    ) -> list[tuple[ShadowJob, np.ndarray | str]]:
        """Each job's forecasts by ``candidate`` (or why it failed). ``frames`` keeps the
        input frames built for this batch: candidates reading the same columns of the
        same jobs share one."""
        try:
            records = [record for job in jobs for record in job.records]
            key = (candidate.features, tuple(job.request_id for job in jobs))
            inputs = None if frames is None else frames.get(key)
            if inputs is None:
                inputs = records_frame(records, candidate.features, jobs[0].kinds)
                if frames is not None:
                    frames[key] = inputs
            values = _forecast(self.rt, candidate, records, jobs[0].kinds, inputs)
        except Exception as error:
            if len(jobs) == 1:
                return [(jobs[0], f"{type(error).__name__}: {str(error)[:300]}")]
            return [pair for job in jobs for pair in self._forecast_jobs(candidate, [job])]
        results, start = [], 0
        for job in jobs:
            end = start + len(job.records)
            results.append((job, values[start:end]))
            start = end
        return results

    def _mark(self, request_ids: list[int], status: str) -> None:
        try:
            with self.rt.transaction() as session:
                _Driver(session).set_status(request_ids, status)
        except Exception:
            log.exception("could not mark %d prediction request(s) %s", len(request_ids), status)

    # -- reading

    def snapshot_stats(self) -> dict[str, Any]:
        """The counters (summed over processes under PROMETHEUS_MULTIPROC_DIR) and this
        process's queue and last errors."""
        totals = _sum(s for metric in collect(self) for s in metric.samples)

        def total(name: str) -> float:
            return totals.get(f"numex_shadow_{name}", 0.0)

        failures = {}
        for metric in collect(self):
            for sample in metric.samples:
                if sample.name == "numex_shadow_failed_total":
                    key = f"{sample.labels['routine']}/{sample.labels['candidate']}"
                    failures[key] = failures.get(key, 0) + int(sample.value)
        with self.stats._lock:
            last = {key: dict(value) for key, value in self.stats.last_errors.items()}
        done = total("done_total")
        return {
            "enqueued": int(total("enqueued_total")),
            "dropped": int(total("dropped_total")),
            "done": int(done),
            "failed": int(total("failed_total")),
            "forecasts": int(total("forecasts_total")),
            "queue_depth": int(total("queue_depth")),
            "queue_capacity": self.capacity,
            "mean_delay_s": (total("seconds_total") / done) if done else None,
            "last_stored_at": total("last_stored_timestamp_seconds") or None,
            "failures": [
                {
                    "routine": key.split("/", 1)[0],
                    "candidate": key.split("/", 1)[1],
                    "count": count,
                    "last_error": last.get(key, {}).get("error"),
                    "last_at": last.get(key, {}).get("at"),
                }
                for key, count in sorted(failures.items())
            ],
            "process": {
                "pid": os.getpid(),
                "threads": self.n_threads,
                "running": self.running,
                "queue_depth": self.depth,
            },
            "multiprocess": bool(_multiproc_dir()),
        }


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def collect(worker: ShadowWorker) -> list[Any]:
    """The metric families to expose: this process's, or every process's when
    ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    if _multiproc_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return [m for m in registry.collect() if m.name.startswith("numex_shadow")]
    return list(worker.stats.registry.collect())


def exposition(worker: ShadowWorker) -> bytes:
    """The Prometheus text exposition of the shadow counters."""
    from prometheus_client import generate_latest

    if _multiproc_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(worker.stats.registry)


_started: weakref.WeakSet[ShadowWorker] = weakref.WeakSet()
_worker_lock = threading.Lock()
_WORKER = "shadow.worker"


def worker_for(rt: Runtime) -> ShadowWorker:
    """The runtime's shadow worker, created (not started) on first use."""
    worker = rt.cache.get(_WORKER)
    if worker is None:
        with _worker_lock:
            worker = rt.cache.get(_WORKER)
            if worker is None:
                worker = rt.cache[_WORKER] = ShadowWorker(rt)
    return worker


@atexit.register
def _stop_all() -> None:
    for worker in list(_started):
        try:
            worker.stop(timeout=2.0)
        except Exception:  # at exit, report and go on
            log.exception("stopping the shadow worker failed")
    if _multiproc_dir():
        # This process's queue depth leaves the live sum (its counters stay counted).
        from prometheus_client import multiprocess

        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(os.getpid())


# --- reading a request back ------------------------------------------------------------


def get_request(rt: Runtime, routine: str, request_id: str, actor: Actor) -> dict[str, Any]:
    """One prediction request with every candidate's forecasts stored under it so far."""
    actor.require(*PREDICT_ROLES, to="read prediction requests")
    from numex.db import Case

    with rt.read() as session:
        found = get_routine(session, routine)
        request = session.scalar(
            select(PredictionRequest).where(
                PredictionRequest.request_key == request_id,
                PredictionRequest.routine_id == found.id,
            )
        )
        if request is None:
            raise NotFound(f"routine {routine} has no prediction request {request_id!r}")
        rows = session.execute(
            select(Candidate.id, Candidate.name, Candidate.stage, Case.key, Forecast.value)
            .join(Candidate, Forecast.candidate_id == Candidate.id)
            .join(Case, Forecast.case_id == Case.id)
            .where(Forecast.prediction_request_id == request.id)
            .order_by(Candidate.id, Forecast.id)
        ).all()
        by_candidate: dict[int, dict[str, Any]] = {}
        for candidate_id, name, stage, key, value in rows:
            entry = by_candidate.setdefault(
                candidate_id,
                {"id": candidate_id, "name": name, "stage": stage, "forecasts": []},
            )
            entry["forecasts"].append({"case": key, "value": value})
        return {
            "request_id": request.request_key,
            "routine": found.name,
            "operational_candidate_id": request.operational_candidate_id,
            "n_records": request.n_records,
            "shadow_status": request.shadow_status,
            "created_at": request.created_at.isoformat(),
            "candidates": list(by_candidate.values()),
        }


__all__ = [
    "MAX_RECORDS",
    "PREDICT_ROLES",
    "OperationalForecastFailed",
    "PredictResult",
    "ShadowJob",
    "ShadowStats",
    "ShadowWorker",
    "Snapshot",
    "collect",
    "exposition",
    "get_request",
    "predict",
    "snapshot",
    "validate_records",
    "worker_for",
    "Routine",
]
