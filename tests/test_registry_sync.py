"""MLflow's registry follows numex through the outbox (against a real local MLflow store;
the tracking-server outage is in test_registry_server.py)."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from numex import mlflow_bridge
from numex.db import AuditEvent, Candidate
from numex.services import registry_sync
from numex.services.errors import NotFound, PermissionDenied
from numex.services.runtime import Actor
from tests import registry_fixtures
from tests.registry_fixtures import (
    OPS,
    closed_port,
    move,
    outbox,
    register_versions,
    seed_routine,
    stage_tags,
)


@pytest.fixture
def routine_with_versions(rt, settings):
    return registry_fixtures.routine_with_versions(rt, settings)


def test_sync_tags_each_version_with_its_stage_and_points_the_alias_at_operational(
    rt, settings, routine_with_versions
):
    v1, v2 = routine_with_versions
    assert registry_sync.registry_status(rt).pending == 3

    report = registry_sync.sync(rt, OPS)

    assert report.ok and report.delivered == 3 and report.pending == 0
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v1
    assert stage_tags(settings, "numex.r1", [v1, v2]) == {v1: "operational", v2: "parallel"}
    assert all(row.delivered_at and row.attempts == 1 for row in outbox(rt))


def test_a_promotion_moves_the_alias_and_retags_the_retired_version(
    rt, settings, routine_with_versions
):
    v1, v2 = routine_with_versions
    registry_sync.sync(rt, OPS)

    move(rt, "r1", "b", "operational")  # retires a in the same transaction
    assert registry_sync.registry_status(rt).pending == 2
    report = registry_sync.sync(rt, OPS)

    assert report.ok and report.delivered == 2
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v2
    assert stage_tags(settings, "numex.r1", [v1, v2]) == {v1: "retired", v2: "operational"}
    [delivery] = report.routines
    assert delivery.alias == v2 and delivery.tags == {
        f"numex.r1/{v1}": "retired",
        f"numex.r1/{v2}": "operational",
    }


def test_delivery_is_recorded_in_the_audit_log(rt, routine_with_versions):
    registry_sync.sync(rt, OPS)
    with rt.read() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "registry.synced"))
    assert event.actor == "olga" and event.routine == "r1"
    assert event.payload["alias"] == {"operational": routine_with_versions[0]}
    assert len(event.payload["outbox_rows"]) == 3


def test_sync_reconciles_current_state_rather_than_replaying_rows(
    rt, settings, routine_with_versions
):
    v1, v2 = routine_with_versions
    # Two decisions before any sync: only the state after both is written.
    move(rt, "r1", "b", "operational")
    move(rt, "r1", "a", "operational", kind="rollback")
    report = registry_sync.sync(rt, OPS)
    assert report.ok and report.delivered == 7
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v1
    assert stage_tags(settings, "numex.r1", [v1, v2]) == {v1: "operational", v2: "retired"}

    again = registry_sync.sync(rt, OPS)
    assert again.ok and again.delivered == 0 and again.routines == []


def test_sync_all_repairs_a_registry_changed_behind_numex_back(rt, settings, routine_with_versions):
    v1, v2 = routine_with_versions
    registry_sync.sync(rt, OPS)
    mlflow_bridge.set_alias(settings, "numex.r1", "operational", v2)
    mlflow_bridge.set_version_tag(settings, "numex.r1", v1, "numex.stage", "rejected")

    assert registry_sync.sync(rt, OPS).routines == []  # nothing pending: nothing touched
    report = registry_sync.sync(rt, OPS, everything=True)

    assert report.ok
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v1
    assert stage_tags(settings, "numex.r1", [v1, v2]) == {v1: "operational", v2: "parallel"}


def test_alias_is_removed_when_the_operational_candidate_has_no_model_version(rt, settings):
    [v1] = register_versions(settings, "numex.r1", 1)
    seed_routine(rt, candidates=("a", "b"), versions={"a": v1})
    move(rt, "r1", "a", "parallel")
    move(rt, "r1", "a", "operational")
    registry_sync.sync(rt, OPS)
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v1

    move(rt, "r1", "b", "parallel")
    move(rt, "r1", "b", "operational")
    report = registry_sync.sync(rt, OPS)

    assert report.ok
    assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") is None
    assert stage_tags(settings, "numex.r1", [v1]) == {v1: "retired"}
    assert any("no MLflow model version" in note for note in report.routines[0].notes)


def test_a_routine_never_registered_in_mlflow_syncs_without_error(rt):
    seed_routine(rt, name="plain")
    move(rt, "plain", "a", "parallel")
    report = registry_sync.sync(rt, OPS)
    assert report.ok and report.delivered == 1 and report.routines[0].alias is None


def test_unreachable_registry_never_blocks_a_decision_and_keeps_it_pending(
    rt, settings, routine_with_versions
):
    settings.mlflow_tracking_uri = settings.mlflow_registry_uri = (
        f"http://127.0.0.1:{closed_port()}"
    )
    started = time.monotonic()
    move(rt, "r1", "b", "operational")  # the decision commits; MLflow is not contacted
    report = registry_sync.sync(rt, OPS)
    elapsed = time.monotonic() - started

    assert elapsed < 5
    assert not report.ok and report.delivered == 0 and report.failed == 5
    assert "unreachable" in report.error
    with rt.read() as session:
        assert session.scalar(select(Candidate.stage).where(Candidate.name == "b")) == (
            "operational"
        )
    rows = outbox(rt)
    assert all(row.delivered_at is None and row.attempts == 1 for row in rows)
    assert all("unreachable" in row.last_error for row in rows)

    status = registry_sync.registry_status(rt, "r1")
    assert status.behind and status.pending == 5 and status.attempts == 1
    assert "unreachable" in status.last_error and status.oldest_pending_age_s >= 0


def test_a_failure_for_one_routine_does_not_hold_up_another(rt, settings):
    [v1] = register_versions(settings, "numex.good", 1)
    seed_routine(rt, name="good", candidates=("a",), versions={"a": v1})
    # "bad" claims a model version MLflow has never heard of.
    seed_routine(rt, name="bad", candidates=("a",), versions={"a": "7"})
    move(rt, "bad", "a", "parallel")
    move(rt, "good", "a", "parallel")

    report = registry_sync.sync(rt, OPS)

    assert not report.ok and report.delivered == 1 and report.failed == 1
    outcome = {r.routine: r.error for r in report.routines}
    assert outcome["good"] is None and "numex.bad" in outcome["bad"]
    assert registry_sync.registry_status(rt, "bad").pending == 1
    assert registry_sync.registry_status(rt, "good").pending == 0


def test_only_one_sync_runs_at_a_time(rt, routine_with_versions):
    with registry_sync._exclusive(rt, wait_s=0) as acquired:
        assert acquired
        report = registry_sync.sync(rt, OPS, wait_s=0)
    assert report.skipped and report.delivered == 0 and report.pending == 3
    assert registry_sync.sync(rt, OPS, wait_s=0).ok


def test_only_ops_and_admins_sync(rt):
    scientist = Actor("sam", roles=frozenset({"scientist"}))
    with pytest.raises(PermissionDenied, match="needs role ops or admin"):
        registry_sync.sync(rt, scientist)


def test_status_of_an_unknown_routine_names_the_way_to_list_them(rt):
    with pytest.raises(NotFound, match="no routine 'nope'"):
        registry_sync.registry_status(rt, "nope")


# --- CLI ------------------------------------------------------------------------------


def test_cli_status_and_sync(runner, rt, settings, routine_with_versions):
    result = runner.invoke("registry", "status")
    assert result.exit_code == 0 and "behind by 3 change(s)" in result.output
    assert json.loads(runner.invoke("registry", "status", "--json").output)["pending"] == 3

    result = runner.invoke("registry", "sync")
    assert result.exit_code == 0, result.output
    assert "r1: 3 change(s) delivered; numex.r1@operational → 1" in result.output

    status = json.loads(runner.invoke("registry", "status", "--routine", "r1", "--json").output)
    assert status["behind"] is False and status["last_delivered_at"]
    assert "in sync" in runner.invoke("registry", "status").output


def test_cli_sync_exits_non_zero_when_mlflow_is_down(runner, rt, monkeypatch):
    seed_routine(rt)
    move(rt, "r1", "a", "parallel")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")

    result = runner.invoke("registry", "sync", "--json")

    assert result.exit_code == 1
    body = json.loads(result.output)
    assert body["ok"] is False and body["pending"] == 1 and "unreachable" in body["error"]
    text = runner.invoke("registry", "status").output
    assert "behind by 1 change(s)" in text and "last error: MLflow at http" in text
