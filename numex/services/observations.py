"""Late observations: the truth for cases already forecast, loaded from a file or posted
as JSON records, and the re-verification of every cycle they touch.

A record carries the routine's case key columns and its target column. The whole
load is checked first; any bad record (a key or target missing or unreadable, a
non-finite target, a case given twice with different values) refuses the load with
an InvalidInput naming the records, so nothing is half-stored. Records for cases the
routine does not have are *reported back* (count and keys), not stored. A value
that differs from the observation already stored is a correction: it replaces the
old one and is listed, with old and new value, in the audit event
``observations.loaded``.

Every cycle whose window holds a newly observed case is recounted: ``n_verified``
goes up, and a cycle whose cases are all observed becomes ``verified``. Online
forecasts need nothing more: they pair with observations through the case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from numex import specs
from numex.db import Cycle
from numex.services import audit, cycles, forecasts
from numex.services.errors import InvalidInput
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

#: Roles that may load observations.
LOAD_ROLES = ("ops", "scientist", "admin")
#: Bad records named in an error (and unknown keys listed in a report) at most.
MAX_REPORTED = 50


@dataclass
class ObservationLoad:
    """What a load of observations did."""

    routine: str
    source: str
    received: int = 0
    stored: int = 0
    unchanged: int = 0
    corrected: int = 0
    unknown: int = 0
    unknown_keys: list[str] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    cycles_reverified: int = 0
    cycles_verified_now: int = 0

    @property
    def message(self) -> str:
        text = (
            f"{self.routine}: {self.received} observation(s) from {self.source}: "
            f"{self.stored} new, {self.corrected} corrected, {self.unchanged} unchanged; "
            f"{self.cycles_reverified} cycle(s) re-verified, {self.cycles_verified_now} "
            "now fully verified"
        )
        if self.unknown:
            shown = ", ".join(self.unknown_keys[:5])
            more = f" and {self.unknown - 5} more" if self.unknown > 5 else ""
            text += f"; {self.unknown} for unknown cases, not stored: {shown}{more}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message}


def read_file(path: Path | str) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; InvalidInput naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as error:  # any reader failure is the file's problem, said plainly
        raise InvalidInput(f"cannot read {path}: {type(error).__name__}: {error}") from error
    raise InvalidInput(
        f"{path}: {suffix or 'no suffix'} is not a known format; valid: .csv, .parquet"
    )


def _records_frame(records: Any, columns: list[str]) -> pd.DataFrame:
    if isinstance(records, dict) and "records" in records:
        records = records["records"]
    if not isinstance(records, list) or not records:
        raise InvalidInput(
            'send a non-empty JSON list of records (or {"records": [...]}), each an object '
            f"with {', '.join(columns)}"
        )
    bad = [
        {"index": i, "problems": {"": "is not an object"}}
        for i, record in enumerate(records)
        if not isinstance(record, dict)
    ]
    if bad:
        raise InvalidInput(
            f"{len(bad)} record(s) are not JSON objects, e.g. record {bad[0]['index']}",
            details={"records": bad[:MAX_REPORTED], "required": columns},
        )
    return pd.DataFrame.from_records(records)


def _check(
    frame: pd.DataFrame, spec: specs.RoutineSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys, valid times and values of every record, or InvalidInput naming the bad ones."""
    columns = list(dict.fromkeys([*spec.case_keys, spec.time_column, spec.target]))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInput(
            f"observations for {spec.name} need column(s) {', '.join(missing)}; columns "
            f"present: {', '.join(map(str, frame.columns)) or 'none'}",
            details={"missing_columns": missing, "required": columns},
        )
    frame = frame.reset_index(drop=True)
    problems: dict[int, dict[str, str]] = {}

    def flag(index: int, column: str, why: str) -> None:
        problems.setdefault(int(index), {})[column] = why

    for column in dict.fromkeys([*spec.case_keys, spec.time_column]):
        for index in frame.index[frame[column].isna()]:
            flag(index, column, "is missing")
    times = pd.to_datetime(frame[spec.time_column], errors="coerce", format="mixed")
    for index in frame.index[times.isna() & frame[spec.time_column].notna()]:
        flag(index, spec.time_column, f"{frame.at[index, spec.time_column]!r} is not a time")
    values = pd.to_numeric(frame[spec.target], errors="coerce").astype(float)
    for index in frame.index[~np.isfinite(values.to_numpy())]:
        raw = frame.at[index, spec.target]
        missing_value = raw is None or (isinstance(raw, float) and math.isnan(raw))
        flag(
            index, spec.target, "is missing" if missing_value else f"{raw!r} is not a finite number"
        )
    keys = np.full(len(frame), None, dtype=object)
    good = np.array([i not in problems for i in range(len(frame))], dtype=bool)
    if good.any():
        clean = frame.loc[good].copy()
        clean[spec.time_column] = times[good]
        try:
            keys[good] = specs.case_keys(clean, spec).to_numpy(dtype=object)
        except (ValueError, TypeError) as error:
            raise InvalidInput(f"observations for {spec.name}: {error}") from error
        seen: dict[str, tuple[int, float]] = {}
        for index in np.flatnonzero(good):
            key, value = keys[index], values.iloc[index]
            if key in seen:
                first, earlier = seen[key]
                if earlier != value:
                    flag(index, "", f"repeats case {key} of record {first} with another value")
            else:
                seen[key] = (int(index), value)
    if problems:
        listed = [{"index": i, "problems": problems[i]} for i in sorted(problems)[:MAX_REPORTED]]
        shown = "; ".join(
            f"record {entry['index']}: "
            + ", ".join(f"{name or 'the record'} {why}" for name, why in entry["problems"].items())
            for entry in listed[:5]
        )
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InvalidInput(
            f"{len(problems)} of {len(frame)} observation record(s) are invalid, nothing was "
            f"stored: {shown}{more}",
            details={"records": listed, "n_invalid": len(problems), "required": columns},
        )
    unique = ~pd.Series(keys).duplicated().to_numpy()
    naive = forecasts._naive_utc(times)
    return keys[unique], naive.to_numpy(dtype="datetime64[ns]")[unique], values.to_numpy()[unique]


