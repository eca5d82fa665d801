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
