import time

import pytest

from numex.services import users
from numex.services.errors import Conflict, InvalidInput, PermissionDenied, Unauthenticated
from numex.services.runtime import Actor


def test_pages_need_a_signed_in_user(client):
    response = client.get("/")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_health_check_and_assets_are_public(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/vendor/plotly.min.js").status_code == 200


def test_sign_in_and_out(client, auth):
    response = auth.login("rita")
    assert response.status_code == 302
    page = client.get("/")
    assert page.status_code == 200
    assert "rita" in page.text
    auth.logout()
    assert client.get("/").status_code == 302


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(client, auth):
    response = auth.login("rita", "not-her-password")
    assert response.status_code == 400
    assert "Unknown user name or wrong password" in response.text
    assert client.get("/").status_code == 302


def test_login_form_without_csrf_token_is_refused(client, cast):
    response = client.post("/login", data={"username": "rita", "password": "rita-password"})
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_open_redirect_after_login_is_refused(client, auth):
    response = client.post(
        "/login?next=https://evil.example/",
        data={"username": "rita", "password": "rita-password", "csrf_token": auth.csrf_token()},
    )
    assert response.headers["Location"] == "/"


def test_api_needs_a_token(client):
    response = client.get("/api/v1/routines")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthenticated"


def test_api_accepts_a_bearer_token_and_refuses_a_revoked_one(client, rt, token_for):
    token = token_for("vic")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/routines", headers=headers).status_code == 200
    users.revoke_token(rt, token[:10], Actor.system("test"))
    response = client.get("/api/v1/routines", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.get_json()["error"]["message"]


def _revoke_behind_the_back(rt, token: str) -> None:
    """Revoke as another process would: in the database, not through this process."""
    from sqlalchemy import update

    from numex.db import ApiToken, utcnow

    with rt.transaction() as session:
        session.execute(
            update(ApiToken).where(ApiToken.prefix == token[:10]).values(revoked_at=utcnow())
        )


def test_a_revocation_by_another_process_is_seen_within_the_token_cache_time(rt, token_for):
    token = token_for("vic")
    rt.settings.token_cache_s = 0.5
    assert users.actor_for_token(rt, token).name == "vic"
    _revoke_behind_the_back(rt, token)
    # Trusted from this process's cache for a moment, then looked up again and refused.
    assert users.actor_for_token(rt, token).name == "vic"
    time.sleep(0.6)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        users.actor_for_token(rt, token)


def test_without_a_token_cache_every_call_looks_the_token_up(rt, token_for):
    token = token_for("vic")
    rt.settings.token_cache_s = 0
    assert users.actor_for_token(rt, token).name == "vic"
    _revoke_behind_the_back(rt, token)
    with pytest.raises(Unauthenticated):
        users.actor_for_token(rt, token)


def test_a_role_change_in_this_process_is_seen_at_once(rt, token_for):
    token = token_for("vic")
    assert users.actor_for_token(rt, token).roles == {"viewer"}
    users.set_roles(rt, "vic", ["viewer", "ops"], Actor.system("test"))
    assert users.actor_for_token(rt, token).roles == {"viewer", "ops"}


def test_tokens_are_stored_hashed(rt, token_for):
    from sqlalchemy import select

    from numex.db import ApiToken

    token = token_for("sam")
    with rt.read() as session:
        stored = session.scalars(select(ApiToken.token_hash)).all()
    assert token not in stored
    assert all(len(h) == 64 for h in stored)


def test_only_admins_add_users(rt, cast):
    sam = users.authenticate(rt, "sam", "sam-password")
    with pytest.raises(PermissionDenied, match="needs role admin"):
        users.add_user(rt, "eve", ["admin"], sam)
    adam = users.authenticate(rt, "adam", "adam-password")
    assert users.add_user(rt, "eve", ["viewer"], adam).password


def test_bad_user_input_is_named(rt, cast):
    admin = Actor.system("test")
    with pytest.raises(InvalidInput, match="unknown role.*'boss'.*valid roles: viewer"):
        users.add_user(rt, "eve", ["boss"], admin)
    with pytest.raises(InvalidInput, match="user name 'Eve!' is not valid"):
        users.add_user(rt, "Eve!", ["viewer"], admin)
    with pytest.raises(Conflict, match="already exists"):
        users.add_user(rt, "rita", ["viewer"], admin)


def test_missing_token_explains_how_to_get_one(rt):
    with pytest.raises(Unauthenticated, match="numex user token"):
        users.actor_for_token(rt, None)


def test_cli_adds_user_prints_password_once_and_makes_tokens(runner, rt):
    result = runner.invoke("user", "add", "nina", "--role", "reviewer", "--role", "ops")
    assert result.exit_code == 0, result.output
    password = result.output.split("password (shown once): ")[1].strip()
    assert users.authenticate(rt, "nina", password).roles == {"reviewer", "ops"}
    token = runner.invoke("user", "token", "nina").output.strip()
    assert users.actor_for_token(rt, token).name == "nina"
    listing = runner.invoke("user", "list", "--json").output
    assert '"nina"' in listing
    bad = runner.invoke("user", "add", "x1", "--role", "boss")
    assert bad.exit_code != 0
    assert "boss" in bad.output
