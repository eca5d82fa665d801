"""Candidate and routine pages, and the candidates JSON API."""

from __future__ import annotations

import pytest
from sklearn.linear_model import Ridge

from numex import mlflow_bridge
from numex.services import experiments
from numex.services.runtime import Actor
from tests.experiment_fixtures import small_data, write_small_routine

SYSTEM = Actor.system("test")


@pytest.fixture
def tiny(rt, tmp_path):
    folder = write_small_routine(tmp_path / "experiments")
    experiments.load_routine(rt, folder, SYSTEM)
    return folder


@pytest.fixture
def ridge(rt, tiny):
    return experiments.register_experiment(rt, tiny / "ridge.yaml", SYSTEM)


def _own_model_uri(settings, columns) -> str:
    frame = small_data().assign(wind=1.0)
    model = Ridge().fit(frame[columns], frame["y"])
    logged = mlflow_bridge.log_training_run(
        settings,
        experiment_name="elsewhere",
        run_name="own",
        model=model,
        params={},
        metrics={},
        tags={},
        datasets=[],
        signature_input=frame[columns].head(3),
        signature_output=model.predict(frame[columns].head(3)),
    )
    return f"runs:/{logged.run_id}/model"


# --- pages ---------------------------------------------------------------------------


def test_candidate_page_shows_lineage_parameters_scores_and_history(client, auth, rt, ridge):
    experiments.bootstrap(rt, "tiny", "ridge", SYSTEM)
    auth.login("vic")
    page = client.get(f"/candidates/{ridge.candidate_id}")
    assert page.status_code == 200
    text = page.text
    assert "models:/numex.tiny/1" in text
    assert ridge.mlflow_run_id in text
    assert ridge.lineage_digest in text
    assert "not a git checkout" in text
    assert "<code>alpha</code>" in text
    assert 'id="offline-scores"' in text and "SON" in text and ">lead<" in text
    assert text.count("bootstrap") >= 2
    assert "open the run" not in text  # no MLflow UI configured


def test_candidate_page_links_the_mlflow_run_when_its_ui_is_configured(
    client, auth, rt, app, ridge
):
    rt_app = app.extensions["numex"]
    rt_app.settings.mlflow_ui_url = "http://mlflow.internal:5000"
    auth.login("vic")
    text = client.get(f"/candidates/{ridge.candidate_id}").text
    assert (
        f'href="http://mlflow.internal:5000/#/experiments/{ridge_experiment(rt, ridge)}/runs/'
        f'{ridge.mlflow_run_id}"' in text
    )


def ridge_experiment(rt, ridge) -> str:
    return experiments.get_candidate(rt, ridge.candidate_id)["lineage"]["mlflow_experiment_id"]


def test_candidate_list_filters_by_routine_and_stage(client, auth, rt, tiny, ridge):
    experiments.register_experiment(rt, tiny / "forest.yaml", SYSTEM)
    experiments.bootstrap(rt, "tiny", "ridge", SYSTEM)
    auth.login("vic")
    every = client.get("/candidates/?routine=tiny").text
    assert ">ridge<" in every and ">forest<" in every
    operational = client.get("/candidates/?routine=tiny&stage=operational").text
    assert ">ridge<" in operational and ">forest<" not in operational
    none = client.get("/candidates/?stage=retired").text
    assert "No candidates at stage retired" in none


def test_routine_page_has_stage_lanes_and_definition_versions(client, auth, rt, tiny, ridge):
    experiments.bootstrap(rt, "tiny", "ridge", SYSTEM)
    path = tiny / "routine.yaml"
    path.write_text(path.read_text().replace("A tiny synthetic", "A small synthetic"))
    experiments.load_routine(rt, tiny, SYSTEM)
    auth.login("vic")
    page = client.get("/routines/tiny")
    assert page.status_code == 200
    for stage in ("experiment", "parallel", "operational", "retired", "rejected"):
        assert f'id="lane-{stage}"' in page.text
    lane = page.text.split('id="lane-operational"')[1].split('id="lane-retired"')[0]
    assert ">ridge<" in lane
    assert "v2 (current)" in page.text and "v1" in page.text
    assert client.get("/routines/nope").status_code == 404


