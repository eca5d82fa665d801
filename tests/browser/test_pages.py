"""Every key page in a real browser: it renders, its scripts raise no error, and it asks
nothing of any host but the app itself. With NUMEX_SCREENSHOTS=1 the pages are saved
as docs/screenshots/*.png (1280×800) for the README."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from numex.services import promotions
from tests.promotion_fixtures import World

pytestmark = pytest.mark.browser


class PageWatch:
    """Collects a page's console errors, uncaught exceptions and outside requests."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.outside: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)

    def _request(self, request) -> None:
        host = urlsplit(request.url).hostname
        if host not in (None, "127.0.0.1", "localhost") and not request.url.startswith("data:"):
            self.outside.append(request.url)


def _scorecard_path(app, routine: str, candidate_id: int) -> str | None:
    """The scorecard page of ``candidate_id`` against the operational candidate (None
    while the app has no scorecard page)."""
    if "scorecards.show" not in app.view_functions:
        return None
    return f"/routines/{routine}/scorecard?candidate={candidate_id}"


def test_key_pages_render_without_script_errors_or_outside_requests(
    people, rt, live_server, screenshot
):
    world = World(rt, cycles=40)
    # The state the screenshots show: forest passed the gate into parallel (a decision
    # MLflow's registry has not caught up with yet); sam asked to promote ridge to
    # operational, rita approved, and the request waits for a second reviewer.
    forest = promotions.request_promotion(
        rt, world.experiment, "parallel", world.actor("sam"), "offline rmse 1.5 vs 3.0"
    )
    promotions.sign_off(
        rt, forest["id"], world.actor("rita"), "approve", "Offline scores clearly better."
    )
    view = promotions.request_promotion(
        rt,
        world.parallel,
        "operational",
        world.actor("sam"),
        "ridge beats persistence on 40 verified cycles",
    )
    promotions.sign_off(
        rt,
        view["id"],
        world.actor("rita"),
        "approve",
        "Significant on rmse, no mae degradation; lineage checked.",
    )

    remy = people.sign_in("remy")
    watch = PageWatch(remy)
    pages = [
        ("dashboard", "/", "#routines"),
        ("routine", f"/routines/{world.name}", "#stage-lanes"),
        ("candidate", f"/candidates/{world.parallel}", "body"),
        ("inbox", "/inbox", f"a[href='/requests/{view['id']}']"),
        ("request", f"/requests/{view['id']}", "#sign-off-form"),
        ("operational-history", f"/routines/{world.name}/history", "body"),
        ("audit", "/audit/", "body"),
    ]
    scorecard = _scorecard_path(live_server.app, world.name, world.parallel)
    if scorecard:
        pages.insert(3, ("scorecard", scorecard, "table"))
    for name, path, ready in pages:
        response = remy.goto(path)
        assert response.ok, f"{path}: HTTP {response.status}"
        expect(remy.locator(ready).first).to_be_visible()
        remy.wait_for_load_state("networkidle")
        screenshot(remy, name)
    assert watch.errors == []
    assert watch.outside == []
