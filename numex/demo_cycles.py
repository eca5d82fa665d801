"""The demo's parallel routine: ridge and gradient boosting run beside persistence in the
daily cycles of 2014–2015.

Until the parallel gate has been passed through a promotion request, the demo moves its
two candidates to ``parallel`` through a *recorded demo action* (a stage transition of
kind ``demo`` with its reason, audited like any other), then backfills the cycles.
Running it again changes nothing: candidates already past ``experiment`` stay where they
are and cycles already run are skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from numex.db import Candidate
from numex.services import cycles, stages
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

ROUTINE = "seattle-tmax"
PARALLEL = ("ridge", "gbm")
CYCLES_FROM, CYCLES_TO = "2014-01-01", "2015-12-31"
DEMO_REASON = "demo: parallel routine before the gate issue exists"

Step = Callable[[str, bool], None]


def run_demo_cycles(rt: Runtime, step: Step | None = None, actor: Actor | None = None) -> None:
    """Put ridge and gbm in the parallel routine (recorded demo action) and backfill the
    demo's 2014–2015 daily cycles. ``step(message, changed)`` hears what happened."""
    step = step or (lambda _message, _changed: None)
    actor = actor or Actor.system("demo")
    with rt.transaction() as session:
        routine = get_routine(session, ROUTINE)
        for name in PARALLEL:
            candidate = session.scalar(
                select(Candidate).where(Candidate.routine_id == routine.id, Candidate.name == name)
            )
            if candidate is None:
                step(f"candidate {name} is not registered; it does not run in cycles", False)
            elif candidate.stage == "experiment":
                stages.move(
                    session, candidate, "parallel", kind="demo", actor=actor, reason=DEMO_REASON
                )
                step(f"{name} moved to parallel (recorded demo action)", True)
            else:
                step(f"{name} is {candidate.stage}", False)
    done = 0

    def progress(outcome: cycles.CycleOutcome) -> None:
        nonlocal done
        done += 1
        if done % 100 == 0:
            step(f"cycles: {done} windows done (up to {outcome.window_start.date()})", False)

    report = cycles.backfill(rt, ROUTINE, CYCLES_FROM, CYCLES_TO, actor, progress)
    ran = len(report.outcomes) - report.count("skipped")
    step(report.message, ran > 0)
