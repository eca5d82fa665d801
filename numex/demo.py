"""The demo: the seattle-tmax routine with three candidates, persistence operational.

``numex demo load`` (the README's first command) runs :func:`load_demo`. It is
idempotent: a second run finds the routine unchanged, every candidate already
registered and an operational candidate in place, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from numex.db import Candidate
from numex.resources import resource_path
from numex.services import experiments, stages
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime

ROUTINE = "seattle-tmax"
EXPERIMENTS = ("persistence", "ridge", "gbm")
FIRST_OPERATIONAL = "persistence"


@dataclass
class DemoLoad:
    """What loading the demo did, step by step."""

    routine: str
    steps: list[str] = field(default_factory=list)
    changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def demo_folder(rt: Runtime) -> Path:
    """experiments/seattle-tmax: under the configured experiments folder, else the copy
    shipped inside numex (a wheel install)."""
    configured = Path(rt.settings.experiments_dir) / ROUTINE
    if (configured / "routine.yaml").is_file():
        return configured
    return resource_path("experiments") / ROUTINE


def load_demo(
    rt: Runtime,
    progress: Callable[[str], None] | None = None,
    actor: Actor | None = None,
) -> DemoLoad:
    """Load the seattle-tmax routine, register persistence, ridge and gbm, bootstrap
    persistence as the first operational candidate, then run ridge and gbm in parallel
    through the 2014–2015 cycles (:mod:`numex.demo_cycles`), create the demo users and
    leave one pending promotion request (:mod:`numex.demo_promotions`). Safe to run
    again."""
    progress = progress or (lambda _message: None)
    actor = actor or Actor.system("demo")
    folder = demo_folder(rt)
    result = DemoLoad(routine=ROUTINE)

    def step(message: str, changed: bool) -> None:
        result.steps.append(message)
        result.changed = result.changed or changed
        progress(message)

    loaded = experiments.load_routine(rt, folder, actor)
    step(loaded.message, loaded.status != "unchanged")
    with rt.read() as session:
        routine = get_routine(session, ROUTINE)
        existing = set(
            session.scalars(select(Candidate.name).where(Candidate.routine_id == routine.id))
        )
    for name in EXPERIMENTS:
        if name in existing:
            step(f"candidate {name} already registered", False)
            continue
        registration = experiments.register_experiment(
            rt, folder / f"{name}.yaml", actor, progress=progress
        )
        step(registration.message, True)
    with rt.read() as session:
        routine = get_routine(session, ROUTINE)
        operational = stages.operational_of(session, routine.id)
        operational_name = operational.name if operational else None
    if operational_name is None:
        experiments.bootstrap(
            rt, ROUTINE, FIRST_OPERATIONAL, actor, reason="demo: persistence is the reference"
        )
        step(f"{FIRST_OPERATIONAL} bootstrapped as the operational candidate", True)
    else:
        step(f"operational candidate: {operational_name}", False)
    from numex.demo_cycles import run_demo_cycles

    run_demo_cycles(rt, step, actor)
    from numex.demo_promotions import load_demo_promotions

    load_demo_promotions(rt, step, actor)
    return result
