"""``numex scorecard``: the grid as a table, JSON and CSV, and clear refusals."""

from __future__ import annotations

import csv
import io
import json

import pytest

from numex.scoring import build_scorecard
from numex.services import scorecards
from tests.scorecard_fixtures import Cycles

METRICS = ["rmse", "mae", "bias"]
SEGMENTS = ["lead", "season"]


@pytest.fixture
def world(rt) -> Cycles:
    return Cycles(rt)


def test_table_is_a_weather_centre_grid_with_levels_exclusions_counts_and_digest(runner, world):
    result = runner.invoke("scorecard", "tiny", "good")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    expected = build_scorecard(world.pairs("good"), METRICS, SEGMENTS)
    digest = scorecards.compare(world.rt, "tiny", "good").digest
    assert lines[0] == (
        f"tiny: good (#{world.ids['good']}, parallel) against persistence "
        f"(#{world.ids['persistence']}, operational)"
    )
    assert lines[1] == (
        "period: every cycle (2021-01-01 … 2021-03-31) · method ar2 · 90 cycles · "
        f"{expected.n_cases} paired cases"
    )
    header = lines[3].split()
    assert header == ["overall", "lead=1", "lead=2", "season=DJF", "season=MAM"]
    rows = {line.split()[0]: line for line in lines[5:8]}
    assert list(rows) == METRICS
    for metric in METRICS:
        for cell in expected.cells_of(metric):
            assert f"{cell.symbol} {cell.change_percent:+.1f}%" in rows[metric]
    assert rows["rmse"].split()[1:3] == ["▲", f"{expected.cell('rmse').change_percent:+.1f}%"]
    assert (
        "family-wise: 15 assessed cells; each at 95 % → all 15 at once 46 %; a family-wise "
        "95 % needs each cell at 99.66 % (Šidák)" in result.output
    )
    total = expected.excluded.total
    assert total > 0
    assert (
        f"excluded: {total} pair(s) with a missing value (candidate 0, reference 0, "
        f"observation {total})" in result.output
    )
    assert lines[-1] == f"digest: {digest}"


def test_json_is_the_scorecard_with_its_digest(runner, world):
    result = runner.invoke(
        "scorecard", "tiny", str(world.ids["bad"]), "--reference", "good", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = scorecards.compare(world.rt, "tiny", "bad", "good")
    assert data["digest"] == expected.digest
    assert data == json.loads(json.dumps(expected.to_dict()))
    assert data["cells"][0]["symbol"] == "▼"


def test_csv_is_one_row_per_cell(runner, world):
    result = runner.invoke(
        "scorecard", "tiny", "good", "--method", "iid", "--format", "csv", "--from", "2021-02-01"
    )
    assert result.exit_code == 0, result.output
    expected = scorecards.compare(world.rt, "tiny", "good", start="2021-02-01", method="iid")
    assert result.output == expected.scorecard.to_csv()
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 15 and rows[0]["metric"] == "rmse" and rows[0]["column"] == "overall"
    assert int(rows[0]["n_cycles"]) == 59


def test_reference_period_and_method_change_the_scorecard(runner, world):
    def digest(*args: str) -> str:
        result = runner.invoke("scorecard", "tiny", "good", *args)
        assert result.exit_code == 0, result.output
        return result.output.splitlines()[-1]

    digests = {
        digest(),
        digest("--reference", "bad"),
        digest("--from", "2021-02-01", "--to", "2021-02-28"),
        digest("--method", "dm"),
    }
    assert len(digests) == 4
    result = runner.invoke(
        "scorecard", "tiny", "good", "--from", "2021-02-01", "--to", "2021-02-28"
    )
    assert "period: cycles from 2021-02-01 to before 2021-03-01 (2021-02-01 … 2021-02-28)" in (
        result.output
    )
    assert " · 28 cycles · " in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tiny", "nobody"), "candidate='nobody': routine tiny has no such candidate"),
        (("tiny", "good", "--reference", "ghost"), "reference='ghost': routine tiny has no"),
        (("tiny", "good", "--from", "2021-02-30"), "from='2021-02-30' is not a time"),
        (("tiny", "good", "--from", "2021-03-01", "--to", "2021-02-01"), "is not after"),
        (("tiny", "persistence"), "cannot be scored against itself"),
        (("nowhere", "good"), "no routine 'nowhere'; known routines: tiny"),
    ],
)
def test_bad_input_is_a_clear_message_and_a_non_zero_exit(runner, world, args, message):
    result = runner.invoke("scorecard", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unknown_method_names_the_valid_ones(runner, world):
    result = runner.invoke("scorecard", "tiny", "good", "--method", "bootstrap")
    assert result.exit_code == 2
    assert "'bootstrap' is not one of 'iid', 'ar1', 'ar2', 'dm'" in result.output


def test_no_operational_candidate_means_name_a_reference(runner, rt):
    from tests.promotion_fixtures import add_candidate, make_routine

    routine_id = make_routine(rt, name="lonely")
    add_candidate(rt, routine_id, "a", "parallel")
    add_candidate(rt, routine_id, "b", "experiment")
    result = runner.invoke("scorecard", "lonely", "a")
    assert result.exit_code == 1
    assert "routine lonely has no operational candidate to compare with" in result.output
    named = runner.invoke("scorecard", "lonely", "a", "--reference", "b")
    assert named.exit_code == 0
    assert "no paired, verified cases: nothing to score yet" in named.output
    assert "lead" not in named.output.splitlines()[3]  # no segment columns without pairs
