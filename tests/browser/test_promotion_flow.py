"""Four eyes in a real browser: a scientist requests promotion to operational, two
reviewers approve through the UI, and the candidate is operational with the old one
retired. Forged and token-less POSTs are refused."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from numex.db import SignOff
from tests.promotion_fixtures import World

pytestmark = pytest.mark.browser


@pytest.fixture
def world(rt, cast):
    """tiny: persistence operational, ridge (by sara) parallel and clearly better over 40
    verified cycles, forest (by sam) an experiment."""
    return World(rt, cycles=40)


def _sign_offs(rt) -> int:
    with rt.read() as session:
        return session.scalar(select(func.count()).select_from(SignOff))


def _request_id(page) -> int:
    match = re.search(r"/requests/(\d+)$", page.url)
    assert match, page.url
    return int(match.group(1))


def _csrf_token(page) -> str:
    """A valid CSRF token from a form on the page (every page has the sign-out form)."""
    return page.locator("input[name=csrf_token]").first.input_value()


def _approve(page, request_id: int, comment: str) -> None:
    page.goto(f"/requests/{request_id}")
    form = page.locator("#sign-off-form")
    form.locator("input[name=decision][value=approve]").check()
    form.locator("textarea[name=comment]").fill(comment)
    page.click("#sign-off-submit")


def test_two_reviewers_promote_a_parallel_candidate_to_operational(people, rt, world):
    # The scientist asks for promotion from the candidate page.
    sam = people.sign_in("sam")
    sam.goto(f"/candidates/{world.parallel}")
    sam.fill("#promotion-reason", "ridge beats persistence on 40 verified cycles")
    sam.click("#request-promotion")
    expect(sam.locator("[role=alert].alert-success")).to_contain_text(
        "Promotion of ridge to operational"
    )
    request_id = _request_id(sam)
    expect(sam.locator("#requested-by")).to_have_text("sam")
    expect(sam.locator("#sign-off-form")).to_have_count(0)  # the requester sees no form

    # Reviewer one finds it in the inbox and approves.
    rita = people.sign_in("rita")
    rita.goto("/inbox")
    expect(rita.locator(f"a[href='/requests/{request_id}']")).to_be_visible()
    rita.click(f"a[href='/requests/{request_id}']")
    _approve(rita, request_id, "Scorecard significant on rmse, no mae degradation.")
    expect(rita.locator("[role=alert].alert-success")).to_contain_text("Signed off")
    expect(rita.locator("#sign-offs .sign-off[data-user=rita]")).to_contain_text("approve")
    assert world.stage(world.parallel) == "parallel"  # one approval is not enough

    # Reviewer two approves: the gate completes at once.
    remy = people.sign_in("remy")
    _approve(remy, request_id, "Agree; lineage and checks reviewed.")
    expect(remy.locator("[role=alert].alert-success")).to_contain_text(
        "The gate is complete: ridge is now operational"
    )
    expect(remy.locator("#request-outcome")).to_contain_text("parallel → operational")

    assert world.stage(world.parallel) == "operational"
    assert world.stage(world.operational) == "retired"
    remy.goto(f"/routines/{world.name}")
    expect(remy.locator("#lane-operational")).to_contain_text("ridge")
    expect(remy.locator("#lane-retired")).to_contain_text("persistence")
    remy.goto(f"/candidates/{world.parallel}")
    expect(remy.locator("body")).to_contain_text("operational")
    remy.goto(f"/routines/{world.name}/history")
    expect(remy.locator("body")).to_contain_text("ridge")
    remy.goto("/audit/")
    expect(remy.locator("body")).to_contain_text("candidate.stage_changed")
    remy.goto("/")
    expect(remy.locator("#registry-status")).to_contain_text("MLflow registry behind by")


def test_requester_sees_no_sign_off_button_and_a_forged_post_is_refused(people, rt, world):
    sam = people.sign_in("sam")
    sam.goto(f"/candidates/{world.parallel}")
    sam.click("#request-promotion")
    request_id = _request_id(sam)
    expect(sam.locator("#sign-off-form")).to_have_count(0)
    expect(sam.locator("#sign-off-submit")).to_have_count(0)
    digest = sam.locator("#evidence-digest").inner_text()

    # A hand-made POST from sam's own signed-in browser, with a valid CSRF token.
    forged = sam.request.post(
        f"/requests/{request_id}/sign-off",
        form={
            "csrf_token": _csrf_token(sam),
            "decision": "approve",
            "comment": "looks fine to me",
            "evidence_digest": digest,
        },
    )
    assert forged.status == 403
    assert "may not" in forged.text()

    # The same from the page's own JavaScript (fetch with the session cookie).
    status = sam.evaluate(
        """async ([url, token, digest]) => {
            const body = new URLSearchParams({csrf_token: token, decision: "approve",
                                              comment: "sneaky", evidence_digest: digest});
            const response = await fetch(url, {method: "POST", body});
            return response.status;
        }""",
        [f"/requests/{request_id}/sign-off", _csrf_token(sam), digest],
    )
    assert status == 403

    # The author of the candidate (sara, a scientist) is refused as well.
    sara = people.sign_in("sara")
    sara.goto(f"/requests/{request_id}")
    expect(sara.locator("#sign-off-form")).to_have_count(0)
    refused = sara.request.post(
        f"/requests/{request_id}/sign-off",
        form={"csrf_token": _csrf_token(sara), "decision": "approve", "comment": "mine"},
    )
    assert refused.status == 403

    assert _sign_offs(rt) == 0
    assert world.stage(world.parallel) == "parallel"
    sam.goto(f"/requests/{request_id}")
    expect(sam.locator("#sign-offs")).to_contain_text("No sign-offs yet.")


def test_a_post_without_the_csrf_token_is_refused(people, rt, world):
    sam = people.sign_in("sam")
    sam.goto(f"/candidates/{world.parallel}")
    sam.click("#request-promotion")
    request_id = _request_id(sam)

    # rita may sign, and she is signed in; only the token is missing.
    rita = people.sign_in("rita")
    rita.goto(f"/requests/{request_id}")
    expect(rita.locator("#sign-off-form")).to_be_visible()
    response = rita.request.post(
        f"/requests/{request_id}/sign-off",
        form={"decision": "approve", "comment": "no token"},
    )
    assert response.status == 400
    assert "CSRF" in response.text() or "csrf" in response.text()
    response = rita.request.post(
        f"/requests/{request_id}/sign-off",
        form={"csrf_token": "not-a-token", "decision": "approve", "comment": "bad token"},
    )
    assert response.status == 400

    # Requesting a promotion without the token is refused too, and changes nothing.
    forest = world.experiment
    sam_response = sam.request.post(
        f"/candidates/{forest}/request-promotion", form={"target": "parallel"}
    )
    assert sam_response.status == 400
    sam.goto(f"/candidates/{forest}")
    expect(sam.locator("#open-promotion-request")).to_have_count(0)

    assert _sign_offs(rt) == 0
    assert world.stage(world.parallel) == "parallel"
