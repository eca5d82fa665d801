"""Scorecards: a candidate against a reference on the cases both forecast.

:func:`scorecard_for` is the one way numex builds a scorecard from the database:
the scorecard page, its CSV/JSON downloads, the CLI, the API and the evidence of
a promotion request all call it, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from numex.db import Candidate, Routine
from numex.scoring import DEFAULT_METHOD, METHODS, Scorecard, build_scorecard
from numex.services.errors import InvalidInput, NotFound
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
