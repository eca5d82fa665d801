"""Promotion requests, sign-offs, overrides and rollback: the gates in action.

Every public function here is one transaction that checks who may do it and writes
its audit events in that same transaction (DESIGN.md, "Gates"):

- :func:`request_promotion` — a scientist asks to move a candidate into the next
  stage; the evidence (scorecard, check results with their numbers, lineage) is
  frozen with its digest.
- :func:`sign_off` — a reviewer approves or rejects, with a comment. The requester
  and the candidate's author may not sign, each person signs once, one reject
  closes the request (and the candidate becomes ``rejected``).
- :func:`withdraw` — the requester closes the request; the candidate stays where it
  is and may be requested again.
- :func:`override_check` — an admin overrides one failed check with a written
  justification (for the life of the request).
- :func:`refresh_evidence` / :func:`refresh_open_requests` — rebuild the evidence;
  when new verified cycles changed it a new evidence revision is stored. The same
  happens automatically whenever an open request is shown (:func:`get_request` with
  ``refresh``: the request page, the API, ``numex promote show``) and before every
  sign-off, so a reviewer always sees, and signs, evidence covering every verified cycle.
- :func:`rollback` — ops reinstate the previous operational candidate.

**Stale approvals.** A sign-off is bound to the evidence revision it was given on.
Only approvals given on the *current* evidence count toward the gate's required
sign-offs; an approval given on earlier evidence is shown as "given on earlier
evidence", with what changed since, and the reviewer may not sign again (one
sign-off per person) — so when evidence changes, the other reviewers' approvals on
the new evidence are needed. A reject always counts: it closes the request.

**Exactly once.** Each sign-off, override and refresh locks the request row
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite transactions begin with
``BEGIN IMMEDIATE`` and so run one at a time) and re-reads its status inside the
transaction; the stage change runs in that transaction through
:func:`numex.services.stages.move`, so however many reviewers approve at the same
moment, the promotion executes once.

**Lock order** (PostgreSQL): a promotion request row, then the audit chain's advisory
lock (:func:`numex.services.audit.lock_chain`), then candidate rows. Functions that
move a stage take the chain lock before they lock any candidate, and a function that
touches several requests does each in its own transaction, so two decisions never wait
on each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from numex.db import (
    DECISIONS,
    REQUEST_STATUSES,
    AuditEvent,
    Candidate,
    CheckOverride,
    Evidence,
    PromotionRequest,
    Routine,
    SignOff,
    StageTransition,
    User,
    utcnow,
)
from numex.lifecycle import next_stage
from numex.services import audit, stages
from numex.services import evidence as evidence_service
from numex.services.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

TARGETS = ("parallel", "operational")
ENTITY = "promotion_request"


# --- finding things ---------------------------------------------------------------------


def find_candidate(session: Session, reference: int | str, *, lock: bool = False) -> Candidate:
    """A candidate by id (``12`` or ``#12``), ``routine/name``, or a name unique across
    routines; NotFound saying what would be valid."""
    text = str(reference).strip().lstrip("#")
    query = select(Candidate)
    if lock:
        query = query.with_for_update()
    if text.isdigit():
        found = session.scalar(query.where(Candidate.id == int(text)))
        if found is None:
            raise NotFound(f"no candidate #{text}; list candidates with `numex candidate list`")
        return found
    if "/" in text:
        routine_name, name = text.split("/", 1)
        routine = get_routine(session, routine_name)
        found = session.scalar(
            query.where(Candidate.routine_id == routine.id, Candidate.name == name)
        )
    else:
        matches = session.scalars(query.where(Candidate.name == text)).all()
        if len(matches) > 1:
            raise InvalidInput(
                f"more than one routine has a candidate {text!r}: give ROUTINE/NAME or its id"
            )
        found = matches[0] if matches else None
    if found is None:
        raise NotFound(f"no candidate {reference!r}; give its id or ROUTINE/NAME")
    return found


def _request(session: Session, request_id: int, *, lock: bool = False) -> PromotionRequest:
    query = select(PromotionRequest).where(PromotionRequest.id == int(request_id))
    if lock:
        # Re-read even if this session saw the row before: the status may have changed.
        query = query.with_for_update().execution_options(populate_existing=True)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"no promotion request #{request_id}; list them with `numex promote list`")
    return found


def _candidate_of(session: Session, request: PromotionRequest, *, lock: bool = False) -> Candidate:
    query = select(Candidate).where(Candidate.id == request.candidate_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one()


def _current_evidence(session: Session, request: PromotionRequest) -> Evidence:
    return session.scalars(
        select(Evidence).where(Evidence.request_id == request.id).order_by(Evidence.id.desc())
    ).first()


def _sign_offs(session: Session, request: PromotionRequest) -> list[SignOff]:
    return list(
        session.scalars(
            select(SignOff)
            .where(SignOff.request_id == request.id)
            .order_by(SignOff.id)
            .execution_options(populate_existing=True)
        )
    )


def _overrides(session: Session, request: PromotionRequest) -> list[CheckOverride]:
    return list(
        session.scalars(
            select(CheckOverride)
            .where(CheckOverride.request_id == request.id)
            .order_by(CheckOverride.id)
            .execution_options(populate_existing=True)
        )
    )


def is_author(candidate: Candidate, actor: Actor) -> bool:
    """Whether ``actor`` is the candidate's author (by user id, or by name)."""
    if actor.user_id is not None and candidate.author_id == actor.user_id:
        return True
    return bool(candidate.author) and candidate.author == actor.name


@dataclass(frozen=True)
class Refusal:
    """Why an actor may not sign a request: ``error`` is the exception class to raise."""

    message: str
    error: type[Exception]


def sign_off_refusal(
    request: PromotionRequest, candidate: Candidate, signed_by: set[int], actor: Actor
) -> Refusal | None:
    """Why ``actor`` may not sign ``request`` now, or None when they may."""
    if not actor.has_role("reviewer"):
        held = ", ".join(sorted(actor.roles)) or "none"
        return Refusal(
            f"{actor.name} may not sign off: needs role reviewer (holds: {held})", PermissionDenied
        )
    if actor.user_id is None:
        return Refusal(
            "sign-offs are given by people: identify yourself with an API token", PermissionDenied
        )
    if request.status != "open":
        return Refusal(
            f"promotion request #{request.id} is {request.status}; only open requests take "
            "sign-offs",
            Conflict,
        )
    if actor.user_id == request.requested_by_id:
        return Refusal(
            f"{actor.name} requested promotion #{request.id} and may not sign it: "
            "the requester never signs their own request",
            PermissionDenied,
        )
    if is_author(candidate, actor):
        return Refusal(
            f"{actor.name} is the author of candidate {candidate.name} and may not sign its "
            "promotion: the author never signs",
            PermissionDenied,
        )
    if actor.user_id in signed_by:
        return Refusal(
            f"{actor.name} has already signed off request #{request.id}: one sign-off per person",
            Conflict,
        )
    return None


# --- evidence ---------------------------------------------------------------------------


def _freeze(
    session: Session, request: PromotionRequest, candidate: Candidate, actor: Actor
) -> tuple[Evidence, Evidence | None]:
    """Build the evidence now; store it as a new revision when it differs from the current
    one. Returns (current evidence, the previous one if a new revision was stored)."""
    document = evidence_service.build_evidence(session, candidate, request.target_stage)
    current = _current_evidence(session, request)
    if current is not None:
        known = {k: v for k, v in current.content.items() if k not in ("request_id", "revision")}
        if known == document.content:
            return current, None
    revision = (current.content.get("revision", 0) if current is not None else 0) + 1
    content = {**document.content, "request_id": request.id, "revision": revision}
    row = Evidence(
        request_id=request.id,
        digest=audit.digest(content),
        content=content,
        all_checks_pass=document.all_checks_pass,
    )
    session.add(row)
    session.flush()
    if current is not None:
        audit.record(
            session,
            actor,
            "promotion.evidence_changed",
            ENTITY,
            request.id,
            {
                "revision": revision,
                "digest": row.digest,
                "previous_digest": current.digest,
                "changes": evidence_service.changes(current.content, content),
            },
            routine=candidate.routine.name,
        )
    return row, current


def _approvals_on(sign_offs: list[SignOff], evidence: Evidence) -> list[SignOff]:
    return [s for s in sign_offs if s.decision == "approve" and s.evidence_id == evidence.id]


def _failing_checks(evidence: Evidence, overrides: list[CheckOverride]) -> list[str]:
    overridden = {o.check_name for o in overrides}
    return [
        check["name"]
        for check in evidence.content.get("checks") or []
        if not check["passed"] and check["name"] not in overridden
    ]


def _execute_if_ready(
    session: Session, request: PromotionRequest, candidate: Candidate, actor: Actor
) -> bool:
    """Run the stage change when approvals on the current evidence suffice and every check
    passes or is overridden. Called with the request row locked; True if it executed."""
    if request.status != "open":
        return False
    current = _current_evidence(session, request)
    approvals = _approvals_on(_sign_offs(session, request), current)
    overrides = _overrides(session, request)
    if len(approvals) < request.required_sign_offs or _failing_checks(current, overrides):
        return False
    audit.lock_chain(session)
    candidate = _candidate_of(session, request, lock=True)
    if candidate.stage != request.from_stage:
        raise Conflict(
            f"candidate {candidate.name} is now {candidate.stage}, not {request.from_stage} as "
            f"when request #{request.id} was made; withdraw the request and ask again"
        )
    stages.move(
        session,
        candidate,
        request.target_stage,
        kind="promotion",
        actor=actor,
        reason=f"promotion request #{request.id}"
        + (f": {request.reason}" if request.reason else ""),
        request_id=request.id,
    )
    request.status = "executed"
    request.closed_at = utcnow()
    audit.record(
        session,
        actor,
        "promotion.executed",
        ENTITY,
        request.id,
        {
            "candidate": candidate.name,
            "candidate_id": candidate.id,
            "to": request.target_stage,
            "evidence_digest": current.digest,
            "approved_by": [s.user.username for s in approvals],
            "overridden_checks": [o.check_name for o in overrides],
        },
        routine=candidate.routine.name,
    )
    session.flush()
    return True


# --- the use cases ----------------------------------------------------------------------


def _person(actor: Actor, what: str) -> None:
    if actor.user_id is None:
        raise PermissionDenied(f"{what} is done by a person: identify yourself with an API token")


def _text(value: str | None, field: str, hint: str) -> str:
    cleaned = (value or "").strip()
    if not cleaned:
        raise InvalidInput(f"{field} is required: {hint}")
    return cleaned


def request_promotion(
    rt: Runtime, candidate_id: int | str, target: str, actor: Actor, reason: str = ""
) -> dict[str, Any]:
    """Ask to move a candidate into ``target`` (the stage after its current one).

    Scientists only; one open request per candidate. The evidence is built and frozen
    with its digest in the same transaction. With a gate needing no sign-offs whose
    checks all pass, the promotion executes at once. Returns the request (see
    :func:`get_request`).
    """
    actor.require("scientist", to="request promotions")
    _person(actor, "a promotion request")
    if target not in TARGETS:
        raise InvalidInput(f"target stage {target!r} is not valid; valid: {', '.join(TARGETS)}")
    with rt.transaction() as session:
        audit.lock_chain(session)
        candidate = find_candidate(session, candidate_id, lock=True)
        expected = next_stage(candidate.stage)
        if expected is None:
            raise InvalidInput(
                f"candidate {candidate.name} (#{candidate.id}) is {candidate.stage}: "
                "it cannot be promoted"
            )
        if target != expected:
            raise InvalidInput(
                f"candidate {candidate.name} (#{candidate.id}) is {candidate.stage}; it can only "
                f"be requested into {expected}, not {target}"
            )
        open_request = session.scalar(
            select(PromotionRequest.id).where(
                PromotionRequest.candidate_id == candidate.id, PromotionRequest.status == "open"
            )
        )
        if open_request is not None:
            raise Conflict(
                f"candidate {candidate.name} already has open promotion request #{open_request}"
            )
        _spec, gate = evidence_service.gate_for(candidate, target)
        request = PromotionRequest(
            candidate_id=candidate.id,
            from_stage=candidate.stage,
            target_stage=target,
            status="open",
            requested_by_id=actor.user_id,
            reason=(reason or "").strip(),
            required_sign_offs=gate.required_sign_offs,
        )
        session.add(request)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(
                f"candidate {candidate.name} already has an open promotion request"
            ) from None
        current, _ = _freeze(session, request, candidate, actor)
        audit.record(
            session,
            actor,
            "promotion.requested",
            ENTITY,
            request.id,
            {
                "candidate": candidate.name,
                "candidate_id": candidate.id,
                "from": candidate.stage,
                "to": target,
                "reason": request.reason,
                "required_sign_offs": request.required_sign_offs,
                "evidence_digest": current.digest,
                "all_checks_pass": current.all_checks_pass,
            },
            routine=candidate.routine.name,
        )
        _execute_if_ready(session, request, candidate, actor)
        return _request_view(session, request)


def sign_off(
    rt: Runtime,
    request_id: int,
    actor: Actor,
    decision: str,
    comment: str,
    *,
    evidence_digest: str | None = None,
) -> dict[str, Any]:
    """Record ``actor``'s approve/reject of a request, with a comment (required).

    Reviewers only; never the requester or the candidate's author; once per person.
    The evidence is rebuilt first and the sign-off is bound to the current revision;
    when ``evidence_digest`` (what the reviewer looked at) is given and the evidence
    has changed since, nothing is signed and Conflict says what changed. A reject
    closes the request and moves the candidate to ``rejected``; an approval that
    completes the gate executes the promotion in the same transaction.
    """
    decision = (decision or "").strip().lower()
    if decision not in DECISIONS:
        raise InvalidInput(f"decision {decision!r} is not valid; valid: {', '.join(DECISIONS)}")
    comment = _text(comment, "comment", "say why you approve or reject")
    stale: tuple[str, list[dict[str, Any]]] | None = None
    with rt.transaction() as session:
        request = _request(session, request_id, lock=True)
        candidate = _candidate_of(session, request)
        signed = {s.user_id for s in _sign_offs(session, request)}
        refusal = sign_off_refusal(request, candidate, signed, actor)
        if refusal is not None:
            raise refusal.error(refusal.message)
        current, _previous = _freeze(session, request, candidate, actor)
        if evidence_digest and evidence_digest != current.digest:
            seen = session.scalar(
                select(Evidence).where(
                    Evidence.request_id == request.id, Evidence.digest == evidence_digest
                )
            )
            what = evidence_service.changes(seen.content, current.content) if seen else []
            stale = (current.digest, what)
        else:
            row = SignOff(
                request_id=request.id,
                user_id=actor.user_id,
                decision=decision,
                comment=comment,
                evidence_id=current.id,
                evidence_digest=current.digest,
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                raise Conflict(
                    f"{actor.name} has already signed off request #{request.id}"
                ) from None
            audit.record(
                session,
                actor,
                "promotion.signed_off",
                ENTITY,
                request.id,
                {
                    "decision": decision,
                    "comment": comment,
                    "evidence_digest": current.digest,
                    "candidate": candidate.name,
                },
                routine=candidate.routine.name,
            )
            if decision == "reject":
                _close_rejected(session, request, candidate, actor, comment)
            else:
                _execute_if_ready(session, request, candidate, actor)
            view = _request_view(session, request)
    if stale is not None:
        # The new evidence revision is committed; the reviewer must look at it first.
        digest, what = stale
        listed = "; ".join(f"{c['item']}: {c['before']} → {c['after']}" for c in what[:8])
        raise Conflict(
            f"the evidence of request #{request_id} changed since you looked at it "
            f"(now {digest[:19]}…){': ' + listed if listed else ''}; review it again and sign",
            details={"evidence_digest": digest, "changes": what},
        )
    return view


def _close_rejected(
    session: Session,
    request: PromotionRequest,
    candidate: Candidate,
    actor: Actor,
    comment: str,
) -> None:
    request.status = "rejected"
    request.closed_at = utcnow()
    audit.lock_chain(session)
    candidate = _candidate_of(session, request, lock=True)
    if candidate.stage == request.from_stage:
        stages.move(
            session,
            candidate,
            "rejected",
            kind="rejection",
            actor=actor,
            reason=f"rejected at the {request.target_stage} gate (request #{request.id}): "
            f"{comment}",
            request_id=request.id,
        )
    audit.record(
        session,
        actor,
        "promotion.rejected",
        ENTITY,
        request.id,
        {"candidate": candidate.name, "candidate_id": candidate.id, "comment": comment},
        routine=candidate.routine.name,
    )
    session.flush()


def withdraw(rt: Runtime, request_id: int, actor: Actor, reason: str) -> dict[str, Any]:
    """The requester withdraws an open request (reason required). The candidate keeps its
    stage and may be requested again."""
    reason = _text(reason, "reason", "say why the request is withdrawn")
    with rt.transaction() as session:
        request = _request(session, request_id, lock=True)
        if actor.user_id != request.requested_by_id and not actor.is_system:
            raise PermissionDenied(
                f"only the requester may withdraw promotion request #{request.id}"
            )
        if request.status != "open":
            raise Conflict(f"promotion request #{request.id} is already {request.status}")
        candidate = _candidate_of(session, request)
        request.status = "withdrawn"
        request.closed_at = utcnow()
        audit.record(
            session,
            actor,
            "promotion.withdrawn",
            ENTITY,
            request.id,
            {"candidate": candidate.name, "candidate_id": candidate.id, "reason": reason},
            routine=candidate.routine.name,
        )
        session.flush()
        return _request_view(session, request)


def override_check(
    rt: Runtime, request_id: int, check_name: str, actor: Actor, justification: str
) -> dict[str, Any]:
    """An admin overrides one failed check of an open request, with a written justification
    (shown on the request and in the audit log). The override holds for the life of the
    request, whatever later evidence says about that check. May complete the gate."""
    actor.require("admin", to="override gate checks")
    _person(actor, "an override")
    justification = _text(justification, "justification", "write why the check may be waived")
    with rt.transaction() as session:
        request = _request(session, request_id, lock=True)
        if request.status != "open":
            raise Conflict(
                f"promotion request #{request.id} is {request.status}; nothing to override"
            )
        candidate = _candidate_of(session, request)
        current = _current_evidence(session, request)
        checks = {c["name"]: c for c in current.content.get("checks") or []}
        if check_name not in checks:
            raise InvalidInput(
                f"request #{request.id} has no check {check_name!r}; its checks: "
                f"{', '.join(checks) or 'none'}"
            )
        if checks[check_name]["passed"]:
            raise InvalidInput(
                f"check {check_name} passes on the current evidence; only failed checks are "
                "overridden"
            )
        if any(o.check_name == check_name for o in _overrides(session, request)):
            raise Conflict(f"check {check_name} of request #{request.id} is already overridden")
        session.add(
            CheckOverride(
                request_id=request.id,
                check_name=check_name,
                user_id=actor.user_id,
                justification=justification,
            )
        )
        session.flush()
        audit.record(
            session,
            actor,
            "promotion.check_overridden",
            ENTITY,
            request.id,
            {
                "check": check_name,
                "justification": justification,
                "check_message": checks[check_name]["message"],
                "evidence_digest": current.digest,
                "candidate": candidate.name,
            },
            routine=candidate.routine.name,
        )
        _execute_if_ready(session, request, candidate, actor)
        return _request_view(session, request)


def refresh_evidence(rt: Runtime, request_id: int, actor: Actor) -> dict[str, Any]:
    """Rebuild an open request's evidence; store a new revision when it changed (approvals
    given on the earlier revision then stop counting). Any role but viewer."""
    actor.require("scientist", "reviewer", "ops", "admin", to="refresh evidence")
    with rt.transaction() as session:
        request = _request(session, request_id, lock=True)
        if request.status != "open":
            raise Conflict(
                f"promotion request #{request.id} is {request.status}: its evidence is final"
            )
        candidate = _candidate_of(session, request)
        current, previous = _freeze(session, request, candidate, actor)
        _execute_if_ready(session, request, candidate, actor)
        return {
            "request": _request_view(session, request),
            "changed": previous is not None,
            "changes": evidence_service.changes(previous.content, current.content)
            if previous is not None
            else [],
        }


def refresh_open_requests(
    rt: Runtime, actor: Actor, routine: str | None = None
) -> list[dict[str, Any]]:
    """Rebuild the evidence of every open request (of ``routine``, if given), e.g. after
    cycles were verified; each request in its own transaction (see "Lock order").
    Returns ``{"request_id", "digest", "changes"}`` for each request whose evidence
    changed."""
    actor.require("scientist", "reviewer", "ops", "admin", to="refresh evidence")
    with rt.read() as session:
        query = select(PromotionRequest.id).where(PromotionRequest.status == "open")
        if routine is not None:
            routine_id = get_routine(session, routine).id
            query = query.join(Candidate, PromotionRequest.candidate_id == Candidate.id).where(
                Candidate.routine_id == routine_id
            )
        request_ids = session.scalars(query.order_by(PromotionRequest.id)).all()
    changed = []
    for request_id in request_ids:
        with rt.transaction() as session:
            request = _request(session, request_id, lock=True)
            if request.status != "open":  # closed meanwhile
                continue
            candidate = _candidate_of(session, request)
            current, previous = _freeze(session, request, candidate, actor)
            if previous is not None:
                changed.append(
                    {
                        "request_id": request.id,
                        "digest": current.digest,
                        "changes": evidence_service.changes(previous.content, current.content),
                    }
                )
            _execute_if_ready(session, request, candidate, actor)
    return changed


def _previous_operational(
    session: Session, routine_id: int, *, lock: bool = False
) -> Candidate | None:
    """The candidate a rollback reinstates: the most recently retired one that was
    operational (and is still retired)."""
    query = (
        select(Candidate)
        .join(StageTransition, StageTransition.candidate_id == Candidate.id)
        .where(
            Candidate.routine_id == routine_id,
            Candidate.stage == "retired",
            StageTransition.from_stage == "operational",
            StageTransition.to_stage == "retired",
        )
        .order_by(StageTransition.id.desc())
        .limit(1)
    )
    if lock:
        query = query.with_for_update(of=Candidate)
    return session.scalar(query)


def rollback_target(rt: Runtime, routine: str) -> dict[str, Any] | None:
    """The candidate :func:`rollback` would reinstate now, if any."""
    with rt.read() as session:
        previous = _previous_operational(session, get_routine(session, routine).id)
        return _candidate_brief(previous) if previous else None


def rollback(rt: Runtime, routine: str, actor: Actor, reason: str) -> dict[str, Any]:
    """Reinstate the routine's previous operational candidate in one step (ops only; reason
    required): the most recently retired candidate that was operational becomes
    operational again and the current one is retired, in one transaction."""
    actor.require("ops", to="roll back a routine")
    reason = _text(reason, "reason", "say why the routine is rolled back")
    with rt.transaction() as session:
        audit.lock_chain(session)
        routine_row = get_routine(session, routine)
        current = stages.operational_of(session, routine_row.id, lock=True)
        previous = _previous_operational(session, routine_row.id, lock=True)
        if previous is None:
            raise Conflict(
                f"routine {routine_row.name} has no previously operational candidate to reinstate"
            )
        stages.move(session, previous, "operational", kind="rollback", actor=actor, reason=reason)
        audit.record(
            session,
            actor,
            "routine.rolled_back",
            "routine",
            routine_row.id,
            {
                "reinstated": previous.name,
                "reinstated_id": previous.id,
                "retired": current.name if current else None,
                "retired_id": current.id if current else None,
                "reason": reason,
            },
            routine=routine_row.name,
        )
        return {
            "routine": routine_row.name,
            "reinstated": _candidate_brief(previous),
            "retired": _candidate_brief(current) if current else None,
            "reason": reason,
        }


# --- reading ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _candidate_brief(candidate: Candidate) -> dict[str, Any]:
    return {"id": candidate.id, "name": candidate.name, "stage": candidate.stage}


def _username(session: Session, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    user = session.get(User, user_id)
    return user.username if user else None


def _withdrawal(session: Session, request: PromotionRequest) -> dict[str, Any] | None:
    if request.status != "withdrawn":
        return None
    event = session.scalar(
        select(AuditEvent)
        .where(
            AuditEvent.entity_type == ENTITY,
            AuditEvent.entity_id == str(request.id),
            AuditEvent.action == "promotion.withdrawn",
        )
        .order_by(AuditEvent.seq.desc())
    )
    if event is None:
        return None
    return {"by": event.actor, "reason": event.payload.get("reason"), "at": _iso(event.occurred_at)}


def _waiting_for(
    request: PromotionRequest, approvals: int, failing: list[str], failing_messages: dict
) -> list[str]:
    if request.status != "open":
        return []
    waiting = []
    missing = request.required_sign_offs - approvals
    if missing > 0:
        waiting.append(
            f"{missing} more approval{'s' if missing != 1 else ''} on the current evidence"
        )
    for name in failing:
        waiting.append(f"check {name} fails ({failing_messages[name]}): needs an admin override")
    return waiting


def _request_view(session: Session, request: PromotionRequest, detail: bool = True) -> dict:
    candidate = _candidate_of(session, request)
    evidence_rows = list(
        session.scalars(
            select(Evidence).where(Evidence.request_id == request.id).order_by(Evidence.id)
        )
    )
    current = evidence_rows[-1]
    by_id = {row.id: row for row in evidence_rows}
    sign_offs = _sign_offs(session, request)
    overrides = _overrides(session, request)
    overridden = {o.check_name: o for o in overrides}
    approvals = _approvals_on(sign_offs, current)
    failing = _failing_checks(current, overrides)
    checks = []
    for check in current.content.get("checks") or []:
        override = overridden.get(check["name"])
        checks.append(
            {
                **check,
                "overridden": (
                    {
                        "by": _username(session, override.user_id),
                        "justification": override.justification,
                        "at": _iso(override.created_at),
                    }
                    if override
                    else None
                ),
                "effective_pass": check["passed"] or override is not None,
            }
        )
    transition = session.scalar(
        select(StageTransition)
        .where(
            StageTransition.promotion_request_id == request.id,
            StageTransition.candidate_id == candidate.id,
        )
        .order_by(StageTransition.id.desc())
    )
    view: dict[str, Any] = {
        "id": request.id,
        "status": request.status,
        "routine": candidate.routine.name,
        "candidate": {**_candidate_brief(candidate), "author": candidate.author},
        "from_stage": request.from_stage,
        "target_stage": request.target_stage,
        "requested_by": _username(session, request.requested_by_id),
        "reason": request.reason,
        "created_at": _iso(request.created_at),
        "closed_at": _iso(request.closed_at),
        "required_sign_offs": request.required_sign_offs,
        "approvals": len(approvals),
        "evidence": {
            "id": current.id,
            "revision": current.content.get("revision"),
            "digest": current.digest,
            "created_at": _iso(current.created_at),
            "all_checks_pass": current.all_checks_pass,
        },
        "checks": checks,
        "sign_offs": [
            {
                "id": s.id,
                "user": s.user.username,
                "decision": s.decision,
                "comment": s.comment,
                "at": _iso(s.created_at),
                "evidence_digest": s.evidence_digest,
                "evidence_revision": by_id[s.evidence_id].content.get("revision"),
                "on_current_evidence": s.evidence_id == current.id,
                "counts": s.decision == "approve" and s.evidence_id == current.id,
                "changes_since": (
                    []
                    if s.evidence_id == current.id
                    else evidence_service.changes(by_id[s.evidence_id].content, current.content)
                ),
            }
            for s in sign_offs
        ],
        "overrides": [
            {
                "check": o.check_name,
                "by": _username(session, o.user_id),
                "justification": o.justification,
                "at": _iso(o.created_at),
            }
            for o in overrides
        ],
        "withdrawal": _withdrawal(session, request),
        "transition": (
            {
                "at": _iso(transition.created_at),
                "actor": transition.actor,
                "from": transition.from_stage,
                "to": transition.to_stage,
                "kind": transition.kind,
            }
            if transition
            else None
        ),
        "waiting_for": _waiting_for(
            request,
            len(approvals),
            failing,
            {c["name"]: c["message"] for c in current.content.get("checks") or []},
        ),
    }
    if detail:
        content = current.content
        view["evidence"].update(
            {
                "reference": content.get("reference"),
                "numbers": content.get("numbers"),
                "summary": content.get("summary"),
                "scorecard_digest": content.get("scorecard_digest"),
                "lineage": content.get("lineage"),
                "gate": content.get("gate"),
            }
        )
        view["evidence_history"] = [
            {
                "id": row.id,
                "revision": row.content.get("revision"),
                "digest": row.digest,
                "created_at": _iso(row.created_at),
                "all_checks_pass": row.all_checks_pass,
            }
            for row in evidence_rows
        ]
    return view


#: Who records evidence rebuilt automatically (when a request is shown).
AUTOMATIC = Actor.system("numex")


def _refresh_if_changed(rt: Runtime, request_id: int) -> None:
    """Store a new evidence revision if the evidence of an open request changed (no
    execution: that takes someone's action). Skipped for closed requests."""
    with rt.read() as session:
        if _request(session, request_id).status != "open":
            return
    with rt.transaction() as session:
        request = _request(session, request_id, lock=True)
        if request.status == "open":
            _freeze(session, request, _candidate_of(session, request), AUTOMATIC)


def get_request(rt: Runtime, request_id: int, *, refresh: bool = False) -> dict[str, Any]:
    """One request: status, candidate, the current evidence (digest, checks with their
    numbers and any override, scorecard summary, lineage), every sign-off (marked when
    given on earlier evidence, with what changed since), and what it still waits for.

    With ``refresh`` (the request page, ``GET /api/v1/promotion-requests/<id>`` and
    ``numex promote show`` use it) an open request's evidence is rebuilt first, so what
    is shown — and the digest a reviewer then signs — reflects every verified cycle; a
    change is stored as a new revision, audited as ``promotion.evidence_changed`` by
    ``numex``.
    """
    if refresh:
        _refresh_if_changed(rt, request_id)
    with rt.read() as session:
        return _request_view(session, _request(session, request_id))


def evidence_content(rt: Runtime, request_id: int, digest: str | None = None) -> dict[str, Any]:
    """The full frozen evidence document (default: the current revision) of a request."""
    with rt.read() as session:
        request = _request(session, request_id)
        if digest is None:
            return _current_evidence(session, request).content
        row = session.scalar(
            select(Evidence).where(Evidence.request_id == request.id, Evidence.digest == digest)
        )
        if row is None:
            raise NotFound(f"request #{request.id} has no evidence {digest}")
        return row.content


def list_requests(
    rt: Runtime, status: str | None = None, routine: str | None = None
) -> list[dict[str, Any]]:
    """Requests newest first, optionally only those with ``status`` or of ``routine``."""
    if status is not None and status not in REQUEST_STATUSES:
        raise InvalidInput(f"status {status!r} is not valid; valid: {', '.join(REQUEST_STATUSES)}")
    with rt.read() as session:
        query = select(PromotionRequest).order_by(PromotionRequest.id.desc())
        if status is not None:
            query = query.where(PromotionRequest.status == status)
        if routine is not None:
            routine_id = get_routine(session, routine).id
            query = query.join(Candidate, PromotionRequest.candidate_id == Candidate.id).where(
                Candidate.routine_id == routine_id
            )
        return [_request_view(session, r, detail=False) for r in session.scalars(query)]


def inbox(rt: Runtime, actor: Actor) -> list[dict[str, Any]]:
    """Open requests awaiting ``actor``'s sign-off: not requested or authored by them and
    not yet signed by them (empty for anyone who is not a reviewer)."""
    if not actor.has_role("reviewer") or actor.user_id is None:
        return []
    waiting = []
    with rt.read() as session:
        query = (
            select(PromotionRequest)
            .where(PromotionRequest.status == "open")
            .order_by(PromotionRequest.id)
        )
        for request in session.scalars(query):
            candidate = _candidate_of(session, request)
            signed = {s.user_id for s in _sign_offs(session, request)}
            if sign_off_refusal(request, candidate, signed, actor) is None:
                waiting.append(_request_view(session, request, detail=False))
    return waiting


def may_sign(rt: Runtime, request_id: int, actor: Actor) -> Refusal | None:
    """Why ``actor`` may not sign the request now (None when they may): the same rule
    :func:`sign_off` enforces, for pages that decide whether to show the form."""
    with rt.read() as session:
        request = _request(session, request_id)
        candidate = _candidate_of(session, request)
        signed = {s.user_id for s in _sign_offs(session, request)}
        return sign_off_refusal(request, candidate, signed, actor)


def open_request_for(rt: Runtime, candidate_id: int) -> int | None:
    """The id of the candidate's open promotion request, if any."""
    with rt.read() as session:
        return session.scalar(
            select(PromotionRequest.id).where(
                PromotionRequest.candidate_id == candidate_id, PromotionRequest.status == "open"
            )
        )


def count_open(rt: Runtime) -> int:
    """How many requests are open."""
    with rt.read() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(PromotionRequest)
                .where(PromotionRequest.status == "open")
            )
            or 0
        )


def operational_history(rt: Runtime, routine: str) -> list[dict[str, Any]]:
    """Who was operational when, newest first: each period's candidate, start and end,
    and the decision behind its start and end — the transition (kind, actor, reason)
    and, for a promotion, its request with requester, reason, sign-offs and overrides."""
    with rt.read() as session:
        routine_row: Routine = get_routine(session, routine)
        transitions = session.scalars(
            select(StageTransition)
            .join(Candidate, StageTransition.candidate_id == Candidate.id)
            .where(
                Candidate.routine_id == routine_row.id,
                (StageTransition.to_stage == "operational")
                | (StageTransition.from_stage == "operational"),
            )
            .order_by(StageTransition.id)
        ).all()
        periods: list[dict[str, Any]] = []
        open_periods: dict[int, dict[str, Any]] = {}
        for transition in transitions:
            if transition.to_stage == "operational":
                period = {
                    "candidate": _candidate_brief(transition.candidate),
                    "from": _iso(transition.created_at),
                    "until": None,
                    "entered": _decision(session, transition),
                    "left": None,
                }
                periods.append(period)
                open_periods[transition.candidate_id] = period
            elif transition.candidate_id in open_periods:
                period = open_periods.pop(transition.candidate_id)
                period["until"] = _iso(transition.created_at)
                period["left"] = _decision(session, transition)
        return list(reversed(periods))


def _decision(session: Session, transition: StageTransition) -> dict[str, Any]:
    decision: dict[str, Any] = {
        "kind": transition.kind,
        "actor": transition.actor,
        "reason": transition.reason,
        "at": _iso(transition.created_at),
        "request": None,
    }
    if transition.promotion_request_id is not None:
        request = session.get(PromotionRequest, transition.promotion_request_id)
        decision["request"] = {
            "id": request.id,
            "requested_by": _username(session, request.requested_by_id),
            "reason": request.reason,
            "sign_offs": [
                {
                    "user": s.user.username,
                    "decision": s.decision,
                    "comment": s.comment,
                    "at": _iso(s.created_at),
                    "evidence_digest": s.evidence_digest,
                }
                for s in _sign_offs(session, request)
            ],
            "overrides": [
                {
                    "check": o.check_name,
                    "by": _username(session, o.user_id),
                    "justification": o.justification,
                }
                for o in _overrides(session, request)
            ],
        }
    return decision
