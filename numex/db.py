"""Storage: SQLAlchemy 2 typed models, engine and session setup, migrations helper.

Times are stored as naive UTC datetimes on every backend. Enumerated columns
are strings guarded by CHECK constraints, so SQLite and PostgreSQL behave alike
and migrations stay plain.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from numex.lifecycle import STAGES

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("viewer", "scientist", "reviewer", "ops", "admin")
CYCLE_STATUSES = ("pending", "running", "forecast", "verified", "failed")
REQUEST_STATUSES = ("open", "executed", "rejected", "withdrawn")
DECISIONS = ("approve", "reject")


def utcnow() -> datetime:
    """Now, as the naive UTC datetime every table stores."""
    return datetime.now(UTC).replace(tzinfo=None)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


# --- people -------------------------------------------------------------------------------


class UserRole(Base):
    __tablename__ = "user_roles"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id"), primary_key=True)


class Role(Base):
    __tablename__ = "roles"
    __table_args__ = (CheckConstraint(_in("name", ROLES), name="role_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(300))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    roles: Mapped[list[Role]] = relationship(secondary="user_roles", lazy="selectin")
    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")

    @property
    def role_names(self) -> set[str]:
        return {role.name for role in self.roles}

    def has_role(self, *names: str) -> bool:
        return bool(self.role_names & set(names))


class ApiToken(Base):
    """An API token; only its SHA-256 digest is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    user: Mapped[User] = relationship(back_populates="tokens")


# --- routines and candidates ----------------------------------------------------------------


class Routine(Base):
    __tablename__ = "routines"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    source_dir: Mapped[str | None] = mapped_column(String(1000))
    registered_model_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    versions: Mapped[list[RoutineVersion]] = relationship(
        back_populates="routine", order_by="RoutineVersion.version"
    )
    candidates: Mapped[list[Candidate]] = relationship(back_populates="routine")

    @property
    def current(self) -> RoutineVersion:
        return self.versions[-1]


