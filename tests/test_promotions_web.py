"""The gates over HTTP: the JSON API, the pages and forms, and what each role may do."""

from __future__ import annotations

import re

import pytest

from numex.services import promotions
from tests.promotion_fixtures import World


@pytest.fixture
def world(rt, cast):
    return World(rt)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _request(world, by="sam"):
    return promotions.request_promotion(world.rt, world.parallel, "operational", world.actor(by))


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


# --- API -------------------------------------------------------------------------------------


def test_api_request_sign_and_execute(client, world, token_for):
    sam, rita, remy = token_for("sam"), token_for("rita"), token_for("remy")
    created = client.post(
        f"/api/v1/candidates/{world.parallel}/promotion-requests",
        json={"target": "operational", "reason": "better rmse"},
        headers=_bearer(sam),
    )
    assert created.status_code == 201, created.json
    request_id = created.json["id"]
    assert created.json["evidence"]["digest"].startswith("sha256:")
    listed = client.get("/api/v1/promotion-requests?status=open", headers=_bearer(rita))
    assert [r["id"] for r in listed.json["requests"]] == [request_id]
    inbox = client.get("/api/v1/inbox", headers=_bearer(rita)).json["requests"]
    assert [r["id"] for r in inbox] == [request_id]
    url = f"/api/v1/promotion-requests/{request_id}/sign-offs"
    first = client.post(url, json={"decision": "approve", "comment": "ok"}, headers=_bearer(rita))
    assert first.status_code == 201 and first.json["approvals"] == 1
    second = client.post(
        url, json={"decision": "approve", "comment": "agreed"}, headers=_bearer(remy)
    )
    assert second.json["status"] == "executed"
    shown = client.get(f"/api/v1/promotion-requests/{request_id}", headers=_bearer(sam)).json
    assert shown["transition"]["to"] == "operational"
    evidence = client.get(
        f"/api/v1/promotion-requests/{request_id}/evidence", headers=_bearer(sam)
    ).json
    assert evidence["scorecard"]["meta"]["candidate"]["name"] == "ridge"
    history = client.get("/api/v1/routines/tiny/operational-history", headers=_bearer(sam))
    assert history.json["history"][0]["candidate"]["name"] == "ridge"


def test_api_errors_are_json_with_the_right_status(client, world, token_for):
    view = _request(world)
    url = f"/api/v1/promotion-requests/{view['id']}"
    sam, rita = token_for("sam"), token_for("rita")
    own = client.post(
        f"{url}/sign-offs", json={"decision": "approve", "comment": "mine"}, headers=_bearer(sam)
    )
    assert own.status_code == 403 and own.json["error"]["code"] == "forbidden"
    missing = client.post(f"{url}/sign-offs", json={"decision": "approve"}, headers=_bearer(rita))
    assert missing.status_code == 400 and "comment" in missing.json["error"]["message"]
    client.post(
        f"{url}/sign-offs", json={"decision": "approve", "comment": "ok"}, headers=_bearer(rita)
    )
    twice = client.post(
        f"{url}/sign-offs", json={"decision": "reject", "comment": "no"}, headers=_bearer(rita)
    )
    assert twice.status_code == 409 and twice.json["error"]["code"] == "conflict"
    unknown = client.get("/api/v1/promotion-requests/999", headers=_bearer(rita))
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "not_found"
    anonymous = client.get(url)
    assert anonymous.status_code == 401


def test_api_stale_evidence_digest_is_a_conflict_listing_changes(client, world, token_for):
    view = _request(world)
    world.add_cycles(2)
    answer = client.post(
        f"/api/v1/promotion-requests/{view['id']}/sign-offs",
        json={
            "decision": "approve",
            "comment": "ok",
            "evidence_digest": view["evidence"]["digest"],
        },
        headers=_bearer(token_for("rita")),
    )
    assert answer.status_code == 409
    assert {"item": "n_cycles", "before": 40, "after": 42} in answer.json["error"]["details"][
        "changes"
    ]


def test_api_withdraw_override_and_rollback(client, rt, cast, token_for):
    world = World(rt, cycles=10)
    sam, adam, olga = token_for("sam"), token_for("adam"), token_for("olga")
    view = _request(world)
    url = f"/api/v1/promotion-requests/{view['id']}"
    overridden = client.post(
        f"{url}/overrides",
        json={"check": "min_cycles", "justification": "a short winter trial is enough"},
        headers=_bearer(adam),
    )
    assert overridden.status_code == 201
    assert overridden.json["overrides"][0]["justification"] == "a short winter trial is enough"
    withdrawn = client.post(f"{url}/withdraw", json={"reason": "wait"}, headers=_bearer(sam))
    assert withdrawn.status_code == 200 and withdrawn.json["status"] == "withdrawn"
    refused = client.post(
        "/api/v1/routines/tiny/rollback", json={"reason": "x"}, headers=_bearer(olga)
    )
    assert refused.status_code == 409  # nothing was operational before
    no_reason = client.post("/api/v1/routines/tiny/rollback", json={}, headers=_bearer(olga))
    assert no_reason.status_code == 400


