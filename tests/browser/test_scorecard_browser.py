"""The scorecard pages in a real browser: hovering a cell shows its numbers, the difference
chart draws and follows the metric buttons, and nothing is asked of any other host."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.scorecard_fixtures import Cycles

pytestmark = pytest.mark.browser


def _watch(page) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))

    def request(r) -> None:
        if urlsplit(r.url).hostname not in (None, "127.0.0.1", "localhost"):
            outside.append(r.url)

    page.on("request", request)
    return errors, outside


def test_hovering_a_cell_shows_its_numbers_and_the_chart_follows_the_metric(
    people, rt, live_server
):
    world = Cycles(rt)
    page = people.sign_in("vic")
    errors, outside = _watch(page)
    page.goto(f"/routines/tiny/scorecard?candidate={world.ids['good']}")

    cell = page.locator('#scorecard-grid td[data-metric="rmse"][data-column="overall"]')
    expect(cell).to_have_class("sc-cell sc-better-strong sc-group")
    cell.hover()
    tooltip = page.locator(".tooltip.sc-tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("good: ")
    expect(tooltip).to_contain_text("persistence: ")
    expect(tooltip).to_contain_text("CI 99.7 %: ")
    expect(tooltip).to_contain_text("n_eff = ")

    chart = page.locator("#difference-chart")
    expect(chart.locator(".main-svg").first).to_be_visible()
    expect(chart.locator(".ytitle")).to_contain_text("MSE")
    page.click('#difference-chart-controls [data-metric="bias"]')
    expect(chart.locator(".ytitle")).to_contain_text("|mean error|")
    expect(page.locator("#difference-chart-note")).to_contain_text("better below zero")

    page.goto("/routines/tiny/compare")
    expect(page.locator("#overlay-chart .main-svg").first).to_be_visible()
    expect(page.locator(f"#grid-{world.ids['bad']} td[data-symbol='▼']").first).to_be_visible()
    assert errors == [] and outside == []
