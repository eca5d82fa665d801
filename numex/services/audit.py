"""The audit log: append-only, hash-chained events written in the caller's transaction.

Each event's hash is ``sha256(prev_hash || canonical_json(event))``; the first
event chains from ``GENESIS``. Editing, inserting or deleting any event breaks
the chain from that point on, which :func:`verify` reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from numex.db import AuditEvent, utcnow
from numex.services.runtime import Actor, Runtime

GENESIS = "sha256:" + "0" * 64
_ADVISORY_LOCK = 0x6E756D6578  # "numex": serialises appends on PostgreSQL


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every digest is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _event_body(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "action": event.action,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "routine": event.routine,
        "payload": event.payload,
    }


def _chain(prev_hash: str, event: AuditEvent) -> str:
    body = canonical_json(_event_body(event))
    return "sha256:" + hashlib.sha256((prev_hash + body).encode()).hexdigest()


def lock_chain(session: Session) -> None:
    """Take the chain's append lock now (PostgreSQL; SQLite transactions already run one
    at a time). :func:`record` takes it anyway; a service that will also lock rows takes
    it first so its locks come in one order and two decisions cannot deadlock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})


def record(
    session: Session,
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: Any,
    payload: dict[str, Any] | None = None,
    routine: str | None = None,
) -> AuditEvent:
    """Append one event in ``session``'s transaction (the caller's change and its record
    commit or roll back together)."""
    lock_chain(session)
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    event = AuditEvent(
        seq=(last.seq + 1) if last else 1,
        occurred_at=utcnow(),
        actor=actor.name,
        action=action,
        entity_type=entity_type,
        entity_id=str(entity_id),
        routine=routine,
        # Round-trip through JSON so what is hashed is exactly what is stored.
        payload=json.loads(canonical_json(payload or {})),
        prev_hash=last.hash if last else GENESIS,
    )
    event.hash = _chain(event.prev_hash, event)
    session.add(event)
    session.flush()
    return event


@dataclass
class ChainProblem:
    seq: int
    kind: str  # "edited", "broken_link" (inserted or deleted before it), "gap"
    message: str


@dataclass
class ChainReport:
    ok: bool
    events: int
    problems: list[ChainProblem]
    last_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_hash": self.last_hash,
            "problems": [p.__dict__ for p in self.problems],
        }


def _iter_events(session: Session) -> Iterator[AuditEvent]:
    yield from session.scalars(
        select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000)
    )


def verify(rt: Runtime) -> ChainReport:
    """Walk the chain and report every edited, inserted or deleted event."""
    problems: list[ChainProblem] = []
    prev_hash, prev_seq, count = GENESIS, 0, 0
    with rt.read() as session:
        for event in _iter_events(session):
            count += 1
            if event.seq != prev_seq + 1:
                problems.append(
                    ChainProblem(
                        event.seq,
                        "gap",
                        f"events {prev_seq + 1}..{event.seq - 1} are missing (deleted)",
                    )
                )
            if event.prev_hash != prev_hash:
                problems.append(
                    ChainProblem(
                        event.seq,
                        "broken_link",
                        f"event {event.seq} does not chain from the event before it "
                        "(an event was inserted or deleted before it)",
                    )
                )
            if _chain(event.prev_hash, event) != event.hash:
                problems.append(
                    ChainProblem(
                        event.seq, "edited", f"event {event.seq} was edited after it was written"
                    )
                )
            prev_hash, prev_seq = event.hash, event.seq
    return ChainReport(ok=not problems, events=count, problems=problems, last_hash=prev_hash)


def list_events(
    rt: Runtime,
    *,
    action: str | None = None,
    actor: str | None = None,
    routine: str | None = None,
    entity_type: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Events newest first, filtered; returns (page, total)."""
    query = select(AuditEvent)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if routine:
        query = query.where(AuditEvent.routine == routine)
    if entity_type:
        query = query.where(AuditEvent.entity_type == entity_type)
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    with rt.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        page = list(
            session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit).offset(offset))
        )
    return page, total


def export_jsonl(rt: Runtime) -> Iterator[str]:
    """Every event, oldest first, one canonical JSON object per line with its hashes."""
    with rt.read() as session:
        for event in _iter_events(session):
            yield canonical_json(
                {**_event_body(event), "prev_hash": event.prev_hash, "hash": event.hash}
            )