# --- pages ---------------------------------------------------------------------------------


def test_reviewer_sees_the_request_in_the_inbox_and_signs_through_the_form(client, auth, world):
    view = _request(world)
    auth.login("rita")
    inbox = client.get("/inbox")
    assert inbox.status_code == 200 and f"#{view['id']}" in inbox.text
    page = client.get(f"/requests/{view['id']}")
    assert page.status_code == 200
    for shown in ("sign-off-form", view["evidence"]["digest"], "min_cycles", "40 verified cycles"):
        assert shown in page.text
    assert "run-ridge" in page.text  # lineage
    answer = client.post(
        f"/requests/{view['id']}/sign-off",
        data={
            "csrf_token": _csrf(page.text),
            "decision": "approve",
            "comment": "rmse clearly better",
            "evidence_digest": view["evidence"]["digest"],
        },
        follow_redirects=True,
    )
    assert answer.status_code == 200 and "Signed off" in answer.text
    assert "rmse clearly better" in answer.text
    assert f"#{view['id']}" not in client.get("/inbox").text


def test_sign_off_form_is_not_shown_to_the_requester_author_or_non_reviewers(client, auth, world):
    view = _request(world)
    for who in ("sam", "sara", "vic", "olga", "adam"):
        auth.login(who)
        page = client.get(f"/requests/{view['id']}")
        assert page.status_code == 200
        assert "sign-off-form" not in page.text, who
        auth.logout()


def test_forged_sign_off_from_the_requester_is_refused_with_a_message(client, auth, world):
    from numex.services import users
    from numex.services.runtime import Actor

    users.add_user(world.rt, "rhea", ["scientist", "reviewer"], Actor.system(), password="x" * 8)
    view = _request(world, by="rhea")
    auth.login("rhea", "x" * 8)
    page = client.get(f"/requests/{view['id']}")
    assert "sign-off-form" not in page.text
    forged = client.post(
        f"/requests/{view['id']}/sign-off",
        data={"csrf_token": _csrf(page.text), "decision": "approve", "comment": "self-approved"},
    )
    assert forged.status_code == 403
    assert "requested promotion" in forged.text and "alert-danger" in forged.text
    assert promotions.get_request(world.rt, view["id"])["sign_offs"] == []


def test_forged_sign_off_from_a_scientist_is_refused(client, auth, world):
    view = _request(world)
    auth.login("sara")
    page = client.get(f"/requests/{view['id']}")
    forged = client.post(
        f"/requests/{view['id']}/sign-off",
        data={"csrf_token": _csrf(page.text), "decision": "approve", "comment": "ok"},
    )
    assert forged.status_code == 403 and "needs role reviewer" in forged.text


def test_forged_sign_off_from_the_author_is_refused(client, auth, world):
    from numex.services import users
    from numex.services.runtime import Actor

    users.set_roles(world.rt, "sara", ["scientist", "reviewer"], Actor.system())
    view = _request(world)
    auth.login("sara")
    page = client.get(f"/requests/{view['id']}")
    assert "sign-off-form" not in page.text and "author" in page.text
    forged = client.post(
        f"/requests/{view['id']}/sign-off",
        data={"csrf_token": _csrf(page.text), "decision": "approve", "comment": "mine"},
    )
    assert forged.status_code == 403 and "author" in forged.text


def test_sign_off_without_csrf_token_is_refused(client, auth, world):
    view = _request(world)
    auth.login("rita")
    answer = client.post(
        f"/requests/{view['id']}/sign-off", data={"decision": "approve", "comment": "ok"}
    )
    assert answer.status_code == 400
    assert promotions.get_request(world.rt, view["id"])["sign_offs"] == []


def test_sign_off_without_comment_is_refused_with_a_message(client, auth, world):
    view = _request(world)
    auth.login("rita")
    page = client.get(f"/requests/{view['id']}")
    answer = client.post(
        f"/requests/{view['id']}/sign-off",
        data={"csrf_token": _csrf(page.text), "decision": "approve", "comment": ""},
    )
    assert answer.status_code == 400 and "A comment is required" in answer.text


def test_new_cycles_mark_earlier_approvals_on_the_request_page(client, auth, world):
    view = _request(world)
    promotions.sign_off(world.rt, view["id"], world.actor("rita"), "approve", "fine")
    world.add_cycles(3)  # nobody refreshes: showing the page rebuilds the evidence
    auth.login("vic")
    page = client.get(f"/requests/{view['id']}").text
    assert "given on earlier evidence (revision 1)" in page
    assert "n_cycles: 40 → 43" in page


