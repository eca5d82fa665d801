import re

from numex.db import Routine, RoutineVersion


def test_dashboard_without_routines_explains_how_to_load_one(client, auth):
    auth.login("vic")
    page = client.get("/")
    assert page.status_code == 200
    assert "numex routine load" in page.text


def test_dashboard_lists_routines(client, rt, auth, token_for):
    auth.login("vic")
    with rt.transaction() as session:
        routine = Routine(name="seattle-tmax", title="Seattle", registered_model_name="m")
        session.add(routine)
        session.flush()
        session.add(RoutineVersion(routine_id=routine.id, version=1, definition={}, digest="d"))
    page = client.get("/")
    assert "seattle-tmax" in page.text
    api = client.get(
        "/api/v1/routines", headers={"Authorization": f"Bearer {token_for('vic')}"}
    ).get_json()
    assert api["routines"][0]["name"] == "seattle-tmax"
    assert api["routines"][0]["operational"] is None


def test_healthz_checks_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"
    from numex import schema

    assert response.get_json()["schema"] == schema.head_revision("sqlite://")


def test_healthz_reports_an_unmigrated_database(tmp_path, settings):
    from numex.web import create_app

    settings.database_url = f"sqlite:///{tmp_path / 'blank.db'}"
    app = create_app({"TESTING": True}, settings=settings)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert "numex db upgrade" in response.get_json()["detail"]


def test_api_errors_are_json(client, auth):
    auth.login("vic")
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    body = response.get_json()
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"]
    response = client.delete("/api/v1/routines")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_unknown_page_is_a_friendly_404(client, auth):
    auth.login("vic")
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "Not found" in response.text
    assert "Traceback" not in response.text


def test_unexpected_error_is_a_friendly_500_and_json_under_api(app, cast):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    @app.get("/api/v1/boom")
    def api_boom():
        raise RuntimeError("secret internals")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    from tests.conftest import AuthActions

    AuthActions(client).login("vic")
    page = client.get("/boom")
    assert page.status_code == 500
    assert "secret internals" not in page.text
    api = client.get("/api/v1/boom")
    assert api.status_code == 500
    assert api.get_json()["error"]["code"] == "internal_error"


def test_pages_load_nothing_from_the_internet(client, auth):
    auth.login("vic")
    page = client.get("/").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources, "the page should reference its own assets"
    external = [s for s in sources if re.match(r"^(https?:)?//", s)]
    assert external == []
    for asset in [s for s in sources if s.endswith((".css", ".js"))]:
        assert client.get(asset).status_code == 200, asset


def test_chart_library_is_served_by_the_app(client):
    response = client.get("/vendor/plotly.min.js")
    assert response.status_code == 200
    assert len(response.data) > 1_000_000
