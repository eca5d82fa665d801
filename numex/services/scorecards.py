"""Scorecards: a candidate against a reference on the cases both forecast.

:func:`scorecard_for` is the one way numex builds a scorecard from the database:
the scorecard page, its CSV/JSON downloads, the CLI, the API and the evidence of
a promotion request all call it, so they cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cached_property
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from numex.db import Candidate, Routine
from numex.scoring import DEFAULT_METHOD, METHODS, Scorecard, build_scorecard
from numex.services.errors import InvalidInput, NotFound
from numex.services.runtime import Runtime
from numex.services.stages import operational_of


def metrics_of(definition: Mapping[str, Any]) -> list[str]:
    """The routine definition's metrics, the primary first."""
    return list(definition.get("metrics") or [])


def segment_names(definition: Mapping[str, Any]) -> list[str]:
    """The names of the routine definition's scorecard segments (the pair frame's columns)."""
    names = []
    for segment in definition.get("segments") or []:
        names.append(segment["name"] if isinstance(segment, Mapping) else str(segment))
    return names


def _routine(session: Session, routine: Routine | str) -> Routine:
    if isinstance(routine, Routine):
        return routine
    from numex.services.routines import get_routine

    return get_routine(session, routine)


def _candidate(session: Session, routine: Routine, candidate_id: int, what: str) -> Candidate:
    candidate = session.get(Candidate, candidate_id)
    if candidate is None or candidate.routine_id != routine.id:
        known = session.scalars(
            select(Candidate.id).where(Candidate.routine_id == routine.id).order_by(Candidate.id)
        ).all()
        raise NotFound(
            f"no {what} #{candidate_id} in routine {routine.name}; its candidates: "
            f"{', '.join(f'#{i}' for i in known) or 'none yet'}"
        )
    return candidate


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def scorecard_for(
    session: Session,
    routine: Routine | str,
    candidate_id: int,
    reference_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    method: str = DEFAULT_METHOD,
) -> Scorecard:
    """The scorecard of candidate ``candidate_id`` against ``reference_id`` (default: the
    routine's operational candidate) on the verified cases both forecast in cycles whose
    window lies in [start, end) (default: every cycle).

    Metrics and segments come from the routine's current definition; the statistics
    are those of :func:`numex.scoring.build_scorecard` with standard-error ``method``
    (``ar2`` by default; ``ar1``, ``iid``, ``dm``). ``meta`` records routine,
    candidate, reference, period and method, so the scorecard's digest covers them.

    NotFound for an unknown routine or candidate, InvalidInput when there is no
    reference (no operational candidate) or the candidate is its own reference.
    """
    from numex.services import forecasts

    routine = _routine(session, routine)
    if method not in METHODS:
        raise InvalidInput(f"method {method!r} is not known; valid methods: {', '.join(METHODS)}")
    candidate = _candidate(session, routine, candidate_id, "candidate")
    if reference_id is None:
        reference = operational_of(session, routine.id)
        if reference is None:
            raise InvalidInput(
                f"routine {routine.name} has no operational candidate to compare with; "
                "name a reference candidate"
            )
    else:
        reference = _candidate(session, routine, reference_id, "reference candidate")
    if reference.id == candidate.id:
        raise InvalidInput(
            f"candidate #{candidate.id} ({candidate.name}) cannot be scored against itself; "
            "choose another reference"
        )
    definition = routine.current.definition
    metrics: Sequence[str] = metrics_of(definition)
    if not metrics:
        raise InvalidInput(f"routine {routine.name}: its definition lists no metrics")
    pairs = forecasts.paired_frame(session, routine, candidate.id, reference.id, start, end)
    meta = {
        "routine": routine.name,
        "routine_version": routine.current.version,
        "candidate": {"id": candidate.id, "name": candidate.name},
        "reference": {"id": reference.id, "name": reference.name},
        "period": {"start": _iso(start), "end": _iso(end)},
        "method": method,
    }
    return build_scorecard(pairs, metrics, segment_names(definition), method=method, meta=meta)


# --- what people ask for: names, periods and comparisons ------------------------------
#
# The scorecard page, its downloads, the API and ``numex scorecard`` take candidates by
# id or name and the period as text; they all go through :func:`compare` (and the ops
# page through :func:`compare_parallel`), so they parse and refuse input the same way.


