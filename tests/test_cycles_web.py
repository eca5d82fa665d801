"""Late observations (CLI and API), the paginated cycle and forecast API, and the cycles
section of the routine page."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sqlalchemy import func, select

from numex.db import AuditEvent, Cycle, Observation
from numex.services import cycles
from numex.services.runtime import Actor
from tests.cycle_fixtures import ROUTINE

OPS = Actor.system("ops-test")


def _backfill(rt):
    return cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-19", OPS)


def _cycle(rt, day: str) -> Cycle:
    with rt.read() as session:
        return session.scalar(select(Cycle).where(Cycle.window_start == pd.Timestamp(day)))


def _observations(rt) -> int:
    with rt.read() as session:
        return session.scalar(select(func.count()).select_from(Observation))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_late_observations_verify_the_cycles_they_touch_and_report_unknown_cases(
    rt, ticks, runner, tmp_path
):
    _backfill(rt)
    assert (_cycle(rt, "2021-01-17").status, _cycle(rt, "2021-01-17").n_verified) == ("forecast", 0)
    path = tmp_path / "late.csv"
    pd.DataFrame(
        {
            "valid_time": ["2021-01-17", "2021-01-17", "2021-01-18", "2030-01-01"],
            "lead": [1, 2, 1, 1],
            "y": [17.6, 17.7, 18.6, 1.0],
        }
    ).to_csv(path, index=False)
    result = runner.invoke("observations", "load", ROUTINE, str(path))
    assert result.exit_code == 0, result.output
    assert "3 new" in result.stdout and "1 now fully verified" in result.stdout
    assert "2030-01-01T00:00:00|1" in result.stderr and "were not stored" in result.stderr
    day17, day18 = _cycle(rt, "2021-01-17"), _cycle(rt, "2021-01-18")
    assert (day17.status, day17.n_verified, day17.verified_at is not None) == ("verified", 2, True)
    assert (day18.status, day18.n_verified) == ("forecast", 1)
    assert _cycle(rt, "2021-01-19").n_verified == 0

    # a corrected value replaces the old one, and the audit says so
    pd.DataFrame(
        {"valid_time": ["2021-01-17", "2021-01-17"], "lead": [1, 2], "y": [17.9, 17.7]}
    ).to_csv(path, index=False)
    corrected = json.loads(
        runner.invoke("observations", "load", ROUTINE, str(path), "--json").stdout
    )
    assert (corrected["corrected"], corrected["unchanged"], corrected["stored"]) == (1, 1, 0)
    assert corrected["corrections"] == [{"case": "2021-01-17T00:00:00|1", "old": 17.6, "new": 17.9}]
    with rt.read() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "observations.loaded")
        ).all()
    assert [e.payload["unknown"] for e in events] == [1, 0]
    assert events[-1].payload["corrections"][0]["new"] == 17.9


def test_bad_observation_records_are_refused_naming_them(client, ticks, token_for, rt):
    _backfill(rt)
    before = _observations(rt)
    response = client.post(
        f"/api/v1/routines/{ROUTINE}/observations",
        json={
            "records": [
                {"valid_time": "2021-01-18", "lead": 1, "y": 18.6},
                {"valid_time": "2021-01-18", "lead": 2},
                {"valid_time": "2021-01-19", "lead": 1, "y": "warm"},
                {"valid_time": "yesterday", "lead": 2, "y": 1.0},
            ]
        },
        headers=_bearer(token_for("olga")),
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input"
    assert "3 of 4 observation record(s) are invalid, nothing was stored" in error["message"]
    problems = {r["index"]: r["problems"] for r in error["details"]["records"]}
    assert problems == {
        1: {"y": "is missing"},
        2: {"y": "'warm' is not a finite number"},
        3: {"valid_time": "'yesterday' is not a time"},
    }
    assert _observations(rt) == before


def test_observations_api_stores_for_ops_and_scientists_only(client, ticks, token_for, rt):
    _backfill(rt)
    record = {"valid_time": "2021-01-19", "lead": 1, "y": 19.6}
    url = f"/api/v1/routines/{ROUTINE}/observations"
    denied = client.post(url, json=[record], headers=_bearer(token_for("vic")))
    assert denied.status_code == 403 and "needs role ops or scientist" in denied.text
    unknown = {"valid_time": "2021-02-01", "lead": 1, "y": 1.0}
    ok = client.post(url, json=[record, unknown], headers=_bearer(token_for("sam")))
    assert ok.status_code == 200
    body = ok.get_json()
    assert (body["stored"], body["unknown"], body["unknown_keys"]) == (
        1,
        1,
        ["2021-02-01T00:00:00|1"],
    )
    assert _cycle(rt, "2021-01-19").n_verified == 1
    missing_column = client.post(
        url, json=[{"valid_time": "2021-01-19", "y": 1.0}], headers=_bearer(token_for("olga"))
    )
    assert missing_column.status_code == 400 and "need column(s) lead" in missing_column.text


def test_cycles_api_is_paginated(client, ticks, token_for, rt):
    ticks.add("flaky", "raises_12_15")
    _backfill(rt)
    headers = _bearer(token_for("vic"))
    page = client.get(f"/api/v1/routines/{ROUTINE}/cycles?per_page=4&page=3", headers=headers)
    body = page.get_json()
    assert (body["total"], body["pages"], body["page"], len(body["cycles"])) == (10, 3, 3, 2)
    assert [c["window_start"] for c in body["cycles"]] == [
        "2021-01-11T00:00:00",
        "2021-01-10T00:00:00",
    ]
    failed = client.get(f"/api/v1/routines/{ROUTINE}/cycles?per_page=50", headers=headers)
    flaky = [
        r
        for c in failed.get_json()["cycles"]
        for r in c["candidates"]
        if r["candidate"] == "flaky" and r["status"] == "failed"
    ]
    assert len(flaky) == 2 and "RuntimeError" in flaky[0]["error"]
    bad = client.get(f"/api/v1/routines/{ROUTINE}/cycles?per_page=0", headers=headers)
    assert bad.status_code == 400 and "per_page=0" in bad.get_json()["error"]["message"]
    unknown = client.get("/api/v1/routines/nope/cycles", headers=headers)
    assert unknown.status_code == 404 and "no routine 'nope'" in unknown.text
    assert client.get(f"/api/v1/routines/{ROUTINE}/cycles").status_code == 401


def test_forecasts_api_filters_and_pages(client, ticks, token_for, rt):
    ticks.add("better", "better")
    _backfill(rt)
    headers = _bearer(token_for("vic"))
    url = f"/api/v1/routines/{ROUTINE}/forecasts"
    page = client.get(f"{url}?candidate=op&per_page=5&page=2", headers=headers).get_json()
    assert (page["total"], page["pages"], len(page["forecasts"])) == (20, 4, 5)
    assert {f["candidate"] for f in page["forecasts"]} == {"op"}
    one = client.get(f"{url}?cycle=2021-01-12T12:00&per_page=10", headers=headers).get_json()
    assert one["total"] == 4
    assert {f["case"] for f in one["forecasts"]} == {
        "2021-01-12T00:00:00|1",
        "2021-01-12T00:00:00|2",
    }
    for row in one["forecasts"]:  # op forecasts x, better x + 0.4; the truth is x + 0.5
        offset = 0.5 if row["candidate"] == "op" else 0.1
        assert row["observation"] - row["value"] == pytest.approx(offset)
    late = client.get(f"{url}?cycle=2021-01-18&candidate=op", headers=headers).get_json()
    assert [f["observation"] for f in late["forecasts"]] == [None, None]
    assert client.get(f"{url}?candidate=nobody", headers=headers).status_code == 404
    assert client.get(f"{url}?cycle=2020-01-01", headers=headers).status_code == 404
    assert client.get(f"{url}?page=x", headers=headers).status_code == 400


def test_cycles_can_be_run_through_the_api_by_ops(client, ticks, token_for):
    url = f"/api/v1/routines/{ROUTINE}/cycles"
    denied = client.post(url, json={"at": "2021-01-12"}, headers=_bearer(token_for("sam")))
    assert denied.status_code == 403
    one = client.post(url, json={"at": "2021-01-12"}, headers=_bearer(token_for("olga")))
    assert one.status_code == 200 and one.get_json()["status"] == "verified"
    span = client.post(
        url, json={"from": "2021-01-10", "to": "2021-01-13"}, headers=_bearer(token_for("olga"))
    ).get_json()
    assert [o["action"] for o in span["outcomes"]] == ["ran", "ran", "skipped", "ran"]
    bad = client.post(url, json={"when": "now"}, headers=_bearer(token_for("olga")))
    assert bad.status_code == 400 and "unknown field(s): when" in bad.text


def test_routine_page_shows_cycles_failures_and_a_chart_served_by_the_app(client, auth, ticks):
    ticks.add("flaky", "raises_12_15")
    _backfill(ticks.rt)
    auth.login("olga")
    page = client.get(f"/routines/{ROUTINE}").text
    assert 'id="cycles"' in page and 'id="cycle-score-chart"' in page
    assert '<script src="/vendor/plotly.min.js">' in page
    assert "cdn" not in page.lower() and 'src="http' not in page
    assert "7 verified" in page and "3 forecast" in page
    failures = page[page.index('id="cycle-failures"') :]
    assert "flaky" in failures and "20.00 %" in failures
    assert "injected fault on day(s) [15]" in page  # the failure's reason, on hover
    assert client.get("/vendor/plotly.min.js").status_code == 200
    listing = client.get(f"/routines/{ROUTINE}/cycles?status=forecast")
    assert listing.status_code == 200 and listing.text.count('<tr id="cycle-') == 3


def test_routine_page_without_cycles_says_how_to_run_them(client, auth, ticks):
    auth.login("vic")
    page = client.get(f"/routines/{ROUTINE}").text
    assert "No cycles yet" in page and "numex cycle run ticks" in page
