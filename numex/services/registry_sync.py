"""Registry sync: MLflow's model registry follows numex's decisions through an outbox.

Every stage change writes a ``registry_outbox`` row in the decision's own transaction
(:mod:`numex.services.stages`), so a decision never waits for MLflow and is never lost
when MLflow is down. :func:`sync` delivers the pending rows later:

- each candidate with a model version gets the tag ``numex.stage=<its current stage>``;
- the routine's registered model gets the alias ``operational`` on the operational
  candidate's version (the alias is deleted when the routine has none).

Delivery reconciles rather than replays: what is written to MLflow is computed from the
candidates table at the time of the sync, and the outbox rows only say which routines and
candidates have changes pending. Delivering twice, or out of order, writes the same state,
so a row is simply marked delivered once MLflow holds the state that includes it. A
failure counts an attempt and keeps the error on the row; the row stays pending and the
next sync tries again.

Only one sync runs at a time (a PostgreSQL advisory lock, or a lock file beside a SQLite
database), so two syncs can never write an older state over a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from numex import mlflow_bridge
from numex.db import Candidate, RegistryOutbox, Routine, utcnow
from numex.services import audit
from numex.services.errors import NotFound
from numex.services.runtime import Actor, Runtime

log = logging.getLogger(__name__)

ALIAS = "operational"
_ADVISORY_LOCK = 0x6E756D6578_02  # "numex" + 2: one registry sync at a time on PostgreSQL
_MAX_ROUNDS = 3  # decisions made while a sync runs are picked up by the next round


@dataclass
class RoutineDelivery:
    """What one sync did (or tried) for one routine."""

    routine: str
    registered_model: str
    rows: list[int]
    tags: dict[str, str] = field(default_factory=dict)  # model version → numex.stage
    alias: str | None = None  # the version ``operational`` points at; None = deleted
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SyncReport:
    """The outcome of one :func:`sync`. It never raises for MLflow's sake: read ``ok``."""

    delivered: int = 0
    failed: int = 0
    routines: list[RoutineDelivery] = field(default_factory=list)
    pending: int = 0
    error: str | None = None  # a failure that stopped the whole sync (MLflow unreachable)
    skipped: str | None = None  # why nothing was attempted (another sync was running)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0 and self.skipped is None

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["ok"] = self.ok
        for routine, data in zip(self.routines, body["routines"], strict=True):
            data["ok"] = routine.ok
        return body


@dataclass
class RegistryStatus:
    """How far MLflow's registry is behind numex (for one routine or all of them)."""

    routine: str | None
    pending: int
    oldest_pending_at: datetime | None
    oldest_pending_age_s: float | None
    attempts: int  # most attempts any pending change has had
    last_error: str | None
    last_delivered_at: datetime | None

    @property
    def behind(self) -> bool:
        return self.pending > 0

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["behind"] = self.behind
        for key in ("oldest_pending_at", "last_delivered_at"):
            if body[key] is not None:
                body[key] = body[key].isoformat()
        return body


# --- the plan: numex's state, as MLflow should hold it ----------------------------------


@dataclass
class _Plan:
    routine_id: int
    delivery: RoutineDelivery
    tags: list[tuple[str, str, str]]  # (registered model, version, stage)


def _plans(session: Session, *, everything: bool) -> list[_Plan]:
    """One plan per routine with pending rows (every routine with ``everything``), in the
    order of each routine's oldest pending row. Rows are read before candidates, so the
    state planned is at least as new as every row it marks delivered."""
    rows = session.scalars(
        select(RegistryOutbox)
        .where(RegistryOutbox.delivered_at.is_(None))
        .order_by(RegistryOutbox.id)
    ).all()
    pending: dict[int, list[RegistryOutbox]] = {}
    for row in rows:
        pending.setdefault(row.routine_id, []).append(row)
    routine_ids = list(pending)
    if everything:
        all_ids = session.scalars(select(Routine.id).order_by(Routine.id)).all()
        routine_ids += [rid for rid in all_ids if rid not in pending]

    plans = []
    for routine_id in routine_ids:
        routine = session.get(Routine, routine_id)
        routine_rows = pending.get(routine_id, [])
        candidates = session.scalars(
            select(Candidate).where(Candidate.routine_id == routine_id).order_by(Candidate.id)
        ).all()
        by_id = {c.id: c for c in candidates}
        if everything:
            to_tag = list(candidates)
        else:
            seen = dict.fromkeys(r.candidate_id for r in routine_rows if r.candidate_id)
            to_tag = [by_id[cid] for cid in seen if cid in by_id]
        delivery = RoutineDelivery(
            routine=routine.name,
            registered_model=routine.registered_model_name,
            rows=[r.id for r in routine_rows],
        )
        tags = []
        for candidate in to_tag:
            if not candidate.model_version:
                delivery.notes.append(f"{candidate.name} has no MLflow model version to tag")
                continue
            model = candidate.registered_model_name or routine.registered_model_name
            tags.append((model, candidate.model_version, candidate.stage))
            delivery.tags[f"{model}/{candidate.model_version}"] = candidate.stage
        operational = next((c for c in candidates if c.stage == "operational"), None)
        if operational is not None:
            model = operational.registered_model_name or routine.registered_model_name
            if not operational.model_version:
                delivery.notes.append(
                    f"operational candidate {operational.name} has no MLflow model version; "
                    f"alias {ALIAS!r} removed"
                )
            elif model != routine.registered_model_name:
                delivery.notes.append(
                    f"operational candidate {operational.name} is version "
                    f"{operational.model_version} of {model!r}, not of the routine's "
                    f"registered model {routine.registered_model_name!r}; alias {ALIAS!r} "
                    "removed there"
                )
            else:
                delivery.alias = operational.model_version
        plans.append(_Plan(routine_id=routine_id, delivery=delivery, tags=tags))
    return plans


