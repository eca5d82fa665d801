"""The demo's people and its pending request to operational."""

from __future__ import annotations

from sqlalchemy import select

from numex.db import PromotionRequest, User
from numex.demo_promotions import DEMO_USERS, better_parallel_candidate, load_demo_promotions
from numex.services import users
from tests.promotion_fixtures import add_candidate, add_cycles, make_routine


def _demo_routine(rt):
    routine = make_routine(rt, name="seattle-tmax")
    persistence = add_candidate(rt, routine, "persistence", "operational", rmse=3.0)
    ridge = add_candidate(rt, routine, "ridge", "parallel", author="numex-demo", rmse=1.2)
    gbm = add_candidate(rt, routine, "gbm", "parallel", author="numex-demo", rmse=1.0)
    # gbm looks better offline, ridge is better in the cycles: the cycles decide.
    add_cycles(rt, routine, {persistence: 3.0, ridge: 1.0, gbm: 2.0}, 40)
    return ridge, gbm


def test_demo_creates_users_once_with_passwords_shown_once(rt):
    _demo_routine(rt)
    said: list[str] = []
    load_demo_promotions(rt, lambda message, _changed: said.append(message))
    shown = [m for m in said if "password:" in m]
    assert len(shown) == len(DEMO_USERS)
    assert all("DEMO ONLY" in m for m in shown)
    passwords = {m.split()[2]: m.split("password: ")[1].split()[0] for m in shown}
    with rt.read() as session:
        stored = {u.username: u.password_hash for u in session.scalars(select(User))}
    for username, password in passwords.items():
        assert password not in stored[username]  # only a hash is kept
        assert users.authenticate(rt, username, password).roles == set(DEMO_USERS[username])

    again: list[str] = []
    load_demo_promotions(rt, lambda message, _changed: again.append(message))
    assert not any("password:" in m for m in again)
    assert sum("already exists" in m for m in again) == len(DEMO_USERS) + 1


def test_demo_leaves_one_pending_request_for_the_better_parallel_candidate(rt):
    ridge, _gbm = _demo_routine(rt)
    assert better_parallel_candidate(rt) == ridge
    load_demo_promotions(rt, lambda *_: None)
    load_demo_promotions(rt, lambda *_: None)
    with rt.read() as session:
        (request,) = session.scalars(select(PromotionRequest)).all()
        sam = session.scalar(select(User).where(User.username == "sam"))
        assert (request.candidate_id, request.target_stage, request.status) == (
            ridge,
            "operational",
            "open",
        )
        assert request.requested_by_id == sam.id
        assert request.required_sign_offs == 2
