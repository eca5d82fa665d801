"""Cycles: every candidate forecasts the same cases, failures stay isolated, re-runs and
resumed backfills duplicate nothing, one claimer per cycle, late observations verify."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from numex.db import (
    Alert,
    AuditEvent,
    CandidateCycleResult,
    Case,
    Cycle,
    CycleRun,
    Forecast,
    Observation,
)
from numex.services import audit, cycles, forecasts
from numex.services.errors import PermissionDenied
from numex.services.runtime import Actor, Runtime
from tests.cycle_fixtures import CYCLE_DAYS, LEADS, ROUTINE

OPS = Actor.system("ops-test")
N_CYCLES = len(CYCLE_DAYS)
CASES_PER_CYCLE = len(LEADS)


def _count(rt, model, *where) -> int:
    with rt.read() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def _results(rt, candidate_id) -> dict[str, tuple[str, str | None, int]]:
    with rt.read() as session:
        rows = session.execute(
            select(Cycle.window_start, CandidateCycleResult)
            .join(Cycle, Cycle.id == CandidateCycleResult.cycle_id)
            .where(CandidateCycleResult.candidate_id == candidate_id)
        ).all()
    return {start.date().isoformat(): (r.status, r.error, r.failures) for start, r in rows}


def _backfill(rt, **kwargs):
    return cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-19", OPS, **kwargs)


def test_backfill_forecasts_every_case_with_every_candidate_and_verifies(rt, ticks):
    better = ticks.add("better", "better")
    report = _backfill(rt)
    assert [o.action for o in report.outcomes] == ["ran"] * N_CYCLES
    assert not report.failed
    forecasts_per_candidate = N_CYCLES * CASES_PER_CYCLE
    assert _count(rt, Forecast) == 2 * forecasts_per_candidate
    assert _count(rt, Forecast, Forecast.candidate_id == better) == forecasts_per_candidate
    # the routine data's targets are observations; the last three days have none yet
    assert _count(rt, Observation, Observation.source == forecasts.ROUTINE_DATA_SOURCE) == (
        (N_CYCLES - 3) * CASES_PER_CYCLE
    )
    listing = cycles.list_cycles(rt, ROUTINE, per_page=100, newest_first=False).cycles
    assert [c["status"] for c in listing] == ["verified"] * 7 + ["forecast"] * 3
    assert [c["n_verified"] for c in listing] == [2] * 7 + [0] * 3
    assert all(len(c["candidates"]) == 2 for c in listing)
    with rt.read() as session:
        assert cycles.failure_counts(session, better) == (0, N_CYCLES)
    assert audit.verify(rt).ok


def test_a_parallel_candidate_failing_in_some_cycles_fails_only_there(rt, ticks):
    flaky = ticks.add("flaky", "raises_12_15")
    steady = ticks.add("steady", "better")
    report = _backfill(rt)
    assert not report.failed  # the operational forecast never stopped
    results = _results(rt, flaky)
    failed = {day for day, (status, _, _) in results.items() if status == "failed"}
    assert failed == {"2021-01-12", "2021-01-15"}
    assert "RuntimeError: injected fault on day(s) [12]" in results["2021-01-12"][1]
    assert {s for s, _, _ in _results(rt, steady).values()} == {"ok"}
    assert {s for s, _, _ in _results(rt, ticks.ids["op"]).values()} == {"ok"}
    assert _count(rt, Forecast, Forecast.candidate_id == flaky) == (N_CYCLES - 2) * 2
    with rt.read() as session:
        assert cycles.failure_counts(session, flaky) == (2, N_CYCLES)
        assert cycles.failure_counts(session, flaky, stage="parallel") == (2, N_CYCLES)
        assert cycles.failure_counts(session, steady) == (0, N_CYCLES)
    assert report.candidate_failures == 2


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("nan_14", "returned 2 NaN value(s) among 2"),
        ("inf_14", "returned 2 infinite value(s) among 2"),
        ("short_14", "returned 1 values for 2 cases"),
    ],
)
def test_nan_infinite_and_wrong_length_forecasts_are_failures(rt, ticks, model, message):
    bad = ticks.add("bad", model)
    report = _backfill(rt)
    assert not report.failed
    results = _results(rt, bad)
    assert results["2021-01-14"][0] == "failed" and message in results["2021-01-14"][1]
    assert {s for day, (s, _, _) in results.items() if day != "2021-01-14"} == {"ok"}
    with rt.read() as session:  # nothing of the bad cycle was stored
        day14 = session.scalar(select(Cycle.id).where(Cycle.window_start == datetime(2021, 1, 14)))
        stored = session.scalar(
            select(func.count())
            .select_from(Forecast)
            .where(Forecast.cycle_id == day14, Forecast.candidate_id == bad)
        )
    assert stored == 0


def test_a_candidate_whose_model_cannot_be_loaded_fails_in_each_cycle(rt, ticks, tmp_path):
    ticks.models["missing"] = str(tmp_path / "no-such-model")
    gone = ticks.add("gone", "missing")
    report = cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-11", OPS)
    assert not report.failed
    results = _results(rt, gone)
    assert {status for status, _, _ in results.values()} == {"failed"}
    assert all(error.startswith("cannot load model: ") for _, error, _ in results.values())


def test_a_candidate_that_times_out_fails_without_holding_up_the_cycle(rt, ticks):
    rt.settings.candidate_timeout_s = 0.3
    slow = ticks.add("slow", "sleeps")
    began = datetime.now()
    outcome = cycles.run_cycle(rt, ROUTINE, "2021-01-11", OPS)
    assert (datetime.now() - began).total_seconds() < 2.5
    assert outcome.status == "verified"
    by_name = {c.name: c for c in outcome.candidates}
    assert by_name["op"].status == "ok"
    assert by_name["slow"].status == "failed" and by_name["slow"].error == "timed out after 0.3 s"
    with rt.read() as session:
        assert cycles.failure_counts(session, slow) == (1, 1)


def test_a_failing_operational_candidate_fails_the_cycle_loudly(rt, ticks, runner):
    rt_other = rt  # same database as the CLI (the runner reads the same environment)
    with rt_other.transaction() as session:
        session.execute(
            update(forecasts.Candidate)
            .where(forecasts.Candidate.id == ticks.ids["op"])
            .values(model_uri=ticks.models["raises_13"])
        )
    ticks.add("steady", "better")
    result = runner.invoke("cycle", "run", ROUTINE, "--at", "2021-01-13T06:00")
    assert result.exit_code == 1
    assert "failed" in result.stderr and "RuntimeError" in result.stderr
    with rt.read() as session:
        cycle = session.scalar(select(Cycle).where(Cycle.window_start == datetime(2021, 1, 13)))
        assert cycle.status == "failed"
        assert cycle.error.startswith("operational candidate op failed: RuntimeError")
        assert cycle.locked_by is None
        alert = session.scalar(select(Alert).where(Alert.kind == "cycle_failed"))
        assert alert.severity == "critical" and "2021-01-13" in alert.message
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "cycle.failed"))
        assert event.payload["error"] == cycle.error
        # the parallel candidate still forecast the cycle
        assert (
            session.scalar(
                select(CandidateCycleResult.status).where(
                    CandidateCycleResult.cycle_id == cycle.id,
                    CandidateCycleResult.candidate_id == ticks.ids["steady"],
                )
            )
            == "ok"
        )
    # other cycles are unaffected
    other = runner.invoke("cycle", "run", ROUTINE, "--at", "2021-01-12")
    assert other.exit_code == 0 and "verified" in other.stdout


def test_running_a_done_cycle_again_is_skipped_unless_rerun(rt, ticks):
    first = cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS)
    again = cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS)
    assert (first.action, again.action, again.status) == ("ran", "skipped", "verified")
    assert "--rerun" in again.message
    assert _count(rt, CycleRun) == 1


def test_a_rerun_duplicates_nothing_records_itself_and_fills_missing_candidates(rt, ticks):
    _backfill(rt)
    stored = _count(rt, Forecast)
    with rt.read() as session:
        values_before = dict(session.execute(select(Forecast.id, Forecast.value)).all())
    late = ticks.add("late", "better")  # promoted after the cycles ran
    outcome = cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS, rerun=True)
    assert outcome.action == "rerun" and outcome.attempt == 2
    assert {c.name: c.status for c in outcome.candidates} == {"op": "kept", "late": "ok"}
    assert _count(rt, Forecast) == stored + CASES_PER_CYCLE
    with rt.read() as session:
        values_after = dict(session.execute(select(Forecast.id, Forecast.value)).all())
        runs = session.scalars(select(CycleRun).order_by(CycleRun.id)).all()
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "cycle.rerun"))
    assert {k: values_after[k] for k in values_before} == values_before  # nothing overwritten
    assert [r.is_rerun for r in runs].count(True) == 1
    assert runs[-1].is_rerun and "kept: op" in runs[-1].note and "run: late" in runs[-1].note
    assert event.payload["previous_status"] == "verified"
    assert _results(rt, late) == {"2021-01-12": ("ok", None, 0)}
    # a re-run of the whole span fills the late candidate everywhere, nothing more
    _backfill(rt, rerun=True)
    assert _count(rt, Forecast) == stored + N_CYCLES * CASES_PER_CYCLE
    assert _count(rt, Case) == N_CYCLES * CASES_PER_CYCLE


def test_a_rerun_may_recover_a_failed_candidate_but_the_failure_still_counts(rt, ticks):
    flaky = ticks.add("flaky", "raises_12_15")
    _backfill(rt)
    with rt.transaction() as session:  # the fault is fixed (e.g. a store outage is over)
        session.execute(
            update(forecasts.Candidate)
            .where(forecasts.Candidate.id == flaky)
            .values(model_uri=ticks.models["better"])
        )
    outcome = cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS, rerun=True)
    flaky_outcome = next(c for c in outcome.candidates if c.name == "flaky")
    assert (flaky_outcome.status, flaky_outcome.failures) == ("ok", 1)
    status, error, failures = _results(rt, flaky)["2021-01-12"]
    assert status == "ok" and failures == 1 and "earlier failure: RuntimeError" in error
    with rt.read() as session:
        assert cycles.failure_counts(session, flaky) == (2, N_CYCLES)


def test_an_interrupted_backfill_resumes_where_it_stopped(rt, ticks, monkeypatch):
    ticks.add("steady", "better")
    monkeypatch.setattr(cycles, "BATCH_CYCLES", 2)
    real_store = cycles._store
    calls = {"n": 0}

    def store_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C mid-batch
        return real_store(*args, **kwargs)

    monkeypatch.setattr(cycles, "_store", store_then_crash)
    with pytest.raises(KeyboardInterrupt):
        _backfill(rt)
    listing = cycles.list_cycles(rt, ROUTINE, per_page=100, newest_first=False).cycles
    assert [c["status"] for c in listing[:4]] == ["verified"] * 4
    assert [c["status"] for c in listing[4:6]] == ["pending", "pending"]  # given back
    assert len(listing) == 6  # later windows were never reached
    with rt.read() as session:
        interrupted = session.scalars(select(CycleRun).where(CycleRun.status == "interrupted"))
        assert len(interrupted.all()) == 2

    monkeypatch.setattr(cycles, "_store", real_store)
    report = _backfill(rt)
    actions = [o.action for o in report.outcomes]
    assert actions == ["skipped"] * 4 + ["resumed"] * 2 + ["ran"] * 4
    assert _count(rt, Forecast) == 2 * N_CYCLES * CASES_PER_CYCLE
    assert _count(rt, Case) == N_CYCLES * CASES_PER_CYCLE


def test_a_cycle_abandoned_by_a_dead_claimer_is_retried_once_its_claim_is_stale(rt, ticks):
    cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-12", OPS)
    with rt.transaction() as session:  # a scheduler claimed these and was killed
        session.execute(
            update(Cycle)
            .where(Cycle.window_start.in_([datetime(2021, 1, 11), datetime(2021, 1, 12)]))
            .values(status="running", locked_by="host:1:dead", runs=1)
        )
        session.execute(
            update(Cycle)
            .where(Cycle.window_start == datetime(2021, 1, 11))
            .values(locked_at=datetime(2020, 1, 1))
        )
        session.execute(
            update(Cycle)
            .where(Cycle.window_start == datetime(2021, 1, 12))
            .values(locked_at=datetime.now(tz=None) + timedelta(days=1))  # still fresh
        )
    due = cycles.due_windows(rt, ROUTINE)
    assert datetime(2021, 1, 11) in [start for start, _ in due]
    assert datetime(2021, 1, 12) not in [start for start, _ in due]
    report = cycles.backfill(rt, ROUTINE, "2021-01-10", "2021-01-12", OPS)
    assert [o.action for o in report.outcomes] == ["skipped", "resumed", "busy"]
    assert report.outcomes[1].status == "verified" and report.outcomes[1].attempt == 2
    assert "another process" in report.outcomes[2].message


def test_a_run_whose_claim_was_taken_over_stores_nothing(rt, ticks, monkeypatch):
    real_forecast = cycles._forecast

    def slow_forecast(*args, **kwargs):
        predictions = real_forecast(*args, **kwargs)
        with rt.transaction() as session:  # meanwhile the claim went stale and was taken
            session.execute(update(Cycle).values(locked_by="elsewhere:2:alive"))
        return predictions

    monkeypatch.setattr(cycles, "_forecast", slow_forecast)
    outcome = cycles.run_cycle(rt, ROUTINE, "2021-01-12", OPS)
    assert outcome.action == "lost" and "nothing stored" in outcome.message
    assert _count(rt, Forecast) == 0 and _count(rt, CandidateCycleResult) == 0
    with rt.read() as session:
        run = session.scalar(select(CycleRun))
    assert run.status == "lost" and run.finished_at is not None


def test_two_concurrent_claimers_run_a_cycle_once(ticks, settings):
    ticks.add("steady", "better")
    runtimes = [Runtime(settings) for _ in range(4)]
    barrier = threading.Barrier(len(runtimes))
    outcomes, errors = [], []

    def claim(runtime):
        try:
            barrier.wait()
            outcomes.append(cycles.run_cycle(runtime, ROUTINE, "2021-01-15", OPS))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=claim, args=(r,)) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for runtime in runtimes:
        runtime.close()
    assert not errors
    actions = sorted(o.action for o in outcomes)
    assert actions.count("ran") == 1
    assert set(actions) <= {"ran", "busy", "skipped"}
    rt = ticks.rt
    assert _count(rt, CycleRun) == 1
    assert _count(rt, Forecast) == 2 * CASES_PER_CYCLE


def test_concurrent_schedulers_run_every_due_cycle_exactly_once(ticks, settings, monkeypatch):
    monkeypatch.setattr(cycles, "BATCH_CYCLES", 3)
    runtimes = [Runtime(settings) for _ in range(3)]
    barrier = threading.Barrier(len(runtimes))
    errors = []

    def schedule(runtime):
        try:
            barrier.wait()
            cycles.run_due(runtime, OPS)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=schedule, args=(r,)) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for runtime in runtimes:
        runtime.close()
    assert not errors
    rt = ticks.rt
    assert _count(rt, CycleRun) == N_CYCLES
    assert _count(rt, Cycle, Cycle.status.in_(("verified", "forecast"))) == N_CYCLES
    assert _count(rt, Forecast) == N_CYCLES * CASES_PER_CYCLE


def test_scheduler_once_runs_due_cycles_and_then_finds_nothing(runner, ticks):
    first = runner.invoke("scheduler", "--once")
    assert first.exit_code == 0, first.output
    assert f"{N_CYCLES} cycle window(s)" in first.stderr
    assert _count(ticks.rt, CycleRun) == N_CYCLES
    second = runner.invoke("scheduler", "--once")
    assert second.exit_code == 0 and "0 cycle window(s)" in second.stderr
    assert _count(ticks.rt, CycleRun) == N_CYCLES


def test_scheduler_reports_a_routine_it_cannot_run_and_goes_on(runner, ticks):
    (ticks.folder / "data.csv").unlink()
    result = runner.invoke("scheduler", "--once")
    assert result.exit_code == 1
    assert "ticks: not run:" in result.stderr and "data.csv does not exist" in result.stderr


def test_running_cycles_needs_the_ops_role(rt, ticks):
    scientist = Actor("sam", 1, frozenset({"scientist"}))
    with pytest.raises(PermissionDenied, match="needs role ops or admin"):
        cycles.run_cycle(rt, ROUTINE, "2021-01-12", scientist)


def test_a_time_outside_the_cycle_period_is_a_clear_error(runner, ticks):
    result = runner.invoke("cycle", "run", ROUTINE, "--at", "2022-05-01")
    assert result.exit_code == 1
    assert "outside the cycle period 2021-01-10..2021-01-19" in result.stderr


def test_cli_backfill_shows_progress_and_lists_cycles(runner, ticks):
    ticks.add("flaky", "raises_12_15")
    result = runner.invoke("cycle", "run", ROUTINE, "--from", "2021-01-10", "--to", "2021-01-19")
    assert result.exit_code == 0, result.output
    assert f"{N_CYCLES} run" in result.stdout and "2 parallel candidate failure(s)" in result.stdout
    assert "ticks cycles" in result.stderr  # the progress bar
    listed = runner.invoke("cycle", "list", ROUTINE, "--per-page", "3", "--page", "2", "--json")
    import json

    data = json.loads(listed.stdout)
    assert (data["total"], data["pages"], data["page"], len(data["cycles"])) == (10, 4, 2, 3)
    assert [c["window_start"][:10] for c in data["cycles"]] == [
        "2021-01-16",
        "2021-01-15",
        "2021-01-14",
    ]
    flaky15 = next(r for r in data["cycles"][1]["candidates"] if r["candidate"] == "flaky")
    assert flaky15["status"] == "failed"
    table = runner.invoke("cycle", "list", ROUTINE)
    assert "flaky:failed" in table.stdout and "page 1 of 1" in table.stdout