def find_candidate(
    session: Session, routine: Routine, reference: str | int, what: str = "candidate"
) -> Candidate:
    """The routine's candidate ``reference``: an id (``7`` or ``#7``) or a name.

    NotFound lists the routine's candidates (``#id name``).
    """
    text = str(reference).strip()
    query = select(Candidate).where(Candidate.routine_id == routine.id)
    found = None
    if text.lstrip("#").isdigit():
        found = session.scalar(query.where(Candidate.id == int(text.lstrip("#"))))
    if found is None and text:
        found = session.scalar(query.where(Candidate.name == text))
    if found is None:
        known = session.execute(
            query.with_only_columns(Candidate.id, Candidate.name).order_by(Candidate.id)
        ).all()
        raise NotFound(
            f"{what}={text!r}: routine {routine.name} has no such candidate; its candidates: "
            f"{', '.join(f'#{i} {n}' for i, n in known) or 'none yet'}",
            details={"parameter": what},
        )
    return found


def _moment(value: str | datetime | None, name: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        stamp = pd.Timestamp(value)
    else:
        try:
            stamp = pd.Timestamp(value.strip())
        except (ValueError, TypeError):
            stamp = pd.NaT
        if pd.isna(stamp):
            raise InvalidInput(
                f"{name}={value!r} is not a time; valid: a date like 2014-01-01 or a "
                "date-time like 2014-01-01T06:00",
                details={"parameter": name},
            )
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def _is_date(text: str) -> bool:
    """Whether ``text`` names a day rather than an instant (no time of day in it)."""
    return ":" not in text and "T" not in text.strip().upper()[1:]


def parse_period(
    start: str | datetime | None, end: str | datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The half-open cycle period ``[start, end)`` for a period a person gave as
    ``from``/``to`` (either may be missing: from the first / to the last cycle).

    Each is a date or a date-time (naive = UTC); a ``to`` given as a bare date includes
    that day, as ``numex cycle run --to`` does. InvalidInput names the parameter.
    """
    first = _moment(start, "from")
    last = _moment(end, "to")
    if last is not None and isinstance(end, str) and _is_date(end):
        last += timedelta(days=1)
    if first is not None and last is not None and last <= first:
        raise InvalidInput(
            f"to={end!s} is not after from={start!s}; give a period that holds at least one cycle",
            details={"parameter": "to"},
        )
    return first, last


def check_method(method: str | None) -> str:
    """``method`` (default ``ar2``) if it is a standard-error method, else InvalidInput."""
    if method is None or not str(method).strip():
        return DEFAULT_METHOD
    if method not in METHODS:
        raise InvalidInput(
            f"method={method!r} is not a standard-error method; valid: {', '.join(METHODS)}",
            details={"parameter": "method"},
        )
    return method


def _brief(candidate: Candidate) -> dict[str, Any]:
    return {"id": candidate.id, "name": candidate.name, "stage": candidate.stage}


def candidates_of(rt: Runtime, routine: str) -> list[dict[str, Any]]:
    """Every candidate of ``routine`` (id, name, stage), oldest first: the choices of
    candidate and reference. NotFound for an unknown routine."""
    with rt.read() as session:
        found = _routine(session, routine)
        rows = session.scalars(
            select(Candidate).where(Candidate.routine_id == found.id).order_by(Candidate.id)
        ).all()
        return [_brief(c) for c in rows]


@dataclass
class Comparison:
    """A scorecard with what a page or a report needs around it.

    ``candidates``: every candidate of the routine (id, name, stage), for choosing
    another reference; ``start``/``end``: the half-open period the scorecard covers.
    """

    routine: str
    candidate: dict[str, Any]
    reference: dict[str, Any]
    candidates: list[dict[str, Any]]
    start: datetime | None
    end: datetime | None
    method: str
    scorecard: Scorecard

    @cached_property
    def digest(self) -> str:
        """The scorecard's content digest (computed once: it serialises every cell)."""
        return self.scorecard.digest()

    def to_dict(self) -> dict[str, Any]:
        """The scorecard's dict plus its content digest (what the API returns)."""
        return {**self.scorecard.to_dict(), "digest": self.digest}

    @property
    def period_text(self) -> str:
        """The period asked for and the cycles it holds, e.g. "every cycle (2014-01-01 …
        2015-12-31)"; the same words on the page and in the CLI."""
        card = self.scorecard
        cycles = card.series[0].cycles if card.series and card.series[0].cycles else ()
        held = f"{str(cycles[0])[:10]} … {str(cycles[-1])[:10]}" if cycles else "no cycles"
        if self.start is None and self.end is None:
            return f"every cycle ({held})"
        asked = f"cycles from {_when(self.start) or 'the first'}"
        asked += f" to before {_when(self.end)}" if self.end else " on"
        return f"{asked} ({held})"


def level_text(level: float | None, missing: str = "n/a") -> str:
    """A confidence level in percent with enough digits to tell 99.7 % from 99.79 %."""
    if level is None:
        return missing
    short = 100.0 * (1.0 - level)
    decimals = max(0, 1 - math.floor(math.log10(short))) if short > 0 else 0
    return f"{100.0 * level:.{decimals}f}".rstrip("0").rstrip(".") + " %"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.time() == time():
        return value.date().isoformat()
    return value.isoformat(timespec="minutes")


def compare(
    rt: Runtime,
    routine: str,
    candidate: str | int | None,
    reference: str | int | None = None,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    method: str | None = DEFAULT_METHOD,
) -> Comparison:
    """Candidate ``candidate`` (id or name) against ``reference`` (id or name; default the
    operational candidate) over the cycles from ``start`` to ``end`` (see
    :func:`parse_period`) with standard-error ``method``: :func:`scorecard_for` on input
    as a person gives it.

    InvalidInput (naming the parameter) for a missing candidate, a bad period or method,
    no operational reference, or a candidate compared with itself; NotFound for an
    unknown routine or candidate.
    """
    method = check_method(method)
    first, last = parse_period(start, end)
    if candidate is None or not str(candidate).strip():
        raise InvalidInput(
            "candidate is required: the id or name of the candidate to score",
            details={"parameter": "candidate"},
        )
    with rt.read() as session:
        found = _routine(session, routine)
        chosen = find_candidate(session, found, candidate, "candidate")
        if reference is not None and str(reference).strip():
            against = find_candidate(session, found, reference, "reference")
        else:
            against = operational_of(session, found.id)
            if against is None:
                raise InvalidInput(
                    f"reference: routine {found.name} has no operational candidate to compare "
                    "with; name a reference candidate",
                    details={"parameter": "reference"},
                )
        if against.id == chosen.id:
            raise InvalidInput(
                f"reference: candidate #{chosen.id} ({chosen.name}) cannot be scored against "
                "itself; choose another reference",
                details={"parameter": "reference"},
            )
        scorecard = scorecard_for(session, found, chosen.id, against.id, first, last, method)
        every = session.scalars(
            select(Candidate).where(Candidate.routine_id == found.id).order_by(Candidate.id)
        ).all()
        return Comparison(
            routine=found.name,
            candidate=_brief(chosen),
            reference=_brief(against),
            candidates=[_brief(c) for c in every],
            start=first,
            end=last,
            method=method,
            scorecard=scorecard,
        )


@dataclass
class ParallelComparison:
    """Every parallel candidate of a routine against its operational one."""

    routine: str
    operational: dict[str, Any] | None
    start: datetime | None
    end: datetime | None
    method: str
    comparisons: list[Comparison]


def compare_parallel(
    rt: Runtime,
    routine: str,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    method: str | None = DEFAULT_METHOD,
) -> ParallelComparison:
    """The scorecard of every parallel candidate against the operational candidate over
    one period (oldest candidate first). No operational candidate: no comparisons."""
    method = check_method(method)
    first, last = parse_period(start, end)
    with rt.read() as session:
        found = _routine(session, routine)
        operational = operational_of(session, found.id)
        every = session.scalars(
            select(Candidate).where(Candidate.routine_id == found.id).order_by(Candidate.id)
        ).all()
        comparisons = []
        if operational is not None:
            for candidate in every:
                if candidate.stage != "parallel":
                    continue
                scorecard = scorecard_for(
                    session, found, candidate.id, operational.id, first, last, method
                )
                comparisons.append(
                    Comparison(
                        routine=found.name,
                        candidate=_brief(candidate),
                        reference=_brief(operational),
                        candidates=[_brief(c) for c in every],
                        start=first,
                        end=last,
                        method=method,
                        scorecard=scorecard,
                    )
                )
        return ParallelComparison(
            routine=found.name,
            operational=_brief(operational) if operational else None,
            start=first,
            end=last,
            method=method,
            comparisons=comparisons,
        )
