"""``numex promote``, ``numex signoff`` and ``numex rollback``: people act by API token."""

from __future__ import annotations

import json

import pytest

from tests.promotion_fixtures import World


@pytest.fixture
def world(rt, cast):
    return World(rt)


def test_request_sign_off_and_promote_from_the_command_line(runner, world, token_for):
    made = runner.invoke(
        "promote", "request", "tiny/ridge", "--to", "operational", "--reason", "better",
        "--token", token_for("sam"), "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    request_id = json.loads(made.output)["id"]
    listed = json.loads(runner.invoke("promote", "list", "--status", "open", "--json").output)
    assert [r["id"] for r in listed] == [request_id]
    first = runner.invoke(
        "signoff", str(request_id), "--approve", "--comment", "clear gain",
        env={"NUMEX_TOKEN": token_for("rita")},
    )  # fmt: skip
    assert first.exit_code == 0 and "1 more approval" in first.output
    second = runner.invoke(
        "signoff", str(request_id), "--approve", "--comment", "agreed",
        "--token", token_for("remy"),
    )  # fmt: skip
    assert second.exit_code == 0 and "executed" in second.output
    shown = json.loads(runner.invoke("promote", "show", str(request_id), "--json").output)
    assert shown["status"] == "executed"
    assert [s["user"] for s in shown["sign_offs"]] == ["rita", "remy"]
    text = runner.invoke("promote", "show", str(request_id)).output
    assert "PASS" in text and shown["evidence"]["digest"] in text
    history = runner.invoke("promote", "history", "tiny").output
    assert "ridge" in history and "approve by rita: clear gain" in history
    evidence = json.loads(runner.invoke("promote", "evidence", str(request_id)).output)
    assert evidence["candidate"]["name"] == "ridge"


def test_acting_commands_need_a_token(runner, world, monkeypatch):
    monkeypatch.delenv("NUMEX_TOKEN", raising=False)
    result = runner.invoke("promote", "request", str(world.parallel), "--to", "operational")
    assert result.exit_code == 1 and "API token" in result.output
    bad = runner.invoke("rollback", "tiny", "--reason", "x", "--token", "nx_nonsense")
    assert bad.exit_code == 1 and "unknown or revoked" in bad.output


def test_refusals_exit_non_zero_with_the_reason(runner, world, token_for):
    sam = token_for("sam")
    made = runner.invoke(
        "promote", "request", str(world.parallel), "--to", "operational", "--token", sam, "--json"
    )
    request_id = str(json.loads(made.output)["id"])
    own = runner.invoke("signoff", request_id, "--approve", "--comment", "mine", "--token", sam)
    assert own.exit_code == 1 and "needs role reviewer" in own.output
    no_decision = runner.invoke("signoff", request_id, "--comment", "hm", "--token", sam)
    assert no_decision.exit_code != 0 and "--approve or --reject" in no_decision.output
    wrong = runner.invoke(
        "promote", "request", str(world.experiment), "--to", "operational", "--token", sam
    )
    assert wrong.exit_code == 1 and "only be requested into parallel" in wrong.output


def test_withdraw_override_refresh_and_rollback(runner, rt, cast, token_for):
    world = World(rt, cycles=10)
    sam, adam, olga = token_for("sam"), token_for("adam"), token_for("olga")
    made = runner.invoke(
        "promote", "request", str(world.parallel), "--to", "operational", "--token", sam, "--json"
    )
    request_id = str(json.loads(made.output)["id"])
    overridden = runner.invoke(
        "promote", "override", request_id, "min_cycles",
        "--justification", "ten days suffice", "--token", adam,
    )  # fmt: skip
    assert overridden.exit_code == 0 and "ten days suffice" in overridden.output
    unchanged = runner.invoke("promote", "refresh", request_id, "--token", olga)
    assert unchanged.exit_code == 0 and "unchanged" in unchanged.output
    world.add_cycles(2)
    refreshed = runner.invoke("promote", "refresh", "--routine", "tiny", "--token", olga)
    assert f"request #{request_id}: new evidence" in refreshed.output
    assert "n_cycles: 10 → 12" in refreshed.output
    withdrawn = runner.invoke("promote", "withdraw", request_id, "--reason", "wait", "--token", sam)
    assert withdrawn.exit_code == 0 and "withdrawn by sam: wait" in withdrawn.output
    nothing = runner.invoke("rollback", "tiny", "--reason", "drift", "--token", olga)
    assert nothing.exit_code == 1 and "no previously operational" in nothing.output


def test_rollback_from_the_command_line(runner, world, token_for):
    from numex.services import promotions

    view = promotions.request_promotion(world.rt, world.parallel, "operational", world.actor("sam"))
    promotions.sign_off(world.rt, view["id"], world.actor("rita"), "approve", "ok")
    promotions.sign_off(world.rt, view["id"], world.actor("remy"), "approve", "ok")
    refused = runner.invoke("rollback", "tiny", "--reason", "drift", "--token", token_for("adam"))
    assert refused.exit_code == 1 and "needs role ops" in refused.output
    done = runner.invoke("rollback", "tiny", "--reason", "drift", "--token", token_for("olga"))
    assert done.exit_code == 0
    assert "persistence (#1) is operational again; ridge (#2) retired" in done.output
    assert world.stage(world.operational) == "operational"