def test_requester_withdraws_from_the_request_page(client, auth, world):
    view = _request(world)
    auth.login("sam")
    page = client.get(f"/requests/{view['id']}")
    assert "withdraw-form" in page.text
    answer = client.post(
        f"/requests/{view['id']}/withdraw",
        data={"csrf_token": _csrf(page.text), "reason": "needs a summer"},
        follow_redirects=True,
    )
    assert "Withdrawn by sam" in answer.text


def test_admin_overrides_a_failed_check_from_the_request_page(client, auth, rt, cast):
    world = World(rt, cycles=10)
    view = _request(world)
    auth.login("adam")
    page = client.get(f"/requests/{view['id']}")
    assert "override-form" in page.text
    answer = client.post(
        f"/requests/{view['id']}/override",
        data={
            "csrf_token": _csrf(page.text),
            "check": "min_cycles",
            "justification": "ten winter days say enough",
        },
        follow_redirects=True,
    )
    assert answer.status_code == 200 and "ten winter days say enough" in answer.text


def test_scientist_requests_promotion_from_the_candidate_page(client, auth, world):
    auth.login("sam")
    page = client.get(f"/candidates/{world.parallel}")
    assert page.status_code == 200 and "request-promotion-form" in page.text
    answer = client.post(
        f"/candidates/{world.parallel}/request-promotion",
        data={"csrf_token": _csrf(page.text), "target": "operational", "reason": "better"},
        follow_redirects=True,
    )
    assert answer.status_code == 200 and "Promotion request #1" in answer.text
    again = client.get(f"/candidates/{world.parallel}")
    assert "request-promotion-form" not in again.text and "is open" in again.text


def test_request_button_is_not_offered_to_reviewers(client, auth, world):
    auth.login("rita")
    assert "request-promotion-form" not in client.get(f"/candidates/{world.parallel}").text


def test_ops_roll_back_from_the_history_page_with_confirmation(client, auth, world):
    view = _request(world)
    promotions.sign_off(world.rt, view["id"], world.actor("rita"), "approve", "ok")
    promotions.sign_off(world.rt, view["id"], world.actor("remy"), "approve", "ok")
    auth.login("olga")
    page = client.get("/routines/tiny/history")
    assert "rollback-form" in page.text and "reinstate persistence" in page.text
    unconfirmed = client.post(
        "/routines/tiny/rollback", data={"csrf_token": _csrf(page.text), "reason": "drift"}
    )
    assert unconfirmed.status_code == 400 and "confirm" in unconfirmed.text
    assert world.stage(world.parallel) == "operational"
    done = client.post(
        "/routines/tiny/rollback",
        data={"csrf_token": _csrf(page.text), "reason": "drift", "confirm": "y"},
        follow_redirects=True,
    )
    assert done.status_code == 200 and "Rolled back" in done.text
    assert world.stage(world.operational) == "operational"
    assert world.stage(world.parallel) == "retired"


def test_history_page_links_from_the_routine_page(client, auth, world):
    auth.login("vic")
    assert "/routines/tiny/history" in client.get("/routines/tiny").text
    page = client.get("/routines/tiny/history")
    assert page.status_code == 200 and "rollback-form" not in page.text


def test_inbox_nav_item_only_for_reviewers(client, auth, world):
    auth.login("rita")
    assert 'id="nav-inbox"' in client.get("/").text
    auth.logout()
    auth.login("sam")
    assert 'id="nav-inbox"' not in client.get("/").text


# --- roles -----------------------------------------------------------------------------------

ROLE_USER = {
    "viewer": "vic",
    "scientist": "sam",
    "reviewer": "rita",
    "ops": "olga",
    "admin": "adam",
}

#: (role, method, url, expected status) for the pages, with a request open by sam.
PAGE_RULES = [
    *[(role, "GET", "/requests/", 200) for role in ROLE_USER],
    *[(role, "GET", "/requests/{id}", 200) for role in ROLE_USER],
    *[(role, "GET", "/routines/tiny/history", 200) for role in ROLE_USER],
    *[(role, "GET", "/inbox", 200 if role == "reviewer" else 403) for role in ROLE_USER],
    # signing: only the reviewer (sam requested it)
    *[
        (role, "POST sign-off", "/requests/{id}/sign-off", 302 if role == "reviewer" else 403)
        for role in ROLE_USER
    ],
    # withdrawing: only the requester
    *[
        (role, "POST withdraw", "/requests/{id}/withdraw", 302 if role == "scientist" else 403)
        for role in ROLE_USER
    ],
    # overriding: only admins
    *[
        (role, "POST override", "/requests/{id}/override", 302 if role == "admin" else 403)
        for role in ROLE_USER
    ],
    # rollback: only ops (409 for them: nothing to reinstate yet)
    *[
        (role, "POST rollback", "/routines/tiny/rollback", 409 if role == "ops" else 403)
        for role in ROLE_USER
    ],
    # requesting: only scientists (sara, not sam: sam already has the open request)
    *[
        (
            role,
            "POST request",
            "/candidates/{experiment}/request-promotion",
            302 if role == "scientist" else 403,
        )
        for role in ROLE_USER
    ],
]

