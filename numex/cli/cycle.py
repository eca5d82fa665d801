"""``numex cycle``, ``numex scheduler`` and ``numex observations``: run cycles, list them,
and load late observations.

Cycles are run by operations; the CLI acts as the local administrator (database
access is the credential), like the scheduler process does.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from numex.cli.common import NumexGroup, admin_actor, emit, get_runtime, json_option, table


def _echo_outcome(outcome) -> None:
    click.echo(outcome.message, err=outcome.failed)


@click.group(cls=NumexGroup)
def cycle() -> None:
    """Cycles: the operational and parallel candidates forecast the same cases."""


@cycle.command("run")
@click.argument("routine")
@click.option("--at", "at", metavar="TIME", help="Run the cycle whose window holds TIME.")
@click.option("--from", "start", metavar="T1", help="Backfill: first cycle window start.")
@click.option(
    "--to", "end", metavar="T2", help="Backfill: last cycle window start (a date: that day)."
)
@click.option(
    "--rerun",
    is_flag=True,
    help="Run cycles that are already done again (recorded as re-runs; stored forecasts "
    "stay, candidates without a result get one).",
)
@json_option
def run(
    routine: str, at: str | None, start: str | None, end: str | None, rerun: bool, as_json: bool
) -> None:
    """Run one cycle of ROUTINE (--at TIME) or backfill a span (--from T1 --to T2).

    Exits 1 when a cycle failed (its operational candidate failed).
    """
    from numex.services import cycles

    if (at is None) == (start is None and end is None) or (at is None and None in (start, end)):
        raise click.UsageError("give either --at TIME, or both --from T1 and --to T2")
    rt = get_runtime()
    actor = admin_actor()
    if at is not None:
        outcome = cycles.run_cycle(rt, routine, at, actor, rerun=rerun)
        emit(outcome.to_dict(), as_json, lambda _data: _echo_outcome(outcome))
        if outcome.failed:
            sys.exit(1)
        return
    windows = cycles.windows_between(cycles_spec(rt, routine), start, end)
    with click.progressbar(
        length=len(windows),
        label=f"{routine} cycles",
        file=sys.stderr,
        show_pos=True,
        item_show_func=lambda o: o.window_start.date().isoformat() if o else "",
    ) as bar:

        def progress(outcome) -> None:
            bar.update(1, outcome)

        report = cycles.backfill(rt, routine, start, end, actor, progress, rerun=rerun)

    def render(_data: Any) -> None:
        for outcome in report.failed:
            click.echo(f"FAILED: {outcome.message}", err=True)
        click.echo(report.message)

    emit(report.to_dict(), as_json, render)
    if report.failed:
        sys.exit(1)


def cycles_spec(rt, routine: str):
    """The routine's spec (for counting windows before the progress bar starts)."""
    from numex.services import cycles
    from numex.services.routines import get_routine

    with rt.read() as session:
        found = get_routine(session, routine)
        return cycles.routine_data(found).spec


@cycle.command("list")
@click.argument("routine")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--per-page", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--status", type=click.Choice(["pending", "running", "forecast", "verified", "failed"])
)
@json_option
def list_(routine: str, page: int, per_page: int, status: str | None, as_json: bool) -> None:
    """List ROUTINE's cycles, newest first, with each candidate's result."""
    from numex.services import cycles

    listing = cycles.list_cycles(
        get_runtime(), routine, page=page, per_page=per_page, status=status
    )

    def render(data: dict) -> None:
        if not data["cycles"]:
            click.echo(f"no cycles yet: numex cycle run {routine} --at TIME")
            return
        table(
            [
                [
                    c["window_start"].replace("T", " "),
                    c["status"],
                    c["runs"],
                    c["n_cases"],
                    c["n_verified"],
                    ", ".join(
                        f"{r['candidate']}:{r['status']}"
                        + (
                            f"(+{r['failures']} failed)"
                            if r["failures"] and r["status"] == "ok"
                            else ""
                        )
                        for r in c["candidates"]
                    ),
                ]
                for c in data["cycles"]
            ],
            ["window start", "status", "runs", "cases", "verified", "candidates"],
        )
        click.echo(f"page {data['page']} of {data['pages']} ({data['total']} cycles)")

    emit(listing.to_dict(), as_json, render)


@click.command("scheduler")
@click.option(
    "--interval",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between passes.",
)
@click.option(
    "--once",
    is_flag=True,
    help="One pass, then exit (1 if a cycle failed or a routine could not run).",
)
@json_option
def scheduler(interval: float, once: bool, as_json: bool) -> None:
    """Run due cycles of every routine, pass after pass.

    Due: a window in the routine's cycle period that has ended and has not been run
    (or whose claimer went quiet). Any number of schedulers may run: a database claim
    makes each cycle run once. Stops cleanly on SIGTERM or Ctrl-C.
    """
    from numex.services import cycles

    rt = get_runtime()
    actor = admin_actor()
    stop = threading.Event()
    if not once and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            reports = cycles.run_due(rt, actor, progress=None if as_json else _echo_outcome)
        except Exception as error:  # e.g. the database is down: say so, try next pass
            if once:
                raise
            click.echo(f"[{stamp}] scheduler pass failed: {error}", err=True)
            reports = None
        if reports is not None:
            failed = sum(len(r.failed) for r in reports)
            skipped = [r for r in reports if r.error]
            if as_json:
                emit([r.to_dict() for r in reports], True, lambda _d: None)
            else:
                for report in skipped:
                    click.echo(f"[{stamp}] {report.message}", err=True)
                ran = sum(len(r.outcomes) for r in reports)
                click.echo(
                    f"[{stamp}] scheduler pass: {len(reports)} routine(s), {ran} cycle "
                    f"window(s), {failed} failed",
                    err=True,
                )
            if once:
                if failed or skipped:
                    sys.exit(1)
                return
        try:
            if stop.wait(interval):
                return
        except KeyboardInterrupt:
            return


@click.group(cls=NumexGroup)
def observations() -> None:
    """Observations: the truth that verifies forecasts."""


@observations.command("load")
@click.argument("routine")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def load(routine: str, file: Path, as_json: bool) -> None:
    """Load late observations for ROUTINE from FILE (CSV or Parquet with the routine's
    case key columns and target) and re-verify the cycles they touch. Observations for
    unknown cases are listed, not stored."""
    from numex.services.observations import load_observations

    result = load_observations(get_runtime(), routine, file, admin_actor())

    def render(_data: Any) -> None:
        click.echo(result.message)
        if result.unknown:
            click.echo(
                f"warning: {result.unknown} observation(s) for cases {routine} does not have "
                "were not stored: " + ", ".join(result.unknown_keys[:20]),
                err=True,
            )

    emit(result.to_dict(), as_json, render)
