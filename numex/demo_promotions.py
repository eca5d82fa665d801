"""The demo's people and its pending promotion request.

At the end of ``numex demo load`` (:func:`numex.demo.load_demo`),
:func:`load_demo_promotions` creates the demo users — scientist ``sam``, reviewers
``rita`` and ``remy``, ops ``olga``, admin ``adam``, viewer ``vic`` — each with a
generated password shown once (DEMO ONLY; only the hash is stored), and has sam
request promotion of the better parallel candidate to operational, so the reviewer
inbox has something in it. Running it again creates nothing: existing users are
reported without passwords, and an existing request is left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from numex.db import Candidate, PromotionRequest, User
from numex.services import promotions, stages, users
from numex.services.errors import NumexError
from numex.services.routines import get_routine
from numex.services.runtime import Actor, Runtime
from numex.services.scorecards import scorecard_for

ROUTINE = "seattle-tmax"
#: The demo cast: user name → roles.
DEMO_USERS: dict[str, list[str]] = {
    "sam": ["scientist"],
    "rita": ["reviewer"],
    "remy": ["reviewer"],
    "olga": ["ops"],
    "adam": ["admin"],
    "vic": ["viewer"],
}
REQUESTER = "sam"

Step = Callable[[str, bool], None]


def create_demo_users(rt: Runtime, step: Step, actor: Actor) -> dict[str, str]:
    """Create the demo users that do not exist yet; returns {user: generated password}
    for the new ones (shown once, never stored in plain text)."""
    with rt.read() as session:
        existing = set(session.scalars(select(User.username)))
    created: dict[str, str] = {}
    for username, roles in DEMO_USERS.items():
        if username in existing:
            step(f"demo user {username} already exists (password not shown again)", False)
            continue
        new = users.add_user(
            rt, username, roles, actor, display_name=f"{username} (demo {roles[0]})"
        )
        created[username] = new.password or ""
        step(
            f"demo user {username} ({', '.join(roles)}) password: {new.password}  "
            "[DEMO ONLY — shown once]",
            True,
        )
    return created


def better_parallel_candidate(rt: Runtime, routine: str = ROUTINE) -> int | None:
    """The parallel candidate with the lowest primary-metric score against the operational
    candidate over the cycles run so far (offline score when there are no cycles)."""
    with rt.read() as session:
        found = get_routine(session, routine)
        operational = stages.operational_of(session, found.id)
        parallel = session.scalars(
            select(Candidate)
            .where(Candidate.routine_id == found.id, Candidate.stage == "parallel")
            .order_by(Candidate.id)
        ).all()
        metric = (found.current.definition.get("metrics") or ["rmse"])[0]
        ranked = []
        for candidate in parallel:
            score = None
            if operational is not None:
                scorecard = scorecard_for(session, found, candidate.id, operational.id)
                cell = scorecard.cell(metric)
                score = cell.change_percent
            if score is None:
                score = ((candidate.offline_scores or {}).get("overall") or {}).get(metric)
            if score is not None:
                ranked.append((score, candidate.id))
    return min(ranked)[1] if ranked else None


def request_demo_promotion(rt: Runtime, step: Step) -> int | None:
    """Have sam request promotion of the better parallel candidate to operational, unless
    the demo routine already has a promotion request. Returns the request id."""
    with rt.read() as session:
        found = get_routine(session, ROUTINE)
        existing = session.scalar(
            select(PromotionRequest)
            .join(Candidate, PromotionRequest.candidate_id == Candidate.id)
            .where(Candidate.routine_id == found.id)
            .order_by(PromotionRequest.id.desc())
        )
        requester = session.scalar(select(User).where(User.username == REQUESTER))
        sam = users.actor_for(requester) if requester is not None else None
    if existing is not None:
        step(f"promotion request #{existing.id} already exists ({existing.status})", False)
        return existing.id
    if sam is None or not sam.has_role("scientist"):
        step(f"no scientist {REQUESTER!r} to request a promotion; skipped", False)
        return None
    chosen = better_parallel_candidate(rt)
    if chosen is None:
        step("no parallel candidate to request a promotion for; skipped", False)
        return None
    try:
        view = promotions.request_promotion(
            rt,
            chosen,
            "operational",
            sam,
            reason="demo: the better parallel candidate over the 2014-2015 cycles",
        )
    except NumexError as error:
        step(f"promotion request not made: {error.message}", False)
        return None
    step(
        f"{REQUESTER} requested promotion of {view['candidate']['name']} to operational: "
        f"request #{view['id']}, waiting for {view['required_sign_offs']} sign-offs "
        "(sign in as rita and remy, open the Inbox)",
        True,
    )
    return view["id"]


def load_demo_promotions(rt: Runtime, step: Step, actor: Actor | None = None) -> None:
    """Create the demo users and leave one pending promotion request to operational."""
    actor = actor or Actor.system("demo")
    create_demo_users(rt, step, actor)
    request_demo_promotion(rt, step)
