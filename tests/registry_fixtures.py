"""Helpers for registry-sync tests: a routine and candidates written straight into the
database, model versions registered in the test's MLflow store, recorded stage moves."""

from __future__ import annotations

import socket

from sqlalchemy import select

from numex import mlflow_bridge
from numex.db import Candidate, RegistryOutbox, Routine, RoutineVersion
from numex.services import stages
from numex.services.runtime import Actor

OPS = Actor("olga", roles=frozenset({"ops"}))
SYSTEM = Actor.system("test")


def seed_routine(rt, name="r1", candidates=("a", "b"), versions=None):
    """A routine and candidates at stage experiment; ``versions`` maps a candidate to its
    MLflow model version (registered under ``numex.<name>``)."""
    versions = versions or {}
    with rt.transaction() as session:
        routine = Routine(name=name, title=name, registered_model_name=f"numex.{name}")
        session.add(routine)
        session.flush()
        version = RoutineVersion(routine_id=routine.id, version=1, definition={}, digest="d")
        session.add(version)
        session.flush()
        for cname in candidates:
            session.add(
                Candidate(
                    routine_id=routine.id,
                    routine_version_id=version.id,
                    name=cname,
                    author="sam",
                    lineage_digest=f"lineage-{cname}",
                    model_uri=f"models:/numex.{name}/{versions.get(cname, 0)}",
                    registered_model_name=f"numex.{name}" if cname in versions else None,
                    model_version=versions.get(cname),
                )
            )
    return name


def register_versions(settings, model: str, count: int) -> list[str]:
    """``count`` model versions of ``model`` in the test's MLflow store (runs without
    artifacts: the registry only needs the version to exist)."""
    client = mlflow_bridge.client(settings)
    client.create_registered_model(model)
    experiment = mlflow_bridge.ensure_experiment(settings, f"registry-test/{model}")
    versions = []
    for _ in range(count):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        created = client.create_model_version(
            model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        versions.append(str(created.version))
    return versions


def move(rt, routine: str, candidate: str, to_stage: str, kind: str = "test") -> None:
    with rt.transaction() as session:
        found = session.scalar(
            select(Candidate)
            .join(Routine)
            .where(Routine.name == routine, Candidate.name == candidate)
        )
        stages.move(session, found, to_stage, kind=kind, actor=SYSTEM)


def stage_tags(settings, model: str, versions: list[str]) -> dict[str, str | None]:
    return {
        v: mlflow_bridge.model_version_info(settings, model, v)["tags"].get("numex.stage")
        for v in versions
    }


def outbox(rt) -> list[RegistryOutbox]:
    with rt.read() as session:
        return list(session.scalars(select(RegistryOutbox).order_by(RegistryOutbox.id)))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def routine_with_versions(rt, settings) -> list[str]:
    """r1 with candidates a (version 1) and b (version 2); a is operational, b parallel,
    through recorded moves (so the outbox holds their changes)."""
    versions = register_versions(settings, "numex.r1", 2)
    seed_routine(rt, versions={"a": versions[0], "b": versions[1]})
    move(rt, "r1", "a", "parallel")
    move(rt, "r1", "a", "operational")
    move(rt, "r1", "b", "parallel")
    return versions
