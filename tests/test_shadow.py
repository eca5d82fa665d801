"""Online shadow serving: /predict answers with the operational candidate, the parallel
candidates forecast the same records off the request path, and a full queue or a failing
parallel candidate never touches the operational answer.

A small routine (``online``: two features, two lead times) is registered through the
experiments service into a real local MLflow store: persistence is operational, a ridge
and a linear regression run in parallel. Faults (a slow or failing parallel model) are
injected by replacing what ``mlflow_bridge.load_model`` returns for that candidate.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from numex import mlflow_bridge
from numex.config import load_settings
from numex.db import Candidate, Forecast, PredictionRequest, Routine
from numex.services import experiments, forecasts, shadow, stages
from numex.services.runtime import Actor, Runtime
from tests.conftest import POSTGRES_URL, _pg_admin_engine, copy_database
from tests.experiment_fixtures import ROUTINE_YAML as TINY_ROUTINE_YAML
from tests.experiment_fixtures import write_small_routine

ROUTINE = "online"
# The tiny routine of the experiment tests, under its own name.
ROUTINE_YAML = TINY_ROUTINE_YAML.replace("name: tiny", f"name: {ROUTINE}", 1).replace(
    "title: A tiny synthetic routine", "title: A small routine served online", 1
)
EXPERIMENTS = {
    "persistence": """\
        routine: online
        name: persistence
        description: The first feature, as is.
        author: sam
        estimator:
          class: numex.models.Persistence
          params: {column: x1}
        features: [x1]
        """,
    "ridge": """\
        routine: online
        name: ridge
        description: Ridge regression on every feature.
        author: sam
        estimator:
          class: sklearn.linear_model.Ridge
          params: {alpha: 1.0}
        """,
    "linear": """\
        routine: online
        name: linear
        description: Least squares on every feature.
        author: sam
        estimator:
          class: sklearn.linear_model.LinearRegression
        """,
}
SYSTEM = Actor.system("test")


def write_routine(root: Path) -> Path:
    return write_small_routine(
        root, name=ROUTINE, routine_yaml=ROUTINE_YAML, experiments=EXPERIMENTS, seed=3
    )


@dataclass(frozen=True)
class Served:
    """The routine as the tests serve it: candidate ids and model URIs by name, and where
    the database holding them (a file or a PostgreSQL template) and the MLflow store are."""

    ids: dict[str, int]
    uris: dict[str, str]
    database: str
    mlflow_uri: str
    home: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory, template_database) -> Served:
    """Registered once per module (training and logging to MLflow take seconds): every
    test gets a copy of this database, and all share the MLflow store (read-only)."""
    home = tmp_path_factory.mktemp("served")
    if POSTGRES_URL:
        name = f"numex_srv_{uuid.uuid4().hex[:8]}"
        with _pg_admin_engine().connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
        url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    else:
        name = str(home / "numex.db")
        shutil.copy(template_database, name)
        url = f"sqlite:///{name}"
    mlflow_uri = f"sqlite:///{home / 'mlflow.db'}"
    settings = load_settings(
        home=home,
        database_url=url,
        secret_key="test-secret",
        mlflow_tracking_uri=mlflow_uri,
        mlflow_registry_uri=mlflow_uri,
        mlflow_artifact_root=(home / "mlartifacts").as_uri(),
    )
    rt = Runtime(settings)
    try:
        folder = write_routine(home / "experiments")
        experiments.load_routine(rt, folder, SYSTEM)
        ids, uris = {}, {}
        for candidate in EXPERIMENTS:
            registration = experiments.register_experiment(rt, folder / f"{candidate}.yaml", SYSTEM)
            ids[candidate], uris[candidate] = registration.candidate_id, registration.model_uri
        experiments.bootstrap(rt, ROUTINE, "persistence", SYSTEM)
        with rt.transaction() as session:
            for candidate in ("ridge", "linear"):
                stages.move(
                    session,
                    session.get(Candidate, ids[candidate]),
                    "parallel",
                    kind="test",
                    actor=SYSTEM,
                )
    finally:
        rt.close()
    yield Served(ids, uris, name, mlflow_uri, home)
    if POSTGRES_URL:
        with _pg_admin_engine().connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(served, tmp_path):
    """This test's copy of the served routine's database."""
    with copy_database(served.database, tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path, database_url, served, monkeypatch):
    """Settings for one test: its own home and database, the module's MLflow store."""
    home = tmp_path / "var"
    home.mkdir()
    monkeypatch.setenv("NUMEX_HOME", str(home))
    monkeypatch.setenv("NUMEX_DATABASE_URL", database_url)
    monkeypatch.setenv("NUMEX_SECRET_KEY", "test-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.mlflow_uri)
    monkeypatch.setenv("NUMEX_MLFLOW_ARTIFACT_ROOT", (served.home / "mlartifacts").as_uri())
    return load_settings()


def records(n: int = 2, start: str = "2022-03-01") -> list[dict]:
    days = pd.date_range(start, periods=n, freq="D")
    return [
        {"valid_date": day.strftime("%Y-%m-%d"), "lead": 1 + i % 2, "x1": 10.0 + i, "x2": 0.5 - i}
        for i, day in enumerate(days)
    ]


class FakeModel:
    """A stand-in for a parallel candidate's model: slow (blocks until released), failing,
    or returning NaN, as a test needs."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def predict(self, frame: pd.DataFrame):
        self.calls += 1
        self.entered.set()
        if self.mode == "slow":
            assert self.release.wait(30), "the test never released the slow model"
        if self.mode == "raise":
            raise RuntimeError("the parallel model broke")
        if self.mode == "nan":
            return np.full(len(frame), np.nan)
        if self.mode == "short":
            return np.zeros(max(0, len(frame) - 1))
        return frame["x1"].to_numpy(dtype=float) + 1.0


@pytest.fixture
def inject(monkeypatch):
    """inject(uri, model): load_model returns ``model`` for ``uri`` (a fault injected)."""
    real = mlflow_bridge.load_model
    fakes: dict[str, object] = {}

    def load_model(settings, uri):
        return fakes[uri] if uri in fakes else real(settings, uri)

    monkeypatch.setattr(mlflow_bridge, "load_model", load_model)

    def add(uri: str, model: object) -> object:
        fakes[uri] = model
        return model

    return add


@pytest.fixture
def serving_app(settings):
    """The web app; its shadow worker is stopped at teardown."""
    from numex.web import create_app, stop_shadow_worker

    def make(**overrides):
        for key, value in overrides.items():
            setattr(settings, key, value)
        app = create_app({"TESTING": True}, settings=settings)
        apps.append(app)
        return app

    apps: list = []
    yield make
    for app in apps:
        stop_shadow_worker(app, timeout=5)
        app.extensions["numex"].close()


@pytest.fixture
def api(serving_app, served, token_for):
    """A client of the app with the ops user olga's token; api.post/get(path, ...)."""
    return Api(serving_app(), token_for("olga"))


class Api:
    def __init__(self, app, token: str) -> None:
        self.app = app
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}

    @property
    def worker(self) -> shadow.ShadowWorker:
        return self.app.extensions["numex.shadow"]

    def predict(self, payload, routine: str = ROUTINE, headers: dict | None = None, **kw):
        return self.client.post(
            f"/api/v1/routines/{routine}/predict",
            json=payload if "data" not in kw else None,
            headers=headers if headers is not None else self.headers,
            **kw,
        )

    def get(self, path: str, headers: dict | None = None):
        return self.client.get(path, headers=headers if headers is not None else self.headers)

    def request(self, request_id: str) -> dict:
        response = self.get(f"/api/v1/routines/{ROUTINE}/predictions/{request_id}")
        assert response.status_code == 200, response.json
        return response.json

    def wait_for(self, request_id: str, n_candidates: int, timeout: float = 20.0) -> dict:
        """Poll (bounded) until ``n_candidates`` candidates have forecasts under the request
        and its shadow work is finished."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.request(request_id)
            finished = found["shadow_status"] in ("done", "failed")
            if finished and len(found["candidates"]) >= n_candidates:
                return found
            assert time.monotonic() < deadline, f"shadow forecasts never arrived: {found}"
            time.sleep(0.05)

    def stats(self) -> dict:
        response = self.get("/api/v1/shadow/stats")
        assert response.status_code == 200, response.json
        return response.json


# --- the operational answer --------------------------------------------------------------


def test_predict_answers_with_the_operational_forecasts_and_a_request_id(api, served):
    sent = records(3)
    response = api.predict({"records": sent})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["request_id"] and len(body["request_id"]) == 32
    assert body["candidate"]["name"] == "persistence"
    assert body["candidate"]["stage"] == "operational"
    assert body["candidate"]["id"] == served.ids["persistence"]
    # persistence forecasts x1, and the cases are keyed as cycle cases are
    assert body["forecasts"] == [
        {"case": f"{r['valid_date']}T00:00:00|{r['lead']}", "value": r["x1"]} for r in sent
    ]
    assert body["shadow"] == {"status": "queued", "candidates": ["ridge", "linear"]}


def test_operational_forecasts_are_stored_under_the_request(api, rt, served):
    body = api.predict({"records": records(2)}).json
    with rt.read() as session:
        request = session.query(PredictionRequest).filter_by(request_key=body["request_id"]).one()
        assert request.n_records == 2
        assert request.operational_candidate_id == served.ids["persistence"]
        stored = (
            session.query(Forecast)
            .filter_by(prediction_request_id=request.id, candidate_id=served.ids["persistence"])
            .all()
        )
        assert sorted(f.value for f in stored) == [10.0, 11.0]
        assert all(f.cycle_id is None for f in stored)


def test_parallel_forecasts_appear_under_the_same_request_id(api, rt, served):
    sent = records(4)
    body = api.predict({"records": sent}).json
    found = api.wait_for(body["request_id"], 3)
    assert found["shadow_status"] == "done"
    by_name = {c["name"]: c for c in found["candidates"]}
    assert set(by_name) == {"persistence", "ridge", "linear"}
    keys = [f["case"] for f in body["forecasts"]]
    frame = pd.DataFrame(sent)
    for name in ("ridge", "linear"):
        assert [f["case"] for f in by_name[name]["forecasts"]] == keys
        model = mlflow_bridge.load_model(rt.settings, served.uris[name])
        expected = model.predict(frame[["x1", "x2", "lead"]])
        got = [f["value"] for f in by_name[name]["forecasts"]]
        assert np.allclose(got, expected)
    stats = api.stats()
    assert stats["enqueued"] == 1 and stats["done"] == 1
    assert stats["dropped"] == 0 and stats["failed"] == 0
    assert stats["forecasts"] == 8  # two parallel candidates x four records


def test_observations_posted_later_pair_online_forecasts_like_cycle_forecasts(api, rt, served):
    sent = records(3, start="2021-05-01")
    body = api.predict({"records": sent}).json
    api.wait_for(body["request_id"], 3)
    keys = np.array([f["case"] for f in body["forecasts"]], dtype=object)
    truth = np.array([9.0, 12.0, 11.5])
    with rt.transaction() as session:
        routine = session.query(Routine).filter_by(name=ROUTINE).one()
        report = forecasts.store_observations(session, routine, keys, truth, source="test")
    assert report.stored == 3 and report.unknown == 0
    with rt.read() as session:
        routine = session.query(Routine).filter_by(name=ROUTINE).one()
        paired = forecasts.paired_frame(
            session, routine, served.ids["ridge"], served.ids["persistence"]
        )
    assert sorted(paired["case"]) == sorted(keys)
    by_case = paired.set_index("case")
    for record, key, observed in zip(sent, keys, truth, strict=True):
        row = by_case.loc[key]
        assert row["reference"] == record["x1"]
        assert row["observation"] == observed
        assert row["lead"] == record["lead"]
        assert row["cycle"] == pd.Timestamp(record["valid_date"])  # the cycle holding it
        assert row["season"] == "MAM"


def test_the_same_case_predicted_twice_pairs_once_per_request(api, rt, served):
    first = api.predict({"records": records(1)}).json
    second = api.predict({"records": records(1)}).json
    assert first["request_id"] != second["request_id"]
    assert first["forecasts"] == second["forecasts"]
    api.wait_for(first["request_id"], 3)
    api.wait_for(second["request_id"], 3)
    with rt.read() as session:
        routine = session.query(Routine).filter_by(name=ROUTINE).one()
        paired = forecasts.paired_frame(
            session, routine, served.ids["linear"], served.ids["persistence"]
        )
    assert len(paired) == 2 and paired["case"].nunique() == 1


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("x1", None, "is null"),
        ("x2", "abc", "expected a number"),
        ("x1", math.nan, "finite"),
        ("x2", math.inf, "finite"),
        ("x1", -math.inf, "finite"),
        ("lead", 1.5, "whole number"),
        ("x1", True, "expected a number"),
        ("valid_date", "yesterday", "date-time"),
        ("valid_date", 20220301, "date-time"),
    ],
)
def test_a_record_with_a_bad_value_gets_a_400_naming_it(api, rt, field, value, says):
    sent = records(3)
    sent[1][field] = value
    response = api.predict({"records": sent})
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["code"] == "invalid_input"
    assert f"record 1: {field}" in error["message"]
    assert error["details"]["records"] == [
        {"index": 1, "problems": {field: error["details"]["records"][0]["problems"][field]}}
    ]
    assert says in error["details"]["records"][0]["problems"][field]
    with rt.read() as session:
        assert session.query(PredictionRequest).count() == 0


def test_records_missing_features_get_a_400_naming_each_record_and_field(api):
    sent = records(4)
    del sent[0]["x2"]
    del sent[2]["lead"]
    del sent[2]["x1"]
    sent[3] = "not a record"
    response = api.predict({"records": sent})
    assert response.status_code == 400
    error = response.json["error"]
    assert error["details"]["n_invalid"] == 3
    assert error["details"]["n_records"] == 4
    problems = {entry["index"]: entry["problems"] for entry in error["details"]["records"]}
    assert problems[0] == {"x2": "is missing"}
    assert problems[2] == {"lead": "is missing", "x1": "is missing"}
    assert 3 in problems and 1 not in problems
    assert "record 0: x2 is missing" in error["message"]
    assert "record 2: lead is missing, x1 is missing" in error["message"]
    assert error["details"]["required"] == ["valid_date", "lead", "x1", "x2"]


def test_nan_and_infinity_in_raw_json_are_named(api):
    body = (
        '{"records": [{"valid_date": "2022-01-01", "lead": 1, "x1": NaN, "x2": 0},'
        ' {"valid_date": "2022-01-02", "lead": 1, "x1": 1, "x2": Infinity}]}'
    )
    response = api.predict(None, data=body, content_type="application/json")
    assert response.status_code == 400
    problems = {e["index"]: e["problems"] for e in response.json["error"]["details"]["records"]}
    assert set(problems) == {0, 1}
    assert "x1" in problems[0] and "x2" in problems[1]


@pytest.mark.parametrize(
    "payload",
    [None, [], {"rows": []}, {"records": []}, {"records": "abc"}, {"records": {"x1": 1}}],
)
def test_a_body_without_a_list_of_records_is_a_400(api, payload):
    if payload is None:
        response = api.predict(None, data="not json", content_type="text/plain")
    else:
        response = api.predict(payload)
    assert response.status_code == 400
    assert "records" in response.json["error"]["message"]


def test_records_repeating_a_case_are_a_400_naming_them(api):
    sent = records(3)
    sent[2] = dict(sent[0])
    response = api.predict({"records": sent})
    assert response.status_code == 400
    assert "record 2 is the same case" in response.json["error"]["message"]
    assert response.json["error"]["details"]["repeated"][0]["same_as"] == 0


def test_unknown_routine_is_404(api):
    response = api.predict({"records": records(1)}, routine="nowhere")
    assert response.status_code == 404
    assert "online" in response.json["error"]["message"]  # names the known routines


def test_routine_without_an_operational_candidate_is_409(api, rt, served):
    with rt.transaction() as session:
        operational = session.get(Candidate, served.ids["persistence"])
        stages.move(session, operational, "retired", kind="test", actor=SYSTEM)
    response = api.predict({"records": records(1)})
    assert response.status_code == 409
    assert "no operational candidate" in response.json["error"]["message"]


# --- who may predict ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "status"),
    [("sam", 200), ("olga", 200), ("adam", 200), ("vic", 403), ("rita", 403)],
)
def test_scientists_ops_and_admins_may_predict_viewers_and_reviewers_may_not(
    api, token_for, user, status
):
    headers = {"Authorization": f"Bearer {token_for(user)}"}
    response = api.predict({"records": records(1)}, headers=headers)
    assert response.status_code == status, response.json
    if status == 403:
        assert "request forecasts" in response.json["error"]["message"]


def test_predict_needs_a_token(api):
    response = api.predict({"records": records(1)}, headers={})
    assert response.status_code == 401


# --- isolation from the shadow work ----------------------------------------------------------


def test_a_full_shadow_queue_drops_and_counts_while_the_operational_answer_comes_back(
    serving_app, served, token_for, inject, rt
):
    slow = inject(served.uris["ridge"], FakeModel("slow"))
    api = Api(serving_app(shadow_queue_size=1, shadow_workers=1), token_for("olga"))
    try:
        first = api.predict({"records": records(1, "2022-01-01")})
        assert first.json["shadow"]["status"] == "queued"
        assert slow.entered.wait(10), "the worker never took the first job"
        # The worker is stuck in the slow model; the queue holds one more job, then is full.
        second = api.predict({"records": records(1, "2022-01-02")})
        assert second.json["shadow"]["status"] == "queued"
        timings, answers = [], []
        for day in ("2022-01-03", "2022-01-04", "2022-01-05"):
            started = time.perf_counter()
            response = api.predict({"records": records(1, day)})
            timings.append(time.perf_counter() - started)
            answers.append(response)
        for response in answers:
            assert response.status_code == 200
            assert response.json["shadow"]["status"] == "dropped"
            assert response.json["forecasts"][0]["value"] == 10.0  # the operational answer
        assert max(timings) < 2.0  # never waits for the blocked worker (it waits 30 s)
        stats = api.stats()
        assert stats["dropped"] == 3 and stats["enqueued"] == 2
        assert stats["queue_depth"] == 1 and stats["queue_capacity"] == 1
        with rt.read() as session:
            dropped = session.query(PredictionRequest).filter_by(shadow_status="dropped").count()
            assert dropped == 3
    finally:
        slow.release.set()
    done = api.wait_for(second.json["request_id"], 3)
    assert done["shadow_status"] == "done"
    stats = api.stats()
    assert stats["done"] == 2 and stats["dropped"] == 3
    # A dropped request keeps its operational forecast, and nothing else.
    dropped_request = api.request(answers[0].json["request_id"])
    assert [c["name"] for c in dropped_request["candidates"]] == ["persistence"]


@pytest.mark.parametrize("mode", ["raise", "nan", "short"])
def test_a_failing_parallel_candidate_never_affects_the_operational_answer(
    api, served, inject, mode
):
    inject(served.uris["linear"], FakeModel(mode))
    response = api.predict({"records": records(2)})
    assert response.status_code == 200
    assert [f["value"] for f in response.json["forecasts"]] == [10.0, 11.0]
    found = api.wait_for(response.json["request_id"], 2)
    assert found["shadow_status"] == "failed"
    assert {c["name"] for c in found["candidates"]} == {"persistence", "ridge"}
    stats = api.stats()
    assert stats["failed"] == 1 and stats["done"] == 1
    (failure,) = stats["failures"]
    assert failure["routine"] == "online" and failure["candidate"] == "linear"
    assert failure["count"] == 1
    expected = {"raise": "the parallel model broke", "nan": "NaN", "short": "1 values for 2"}
    assert expected[mode] in failure["last_error"]
    # The worker carries on with the next request.
    again = api.predict({"records": records(1, "2023-01-01")}).json
    assert len(api.wait_for(again["request_id"], 2)["candidates"]) == 2
    assert api.stats()["failed"] == 2


def test_a_failing_operational_candidate_is_a_500_naming_it(api, served, inject):
    inject(served.uris["persistence"], FakeModel("raise"))
    shadow.snapshot(api.app.extensions["numex"], ROUTINE, refresh=True)
    response = api.predict({"records": records(1)})
    assert response.status_code == 500
    assert "operational candidate persistence" in response.json["error"]["message"]


def test_a_stage_change_is_seen_by_the_next_request(api, rt, served):
    first = api.predict({"records": records(1)}).json
    assert first["shadow"]["candidates"] == ["ridge", "linear"]
    with rt.transaction() as session:
        stages.move(
            session, session.get(Candidate, served.ids["linear"]), "rejected", kind="test",
            actor=SYSTEM,
        )  # fmt: skip
    second = api.predict({"records": records(1, "2023-01-01")}).json
    assert second["shadow"]["candidates"] == ["ridge"]
    with rt.transaction() as session:
        stages.move(
            session, session.get(Candidate, served.ids["ridge"]), "operational", kind="test",
            actor=SYSTEM,
        )  # fmt: skip
    third = api.predict({"records": records(1, "2023-02-01")}).json
    assert third["candidate"]["name"] == "ridge"
    assert third["shadow"] == {"status": "none", "candidates": []}


def test_the_service_can_be_called_without_the_web_app(rt, served):
    worker = shadow.ShadowWorker(rt, queue_size=10, threads=2)
    try:
        assert worker.snapshot_stats()["last_stored_at"] is None
        before = time.time()
        result = shadow.predict(rt, ROUTINE, records(2), SYSTEM, worker=worker)
        assert result.candidate["name"] == "persistence"
        assert worker.drain(20)
        stats = worker.snapshot_stats()
        assert stats["done"] == 1
        assert before <= stats["last_stored_at"] <= time.time()
    finally:
        worker.stop()
    assert not worker.running
    with rt.read() as session:
        assert session.query(Forecast).count() == 6


def test_stopping_counts_queued_work_as_dropped(rt, served, inject):
    slow = inject(served.uris["ridge"], FakeModel("slow"))
    worker = shadow.ShadowWorker(rt, queue_size=5, threads=1)
    shadow.predict(rt, ROUTINE, records(1, "2022-01-01"), SYSTEM, worker=worker)
    assert slow.entered.wait(10)
    shadow.predict(rt, ROUTINE, records(1, "2022-01-02"), SYSTEM, worker=worker)
    threading.Timer(1.0, slow.release.set).start()
    worker.stop(timeout=0.2)
    stats = worker.snapshot_stats()
    assert stats["dropped"] + stats["done"] == 2
    assert not worker.running


# --- counters ---------------------------------------------------------------------------------


def test_metrics_are_prometheus_text_for_ops_only(api, token_for):
    api.predict({"records": records(2)})
    assert api.worker.drain(20)
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert 'numex_shadow_enqueued_total{routine="online"} 1.0' in text
    assert 'numex_shadow_done_total{routine="online"} 1.0' in text
    assert 'numex_shadow_forecasts_total{candidate="ridge",routine="online"} 2.0' in text
    assert "numex_shadow_queue_depth 0.0" in text
    assert api.get("/metrics", headers={}).status_code == 401
    viewer = {"Authorization": f"Bearer {token_for('vic')}"}
    assert api.get("/metrics", headers=viewer).status_code == 403
    assert api.get("/api/v1/shadow/stats", headers=viewer).status_code == 403


def test_cases_built_record_by_record_equal_the_vectorised_ones(rt, served):
    """The request path builds a few records' cases in plain Python; they must be exactly
    what forecasts.case_rows builds (keys, valid times, segment attributes)."""
    snap = shadow.snapshot(rt, ROUTINE)
    sent = records(40, start="2021-11-25")
    sent[0]["valid_date"] = "2021-03-01T23:30:00+02:00"  # a zone: keys and times in UTC
    sent[1]["valid_date"] = "2021-06-01T06:00:00"
    sent[2]["lead"] = 2.0  # a whole number sent as a float
    sent[3]["x1"] = 7  # an integer for a float column
    small = shadow._small_case_rows(sent, snap)
    frame = shadow.records_frame(sent, snap.columns, snap.kinds)
    vectorised = forecasts.case_rows(frame, snap.spec)
    assert small.keys.tolist() == vectorised.keys.tolist()
    assert (small.valid_times == vectorised.valid_times).all()
    assert small.attributes.tolist() == vectorised.attributes.tolist()
    assert small.keys[0] == "2021-03-01T21:30:00|1"
    assert json.loads(small.attributes[0]) == {"segments": {"lead": 1, "season": "MAM"}}


def test_a_large_request_with_mixed_time_formats_is_served(api):
    sent = records(40)
    sent[0]["valid_date"] = "2022-03-01T00:00:00+00:00"
    sent[1]["valid_date"] = "2022-03-02T00:00:00"
    response = api.predict({"records": sent})
    assert response.status_code == 200, response.json
    assert response.json["forecasts"][1]["case"] == "2022-03-02T00:00:00|2"


def test_a_lone_request_is_forecast_at_once_not_after_the_longest_batch_wait(rt, served):
    """Batches gather only while jobs keep coming: a request after a pause is forecast by
    the parallel candidates straight away, not after ``linger_s``."""
    worker = shadow.ShadowWorker(rt, queue_size=10, threads=1, linger_s=30.0)
    try:
        started = time.monotonic()
        shadow.predict(rt, ROUTINE, records(2), SYSTEM, worker=worker)
        assert worker.drain(20)
        assert time.monotonic() - started < 10  # the linger alone would take 30 s
        assert worker.snapshot_stats()["done"] == 1
    finally:
        worker.stop()


def test_a_burst_of_requests_is_forecast_in_few_batches(rt, served):
    worker = shadow.ShadowWorker(rt, queue_size=100, threads=1, linger_s=2.0)
    batches: list[int] = []
    process = worker._process
    worker._process = lambda batch: (batches.append(len(batch)), process(batch))[1]
    try:
        for day in pd.date_range("2022-01-01", periods=20).strftime("%Y-%m-%d"):
            shadow.predict(rt, ROUTINE, records(1, day), SYSTEM, worker=worker)
        assert worker.drain(30)
    finally:
        worker.stop()
    assert sum(batches) == 20
    assert len(batches) <= 4, batches  # one model call per candidate serves many requests
    with rt.read() as session:
        assert session.query(Forecast).count() == 20 * 3


def test_the_scikit_learn_model_called_directly_forecasts_what_pyfunc_does(rt, served):
    """The serving path calls a scikit-learn model's own predict (numex has checked the
    records against the signature); the values are pyfunc's."""
    snap = shadow.snapshot(rt, ROUTINE)
    sent = records(6)
    for candidate in (snap.operational, *snap.parallel):
        model = mlflow_bridge.load_model(rt.settings, candidate.model_uri)
        frame = shadow.records_frame(sent, candidate.features, snap.kinds)
        direct = shadow._predictor(model)
        assert direct != model.predict  # the scikit-learn model's own method
        np.testing.assert_allclose(
            np.asarray(direct(frame), dtype=float), np.asarray(model.predict(frame), dtype=float)
        )


