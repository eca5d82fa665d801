"""The registry's lag in the UI and API, the "Sync now" button, and background delivery
right after a decision in a serving app."""

from __future__ import annotations

import time

import pytest

from numex import mlflow_bridge
from numex.services import registry_sync
from tests import registry_fixtures
from tests.registry_fixtures import move, seed_routine


@pytest.fixture
def routine_with_versions(rt, settings):
    return registry_fixtures.routine_with_versions(rt, settings)


def test_dashboard_shows_the_registry_behind_and_ops_may_sync_it(client, auth, rt, settings):
    seed_routine(rt)
    move(rt, "r1", "a", "parallel")
    move(rt, "r1", "b", "parallel")

    auth.login("sam")
    page = client.get("/").text
    assert "MLflow registry behind by 2 changes" in page
    assert "Sync now" not in page  # scientists see the lag, not the button
    auth.logout()

    auth.login("olga")
    page = client.get("/").text
    assert "Sync now" in page
    response = client.post("/registry/sync", data={"csrf_token": auth.csrf_token("/"), "next": "/"})
    assert response.status_code == 302
    page = client.get("/").text
    assert "MLflow registry synced: 2 change(s) delivered." in page
    assert "MLflow registry in sync." in page


def test_registry_sync_form_needs_the_csrf_token_and_the_role(client, auth, rt):
    seed_routine(rt)
    move(rt, "r1", "a", "parallel")
    auth.login("olga")
    assert client.post("/registry/sync", data={}).status_code == 400
    auth.logout()
    auth.login("sam")
    assert client.post("/registry/sync", data={"csrf_token": auth.csrf_token("/")}).status_code == (
        403
    )
    assert registry_sync.registry_status(rt).pending == 1


def test_api_status_and_sync(client, rt, token_for):
    seed_routine(rt)
    move(rt, "r1", "a", "parallel")
    viewer = {"Authorization": f"Bearer {token_for('vic')}"}
    body = client.get("/api/v1/registry/status?routine=r1", headers=viewer).get_json()
    assert body["pending"] == 1 and body["behind"] is True

    assert client.post("/api/v1/registry/sync", headers=viewer).status_code == 403
    ops = {"Authorization": f"Bearer {token_for('olga')}"}
    response = client.post("/api/v1/registry/sync", headers=ops)
    assert response.status_code == 200 and response.get_json()["delivered"] == 1


def test_serving_app_delivers_right_after_a_decision(settings, routine_with_versions):
    from numex.web import create_app

    app = create_app({"TESTING": True, "NUMEX_REGISTRY_AUTOSYNC": True}, settings=settings)
    rt = app.extensions["numex"]
    try:
        courier = registry_sync.follow_commits(rt)
        move(rt, "r1", "b", "operational")
        deadline = time.monotonic() + 60
        while registry_sync.registry_status(rt).pending and time.monotonic() < deadline:
            courier.join(1)
        assert registry_sync.registry_status(rt).pending == 0
        v2 = routine_with_versions[1]
        assert mlflow_bridge.get_alias(settings, "numex.r1", "operational") == v2
    finally:
        registry_sync.follow_commits(rt).join(30)
        rt.close()


def test_routine_page_shows_its_own_registry_lag(client, auth, rt):
    from tests.promotion_fixtures import World

    world = World(rt, cycles=0)
    other = seed_routine(rt, name="other")
    move(rt, other, "a", "parallel")
    auth.login("vic")
    assert "MLflow registry in sync." in client.get(f"/routines/{world.name}").text

    move(rt, world.name, "forest", "parallel")
    page = client.get(f"/routines/{world.name}").text
    assert "MLflow registry behind by 1 change" in page
    assert "MLflow registry behind by 2 changes" in client.get("/").text