class RoutineVersion(Base):
    """One recorded definition of a routine; a changed routine.yaml adds a version."""

    __tablename__ = "routine_versions"
    __table_args__ = (UniqueConstraint("routine_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    routine: Mapped[Routine] = relationship(back_populates="versions")


class Candidate(Base):
    """One model registered for a routine, with its lineage."""

    __tablename__ = "candidates"
    __table_args__ = (
        CheckConstraint(_in("stage", STAGES), name="stage"),
        UniqueConstraint("routine_id", "name"),
        UniqueConstraint("routine_id", "lineage_digest"),
        # The database itself guarantees at most one operational candidate per routine.
        Index(
            "uq_candidates_one_operational",
            "routine_id",
            unique=True,
            sqlite_where=text("stage = 'operational'"),
            postgresql_where=text("stage = 'operational'"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    routine_version_id: Mapped[int] = mapped_column(ForeignKey("routine_versions.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[str] = mapped_column(String(16), default="experiment", index=True)
    source: Mapped[str] = mapped_column(String(16), default="experiment")  # or "model_uri"
    author: Mapped[str] = mapped_column(String(64), default="")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # lineage
    lineage_digest: Mapped[str] = mapped_column(String(80))
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    spec_digest: Mapped[str | None] = mapped_column(String(80))
    data_digest: Mapped[str | None] = mapped_column(String(80))
    code_commit: Mapped[str | None] = mapped_column(String(64))
    code_dirty: Mapped[bool | None] = mapped_column(Boolean)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    features: Mapped[list[Any]] = mapped_column(JSON, default=list)
    offline_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    model_uri: Mapped[str] = mapped_column(String(1000))
    registered_model_name: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(32))
    routine: Mapped[Routine] = relationship(back_populates="candidates")
    transitions: Mapped[list[StageTransition]] = relationship(
        back_populates="candidate", order_by="StageTransition.id"
    )


class StageTransition(Base):
    __tablename__ = "stage_transitions"
    __table_args__ = (
        CheckConstraint(_in("from_stage", STAGES), name="from_stage"),
        CheckConstraint(_in("to_stage", STAGES), name="to_stage"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))  # bootstrap, promotion, rollback, demo, ...
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64), default="")
    promotion_request_id: Mapped[int | None] = mapped_column(ForeignKey("promotion_requests.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    candidate: Mapped[Candidate] = relationship(back_populates="transitions")


# --- cycles, cases, forecasts, observations -----------------------------------------------


class Cycle(Base):
    """One scheduled run of a routine for one valid-time window [window_start, window_end)."""

    __tablename__ = "cycles"
    __table_args__ = (
        UniqueConstraint("routine_id", "window_start"),
        CheckConstraint(_in("status", CYCLE_STATUSES), name="status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    window_start: Mapped[datetime] = mapped_column(DateTime)
    window_end: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    runs: Mapped[int] = mapped_column(Integer, default=0)
    n_cases: Mapped[int] = mapped_column(Integer, default=0)
    n_verified: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String(100))
    locked_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    verified_at: Mapped[datetime | None] = mapped_column(DateTime)


class CycleRun(Base):
    """Each attempt at a cycle; a re-run is recorded, never silent."""

    __tablename__ = "cycle_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    is_rerun: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class CandidateCycleResult(Base):
    """How one candidate fared in one cycle; failures count in its failure rate."""

    __tablename__ = "candidate_cycle_results"
    __table_args__ = (
        UniqueConstraint("cycle_id", "candidate_id"),
        CheckConstraint(_in("status", ("ok", "failed")), name="status"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    cycle_id: Mapped[int] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    n_forecasts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Failed attempts in this cycle. A re-run may recover a failed candidate (status
    # becomes ok), but the failure it had still counts in its failure rate.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Case(Base):
    """One thing to forecast, identified by the routine's key columns (canonical ``key``)."""

    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("routine_id", "key"),
        Index("ix_cases_routine_valid_time", "routine_id", "valid_time"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"))
    key: Mapped[str] = mapped_column(String(200))
    valid_time: Mapped[datetime] = mapped_column(DateTime)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PredictionRequest(Base):
    """One online ``/predict`` call; its shadow forecasts are stored under it."""

    __tablename__ = "prediction_requests"
    id: Mapped[int] = mapped_column(primary_key=True)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    operational_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    n_records: Mapped[int] = mapped_column(Integer)
    shadow_status: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Forecast(Base):
    """A candidate's value for a case, made in a cycle or for an online request."""

    __tablename__ = "forecasts"
    __table_args__ = (
        UniqueConstraint("cycle_id", "candidate_id", "case_id"),
        UniqueConstraint("prediction_request_id", "candidate_id", "case_id"),
        CheckConstraint("(cycle_id IS NULL) <> (prediction_request_id IS NULL)", name="one_origin"),
        Index("ix_forecasts_candidate_cycle", "candidate_id", "cycle_id"),
        Index("ix_forecasts_case", "case_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id", ondelete="CASCADE"))
    prediction_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("prediction_requests.id", ondelete="CASCADE")
    )
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    value: Mapped[float] = mapped_column(Float)


class Observation(Base):
    """The truth for a case. A corrected value is a new row's worth of audit, not a silent edit."""

    __tablename__ = "observations"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), unique=True)
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- promotion --------------------------------------------------------------------------------


class PromotionRequest(Base):
    __tablename__ = "promotion_requests"
    __table_args__ = (
        CheckConstraint(_in("status", REQUEST_STATUSES), name="status"),
        CheckConstraint(_in("target_stage", ("parallel", "operational")), name="target_stage"),
        # At most one open request per candidate.
        Index(
            "uq_promotion_requests_one_open",
            "candidate_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(16))
    target_stage: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    required_sign_offs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    evidence: Mapped[list[Evidence]] = relationship(
        back_populates="request", order_by="Evidence.id"
    )
    sign_offs: Mapped[list[SignOff]] = relationship(back_populates="request", order_by="SignOff.id")
    overrides: Mapped[list[CheckOverride]] = relationship(
        back_populates="request", order_by="CheckOverride.id"
    )


class Evidence(Base):
    """A frozen snapshot of a request's evidence (scorecard, checks, lineage) and its digest."""

    __tablename__ = "evidence"
    __table_args__ = (UniqueConstraint("request_id", "digest"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("promotion_requests.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(String(80))
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    all_checks_pass: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    request: Mapped[PromotionRequest] = relationship(back_populates="evidence")


class SignOff(Base):
    __tablename__ = "sign_offs"
    __table_args__ = (
        UniqueConstraint("request_id", "user_id"),
        CheckConstraint(_in("decision", DECISIONS), name="decision"),
        CheckConstraint("length(comment) > 0", name="comment_required"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("promotion_requests.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text)
    evidence_id: Mapped[int] = mapped_column(ForeignKey("evidence.id"))
    evidence_digest: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    request: Mapped[PromotionRequest] = relationship(back_populates="sign_offs")
    user: Mapped[User] = relationship()


class CheckOverride(Base):
    """An admin's written override of one failed gate check."""

    __tablename__ = "check_overrides"
    __table_args__ = (
        UniqueConstraint("request_id", "check_name"),
        CheckConstraint("length(justification) > 0", name="justification_required"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("promotion_requests.id", ondelete="CASCADE"), index=True
    )
    check_name: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    justification: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    request: Mapped[PromotionRequest] = relationship(back_populates="overrides")


# --- audit, outbox, alerts ----------------------------------------------------------------


class AuditEvent(Base):
    """Append-only, hash-chained record of every change (see services.audit)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    routine: Mapped[str | None] = mapped_column(String(100), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(80))
    hash: Mapped[str] = mapped_column(String(80), unique=True)


class RegistryOutbox(Base):
    """A change MLflow's registry must follow; delivered by ``numex registry sync``."""

    __tablename__ = "registry_outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    action: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(primary_key=True)
    routine_id: Mapped[int] = mapped_column(ForeignKey("routines.id"), index=True)
    candidate_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id"))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime)


# --- engine and sessions --------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys, a busy timeout and, for a
    database file, the :class:`WriterQueue`."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        in_memory = not path or path == ":memory:" or path.startswith("file:")
        if not in_memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take a write lock up front so
        # two writers serialise instead of failing with "database is locked" on upgrade.
        event.listen(engine, "connect", _sqlite_autocommit_off)
        if in_memory:
            event.listen(engine, "begin", _sqlite_begin)
        else:
            WriterQueue(Path(path)).attach(engine)
        return engine
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


#: A pooled connection idle longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling, spared for busy connections: a connection taken
    from the pool is pinged (one round trip) only when it sat idle for more than
    ``PING_AFTER_IDLE_S``; one in use a moment ago is alive. A dead one is replaced, so
    a database restart costs no request an error. (``pool_pre_ping`` would ping every
    checkout: a round trip on every request of the serving path.)"""
    from sqlalchemy import exc

    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        record.info["numex_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.get("numex_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.DisconnectionError(str(error)) from error
            raise
        if not alive:
            raise exc.DisconnectionError("the database connection did not answer a ping")


def _sqlite_autocommit_off(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None


#: Execution option of connections that only read: on SQLite they begin a deferred
#: transaction (a snapshot, no write lock) instead of ``BEGIN IMMEDIATE``.
READ_ONLY = "numex_read_only"
#: How long a SQLite writer waits for the database before "database is locked".
SQLITE_BUSY_S = 30.0


def _sqlite_begin(connection) -> None:
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class WriterQueue:
    """Writers of one SQLite file take turns on an OS file lock before ``BEGIN IMMEDIATE``.

    A SQLite writer that finds the database locked sleeps and retries, 1, 2, 5, 10, ...
    up to 100 ms at a time. Under a steady stream of short write transactions from
    several processes (gunicorn workers, their shadow threads, the scheduler) much of the
    time then goes to sleeping while the lock is already free. Here a writer first takes
    its process's turn (a thread lock), then the file lock (``flock`` on
    ``<database>-writer.lock``, retried every fraction of a millisecond), and holds both
    until its transaction commits or rolls back. Reads (:data:`READ_ONLY`) take neither:
    in WAL mode they read a snapshot. After ``SQLITE_BUSY_S`` a writer gives up with the
    error SQLite itself would raise, "database is locked".
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-writer.lock")
        self._turn = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._holder: int | None = None  # id() of the DBAPI connection holding the turn

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "begin", self._begin)
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_connection) -> None:
            try:
                commit(dbapi_connection)
            finally:
                self.release(dbapi_connection)

        def do_rollback(dbapi_connection) -> None:
            try:
                rollback(dbapi_connection)
            finally:
                self.release(dbapi_connection)

        # At the DBAPI level: the pool's reset-on-return and the error paths end a
        # transaction through these too, so the turn always comes back.
        dialect.do_commit = do_commit  # type: ignore[method-assign]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign]
        for name in ("checkin", "close", "invalidate"):
            event.listen(engine, name, self._released_with)

    def _released_with(self, dbapi_connection, *_args) -> None:
        self.release(dbapi_connection)

    def _begin(self, connection) -> None:
        if connection.get_execution_options().get(READ_ONLY, False):
            _sqlite_begin(connection)
            return
        dbapi_connection = connection.connection.dbapi_connection
        self.acquire(dbapi_connection)
        try:
            _sqlite_begin(connection)
        except BaseException:
            self.release(dbapi_connection)
            raise

    def acquire(self, dbapi_connection: Any) -> None:
        """Wait for this writer's turn (at most ``SQLITE_BUSY_S``)."""
        deadline = time.monotonic() + SQLITE_BUSY_S
        if not self._turn.acquire(timeout=SQLITE_BUSY_S):
            raise _locked()
        try:
            fd = self._file()
            pause = 0.00005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _locked() from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.0005)
        except BaseException:
            self._turn.release()
            raise
        self._holder = id(dbapi_connection)

    def release(self, dbapi_connection: Any) -> None:
        """Give the turn back, if ``dbapi_connection`` holds it (else nothing)."""
        # The dialect's do_commit gets the pool's proxy; events get the DBAPI connection.
        dbapi_connection = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        if dbapi_connection is None or self._holder != id(dbapi_connection):
            return
        self._holder = None
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._turn.release()

    def _file(self) -> int:
        # A forked child would share its parent's open file, and so its lock: open its own.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


def _locked() -> Exception:
    import sqlite3

    return sqlite3.OperationalError(
        f"database is locked: another writer held it for more than {SQLITE_BUSY_S:.0f} s"
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
