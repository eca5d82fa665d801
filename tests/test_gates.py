"""Gate checks pass and fail with the numbers behind them; bad gate blocks are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from numex.gates import (
    CHECK_NAMES,
    Gate,
    GateEvidence,
    evaluate_gate,
    gate_passed,
    required_sign_offs,
    validate_gates,
)
from numex.scoring import Scorecard, build_scorecard, sidak_level

DESIGN_GATES = {
    "parallel": {"sign_offs": 1, "checks": [{"offline_not_worse": {"metric": "rmse"}}]},
    "operational": {
        "sign_offs": 2,
        "checks": [
            {"min_cycles": 30},
            {"significant_improvement": {"metric": "rmse", "level": 0.95}},
            {"no_significant_degradation": {"metrics": ["mae"], "level": 0.95}},
            {"max_failure_rate": 0.01},
        ],
    },
}


def make_scorecard(improvement: float, n_cycles: int = 120, seed: int = 0) -> Scorecard:
    rng = np.random.default_rng(seed)
    cycle = np.repeat(np.arange(n_cycles), 3)
    lead = np.tile([1, 2, 3], n_cycles)
    observation = rng.normal(10.0, 3.0, cycle.size)
    error_r = rng.normal(0.3, 1.5, cycle.size)
    error_c = (1.0 - improvement) * error_r + rng.normal(0.0, 0.2, cycle.size)
    pairs = pd.DataFrame(
        {
            "cycle": cycle,
            "case": np.arange(cycle.size),
            "candidate": observation + error_c,
            "reference": observation + error_r,
            "observation": observation,
            "lead": lead,
        }
    )
    return build_scorecard(pairs, ["rmse", "mae"], ["lead"])


@pytest.fixture(scope="module")
def better() -> Scorecard:
    return make_scorecard(0.2)


@pytest.fixture(scope="module")
def worse() -> Scorecard:
    return make_scorecard(-0.2)


def run(check: dict, evidence: GateEvidence):
    (result,) = evaluate_gate({"sign_offs": 0, "checks": [check]}, evidence)
    return result


def with_overall(card: Scorecard, metric: str, **changes) -> Scorecard:
    cells = tuple(
        replace(cell, **changes) if (cell.metric, cell.column) == (metric, "overall") else cell
        for cell in card.cells
    )
    return replace(card, cells=cells)


# --- the gates block -----------------------------------------------------------------


def test_design_gates_block_is_valid():
    assert validate_gates(DESIGN_GATES) == []


def test_required_sign_offs_come_from_the_gate():
    assert required_sign_offs(DESIGN_GATES["operational"]) == 2
    assert Gate.from_spec(DESIGN_GATES["parallel"], "parallel").required_sign_offs == 1


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ({"production": {"sign_offs": 1}}, "gates.production: no such gate; valid gates: parallel"),
        ({"parallel": {"checks": []}}, "gates.parallel.sign_offs: missing"),
        ({"parallel": {"sign_offs": -1}}, "gates.parallel.sign_offs: -1 is not a whole number"),
        ({"parallel": {"sign_offs": True}}, "gates.parallel.sign_offs: True is not a whole"),
        ({"parallel": {"sign_offs": 1, "owner": "x"}}, "gates.parallel.owner: unknown field"),
        ({"parallel": {"sign_offs": 1, "checks": {"min_cycles": 3}}}, "expected a list"),
        (
            {"operational": {"sign_offs": 2, "checks": [{"min_cycle": 30}]}},
            "gates.operational.checks[0]: unknown check 'min_cycle'; valid checks: min_cycles",
        ),
        (
            {"operational": {"sign_offs": 2, "checks": [{"min_cycles": 2.5}]}},
            "checks[0].min_cycles: 2.5 is not a whole number",
        ),
        (
            {"operational": {"sign_offs": 2, "checks": [{"max_failure_rate": 1.5}]}},
            "checks[0].max_failure_rate: 1.5 is not a rate in [0, 1]",
        ),
        (
            {
                "operational": {
                    "sign_offs": 2,
                    "checks": [{"significant_improvement": {"metric": "rmse", "level": 95}}],
                }
            },
            "significant_improvement.level: 95 is not a confidence level in (0, 1)",
        ),
        (
            {
                "operational": {
                    "sign_offs": 2,
                    "checks": [{"significant_improvement": {"metric": "rsme"}}],
                }
            },
            "significant_improvement.metric: unknown metric 'rsme'; valid metrics:",
        ),
        (
            {
                "operational": {
                    "sign_offs": 2,
                    "checks": [{"no_significant_degradation": {"metrics": []}}],
                }
            },
            "no_significant_degradation.metrics: give a non-empty list",
        ),
        (
            {
                "parallel": {
                    "sign_offs": 1,
                    "checks": [{"offline_not_worse": {"metric": "rmse", "margin": 1}}],
                }
            },
            "offline_not_worse.margin: unknown parameter",
        ),
        (
            {"parallel": {"sign_offs": 1, "checks": [{"min_cycles": 1, "min_cases": 2}]}},
            "expected one check as 'name: parameters'",
        ),
    ],
)
def test_invalid_gates_are_reported_naming_field_and_value(gates, message):
    errors = validate_gates(gates)
    assert any(message in error for error in errors), errors


def test_unknown_check_is_refused_naming_the_valid_checks():
    gate = {"sign_offs": 1, "checks": [{"looks_good": True}]}
    with pytest.raises(ValueError, match="unknown check 'looks_good'") as error:
        evaluate_gate(gate, GateEvidence())
    for name in CHECK_NAMES:
        assert name in str(error.value)


# --- counts --------------------------------------------------------------------------


def test_min_cycles_passes_and_fails_with_the_count():
    passed = run({"min_cycles": 30}, GateEvidence(n_cycles=31))
    assert passed.passed and passed.observed == {"n_cycles": 31}
    assert passed.thresholds == {"minimum": 30}
    failed = run({"min_cycles": 30}, GateEvidence(n_cycles=12))
    assert not failed.passed
    assert "12" in failed.message and "30" in failed.message


def test_min_cycles_falls_back_to_the_scorecard(better):
    result = run({"min_cycles": 100}, GateEvidence(scorecard=better))
    assert result.passed and result.observed["n_cycles"] == better.n_cycles == 120


def test_min_cases_fails_without_evidence():
    result = run({"min_cases": 10}, GateEvidence())
    assert not result.passed and "no count" in result.message
    assert run({"min_cases": 10}, GateEvidence(n_cases=10)).passed


def test_max_failure_rate_passes_and_fails_with_the_rate():
    ok = run({"max_failure_rate": 0.01}, GateEvidence(failures=1, attempts=200))
    assert ok.passed and ok.observed["rate"] == pytest.approx(0.005)
    bad = run({"max_failure_rate": 0.01}, GateEvidence(failures=3, attempts=100))
    assert not bad.passed and bad.observed["rate"] == pytest.approx(0.03)
    assert "3 of 100" in bad.message


def test_max_failure_rate_fails_without_attempts():
    result = run({"max_failure_rate": 0.01}, GateEvidence(failures=0, attempts=0))
    assert not result.passed and "no attempted cycles" in result.message


# --- offline scores ------------------------------------------------------------------


def test_offline_not_worse_compares_in_the_metrics_direction():
    lower = GateEvidence(offline_candidate={"rmse": 2.0}, offline_reference={"rmse": 2.5})
    assert run({"offline_not_worse": {"metric": "rmse"}}, lower).passed
    higher = GateEvidence(offline_candidate={"rmse": 2.6}, offline_reference={"rmse": 2.5})
    result = run({"offline_not_worse": {"metric": "rmse"}}, higher)
    assert not result.passed
    assert result.observed == {"candidate": 2.6, "reference": 2.5}
    accuracy = GateEvidence(
        offline_candidate={"accuracy": 0.8}, offline_reference={"accuracy": 0.7}
    )
    assert run({"offline_not_worse": {"metric": "accuracy"}}, accuracy).passed


def test_offline_not_worse_passes_a_tie():
    tie = GateEvidence(offline_candidate={"mae": 1.0}, offline_reference={"mae": 1.0})
    assert run({"offline_not_worse": {"metric": "mae"}}, tie).passed


def test_offline_not_worse_fails_when_a_score_is_missing():
    evidence = GateEvidence(offline_candidate={"mae": 1.0}, offline_reference={"mae": 1.0})
    result = run({"offline_not_worse": {"metric": "rmse"}}, evidence)
    assert not result.passed and "no offline rmse for the candidate" in result.message


def test_offline_not_worse_passes_when_there_is_no_reference_yet():
    result = run(
        {"offline_not_worse": {"metric": "rmse"}}, GateEvidence(offline_candidate={"rmse": 2.0})
    )
    assert result.passed and "no reference" in result.message


# --- significance --------------------------------------------------------------------


def test_significant_improvement_passes_on_a_clear_improvement(better):
    result = run({"significant_improvement": {"metric": "rmse"}}, GateEvidence(scorecard=better))
    assert result.passed
    assert result.params == {"metric": "rmse", "level": 0.95}
    assert result.observed["p_value"] < 0.05
    assert result.observed["change_percent"] < 0
    low, high = result.observed["interval_at_adjusted_level"]
    assert high < 0
    assert "significantly better" in result.message


def test_significant_improvement_fails_on_a_degradation(worse):
    result = run({"significant_improvement": {"metric": "rmse"}}, GateEvidence(scorecard=worse))
    assert not result.passed and "not better" in result.message


def test_significant_improvement_fails_without_a_scorecard_or_the_metric(better):
    check = {"significant_improvement": {"metric": "bias"}}
    assert not run(check, GateEvidence()).passed
    result = run(check, GateEvidence(scorecard=better))
    assert not result.passed and "has no bias" in result.message


def test_significant_improvement_fails_below_the_effective_sample_floor(better):
    thin = with_overall(better, "rmse", symbol="", verdict=None, n_eff=4.0)
    result = run({"significant_improvement": {"metric": "rmse"}}, GateEvidence(scorecard=thin))
    assert not result.passed and "too few effective cycles" in result.message


def test_significance_checks_use_the_sidak_level_over_the_cells_they_inspect(better):
    # p = 0.02 passes a lone 95 % test but not one of 1 + 4 inspected cells.
    borderline = with_overall(better, "rmse", p_value=0.02, symbol="△", verdict="better")
    improvement = {"significant_improvement": {"metric": "rmse", "level": 0.95}}
    alone = run(improvement, GateEvidence(scorecard=borderline))
    assert alone.passed and alone.thresholds["family_size"] == 1
    gate = {
        "sign_offs": 2,
        "checks": [improvement, {"no_significant_degradation": {"metrics": ["mae"]}}],
    }
    joint, degradation = evaluate_gate(gate, GateEvidence(scorecard=borderline))
    assert joint.thresholds["family_size"] == 5
    assert joint.thresholds["per_cell_level"] == pytest.approx(sidak_level(0.95, 5))
    assert joint.thresholds["max_p_value"] == pytest.approx(1 - 0.95 ** (1 / 5))
    assert not joint.passed and "Šidák" in joint.message
    assert degradation.passed


def test_no_significant_degradation_passes_when_nothing_is_worse(better):
    check = {"no_significant_degradation": {"metrics": ["mae", "rmse"], "level": 0.95}}
    result = run(check, GateEvidence(scorecard=better))
    assert result.passed
    assert result.observed["cells_checked"] == 8 and result.observed["worse_cells"] == []


def test_no_significant_degradation_fails_naming_each_worse_cell(worse):
    check = {"no_significant_degradation": {"metrics": ["mae"], "level": 0.95}}
    result = run(check, GateEvidence(scorecard=worse))
    assert not result.passed
    columns = [cell["column"] for cell in result.observed["worse_cells"]]
    assert columns == ["overall", "lead=1", "lead=2", "lead=3"]
    assert all(
        cell["p_value"] < result.thresholds["max_p_value"]
        for cell in result.observed["worse_cells"]
    )
    assert "mae lead=2" in result.message


def test_no_significant_degradation_fails_for_a_metric_the_scorecard_lacks(better):
    check = {"no_significant_degradation": {"metrics": ["sde"]}}
    result = run(check, GateEvidence(scorecard=better))
    assert not result.passed and result.observed == {"absent_metrics": ["sde"]}


def test_the_design_operational_gate_passes_on_good_evidence(better):
    evidence = GateEvidence(scorecard=better, failures=0, attempts=120)
    results = evaluate_gate(DESIGN_GATES["operational"], evidence)
    assert [r.name for r in results] == [
        "min_cycles",
        "significant_improvement",
        "no_significant_degradation",
        "max_failure_rate",
    ]
    assert gate_passed(results)
    json.dumps([r.to_dict() for r in results], allow_nan=False)


def test_the_design_operational_gate_fails_on_a_worse_candidate(worse):
    evidence = GateEvidence(scorecard=worse, failures=0, attempts=120)
    results = evaluate_gate(DESIGN_GATES["operational"], evidence)
    assert not gate_passed(results)
    assert {r.name for r in results if not r.passed} == {
        "significant_improvement",
        "no_significant_degradation",
    }


def test_offline_not_worse_reads_log_loss_under_either_spelling():
    evidence = GateEvidence(offline_candidate={"log_loss": 0.4}, offline_reference={"logloss": 0.5})
    assert (
        validate_gates(
            {
                "parallel": {
                    "sign_offs": 1,
                    "checks": [{"offline_not_worse": {"metric": "log_loss"}}],
                }
            }
        )
        == []
    )
    result = run({"offline_not_worse": {"metric": "log_loss"}}, evidence)
    assert result.passed and result.observed == {"candidate": 0.4, "reference": 0.5}