def load_observations(
    rt: Runtime,
    routine: str,
    source: Path | str | pd.DataFrame | list[dict[str, Any]] | dict[str, Any],
    actor: Actor,
    *,
    source_name: str | None = None,
) -> ObservationLoad:
    """Store observations for ``routine`` and re-verify the cycles they touch.

    ``source``: a CSV/Parquet path, a DataFrame, or JSON records (a list, or
    ``{"records": [...]}``), each with the routine's case key columns and target.
    One transaction; audited as ``observations.loaded``. Needs role ops, scientist
    or admin. See the module docstring for bad records, unknown cases and corrections.
    """
    actor.require(*LOAD_ROLES, to="load observations")
    with rt.read() as session:
        found = get_routine(session, routine)
        spec = _spec_of(found)
    columns = list(dict.fromkeys([*spec.case_keys, spec.time_column, spec.target]))
    if isinstance(source, pd.DataFrame):
        frame, name = source, source_name or "a data frame"
    elif isinstance(source, list | dict):
        frame, name = _records_frame(source, columns), source_name or "posted records"
    else:
        frame, name = read_file(source), source_name or str(source)
    if frame.empty:
        raise InvalidInput(f"{name} holds no observations")
    keys, valid_times, values = _check(frame, spec)
    result = ObservationLoad(routine=routine, source=name, received=len(frame))
    with rt.transaction() as session:
        found = get_routine(session, routine)
        report = forecasts.store_observations(
            session,
            found,
            keys,
            values,
            source=f"loaded from {name}"[:200],
            valid_times=valid_times,
            correct=True,
            max_listed=MAX_REPORTED,
        )
        result.stored, result.unchanged, result.corrected = (
            report.stored,
            report.unchanged,
            report.corrected,
        )
        result.unknown, result.unknown_keys = report.unknown, report.unknown_keys
        result.corrections = report.corrections
        cycle_ids = _cycles_holding(session, found.id, spec, valid_times[report.changed])
        if cycle_ids:
            counts = cycles.reverify(session, found, cycle_ids)
            result.cycles_reverified = counts["cycles"]
            result.cycles_verified_now = counts["verified_now"]
        audit.record(
            session,
            actor,
            "observations.loaded",
            "routine",
            found.id,
            {
                "source": name,
                "received": result.received,
                "stored": result.stored,
                "unchanged": result.unchanged,
                "corrected": result.corrected,
                "corrections": result.corrections,
                "unknown": result.unknown,
                "unknown_keys": result.unknown_keys[:20],
                "cycles_reverified": result.cycles_reverified,
                "cycles_verified_now": result.cycles_verified_now,
            },
            routine=routine,
        )
    return result


def _cycles_holding(
    session, routine_id: int, spec: specs.RoutineSpec, valid_times: np.ndarray
) -> list[int]:
    """The ids of the routine's cycles whose windows hold any of ``valid_times``."""
    if len(valid_times) == 0:
        return []
    starts = np.unique(forecasts.cycle_labels(valid_times, spec))
    found: list[int] = []
    listed = [pd.Timestamp(s).to_pydatetime() for s in starts]
    for offset in range(0, len(listed), 500):
        found += session.scalars(
            select(Cycle.id).where(
                Cycle.routine_id == routine_id,
                Cycle.window_start.in_(listed[offset : offset + 500]),
            )
        ).all()
    return found


def _spec_of(routine) -> specs.RoutineSpec:
    from numex.services.experiments import routine_spec

    return routine_spec(routine)