FORM_DATA = {
    "POST sign-off": {"decision": "approve", "comment": "ok"},
    "POST withdraw": {"reason": "later"},
    "POST override": {"check": "min_cycles", "justification": "enough"},
    "POST rollback": {"reason": "drift", "confirm": "y"},
    "POST request": {"target": "parallel", "reason": "try it"},
}


@pytest.mark.parametrize(("role", "method", "url", "expected"), PAGE_RULES)
def test_pages_per_role(client, auth, rt, cast, role, method, url, expected):
    world = World(rt, cycles=10)  # min_cycles fails, so an override has something to do
    view = _request(world)
    auth.login(ROLE_USER[role])
    path = url.format(id=view["id"], experiment=world.experiment)
    if method == "GET":
        answer = client.get(path)
    else:
        token = _csrf(client.get(f"/requests/{view['id']}").text)
        answer = client.post(path, data={"csrf_token": token, **FORM_DATA[method]})
    assert answer.status_code == expected, answer.text[:500]


#: (role, method, url, expected status) for the API.
API_RULES = [
    *[(role, "GET", "/api/v1/promotion-requests", 200) for role in ROLE_USER],
    *[(role, "GET", "/api/v1/promotion-requests/{id}", 200) for role in ROLE_USER],
    *[(role, "GET", "/api/v1/promotion-requests/{id}/evidence", 200) for role in ROLE_USER],
    *[(role, "GET", "/api/v1/routines/tiny/operational-history", 200) for role in ROLE_USER],
    *[(role, "GET", "/api/v1/inbox", 200) for role in ROLE_USER],
    *[
        (
            role,
            "POST sign-off",
            "/api/v1/promotion-requests/{id}/sign-offs",
            201 if role == "reviewer" else 403,
        )
        for role in ROLE_USER
    ],
    *[
        (
            role,
            "POST withdraw",
            "/api/v1/promotion-requests/{id}/withdraw",
            200 if role == "scientist" else 403,
        )
        for role in ROLE_USER
    ],
    *[
        (
            role,
            "POST override",
            "/api/v1/promotion-requests/{id}/overrides",
            201 if role == "admin" else 403,
        )
        for role in ROLE_USER
    ],
    *[
        (
            role,
            "POST refresh",
            "/api/v1/promotion-requests/{id}/evidence",
            403 if role == "viewer" else 200,
        )
        for role in ROLE_USER
    ],
    *[
        (role, "POST rollback", "/api/v1/routines/tiny/rollback", 409 if role == "ops" else 403)
        for role in ROLE_USER
    ],
    *[
        (
            role,
            "POST request",
            "/api/v1/candidates/{experiment}/promotion-requests",
            201 if role == "scientist" else 403,
        )
        for role in ROLE_USER
    ],
]

API_DATA = {
    "POST sign-off": {"decision": "approve", "comment": "ok"},
    "POST withdraw": {"reason": "later"},
    "POST override": {"check": "min_cycles", "justification": "enough"},
    "POST refresh": {},
    "POST rollback": {"reason": "drift"},
    "POST request": {"target": "parallel"},
}


@pytest.mark.parametrize(("role", "method", "url", "expected"), API_RULES)
def test_api_per_role(client, rt, cast, token_for, role, method, url, expected):
    world = World(rt, cycles=10)
    view = _request(world)
    headers = _bearer(token_for(ROLE_USER[role]))
    path = url.format(id=view["id"], experiment=world.experiment)
    if method == "GET":
        answer = client.get(path, headers=headers)
    else:
        answer = client.post(path, json=API_DATA[method], headers=headers)
    assert answer.status_code == expected, answer.json


def test_request_page_links_the_full_scorecard(client, auth, world):
    view = _request(world)
    auth.login("rita")
    page = client.get(f"/requests/{view['id']}").text
    link = re.search(r'href="([^"]+)" id="full-scorecard"', page).group(1).replace("&amp;", "&")
    scorecard = client.get(link)
    assert scorecard.status_code == 200 and "ridge" in scorecard.text
