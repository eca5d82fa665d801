"""Routines: listing and overview. (Loading definitions lives in services.experiments.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from numex.db import Alert, Candidate, Cycle, PromotionRequest, Routine
from numex.services.errors import NotFound
from numex.services.runtime import Runtime


@dataclass
class RoutineOverview:
    """What the dashboard shows for one routine."""

    name: str
    title: str
    version: int
    operational: dict[str, Any] | None
    parallel: list[dict[str, Any]] = field(default_factory=list)
    experiments: int = 0
    pending_requests: int = 0
    open_alerts: int = 0
    last_cycle: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _candidate_brief(candidate: Candidate) -> dict[str, Any]:
    return {"id": candidate.id, "name": candidate.name, "stage": candidate.stage}


def get_routine(session: Session, name: str) -> Routine:
    """The routine called ``name``, or NotFound naming the routines that exist."""
    routine = session.scalar(select(Routine).where(Routine.name == name))
    if routine is None:
        known = session.scalars(select(Routine.name).order_by(Routine.name)).all()
        raise NotFound(
            f"no routine {name!r}; known routines: {', '.join(known) if known else 'none yet'}"
        )
    return routine


def overview(rt: Runtime) -> list[RoutineOverview]:
    """Every routine with its operational and parallel candidates, pending requests,
    open alerts and last cycle."""
    result = []
    with rt.read() as session:
        for routine in session.scalars(select(Routine).order_by(Routine.name)):
            candidates = session.scalars(
                select(Candidate).where(Candidate.routine_id == routine.id).order_by(Candidate.id)
            ).all()
            operational = next((c for c in candidates if c.stage == "operational"), None)
            pending = session.scalar(
                select(func.count())
                .select_from(PromotionRequest)
                .join(Candidate, PromotionRequest.candidate_id == Candidate.id)
                .where(Candidate.routine_id == routine.id, PromotionRequest.status == "open")
            )
            alerts = session.scalar(
                select(func.count())
                .select_from(Alert)
                .where(Alert.routine_id == routine.id, Alert.acknowledged_at.is_(None))
            )
            last = session.scalar(
                select(Cycle)
                .where(Cycle.routine_id == routine.id, Cycle.status != "pending")
                .order_by(Cycle.window_start.desc())
                .limit(1)
            )
            result.append(
                RoutineOverview(
                    name=routine.name,
                    title=routine.title,
                    version=routine.current.version,
                    operational=_candidate_brief(operational) if operational else None,
                    parallel=[_candidate_brief(c) for c in candidates if c.stage == "parallel"],
                    experiments=sum(c.stage == "experiment" for c in candidates),
                    pending_requests=pending or 0,
                    open_alerts=alerts or 0,
                    last_cycle=_cycle_brief(last) if last else None,
                )
            )
    return result


def _cycle_brief(cycle: Cycle) -> dict[str, Any]:
    return {
        "id": cycle.id,
        "window_start": _iso(cycle.window_start),
        "status": cycle.status,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def detail(rt: Runtime, name: str) -> dict[str, Any]:
    """One routine for its page: candidates in stage lanes (newest first), every recorded
    definition version, and the current definition."""
    from numex.lifecycle import STAGES

    with rt.read() as session:
        routine = get_routine(session, name)
        current = routine.current
        primary = (current.definition.get("metrics") or [None])[0]
        candidates = session.scalars(
            select(Candidate)
            .where(Candidate.routine_id == routine.id)
            .order_by(Candidate.id.desc())
        ).all()
        lanes: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
        for candidate in candidates:
            overall = (candidate.offline_scores or {}).get("overall", {})
            lanes[candidate.stage].append(
                {
                    **_candidate_brief(candidate),
                    "source": candidate.source,
                    "author": candidate.author,
                    "created_at": _iso(candidate.created_at),
                    "offline": overall.get(primary) if primary else None,
                }
            )
        return {
            "name": routine.name,
            "title": routine.title,
            "registered_model_name": routine.registered_model_name,
            "source_dir": routine.source_dir,
            "version": current.version,
            "primary_metric": primary,
            "definition": current.definition,
            "lanes": lanes,
            "versions": [
                {
                    "version": v.version,
                    "digest": v.digest,
                    "created_at": _iso(v.created_at),
                    "created_by": v.created_by,
                }
                for v in reversed(routine.versions)
            ],
        }
