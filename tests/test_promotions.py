"""The gates in the services: requests, sign-offs, overrides, stale evidence, rollback."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from numex.db import (
    AuditEvent,
    Evidence,
    PromotionRequest,
    RegistryOutbox,
    SignOff,
    StageTransition,
)
from numex.services import audit, promotions, users
from numex.services.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from numex.services.runtime import Actor
from tests.promotion_fixtures import DEFINITION, World


@pytest.fixture
def world(rt, cast):
    return World(rt)


def _request(world, candidate=None, target="operational", by="sam"):
    return promotions.request_promotion(
        world.rt, candidate or world.parallel, target, world.actor(by), "it is better"
    )


def _sign(world, request_id, who, decision="approve", comment="looks right", **kwargs):
    return promotions.sign_off(world.rt, request_id, world.actor(who), decision, comment, **kwargs)


def _actions(rt, request_id):
    with rt.read() as session:
        return [
            e.action
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.entity_type == "promotion_request")
                .where(AuditEvent.entity_id == str(request_id))
                .order_by(AuditEvent.seq)
            )
        ]


# --- requesting ------------------------------------------------------------------------


def test_request_freezes_evidence_with_its_digest(world):
    view = _request(world)
    assert view["status"] == "open" and view["required_sign_offs"] == 2
    with world.rt.read() as session:
        (row,) = session.scalars(select(Evidence)).all()
        assert row.digest == view["evidence"]["digest"] == audit.digest(row.content)
        assert row.digest.startswith("sha256:")
        content = row.content
    assert content["reference"] == {"id": world.operational, "name": "persistence"}
    assert content["numbers"]["n_cycles"] == 40 and content["numbers"]["n_cases"] == 80
    assert content["numbers"]["failures"] == 0 and content["numbers"]["attempts"] == 40
    assert content["numbers"]["offline_reference"]["rmse"] == 3.0
    assert content["lineage"]["mlflow_run_id"] == "run-ridge"
    assert content["lineage"]["model_version"] == "1"
    assert content["scorecard"]["meta"]["reference"]["name"] == "persistence"
    checks = {c["name"]: c for c in view["checks"]}
    assert set(checks) == {
        "min_cycles",
        "significant_improvement",
        "no_significant_degradation",
        "max_failure_rate",
    }
    assert all(c["passed"] for c in checks.values())
    assert checks["min_cycles"]["observed"] == {"n_cycles": 40}
    assert checks["significant_improvement"]["observed"]["p_value"] < 0.05
    assert view["evidence"]["summary"]["metrics"]["rmse"]["symbol"] == "▲"
    assert _actions(world.rt, view["id"]) == ["promotion.requested"]


def test_evidence_digest_is_stable_when_nothing_changed(world):
    view = _request(world)
    result = promotions.refresh_evidence(world.rt, view["id"], world.actor("rita"))
    assert not result["changed"]
    assert result["request"]["evidence"]["digest"] == view["evidence"]["digest"]
    with world.rt.read() as session:
        assert len(session.scalars(select(Evidence)).all()) == 1


@pytest.mark.parametrize("who", ["vic", "rita", "olga", "adam"])
def test_only_scientists_may_request_promotion(world, who):
    with pytest.raises(PermissionDenied, match="needs role scientist"):
        _request(world, by=who)


def test_request_needs_a_person_not_the_system(world):
    with pytest.raises(PermissionDenied, match="API token"):
        promotions.request_promotion(world.rt, world.parallel, "operational", Actor.system())


def test_target_must_be_the_next_stage(world):
    with pytest.raises(InvalidInput, match="can only be requested into parallel"):
        _request(world, candidate=world.experiment, target="operational")
    with pytest.raises(InvalidInput, match="cannot be promoted"):
        _request(world, candidate=world.operational, target="operational")
    with pytest.raises(InvalidInput, match="valid: parallel, operational"):
        _request(world, target="production")


def test_unknown_candidate_is_not_found(world):
    with pytest.raises(NotFound, match="no candidate #999"):
        _request(world, candidate=999)


def test_candidate_can_be_named_by_routine_and_name(world):
    view = _request(world, candidate="tiny/ridge")
    assert view["candidate"]["id"] == world.parallel


def test_one_open_request_per_candidate(world):
    first = _request(world)
    with pytest.raises(Conflict, match=f"open promotion request #{first['id']}"):
        _request(world, by="sara")


# --- who may sign --------------------------------------------------------------------------


def test_requester_cannot_sign_own_request(world):
    users.add_user(world.rt, "rhea", ["scientist", "reviewer"], Actor.system(), password="x" * 8)
    view = _request(world, by="rhea")
    with pytest.raises(PermissionDenied, match="requester"):
        _sign(world, view["id"], "rhea")


def test_author_cannot_sign_by_user_id(world):
    users.set_roles(world.rt, "sara", ["scientist", "reviewer"], Actor.system())
    view = _request(world)
    with pytest.raises(PermissionDenied, match="author"):
        _sign(world, view["id"], "sara")


def test_author_cannot_sign_by_name(world):
    users.set_roles(world.rt, "sam", ["scientist", "reviewer"], Actor.system())
    view = _request(world, candidate=world.experiment, target="parallel", by="sara")
    with pytest.raises(PermissionDenied, match="author of candidate forest"):
        _sign(world, view["id"], "sam")


@pytest.mark.parametrize("who", ["vic", "sara", "olga", "adam"])
def test_only_reviewers_sign(world, who):
    view = _request(world)
    with pytest.raises(PermissionDenied, match="needs role reviewer"):
        _sign(world, view["id"], who)


def test_comment_is_required(world):
    view = _request(world)
    with pytest.raises(InvalidInput, match="comment is required"):
        _sign(world, view["id"], "rita", comment="   ")


def test_decision_must_be_approve_or_reject(world):
    view = _request(world)
    with pytest.raises(InvalidInput, match="valid: approve, reject"):
        _sign(world, view["id"], "rita", decision="maybe")


def test_one_sign_off_per_person(world):
    view = _request(world)
    _sign(world, view["id"], "rita")
    with pytest.raises(Conflict, match="already signed"):
        _sign(world, view["id"], "rita", decision="reject")


# --- outcomes ------------------------------------------------------------------------------


def test_enough_approvals_execute_the_promotion_and_retire_the_operational(world):
    view = _request(world)
    after_one = _sign(world, view["id"], "rita")
    assert after_one["status"] == "open" and after_one["approvals"] == 1
    assert after_one["waiting_for"] == ["1 more approval on the current evidence"]
    assert world.stage(world.parallel) == "parallel"
    done = _sign(world, view["id"], "remy")
    assert done["status"] == "executed" and done["closed_at"]
    assert world.stage(world.parallel) == "operational"
    assert world.stage(world.operational) == "retired"
    with world.rt.read() as session:
        transitions = session.scalars(
            select(StageTransition).where(StageTransition.promotion_request_id == view["id"])
        ).all()
        assert sorted((t.candidate_id, t.to_stage, t.kind) for t in transitions) == sorted(
            [
                (world.parallel, "operational", "promotion"),
                (world.operational, "retired", "promotion:replaced"),
            ]
        )
        outbox = session.scalars(select(RegistryOutbox)).all()
        assert {(o.candidate_id, o.payload["stage"]) for o in outbox} == {
            (world.parallel, "operational"),
            (world.operational, "retired"),
        }
    assert _actions(world.rt, view["id"]) == [
        "promotion.requested",
        "promotion.signed_off",
        "promotion.signed_off",
        "promotion.executed",
    ]
    assert audit.verify(world.rt).ok


def test_closed_request_takes_no_more_sign_offs(world):
    users.add_user(world.rt, "rex", ["reviewer"], Actor.system(), password="x" * 8)
    view = _request(world)
    _sign(world, view["id"], "rita")
    _sign(world, view["id"], "remy")
    with pytest.raises(Conflict, match="is executed"):
        _sign(world, view["id"], "rex")


def test_one_reject_closes_the_request_and_rejects_the_candidate(world):
    view = _request(world)
    _sign(world, view["id"], "rita")
    rejected = _sign(world, view["id"], "remy", decision="reject", comment="too few winters")
    assert rejected["status"] == "rejected"
    assert world.stage(world.parallel) == "rejected"
    assert world.stage(world.operational) == "operational"
    with world.rt.read() as session:
        transition = session.scalars(
            select(StageTransition).where(StageTransition.promotion_request_id == view["id"])
        ).one()
        assert (transition.to_stage, transition.kind) == ("rejected", "rejection")
        assert "too few winters" in transition.reason
    assert _actions(world.rt, view["id"])[-1] == "promotion.rejected"


def test_requester_may_withdraw_and_the_candidate_keeps_its_stage(world):
    view = _request(world)
    with pytest.raises(PermissionDenied, match="only the requester"):
        promotions.withdraw(world.rt, view["id"], world.actor("sara"), "mine now")
    with pytest.raises(InvalidInput, match="reason is required"):
        promotions.withdraw(world.rt, view["id"], world.actor("sam"), "")
    withdrawn = promotions.withdraw(world.rt, view["id"], world.actor("sam"), "wait for summer")
    assert withdrawn["status"] == "withdrawn"
    assert withdrawn["withdrawal"]["reason"] == "wait for summer"
    assert world.stage(world.parallel) == "parallel"
    with pytest.raises(Conflict, match="withdrawn"):
        _sign(world, view["id"], "rita")
    again = _request(world)  # a new request is allowed once the old one is closed
    assert again["id"] != view["id"]


def test_parallel_gate_needs_one_approval_and_has_no_scorecard_yet(world):
    view = _request(world, candidate=world.experiment, target="parallel")
    assert view["required_sign_offs"] == 1
    assert view["evidence"]["summary"] is None
    (check,) = view["checks"]
    assert check["name"] == "offline_not_worse" and check["passed"]
    assert check["observed"] == {"candidate": 1.5, "reference": 3.0}
    done = _sign(world, view["id"], "rita")
    assert done["status"] == "executed"
    assert world.stage(world.experiment) == "parallel"
    assert world.stage(world.operational) == "operational"


def test_a_gate_without_sign_offs_executes_on_request(rt, cast):
    gates = {**DEFINITION["gates"], "parallel": {"sign_offs": 0, "checks": []}}
    world = World(rt, gates=gates)
    view = _request(world, candidate=world.experiment, target="parallel")
    assert view["status"] == "executed" and world.stage(world.experiment) == "parallel"


# --- failed checks and overrides -------------------------------------------------------------


@pytest.fixture
def short_world(rt, cast):
    """Only 10 cycles: min_cycles (30) fails, so does significance."""
    return World(rt, cycles=10)


def test_failed_check_blocks_the_promotion_whatever_the_approvals(short_world):
    world = short_world
    view = _request(world)
    failing = {c["name"] for c in view["checks"] if not c["passed"]}
    assert "min_cycles" in failing
    _sign(world, view["id"], "rita")
    after = _sign(world, view["id"], "remy")
    assert after["status"] == "open" and after["approvals"] == 2
    assert any("min_cycles fails" in w for w in after["waiting_for"])
    assert world.stage(world.parallel) == "parallel"


def test_admin_override_with_justification_completes_the_gate(short_world):
    world = short_world
    view = _request(world)
    _sign(world, view["id"], "rita")
    _sign(world, view["id"], "remy")
    failing = [c["name"] for c in view["checks"] if not c["passed"]]
    with pytest.raises(PermissionDenied, match="needs role admin"):
        promotions.override_check(world.rt, view["id"], failing[0], world.actor("olga"), "why")
    with pytest.raises(InvalidInput, match="justification is required"):
        promotions.override_check(world.rt, view["id"], failing[0], world.actor("adam"), " ")
    with pytest.raises(InvalidInput, match="no check 'bogus'"):
        promotions.override_check(world.rt, view["id"], "bogus", world.actor("adam"), "why")
    with pytest.raises(InvalidInput, match="passes on the current evidence"):
        promotions.override_check(
            world.rt, view["id"], "max_failure_rate", world.actor("adam"), "why"
        )
    for name in failing:
        result = promotions.override_check(
            world.rt, view["id"], name, world.actor("adam"), f"{name}: winter trial suffices"
        )
    assert result["status"] == "executed"
    assert world.stage(world.parallel) == "operational"
    shown = {o["check"]: o["justification"] for o in result["overrides"]}
    assert shown["min_cycles"] == "min_cycles: winter trial suffices"
    check = next(c for c in result["checks"] if c["name"] == "min_cycles")
    assert not check["passed"] and check["effective_pass"]
    assert check["overridden"]["by"] == "adam"
    events, _ = audit.list_events(world.rt, action="promotion.check_overridden")
    assert {e.payload["justification"] for e in events} == {
        f"{name}: winter trial suffices" for name in failing
    }


def test_a_check_is_overridden_once(short_world):
    world = short_world
    view = _request(world)
    promotions.override_check(world.rt, view["id"], "min_cycles", world.actor("adam"), "ok")
    with pytest.raises(Conflict, match="already overridden"):
        promotions.override_check(world.rt, view["id"], "min_cycles", world.actor("adam"), "ok")


# --- stale evidence ------------------------------------------------------------------------


def test_new_cycles_make_earlier_approvals_stale(world):
    users.add_user(world.rt, "rex", ["reviewer"], Actor.system(), password="x" * 8)
    view = _request(world)
    _sign(world, view["id"], "rita")
    world.add_cycles(5)
    after = _sign(world, view["id"], "remy")
    assert after["evidence"]["revision"] == 2
    assert after["status"] == "open" and after["approvals"] == 1
    rita, remy = after["sign_offs"]
    assert not rita["on_current_evidence"] and not rita["counts"]
    assert rita["evidence_revision"] == 1
    changed = {c["item"]: (c["before"], c["after"]) for c in rita["changes_since"]}
    assert changed["n_cycles"] == (40, 45)
    assert changed["n_cases"] == (80, 90)
    assert "rmse candidate score" in changed
    assert remy["on_current_evidence"] and remy["changes_since"] == []
    assert _actions(world.rt, view["id"]).count("promotion.evidence_changed") == 1
    done = _sign(world, view["id"], "rex")
    assert done["status"] == "executed"
    with world.rt.read() as session:
        executed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "promotion.executed")
        ).one()
        assert executed.payload["approved_by"] == ["remy", "rex"]


def test_sign_off_on_evidence_that_changed_meanwhile_is_refused_with_what_changed(world):
    view = _request(world)
    seen = view["evidence"]["digest"]
    world.add_cycles(3)
    with pytest.raises(Conflict, match="changed since you looked") as error:
        _sign(world, view["id"], "rita", evidence_digest=seen)
    assert {"item": "n_cycles", "before": 40, "after": 43} in error.value.details["changes"]
    current = promotions.get_request(world.rt, view["id"])
    assert current["sign_offs"] == [] and current["evidence"]["revision"] == 2
    assert current["evidence"]["digest"] == error.value.details["evidence_digest"]
    signed = _sign(world, view["id"], "rita", evidence_digest=current["evidence"]["digest"])
    assert signed["approvals"] == 1


def test_showing_an_open_request_rebuilds_its_evidence(world):
    view = _request(world)
    assert promotions.get_request(world.rt, view["id"], refresh=True)["evidence"]["revision"] == 1
    world.add_cycles(2)
    assert promotions.get_request(world.rt, view["id"])["evidence"]["revision"] == 1
    shown = promotions.get_request(world.rt, view["id"], refresh=True)
    assert shown["evidence"]["revision"] == 2 and shown["evidence"]["numbers"]["n_cycles"] == 42
    events, _ = audit.list_events(world.rt, action="promotion.evidence_changed")
    assert [(e.actor, e.payload["revision"]) for e in events] == [("numex", 2)]


def test_refresh_open_requests_stores_new_evidence_for_each(world):
    view = _request(world)
    assert promotions.refresh_open_requests(world.rt, world.actor("olga")) == []
    world.add_cycles(2)
    (changed,) = promotions.refresh_open_requests(world.rt, world.actor("olga"), "tiny")
    assert changed["request_id"] == view["id"]
    assert promotions.get_request(world.rt, view["id"])["evidence"]["digest"] == changed["digest"]
    with pytest.raises(PermissionDenied):
        promotions.refresh_open_requests(world.rt, world.actor("vic"))


def test_failures_count_in_the_failure_rate(rt, cast):
    world = World(rt, cycles=0)
    world.add_cycles(40, failed={world.parallel: 4})
    view = _request(world)
    check = next(c for c in view["checks"] if c["name"] == "max_failure_rate")
    assert not check["passed"]
    assert check["observed"] == {"failures": 4, "attempts": 40, "rate": 0.1}


# --- exactly once ---------------------------------------------------------------------------


def test_two_reviewers_approving_at_once_promote_exactly_once(world):
    view = _request(world)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    actors = [world.actor("rita"), world.actor("remy")]

    def approve(actor):
        try:
            barrier.wait(timeout=10)
            promotions.sign_off(world.rt, view["id"], actor, "approve", f"{actor.name}: fine")
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=approve, args=(a,)) for a in actors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with world.rt.read() as session:
        promotions_done = session.scalars(
            select(StageTransition).where(
                StageTransition.kind == "promotion",
                StageTransition.promotion_request_id == view["id"],
            )
        ).all()
        assert len(promotions_done) == 1
        assert session.get(PromotionRequest, view["id"]).status == "executed"
        assert len(session.scalars(select(SignOff)).all()) == 2
        executed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "promotion.executed")
        ).all()
        assert len(executed) == 1
    assert world.stage(world.parallel) == "operational"
    assert world.stage(world.operational) == "retired"
    assert audit.verify(world.rt).ok


# --- rollback and history ---------------------------------------------------------------------


def _promote(world):
    view = _request(world)
    _sign(world, view["id"], "rita", comment="rmse clearly better")
    _sign(world, view["id"], "remy", comment="agreed")
    return view


def test_rollback_reinstates_the_previous_operational_in_one_step(world):
    _promote(world)
    with pytest.raises(PermissionDenied, match="needs role ops"):
        promotions.rollback(world.rt, "tiny", world.actor("adam"), "bad")
    with pytest.raises(InvalidInput, match="reason is required"):
        promotions.rollback(world.rt, "tiny", world.actor("olga"), "")
    result = promotions.rollback(world.rt, "tiny", world.actor("olga"), "ridge drifts in spring")
    assert result["reinstated"]["id"] == world.operational
    assert result["retired"]["id"] == world.parallel
    assert world.stage(world.operational) == "operational"
    assert world.stage(world.parallel) == "retired"
    with world.rt.read() as session:
        back = session.scalars(
            select(StageTransition).where(StageTransition.kind == "rollback")
        ).one()
        assert back.candidate_id == world.operational and back.reason == "ridge drifts in spring"
    events, _ = audit.list_events(world.rt, action="routine.rolled_back")
    assert events[0].payload["reason"] == "ridge drifts in spring"


def test_rollback_without_a_previous_operational_is_refused(world):
    with pytest.raises(Conflict, match="no previously operational"):
        promotions.rollback(world.rt, "tiny", world.actor("olga"), "just because")


def test_operational_history_shows_who_was_operational_when_with_each_decision(world):
    view = _promote(world)
    promotions.rollback(world.rt, "tiny", world.actor("olga"), "ridge drifts in spring")
    history = promotions.operational_history(world.rt, "tiny")
    assert [p["candidate"]["name"] for p in history] == ["persistence", "ridge"]
    now, ridge = history
    assert now["until"] is None and now["entered"]["kind"] == "rollback"
    assert now["entered"]["actor"] == "olga"
    assert ridge["until"] is not None and ridge["until"] <= now["from"]
    assert ridge["left"]["kind"] == "rollback:replaced"
    request = ridge["entered"]["request"]
    assert request["id"] == view["id"] and request["requested_by"] == "sam"
    assert [(s["user"], s["comment"]) for s in request["sign_offs"]] == [
        ("rita", "rmse clearly better"),
        ("remy", "agreed"),
    ]


# --- reading -------------------------------------------------------------------------------


def test_inbox_holds_only_what_the_reviewer_may_sign(world):
    users.set_roles(world.rt, "sara", ["scientist", "reviewer"], Actor.system())
    ridge = _request(world)
    forest = _request(world, candidate=world.experiment, target="parallel", by="sara")
    assert [r["id"] for r in promotions.inbox(world.rt, world.actor("rita"))] == [
        ridge["id"],
        forest["id"],
    ]
    # sara authored ridge and requested forest
    assert promotions.inbox(world.rt, world.actor("sara")) == []
    _sign(world, ridge["id"], "rita")
    assert [r["id"] for r in promotions.inbox(world.rt, world.actor("rita"))] == [forest["id"]]
    assert promotions.inbox(world.rt, world.actor("vic")) == []


def test_list_requests_filters_by_status(world):
    first = _request(world)
    promotions.withdraw(world.rt, first["id"], world.actor("sam"), "later")
    second = _request(world)
    assert [r["id"] for r in promotions.list_requests(world.rt)] == [second["id"], first["id"]]
    assert [r["id"] for r in promotions.list_requests(world.rt, "open")] == [second["id"]]
    with pytest.raises(InvalidInput, match="valid: open"):
        promotions.list_requests(world.rt, "pending")


def test_a_rollback_and_a_completing_approval_at_the_same_moment_leave_one_operational(world):
    from tests.promotion_fixtures import add_candidate, add_cycles

    _promote(world)  # ridge operational, persistence retired
    gbm = add_candidate(world.rt, world.routine_id, "gbm", "parallel", rmse=0.5)
    add_cycles(world.rt, world.routine_id, {world.parallel: 3.0, gbm: 1.0}, 40, seed=7)
    view = _request(world, candidate=gbm)
    _sign(world, view["id"], "rita")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def act(action):
        try:
            barrier.wait(timeout=10)
            action()
        except BaseException as error:  # reported below
            errors.append(error)

    approve = lambda: _sign(world, view["id"], "remy")  # noqa: E731
    roll_back = lambda: promotions.rollback(world.rt, "tiny", world.actor("olga"), "drift")  # noqa: E731
    threads = [threading.Thread(target=act, args=(a,)) for a in (approve, roll_back)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    after = promotions.get_request(world.rt, view["id"])
    stages = [world.stage(c) for c in (world.operational, world.parallel, gbm)]
    assert stages.count("operational") == 1
    with world.rt.read() as session:
        kinds = [t.kind for t in session.scalars(select(StageTransition))]
    assert kinds.count("rollback") == 1
    if after["status"] == "executed":  # the approval came first, then the rollback
        assert kinds.count("promotion") == 2
    else:  # the rollback came first: a new reference, so rita's approval went stale
        assert after["status"] == "open" and kinds.count("promotion") == 1
        assert after["evidence"]["reference"]["name"] == "persistence"
        assert [s["counts"] for s in after["sign_offs"]] == [False, True]
    assert audit.verify(world.rt).ok


def test_a_new_operational_reference_makes_earlier_approvals_stale(world):
    from tests.promotion_fixtures import add_candidate, add_cycles

    _promote(world)  # ridge operational, persistence retired
    gbm = add_candidate(world.rt, world.routine_id, "gbm", "parallel", rmse=0.5)
    add_cycles(world.rt, world.routine_id, {world.parallel: 3.0, gbm: 1.0}, 40, seed=7)
    view = _request(world, candidate=gbm)
    assert view["evidence"]["reference"]["name"] == "ridge"
    _sign(world, view["id"], "rita")
    promotions.rollback(world.rt, "tiny", world.actor("olga"), "ridge drifts")
    after = _sign(world, view["id"], "remy")
    assert after["status"] == "open" and after["approvals"] == 1
    assert after["evidence"]["reference"]["name"] == "persistence"
    rita = after["sign_offs"][0]
    assert not rita["counts"]
    assert {"item": "reference", "before": f"ridge (#{world.parallel})",
            "after": f"persistence (#{world.operational})"} in rita["changes_since"]  # fmt: skip