def test_dashboard_links_each_routine_to_its_page(client, auth, tiny):
    auth.login("vic")
    assert 'href="/routines/tiny"' in client.get("/").text


def test_candidate_pages_need_a_signed_in_user(client, ridge):
    response = client.get(f"/candidates/{ridge.candidate_id}")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


# --- API -----------------------------------------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_lists_and_shows_candidates(client, token_for, rt, tiny, ridge):
    headers = _bearer(token_for("vic"))
    listed = client.get("/api/v1/candidates?routine=tiny&stage=experiment", headers=headers)
    assert listed.status_code == 200
    assert [c["name"] for c in listed.get_json()["candidates"]] == ["ridge"]
    empty = client.get("/api/v1/candidates?stage=operational", headers=headers)
    assert empty.get_json()["candidates"] == []
    shown = client.get(f"/api/v1/candidates/{ridge.candidate_id}", headers=headers).get_json()
    assert shown["lineage"]["mlflow_run_id"] == ridge.mlflow_run_id
    assert shown["offline_scores"]["overall"]["rmse"] == ridge.offline_scores["overall"]["rmse"]


def test_api_answers_bad_filters_and_unknown_candidates_with_json(client, token_for, tiny):
    headers = _bearer(token_for("vic"))
    bad = client.get("/api/v1/candidates?stage=live", headers=headers)
    assert bad.status_code == 400
    assert "unknown stage 'live'" in bad.get_json()["error"]["message"]
    unknown = client.get("/api/v1/candidates?routine=nope", headers=headers)
    assert unknown.status_code == 404
    missing = client.get("/api/v1/candidates/77", headers=headers)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["message"] == "no candidate #77"


def test_api_registers_a_model_brought_by_a_scientist(client, token_for, settings, tiny):
    uri = _own_model_uri(settings, ["x1", "x2", "lead"])
    response = client.post(
        "/api/v1/candidates",
        json={"routine": "tiny", "model_uri": uri, "name": "team-ridge"},
        headers=_bearer(token_for("sam")),
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["model_uri"]) == ("team-ridge", "models:/numex.tiny/1")
    again = client.post(
        "/api/v1/candidates",
        json={"routine": "tiny", "model_uri": uri},
        headers=_bearer(token_for("sam")),
    )
    assert again.status_code == 409
    assert "team-ridge" in again.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "send a JSON object"),
        ({"model_uri": "models:/x/1"}, "field 'routine' is required"),
        ({"routine": "tiny"}, "field 'model_uri' is required"),
        ({"routine": "tiny", "model_uri": 3}, "field 'model_uri' is required"),
        ({"routine": "tiny", "model_uri": "models:/x/1", "owner": "me"}, "unknown field(s): owner"),
        ({"routine": "tiny", "model_uri": "file:///tmp/model"}, "not an MLflow model URI"),
        ({"routine": "tiny", "model_uri": "models:/x/1", "name": "Bad Name"}, "is not valid"),
        ({"routine": "tiny", "model_uri": "models:/nobody/9"}, "models:/nobody/9"),
    ],
)
def test_api_refuses_bad_registrations_with_400_naming_the_problem(
    client, token_for, tiny, body, message
):
    headers = _bearer(token_for("sam"))
    if body is None:
        response = client.post("/api/v1/candidates", data="not json", headers=headers)
    else:
        response = client.post("/api/v1/candidates", json=body, headers=headers)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]


def test_api_refuses_a_model_with_wrong_columns_naming_them(client, token_for, settings, tiny):
    uri = _own_model_uri(settings, ["x1", "wind"])
    response = client.post(
        "/api/v1/candidates",
        json={"routine": "tiny", "model_uri": uri},
        headers=_bearer(token_for("sam")),
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "wind" in error["message"]
    assert error["details"]["missing"] == ["wind"]


def test_api_registration_needs_the_scientist_role(client, token_for, tiny):
    response = client.post(
        "/api/v1/candidates",
        json={"routine": "tiny", "model_uri": "models:/x/1"},
        headers=_bearer(token_for("rita")),
    )
    assert response.status_code == 403
    assert "needs role scientist" in response.get_json()["error"]["message"]
    assert client.post("/api/v1/candidates", json={}).status_code == 401
