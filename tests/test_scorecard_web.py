"""Scorecard pages (grid, hover numbers, chart, downloads), the ops comparison page and
the scorecard API, on verified cycles written straight into the database."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re

import pytest

from numex.scoring import build_scorecard
from numex.scoring.scorecard import Scorecard
from numex.services import scorecards
from numex.web.ui.scorecards import SYMBOL_CLASS
from tests.scorecard_fixtures import Cycles

METRICS = ["rmse", "mae", "bias"]
SEGMENTS = ["lead", "season"]
PAGE = "/routines/tiny/scorecard"
CELL = re.compile(
    r'<td class="sc-cell (?P<css>sc-[a-z-]+)[^"]*" data-metric="(?P<metric>[^"]+)" '
    r'data-column="(?P<column>[^"]+)" data-symbol="(?P<symbol>[^"]*)"[^>]*'
    r'title="(?P<title>[^"]*)"><span class="sc-symbol">[^<]*</span> '
    r'<span class="sc-change">(?P<change>[^<]*)</span></td>'
)


@pytest.fixture
def world(rt, cast) -> Cycles:
    return Cycles(rt)


def cells_of(page: str, grid_id: str = "scorecard-grid") -> dict[tuple[str, str], dict]:
    start = page.index(f'id="{grid_id}"')
    table = page[start : page.index("</table>", start)]
    return {
        (m["metric"], m["column"]): {k: html.unescape(v) for k, v in m.groupdict().items()}
        for m in CELL.finditer(table)
    }


def independent(world: Cycles, candidate: str, reference: str = "persistence", **kwargs):
    start, end = kwargs.pop("start", None), kwargs.pop("end", None)
    pairs = world.pairs(candidate, reference, start, end)
    return build_scorecard(pairs, METRICS, SEGMENTS, **kwargs)


def change_text(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


# --- the page ------------------------------------------------------------------------------


def test_grid_shows_the_symbols_and_changes_numex_scoring_gives_on_the_same_pairs(
    client, auth, world
):
    auth.login("vic")
    page = client.get(f"{PAGE}?candidate=good")
    assert page.status_code == 200
    shown = cells_of(page.text)
    expected = independent(world, "good")
    assert len(shown) == len(expected.cells) == 3 * len(expected.columns)
    assert expected.columns == ("overall", "lead=1", "lead=2", "season=DJF", "season=MAM")
    for cell in expected.cells:
        drawn = shown[cell.metric, cell.column]
        assert drawn["symbol"] == cell.symbol
        assert drawn["css"] == SYMBOL_CLASS[cell.symbol]
        assert drawn["change"] == change_text(cell.change_percent)
        assert f"{cell.n_cases} cases in {cell.n_cycles} cycles" in drawn["title"]


def test_clearly_better_candidate_is_green_and_clearly_worse_is_red(client, auth, world):
    auth.login("olga")
    better = cells_of(client.get(f"{PAGE}?candidate=good").text)
    worse = cells_of(client.get(f"{PAGE}?candidate=bad").text)
    for metric in ("rmse", "mae"):
        assert better[metric, "overall"]["symbol"] == "▲"
        assert better[metric, "overall"]["css"] == "sc-better-strong"
        assert worse[metric, "overall"]["symbol"] == "▼"
        assert worse[metric, "overall"]["css"] == "sc-worse-strong"
    assert all(
        c["css"] in ("sc-better-strong", "sc-better") for k, c in better.items() if k[0] == "rmse"
    )
    assert all(
        c["css"] in ("sc-worse-strong", "sc-worse") for k, c in worse.items() if k[0] == "rmse"
    )


def test_hovering_a_cell_shows_both_scores_change_intervals_p_and_counts(client, auth, world):
    auth.login("vic")
    title = cells_of(client.get(f"{PAGE}?candidate=good").text)["rmse", "overall"]["title"]
    cell = independent(world, "good").cell("rmse")
    low95, low997 = cell.intervals_percent
    assert f"good: {cell.candidate_score:.4g}" in title
    assert f"persistence: {cell.reference_score:.4g}" in title
    assert f"change: {cell.change_percent:+.1f} %" in title
    assert f"CI 95 %: {low95.low:+.1f} % … {low95.high:+.1f} %" in title
    assert f"CI 99.7 %: {low997.low:+.1f} % … {low997.high:+.1f} %" in title
    assert "p = < 0.0001" in title or f"p = {cell.p_value:.2g}" in title
    assert f"n_eff = {cell.n_eff:.4g}" in title
    assert f"{cell.n_excluded} pairs excluded" in title


def test_page_shows_legend_family_levels_exclusions_digest_and_a_locally_served_chart(
    client, auth, world
):
    auth.login("vic")
    text = client.get(f"{PAGE}?candidate=good").text
    expected = independent(world, "good")
    comparison = scorecards.compare(world.rt, "tiny", "good")
    assert 'id="scorecard-legend"' in text and "▲" in text and "▽" in text
    family = text[text.index('id="family-levels"') :]
    assert f"all {expected.family.size} assessed cells at once" in family
    assert expected.family.size == 15
    assert f"{100 * 0.95 ** (1 / 15):.2f} %" == "99.66 %"
    assert "<td>95 %</td><td>46 %</td><td>99.66 %</td>" in family  # 0.95¹⁵ and Šidák
    assert (
        f"<strong>{expected.excluded.total}</strong> pair(s) excluded" in text
        and expected.excluded.total > 0
    )
    assert comparison.digest in text
    assert 'src="/vendor/plotly.min.js"' in text
    assert 'id="difference-chart"' in text
    assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', text)  # no CDN
    series = json.loads(re.search(r"const series = (\{.*?\});\n", text).group(1))
    rmse = expected.cycle_series("rmse")
    assert len(series["rmse"]["cycles"]) == len(rmse.cycles) == 90
    assert series["rmse"]["mean"] == pytest.approx(rmse.mean_difference)
    assert series["rmse"]["intervals"][0]["low"] == pytest.approx(rmse.intervals[0].low)
    assert series["rmse"]["difference"][5] == pytest.approx(rmse.difference[5], rel=1e-5)
    assert series["rmse"]["better_below"] is True


def test_reference_period_and_method_choices_change_the_result(client, auth, world):
    auth.login("vic")

    def page(query: str) -> tuple[dict, str]:
        response = client.get(f"{PAGE}?{query}")
        assert response.status_code == 200, response.text
        digest = re.search(r'id="scorecard-digest">([^<]+)<', response.text).group(1)
        return cells_of(response.text), digest

    default, digest = page("candidate=good")
    against_bad, digest_bad = page("candidate=good&reference=bad")
    period, digest_period = page("candidate=good&from=2021-02-01&to=2021-02-28")
    iid, digest_iid = page("candidate=good&method=iid")
    assert len({digest, digest_bad, digest_period, digest_iid}) == 4

    expected = independent(world, "good", "bad")
    assert against_bad["rmse", "overall"]["change"] == change_text(
        expected.cell("rmse").change_percent
    )
    february = independent(world, "good", start="2021-02-01", end="2021-03-01")
    assert february.n_cycles == 28
    assert (
        f"{february.cell('rmse').n_cases} cases in 28 cycles" in period["rmse", "overall"]["title"]
    )
    assert "season=MAM" not in {column for _, column in period}
    by_iid = independent(world, "good", method="iid")
    assert f"n_eff = {by_iid.cell('mae').n_eff:.4g}" in iid["mae", "overall"]["title"]


def test_bare_page_shows_the_newest_parallel_candidate_against_the_operational(client, auth, world):
    auth.login("vic")
    text = client.get(PAGE).text
    assert "Scorecard: <a" in text and ">bad</a>" in text and ">persistence</a>" in text
    assert f'<option value="{world.ids["bad"]}" selected>' in text


def test_bad_choices_come_back_as_a_message_above_the_form(client, auth, world):
    auth.login("vic")
    response = client.get(f"{PAGE}?candidate=good&from=2021-02-30")
    assert response.status_code == 400
    assert "from=&#39;2021-02-30&#39; is not a time" in response.text
    assert 'id="scorecard-form"' in response.text and 'id="scorecard-grid"' not in response.text
    same = client.get(f"{PAGE}?candidate=good&reference=good")
    assert same.status_code == 400 and "cannot be scored against itself" in same.text
    unknown = client.get(f"{PAGE}?candidate=nobody")
    assert unknown.status_code == 404 and "#2 good" in unknown.text


def test_without_an_operational_candidate_the_page_asks_for_a_reference(client, auth, rt, cast):
    from tests.promotion_fixtures import add_candidate, make_routine

    routine_id = make_routine(rt, name="lonely")
    add_candidate(rt, routine_id, "a", "parallel")
    b = add_candidate(rt, routine_id, "b", "experiment")
    auth.login("vic")
    response = client.get("/routines/lonely/scorecard?candidate=a")
    assert response.status_code == 400
    assert "has no operational candidate" in response.text
    ok = client.get(f"/routines/lonely/scorecard?candidate=a&reference={b}")
    assert ok.status_code == 200 and "0</strong> paired, verified cases" in ok.text


def test_pages_need_a_signed_in_user(client, world):
    for path in (f"{PAGE}?candidate=good", f"{PAGE}.csv?candidate=good", "/routines/tiny/compare"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


# --- downloads -----------------------------------------------------------------------------


def test_csv_download_parses_and_matches_numex_scoring(client, auth, world):
    auth.login("vic")
    response = client.get(f"{PAGE}.csv?candidate=good&reference=persistence&method=ar1")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = independent(world, "good", method="ar1")
    assert len(rows) == len(expected.cells)
    for row, cell in zip(rows, expected.cells, strict=True):
        assert (row["metric"], row["column"], row["symbol"]) == (
            cell.metric,
            cell.column,
            cell.symbol,
        )
        for name in ("candidate_score", "reference_score", "p_value", "n_eff", "standard_error"):
            assert float(row[name]) == pytest.approx(getattr(cell, name), rel=1e-9, abs=1e-300)
        assert int(row["n_excluded"]) == cell.n_excluded
        if cell.intervals_percent:
            assert float(row["ci95_low_percent"]) == pytest.approx(cell.intervals_percent[0].low)
        else:  # bias: no percent bound
            assert row["ci95_low_percent"] == "" and cell.metric == "bias"
    digest = scorecards.compare(world.rt, "tiny", "good", "persistence", method="ar1").digest
    assert response.headers["X-Scorecard-Digest"] == digest


def test_json_download_parses_and_matches_the_page_and_its_digest(client, auth, world):
    auth.login("vic")
    query = "candidate=good&from=2021-01-15&to=2021-03-10&method=dm"
    page = client.get(f"{PAGE}?{query}").text
    response = client.get(f"{PAGE}.json?{query}")
    assert response.status_code == 200 and response.mimetype == "application/json"
    data = response.get_json()
    card = Scorecard.from_dict({k: v for k, v in data.items() if k != "digest"})
    assert card.digest() == data["digest"] == response.headers["X-Scorecard-Digest"]
    assert data["digest"] in page
    assert data["meta"]["candidate"] == {"id": world.ids["good"], "name": "good"}
    assert data["meta"]["period"] == {"start": "2021-01-15T00:00:00", "end": "2021-03-11T00:00:00"}
    expected = independent(world, "good", start="2021-01-15", end="2021-03-11", method="dm")
    for cell in expected.cells:
        got = card.cell(cell.metric, cell.column)
        assert got.symbol == cell.symbol
        assert got.p_value == pytest.approx(cell.p_value, rel=1e-9)
        assert got.mean_difference == pytest.approx(cell.mean_difference, rel=1e-9)


def test_page_download_links_carry_the_same_choices(client, auth, world):
    auth.login("vic")
    text = client.get(f"{PAGE}?candidate=good&reference=bad&method=iid&from=2021-02-01").text
    link = html.unescape(re.search(r'href="([^"]+)" id="download-csv"', text).group(1))
    assert link.startswith("/routines/tiny/scorecard.csv?")
    for part in (
        f"candidate={world.ids['good']}",
        "reference=bad",
        "method=iid",
        "from=2021-02-01",
    ):
        assert part in link
    assert client.get(link).headers["X-Scorecard-Digest"] in text


def test_downloads_refuse_a_missing_candidate(client, auth, world):
    auth.login("vic")
    response = client.get(f"{PAGE}.csv")
    assert response.status_code == 400 and "candidate is required" in response.text


# --- ops comparison and links --------------------------------------------------------------


def test_compare_page_shows_every_parallel_candidate_against_the_operational(client, auth, world):
    auth.login("olga")
    response = client.get("/routines/tiny/compare")
    assert response.status_code == 200
    text = response.text
    good = cells_of(text, f"grid-{world.ids['good']}")
    bad = cells_of(text, f"grid-{world.ids['bad']}")
    assert good["rmse", "overall"]["symbol"] == "▲" and bad["rmse", "overall"]["symbol"] == "▼"
    assert f"grid-{world.ids['draft']}" not in text  # an experiment is not in the parallel run
    assert 'id="overlay-chart"' in text and 'src="/vendor/plotly.min.js"' in text
    overlay = json.loads(re.search(r"const overlay = (\[.*?\]);\n", text).group(1))
    assert [s["candidate"] for s in overlay] == ["good", "bad"]
    for name in ("good", "bad"):
        card = scorecards.compare(world.rt, "tiny", name).scorecard
        overall = card.cell("rmse")
        assert f"rmse {overall.candidate_score:.4g}" in text
        assert f"against {overall.reference_score:.4g}" in text
        assert f"needs 99.66 % per cell ({card.family.size} cells)" in text
    february = client.get("/routines/tiny/compare?from=2021-02-01&to=2021-02-28&method=iid")
    assert february.status_code == 200
    assert february.text.count("28 paired cycles") == 2


def test_compare_page_with_a_bad_period_says_so_and_shows_every_cycle(client, auth, world):
    auth.login("olga")
    response = client.get("/routines/tiny/compare?method=bootstrap")
    assert response.status_code == 400
    assert "method=&#39;bootstrap&#39; is not a standard-error method" in response.text
    assert f"grid-{world.ids['good']}" in response.text


def test_candidate_and_routine_pages_link_to_the_scorecard(client, auth, world):
    auth.login("vic")
    candidate = client.get(f"/candidates/{world.ids['good']}").text
    assert f'href="/routines/tiny/scorecard?candidate={world.ids["good"]}"' in candidate
    operational = client.get(f"/candidates/{world.ids['persistence']}").text
    assert 'href="/routines/tiny/compare"' in operational
    routine = client.get("/routines/tiny").text
    assert (
        'href="/routines/tiny/scorecard"' in routine and 'href="/routines/tiny/compare"' in routine
    )


# --- API -----------------------------------------------------------------------------------


def test_api_returns_the_scorecard_and_its_digest(client, world, token_for):
    headers = {"Authorization": f"Bearer {token_for('rita')}"}
    response = client.get(
        "/api/v1/routines/tiny/scorecard?candidate=good&reference=bad&method=iid", headers=headers
    )
    assert response.status_code == 200
    data = response.get_json()
    expected = scorecards.compare(world.rt, "tiny", "good", "bad", method="iid")
    assert data["digest"] == expected.digest
    assert data == json.loads(json.dumps(expected.to_dict()))
    assert data["meta"]["reference"] == {"id": world.ids["bad"], "name": "bad"}
    assert data["method"] == "iid" and len(data["cells"]) == 15


@pytest.mark.parametrize(
    ("query", "parameter", "says"),
    [
        ("candidate=good&method=bootstrap", "method", "valid: iid, ar1, ar2, dm"),
        ("candidate=good&from=yesterday-ish", "from", "valid: a date like 2014-01-01"),
        ("candidate=good&from=2021-03-01&to=2021-02-01", "to", "is not after from=2021-03-01"),
        ("method=iid", "candidate", "candidate is required"),
        ("candidate=good&reference=good", "reference", "cannot be scored against itself"),
        (
            "candidate=good&metod=iid",
            "metod",
            "valid: candidate, reference, from, to, method",
        ),
    ],
)
def test_api_bad_parameters_are_a_400_naming_them(client, world, token_for, query, parameter, says):
    headers = {"Authorization": f"Bearer {token_for('vic')}"}
    response = client.get(f"/api/v1/routines/tiny/scorecard?{query}", headers=headers)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"]["parameter"] == parameter
    assert parameter in error["message"] and says in error["message"]


def test_api_unknown_routine_or_candidate_is_a_404(client, world, token_for):
    headers = {"Authorization": f"Bearer {token_for('vic')}"}
    routine = client.get("/api/v1/routines/nowhere/scorecard?candidate=good", headers=headers)
    assert (
        routine.status_code == 404
        and "known routines: tiny" in routine.get_json()["error"]["message"]
    )
    candidate = client.get("/api/v1/routines/tiny/scorecard?candidate=999", headers=headers)
    assert candidate.status_code == 404
    error = candidate.get_json()["error"]
    assert error["details"]["parameter"] == "candidate" and "#1 persistence" in error["message"]
    reference = client.get(
        "/api/v1/routines/tiny/scorecard?candidate=good&reference=nobody", headers=headers
    )
    assert reference.status_code == 404
    assert reference.get_json()["error"]["details"]["parameter"] == "reference"


def test_api_needs_a_token_or_a_session(client, world):
    response = client.get("/api/v1/routines/tiny/scorecard?candidate=good")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthenticated"


def test_candidate_may_be_named_by_id_name_or_hash_id(rt, world):
    by_name = scorecards.compare(rt, "tiny", "good")
    by_id = scorecards.compare(rt, "tiny", world.ids["good"])
    by_hash = scorecards.compare(rt, "tiny", f"#{world.ids['good']}", "persistence")
    assert by_name.digest == by_id.digest == by_hash.digest
    assert math.isclose(
        by_name.scorecard.cell("rmse").p_value, by_id.scorecard.cell("rmse").p_value
    )


def test_a_routine_without_candidates_says_there_is_nothing_to_score(client, auth, rt, cast):
    from tests.promotion_fixtures import make_routine

    make_routine(rt, name="empty")
    auth.login("vic")
    response = client.get("/routines/empty/scorecard")
    assert response.status_code == 200
    assert "empty has no candidate to score yet" in response.text
