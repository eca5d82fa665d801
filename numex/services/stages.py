"""Stage changes: the one place a candidate's stage is written.

Every caller (bootstrap, promotion, rollback, the demo's recorded promotion) goes
through :func:`move`, inside its own transaction, so the lifecycle table, the
one-operational rule, the transition record, the audit event and the registry
outbox always change together.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from numex.db import Candidate, RegistryOutbox, StageTransition
from numex.lifecycle import check_move
from numex.services import audit
from numex.services.runtime import Actor


def operational_of(session: Session, routine_id: int, *, lock: bool = False) -> Candidate | None:
    """The routine's operational candidate, if it has one."""
    query = select(Candidate).where(
        Candidate.routine_id == routine_id, Candidate.stage == "operational"
    )
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def move(
    session: Session,
    candidate: Candidate,
    to_stage: str,
    *,
    kind: str,
    actor: Actor,
    reason: str = "",
    request_id: int | None = None,
) -> list[StageTransition]:
    """Move ``candidate`` to ``to_stage`` (checked against the lifecycle table).

    Entering ``operational`` retires the routine's current operational candidate in the
    same transaction. Returns the transitions written (the retirement first).
    """
    check_move(candidate.stage, to_stage)
    written: list[StageTransition] = []
    if to_stage == "operational":
        current = operational_of(session, candidate.routine_id, lock=True)
        if current is not None and current.id != candidate.id:
            written.append(
                _write(
                    session,
                    current,
                    "retired",
                    kind=f"{kind}:replaced",
                    actor=actor,
                    reason=f"replaced by {candidate.name} (#{candidate.id})"
                    + (f": {reason}" if reason else ""),
                    request_id=request_id,
                )
            )
            # Flush the retirement first so the one-operational index never sees two.
            session.flush()
    written.append(
        _write(
            session,
            candidate,
            to_stage,
            kind=kind,
            actor=actor,
            reason=reason,
            request_id=request_id,
        )
    )
    session.flush()
    return written


def _write(
    session: Session,
    candidate: Candidate,
    to_stage: str,
    *,
    kind: str,
    actor: Actor,
    reason: str,
    request_id: int | None,
) -> StageTransition:
    from_stage = candidate.stage
    candidate.stage = to_stage
    transition = StageTransition(
        candidate_id=candidate.id,
        from_stage=from_stage,
        to_stage=to_stage,
        kind=kind,
        reason=reason,
        actor=actor.name,
        promotion_request_id=request_id,
    )
    session.add(transition)
    session.add(
        RegistryOutbox(
            routine_id=candidate.routine_id,
            candidate_id=candidate.id,
            action="set_stage",
            payload={"stage": to_stage, "from_stage": from_stage},
        )
    )
    audit.record(
        session,
        actor,
        "candidate.stage_changed",
        "candidate",
        candidate.id,
        {
            "candidate": candidate.name,
            "from": from_stage,
            "to": to_stage,
            "kind": kind,
            "reason": reason,
            "request_id": request_id,
        },
        routine=candidate.routine.name,
    )
    return transition