def test_an_all_number_frame_equals_the_column_by_column_one(rt, served):
    snap = shadow.snapshot(rt, ROUTINE)
    sent = records(5)
    sent[2]["x1"] = 7  # an integer in a float column
    columns = [c for c in snap.spec.features if snap.kinds.get(c) == "number"]
    assert len(columns) >= 2
    fast = shadow.records_frame(sent, columns, snap.kinds)
    mixed = shadow.records_frame(sent, [*columns, "lead"], {**snap.kinds, "lead": "integer"})
    pd.testing.assert_frame_equal(fast, mixed[columns])
    assert all(dtype == np.float64 for dtype in fast.dtypes)


def test_requests_for_the_same_new_cases_at_once_all_succeed_and_share_the_cases(rt, served):
    """Concurrent requests carrying the same brand-new cases: each is answered and stored,
    and each case is stored once (on PostgreSQL a request that loses the race for a new
    case is tried again)."""
    from numex.db import Case

    worker = shadow.ShadowWorker(rt, queue_size=50, threads=1)
    sent = records(3, start="2024-05-01")
    barrier = threading.Barrier(4)
    results, errors = [], []

    def ask() -> None:
        try:
            barrier.wait(10)
            results.append(shadow.predict(rt, ROUTINE, sent, SYSTEM, worker=worker))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert worker.drain(30)
    finally:
        worker.stop()
    assert errors == []
    assert len({result.request_id for result in results}) == 4
    with rt.read() as session:
        keys = [c.key for c in session.query(Case).filter(Case.key.like("2024-05-0%"))]
        assert sorted(keys) == sorted(f["case"] for f in results[0].forecasts)
        requests = session.query(PredictionRequest).count()
        assert session.query(Forecast).count() == requests * 3 * 3  # 3 cases × 3 candidates