def _apply(rt: Runtime, plan: _Plan) -> None:
    """Write one routine's planned state to MLflow (every call is idempotent)."""
    settings = rt.settings
    for model, version, stage in plan.tags:
        mlflow_bridge.set_version_tag(settings, model, version, mlflow_bridge.TAG_STAGE, stage)
    name = plan.delivery.registered_model
    if plan.delivery.alias is not None:
        mlflow_bridge.set_alias(settings, name, ALIAS, plan.delivery.alias)
    else:
        mlflow_bridge.delete_alias(settings, name, ALIAS)


def _short(error: BaseException) -> str:
    message = (getattr(error, "message", None) or str(error) or type(error).__name__).strip()
    first = message.splitlines()[0] if message else type(error).__name__
    return first[:1000]


# --- recording the outcome in numex -----------------------------------------------------


def _mark_delivered(rt: Runtime, actor: Actor, plan: _Plan) -> int:
    delivery = plan.delivery
    if not delivery.rows:
        return 0
    with rt.transaction() as session:
        rows = session.scalars(
            select(RegistryOutbox).where(
                RegistryOutbox.id.in_(delivery.rows), RegistryOutbox.delivered_at.is_(None)
            )
        ).all()
        now = utcnow()
        for row in rows:
            row.attempts += 1
            row.delivered_at = now
        if rows:
            audit.record(
                session,
                actor,
                "registry.synced",
                "routine",
                plan.routine_id,
                {
                    "registered_model": delivery.registered_model,
                    "alias": {ALIAS: delivery.alias},
                    "tags": delivery.tags,
                    "outbox_rows": [row.id for row in rows],
                },
                routine=delivery.routine,
            )
        return len(rows)


def _mark_failed(rt: Runtime, row_ids: list[int], error: str) -> int:
    if not row_ids:
        return 0
    with rt.transaction() as session:
        rows = session.scalars(
            select(RegistryOutbox).where(
                RegistryOutbox.id.in_(row_ids), RegistryOutbox.delivered_at.is_(None)
            )
        ).all()
        for row in rows:
            row.attempts += 1
            row.last_error = error
        return len(rows)


