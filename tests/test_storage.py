"""Guarantees the database itself gives."""

import pytest
from sqlalchemy.exc import IntegrityError

from numex.db import Candidate, Routine, RoutineVersion


def _routine(session, name="r1"):
    routine = Routine(name=name, title="t", registered_model_name=f"numex.{name}")
    session.add(routine)
    session.flush()
    version = RoutineVersion(routine_id=routine.id, version=1, definition={}, digest="d")
    session.add(version)
    session.flush()
    return routine, version


def _candidate(session, routine, version, name, stage):
    candidate = Candidate(
        routine_id=routine.id,
        routine_version_id=version.id,
        name=name,
        stage=stage,
        lineage_digest=f"lineage-{name}",
        model_uri=f"models:/x/{name}",
    )
    session.add(candidate)
    session.flush()
    return candidate


def test_database_refuses_a_second_operational_candidate(rt):
    with rt.transaction() as session:
        routine, version = _routine(session)
        _candidate(session, routine, version, "a", "operational")
        _candidate(session, routine, version, "b", "parallel")
    with pytest.raises(IntegrityError), rt.transaction() as session:
        b = session.query(Candidate).filter_by(name="b").one()
        b.stage = "operational"
    with rt.read() as session:
        assert [c.stage for c in session.query(Candidate).order_by(Candidate.name)] == [
            "operational",
            "parallel",
        ]


def test_operational_candidates_of_different_routines_coexist(rt):
    with rt.transaction() as session:
        r1, v1 = _routine(session, "r1")
        r2, v2 = _routine(session, "r2")
        _candidate(session, r1, v1, "a", "operational")
        _candidate(session, r2, v2, "b", "operational")
        _candidate(session, r1, v1, "c", "retired")
        _candidate(session, r1, v1, "d", "retired")


def test_database_refuses_an_unknown_stage(rt):
    with pytest.raises(IntegrityError), rt.transaction() as session:
        routine, version = _routine(session)
        _candidate(session, routine, version, "a", "production")


def test_foreign_keys_are_enforced(rt):
    with pytest.raises(IntegrityError), rt.transaction() as session:
        session.add(RoutineVersion(routine_id=999, version=1, definition={}, digest="d"))
        session.flush()


# --- SQLite writers take turns (numex.db.WriterQueue) -----------------------------------------

_COUNTER_WRITER = """
import sys
from sqlalchemy import text
from numex.db import make_engine

engine = make_engine(sys.argv[1])
for _ in range(int(sys.argv[2])):
    with engine.begin() as connection:
        value = connection.execute(text("SELECT value FROM counter")).scalar_one()
        connection.execute(text("UPDATE counter SET value = :v"), {"v": value + 1})
engine.dispose()
"""


def _counter_database(tmp_path):
    from sqlalchemy import text

    from numex.db import make_engine

    url = f"sqlite:///{tmp_path / 'turns.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (value INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter VALUES (0)"))
    return url, engine


def _counter(engine) -> int:
    from sqlalchemy import text

    with engine.connect() as connection:
        return connection.execute(text("SELECT value FROM counter")).scalar_one()


def test_sqlite_writers_in_several_processes_and_threads_take_turns_and_lose_nothing(tmp_path):
    import subprocess
    import sys
    import threading

    url, engine = _counter_database(tmp_path)
    processes = [
        subprocess.Popen([sys.executable, "-c", _COUNTER_WRITER, url, "60"]) for _ in range(3)
    ]
    threads = [
        threading.Thread(target=lambda: _bump(engine, 40)) for _ in range(2)
    ]  # and two threads of this process on their own connections
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [p.wait(60) for p in processes] == [0, 0, 0]
    # Read-modify-write in every transaction: a lost turn would lose an increment.
    assert _counter(engine) == 3 * 60 + 2 * 40
    engine.dispose()


def _bump(engine, times: int) -> None:
    from sqlalchemy import text

    for _ in range(times):
        with engine.begin() as connection:
            value = connection.execute(text("SELECT value FROM counter")).scalar_one()
            connection.execute(text("UPDATE counter SET value = :v"), {"v": value + 1})


def test_a_rolled_back_or_abandoned_write_gives_its_turn_back(tmp_path, monkeypatch):
    from sqlalchemy import text

    from numex import db

    monkeypatch.setattr(db, "SQLITE_BUSY_S", 2.0)
    _url, engine = _counter_database(tmp_path)
    with pytest.raises(RuntimeError), engine.begin() as connection:
        connection.execute(text("UPDATE counter SET value = 99"))
        raise RuntimeError("the unit of work failed")
    connection = engine.connect()  # a write left open, then the connection closed
    connection.execute(text("UPDATE counter SET value = 98"))
    connection.close()
    _bump(engine, 1)  # would wait 2 s and fail if either had kept the turn
    assert _counter(engine) == 1
    engine.dispose()


def test_a_writer_waiting_past_the_busy_timeout_is_told_the_database_is_locked(
    tmp_path, monkeypatch
):
    import fcntl
    import os
    import sqlite3

    from numex import db

    monkeypatch.setattr(db, "SQLITE_BUSY_S", 0.3)
    _url, engine = _counter_database(tmp_path)
    # Another writer (a separate open file, as another process would have) holds the lock.
    other = os.open(tmp_path / "turns.db-writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            _bump(engine, 1)
        # Reads take a snapshot and do not queue behind writers.
        from numex.db import READ_ONLY

        with engine.execution_options(**{READ_ONLY: True}).begin() as connection:
            assert connection.exec_driver_sql("SELECT value FROM counter").scalar_one() == 0
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    _bump(engine, 1)  # the failed writer left nothing held behind
    assert _counter(engine) == 1
    engine.dispose()


def test_a_pooled_connection_the_server_dropped_is_replaced_not_an_error(rt, monkeypatch):
    """Connections idle in the pool are pinged before use; one whose server process is
    gone (a database restart) is replaced without failing the caller."""
    from sqlalchemy import text

    from numex import db

    if rt.dialect != "postgresql":
        pytest.skip("server-side disconnects exist on PostgreSQL (this runs in its CI pass)")
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    with rt.engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with db.make_engine(rt.settings.database_url).connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.commit()
    with rt.transaction() as session:  # the pooled connection is dead: replaced, no error
        assert session.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