def test_pooled_connections_go_back_transactional_after_requests_stored_in_autocommit(
    rt, served, monkeypatch
):
    """On PostgreSQL a request is stored by one statement in autocommit mode; the
    connection goes back to the pool transactional, also when the statement fails, so
    the next transaction on it still rolls back as a whole."""
    from sqlalchemy import text

    if rt.dialect != "postgresql":
        pytest.skip("the autocommit store is PostgreSQL's (this runs in its CI pass)")
    worker = shadow.ShadowWorker(rt, queue_size=10, threads=1)
    try:
        shadow.predict(rt, ROUTINE, records(2, "2025-03-01"), SYSTEM, worker=worker)
        broken = shadow._PG_STORE_REQUEST.replace("INSERT INTO forecasts", "INSERT INTO nowhere")
        monkeypatch.setattr(shadow, "_PG_STORE_REQUEST", broken)
        with pytest.raises(Exception, match="nowhere"):
            shadow.predict(rt, ROUTINE, records(1, "2025-04-01"), SYSTEM, worker=worker)
        assert worker.drain(20)
    finally:
        worker.stop()
    pooled = [rt.engine.raw_connection() for _ in range(rt.engine.pool.checkedin())]
    try:
        assert pooled and not any(c.driver_connection.autocommit for c in pooled)
    finally:
        for connection in pooled:
            connection.close()
    with pytest.raises(RuntimeError), rt.transaction() as session:
        session.execute(text("UPDATE prediction_requests SET n_records = 99"))
        raise RuntimeError("roll back")
    with rt.read() as session:
        stored = session.query(PredictionRequest).all()
        assert [r.n_records for r in stored] == [2]  # the failed request left nothing