# --- one sync at a time ---------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(rt: Runtime, wait_s: float) -> Iterator[bool]:
    """Hold the registry-sync lock (yields False when another sync kept it for ``wait_s``).

    PostgreSQL: a session advisory lock on a connection held for the sync. SQLite: an
    ``flock`` on a file beside the database. Neither blocks numex's own writes, so a slow
    MLflow never holds up a decision.
    """
    deadline = time.monotonic() + wait_s
    if rt.dialect == "postgresql":
        with rt.engine.connect() as connection:
            while True:
                got = connection.scalar(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": _ADVISORY_LOCK}
                )
                connection.commit()
                if got or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            try:
                yield bool(got)
            finally:
                if got:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK}
                    )
                    connection.commit()
        return
    with open(_lock_path(rt), "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                got = False
            if got or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        try:
            yield got
        finally:
            if got:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_path(rt: Runtime) -> Path:
    database = make_url(rt.settings.database_url).database
    if database and database != ":memory:":
        return Path(f"{database}.registry-sync.lock")
    rt.settings.home.mkdir(parents=True, exist_ok=True)
    return rt.settings.home / "registry-sync.lock"


# --- the service ----------------------------------------------------------------------


def sync(
    rt: Runtime,
    actor: Actor,
    *,
    everything: bool = False,
    wait_s: float = 10.0,
) -> SyncReport:
    """Deliver every pending registry change to MLflow; never raises for MLflow's sake.

    ``everything`` also reconciles routines with nothing pending (every candidate's tag,
    every alias), e.g. after MLflow's store was restored from a backup. Needs role ops or
    admin. Returns what was delivered, what failed (with MLflow's error, also kept on the
    outbox rows) and how many changes remain pending.
    """
    actor.require("ops", "admin", to="sync the MLflow registry")
    started = time.monotonic()
    report = SyncReport()
    timeout = rt.settings.registry_timeout_s
    with _exclusive(rt, wait_s) as acquired:
        if not acquired:
            report.skipped = "another registry sync is running; its result will show shortly"
        else:
            for _round in range(_MAX_ROUNDS):
                with rt.read() as session:
                    plans = _plans(session, everything=everything)
                if not plans:
                    break
                everything = False  # later rounds only pick up what arrived meanwhile
                if not _deliver(rt, actor, plans, timeout, report):
                    break
    report.pending = registry_status(rt).pending
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _deliver(
    rt: Runtime, actor: Actor, plans: list[_Plan], timeout: float, report: SyncReport
) -> bool:
    """One round; False when something failed (the next sync retries it)."""
    try:
        mlflow_bridge.ping_registry(rt.settings, timeout)
    except mlflow_bridge.MlflowBridgeError as error:
        report.error = str(error)
        for plan in plans:
            plan.delivery.error = report.error
            report.failed += _mark_failed(rt, plan.delivery.rows, report.error)
            report.routines.append(plan.delivery)
        log.warning("registry sync: %s", report.error)
        return False
    clean = True
    for plan in plans:
        try:
            with mlflow_bridge.fail_fast(timeout):
                _apply(rt, plan)
        except Exception as error:  # any MLflow failure is recorded, never raised
            plan.delivery.error = _short(error)
            report.failed += _mark_failed(rt, plan.delivery.rows, plan.delivery.error)
            log.warning("registry sync of %s failed: %s", plan.delivery.routine, error)
            clean = False
        else:
            report.delivered += _mark_delivered(rt, actor, plan)
        report.routines.append(plan.delivery)
    return clean


def registry_status(rt: Runtime, routine: str | None = None) -> RegistryStatus:
    """How many registry changes are pending (for ``routine``, or all), since when, and
    the last error MLflow gave. Reads numex only; never contacts MLflow."""
    with rt.read() as session:
        filters = [RegistryOutbox.delivered_at.is_(None)]
        delivered_filters = [RegistryOutbox.delivered_at.is_not(None)]
        if routine is not None:
            routine_id = session.scalar(select(Routine.id).where(Routine.name == routine))
            if routine_id is None:
                raise NotFound(f"no routine {routine!r}; `numex routine list` shows them")
            filters.append(RegistryOutbox.routine_id == routine_id)
            delivered_filters.append(RegistryOutbox.routine_id == routine_id)
        pending, oldest, attempts = session.execute(
            select(
                func.count(RegistryOutbox.id),
                func.min(RegistryOutbox.created_at),
                func.max(RegistryOutbox.attempts),
            ).where(*filters)
        ).one()
        last_error = session.scalar(
            select(RegistryOutbox.last_error)
            .where(*filters, RegistryOutbox.last_error.is_not(None))
            .order_by(RegistryOutbox.id.desc())
            .limit(1)
        )
        last_delivered = session.scalar(
            select(func.max(RegistryOutbox.delivered_at)).where(*delivered_filters)
        )
    return RegistryStatus(
        routine=routine,
        pending=pending or 0,
        oldest_pending_at=oldest,
        oldest_pending_age_s=round((utcnow() - oldest).total_seconds(), 1) if oldest else None,
        attempts=attempts or 0,
        last_error=last_error,
        last_delivered_at=last_delivered,
    )


# --- best-effort delivery right after a decision ---------------------------------------


class _Courier:
    """Runs a background sync after a commit that wrote outbox rows (one at a time per
    process). The decision has already committed; this only shortens how long MLflow is
    behind. When it fails, the rows stay pending for ``numex registry sync``."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.again = False

    def nudge(self) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                self.again = True  # the running sync goes round once more
                return
            self.thread = threading.Thread(
                target=self._run, name="numex-registry-sync", daemon=True
            )
            self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                sync(self.rt, Actor.system("registry-sync"), wait_s=30.0)
            except Exception:  # the database itself failed; the rows wait for the next try
                log.exception("background registry sync failed")
            with self.lock:
                if not self.again:
                    self.thread = None
                    return
                self.again = False

    def join(self, timeout: float | None = None) -> None:
        thread = self.thread
        if thread is not None:
            thread.join(timeout)


def follow_commits(rt: Runtime) -> _Courier:
    """Start a background :func:`sync` whenever a transaction on ``rt`` that wrote
    registry outbox rows commits. Returns the courier (``join()`` waits for it)."""
    courier = rt.cache.get("registry_courier")
    if courier is not None:
        return courier
    courier = rt.cache["registry_courier"] = _Courier(rt)

    def note_outbox(session: Session, _context: Any, _instances: Any) -> None:
        if any(isinstance(obj, RegistryOutbox) for obj in session.new):
            session.info["numex.registry_outbox"] = True

    def after_commit(session: Session) -> None:
        if session.info.pop("numex.registry_outbox", False):
            courier.nudge()

    def after_rollback(session: Session) -> None:
        session.info.pop("numex.registry_outbox", None)

    event.listen(rt.sessions, "before_flush", note_outbox)
    event.listen(rt.sessions, "after_commit", after_commit)
    event.listen(rt.sessions, "after_rollback", after_rollback)
    return courier