def test_a_dropped_request_is_answered_even_when_its_status_cannot_be_written(
    rt, served, inject, monkeypatch
):
    """On PostgreSQL a full queue is written into the stored request by a second
    statement; if that fails, the operational answer still goes out (the request keeps
    its first status)."""
    if rt.dialect != "postgresql":
        pytest.skip("the second statement is PostgreSQL's (this runs in its CI pass)")
    slow = inject(served.uris["ridge"], FakeModel("slow"))
    worker = shadow.ShadowWorker(rt, queue_size=1, threads=1)
    monkeypatch.setattr(shadow, "_PG_SET_STATUS", "UPDATE nowhere SET x = %s WHERE id = ANY(%s)")
    try:
        shadow.predict(rt, ROUTINE, records(1, "2025-06-01"), SYSTEM, worker=worker)
        assert slow.entered.wait(10), "the worker never took the first job"
        queued = shadow.predict(rt, ROUTINE, records(1, "2025-06-02"), SYSTEM, worker=worker)
        dropped = shadow.predict(rt, ROUTINE, records(1, "2025-06-03"), SYSTEM, worker=worker)
    finally:
        slow.release.set()
        worker.stop(5)
    assert queued.shadow["status"] == "queued"
    assert dropped.shadow["status"] == "dropped"
    assert dropped.forecasts[0]["value"] == records(1, "2025-06-03")[0]["x1"]
    with rt.read() as session:
        stored = session.query(PredictionRequest).filter_by(request_key=dropped.request_id).one()
        assert stored.shadow_status == "queued"  # the update failed; nothing else did
