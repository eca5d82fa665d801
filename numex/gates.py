"""Gates: the automated checks and sign-offs for entering a stage (pure).

A routine's ``gates`` block (DESIGN.md, "Gates") names, for each stage a
candidate can be promoted into, how many sign-offs it needs and which checks
must pass::

    gates:
      operational:
        sign_offs: 2
        checks:
          - min_cycles: 30
          - significant_improvement: {metric: rmse, level: 0.95}
          - no_significant_degradation: {metrics: [mae], level: 0.95}
          - max_failure_rate: 0.01

:func:`validate_gates` lists what is wrong with such a block (for spec
validation); :func:`evaluate_gate` runs one gate's checks on a
:class:`GateEvidence` and returns one :class:`CheckResult` per check, with
the numbers behind the outcome.

Multiple testing: the significance checks of one gate look at many scorecard
cells at once (one for ``significant_improvement``, every column of every
listed metric for ``no_significant_degradation``). They are judged as one
family: with ``m`` assessed cells inspected in total, each cell is tested at
the Šidák level ``level^(1/m)``, so that the gate's significance conclusions
hold together at ``level``. This makes ``significant_improvement`` harder to
pass and ``no_significant_degradation`` easier (a single cell must be more
clearly worse to block) — both are the price of not crying wolf across a
large grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from numex.scoring.metrics import ALIASES, METRICS, get_metric
from numex.scoring.scorecard import OVERALL, Cell, Scorecard
from numex.scoring.significance import sidak_level, t_quantile

#: The stages a gate leads into.
GATE_NAMES: tuple[str, ...] = ("parallel", "operational")
#: Every check a gate may list.
CHECK_NAMES: tuple[str, ...] = (
    "min_cycles",
    "min_cases",
    "significant_improvement",
    "no_significant_degradation",
    "offline_not_worse",
    "max_failure_rate",
)
SIGNIFICANCE_CHECKS = ("significant_improvement", "no_significant_degradation")
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class GateEvidence:
    """What a gate's checks look at; anything not known is None.

    ``n_cycles``/``n_cases`` default to the scorecard's paired cycles/cases
    when not given. ``failures``/``attempts`` count the candidate's cycles.
    ``offline_candidate``/``offline_reference`` map metric names to offline
    holdout scores; ``offline_reference`` is None when there is no reference
    (no operational candidate yet).
    """

    scorecard: Scorecard | None = None
    n_cycles: int | None = None
    n_cases: int | None = None
    failures: int | None = None
    attempts: int | None = None
    offline_candidate: Mapping[str, float] | None = None
    offline_reference: Mapping[str, float] | None = None


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check with the numbers behind it and a sentence for people."""

    name: str
    passed: bool
    params: dict[str, Any]
    observed: dict[str, Any]
    thresholds: dict[str, Any]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One check of a gate: its name and normalised parameters."""

    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Gate:
    """A parsed gate: required sign-offs and checks (see :meth:`from_spec`)."""

    name: str | None
    required_sign_offs: int
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], name: str | None = None) -> Gate:
        """Parse one gate (``{"sign_offs": N, "checks": [...]}``).

        ValueError listing every problem; an unknown check is named with the
        valid check names.
        """
        where = f"gates.{name}" if name else "gate"
        errors = _gate_errors(spec, where)
        if errors:
            raise ValueError("; ".join(errors))
        checks = tuple(
            Check(check_name, _normalise(check_name, raw))
            for item in spec.get("checks") or ()
            for check_name, raw in item.items()
        )
        return cls(name=name, required_sign_offs=int(spec["sign_offs"]), checks=checks)

    def evaluate(self, evidence: GateEvidence) -> list[CheckResult]:
        """Run every check on ``evidence``, in the order the gate lists them."""
        family = _family_size(self.checks, evidence.scorecard)
        return [_CHECKS[check.name](check.params, evidence, family) for check in self.checks]


def evaluate_gate(gate_spec: Mapping[str, Any] | Gate, evidence: GateEvidence) -> list[CheckResult]:
    """The results of the gate's checks on ``evidence`` (one per check, in order)."""
    gate = gate_spec if isinstance(gate_spec, Gate) else Gate.from_spec(gate_spec)
    return gate.evaluate(evidence)


def gate_passed(results: Sequence[CheckResult]) -> bool:
    """Whether every check passed."""
    return all(result.passed for result in results)


def required_sign_offs(gate_spec: Mapping[str, Any] | Gate) -> int:
    """How many approvals the gate needs."""
    gate = gate_spec if isinstance(gate_spec, Gate) else Gate.from_spec(gate_spec)
    return gate.required_sign_offs


def validate_gates(gates: Any) -> list[str]:
    """Problems with a routine's ``gates`` block, each naming field and value; [] if fine."""
    if not isinstance(gates, Mapping):
        return [f"gates: expected a mapping of stage to gate, got {type(gates).__name__}"]
    errors = []
    for name, spec in gates.items():
        if name not in GATE_NAMES:
            errors.append(f"gates.{name}: no such gate; valid gates: {', '.join(GATE_NAMES)}")
            continue
        errors += _gate_errors(spec, f"gates.{name}")
    return errors


# --- validation --------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _gate_errors(spec: Any, where: str) -> list[str]:
    if not isinstance(spec, Mapping):
        return [f"{where}: expected a mapping with sign_offs and checks"]
    errors = []
    for key in spec:
        if key not in ("sign_offs", "checks"):
            errors.append(f"{where}.{key}: unknown field; valid fields: sign_offs, checks")
    if "sign_offs" not in spec:
        errors.append(
            f"{where}.sign_offs: missing; give the number of approvals needed (0 or more)"
        )
    elif not _is_int(spec["sign_offs"]) or spec["sign_offs"] < 0:
        errors.append(f"{where}.sign_offs: {spec['sign_offs']!r} is not a whole number ≥ 0")
    checks = spec.get("checks") or []
    if not isinstance(checks, list):
        return errors + [f"{where}.checks: expected a list of checks"]
    for i, item in enumerate(checks):
        at = f"{where}.checks[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            errors.append(f"{at}: expected one check as 'name: parameters', got {item!r}")
            continue
        ((name, params),) = item.items()
        if name not in CHECK_NAMES:
            errors.append(f"{at}: unknown check {name!r}; valid checks: {', '.join(CHECK_NAMES)}")
            continue
        errors += _param_errors(name, params, f"{at}.{name}")
    return errors


def _level_errors(params: Mapping[str, Any], where: str) -> list[str]:
    level = params.get("level", DEFAULT_LEVEL)
    if not _is_number(level) or not 0.0 < level < 1.0:
        return [f"{where}.level: {level!r} is not a confidence level in (0, 1), e.g. 0.95"]
    return []


def _metric_errors(metric: Any, where: str) -> list[str]:
    if not isinstance(metric, str) or (metric not in METRICS and metric not in ALIASES):
        return [f"{where}: unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}"]
    return []


def _param_errors(name: str, params: Any, where: str) -> list[str]:
    if name in ("min_cycles", "min_cases"):
        if not _is_int(params) or params < 0:
            return [f"{where}: {params!r} is not a whole number ≥ 0"]
        return []
    if name == "max_failure_rate":
        if not _is_number(params) or not 0.0 <= params <= 1.0:
            return [f"{where}: {params!r} is not a rate in [0, 1], e.g. 0.01"]
        return []
    if not isinstance(params, Mapping):
        return [f"{where}: expected a mapping of parameters, got {params!r}"]
    allowed = {
        "significant_improvement": {"metric", "level"},
        "no_significant_degradation": {"metrics", "level"},
        "offline_not_worse": {"metric"},
    }[name]
    errors = [
        f"{where}.{key}: unknown parameter; valid: {', '.join(sorted(allowed))}"
        for key in params
        if key not in allowed
    ]
    if name == "no_significant_degradation":
        metrics = params.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            errors.append(f"{where}.metrics: give a non-empty list of metrics, e.g. [mae]")
        else:
            for metric in metrics:
                errors += _metric_errors(metric, f"{where}.metrics")
    else:
        if "metric" not in params:
            errors.append(f"{where}.metric: missing")
        else:
            errors += _metric_errors(params["metric"], f"{where}.metric")
    if "level" in allowed:
        errors += _level_errors(params, where)
    return errors


def _normalise(name: str, params: Any) -> dict[str, Any]:
    if name in ("min_cycles", "min_cases"):
        return {"minimum": int(params)}
    if name == "max_failure_rate":
        return {"maximum": float(params)}
    normal = dict(params)
    if name in SIGNIFICANCE_CHECKS:
        normal["level"] = float(params.get("level", DEFAULT_LEVEL))
    if name == "no_significant_degradation":
        normal["metrics"] = list(params["metrics"])
    return normal


# --- the checks --------------------------------------------------------------------


def _inspected_cells(check: Check, scorecard: Scorecard) -> list[Cell]:
    """The assessed cells a significance check looks at."""
    if check.name == "significant_improvement":
        metrics, overall_only = [check.params["metric"]], True
    else:
        metrics, overall_only = check.params["metrics"], False
    cells = []
    for metric in metrics:
        if not scorecard.has_metric(metric):
            continue
        candidates = (
            [scorecard.cell(metric, OVERALL)] if overall_only else scorecard.cells_of(metric)
        )
        cells += [cell for cell in candidates if cell.assessed]
    return cells


def _family_size(checks: Sequence[Check], scorecard: Scorecard | None) -> int:
    """``m``: assessed cells inspected by all the gate's significance checks (at least 1)."""
    if scorecard is None:
        return 1
    inspected = sum(
        len(_inspected_cells(check, scorecard))
        for check in checks
        if check.name in SIGNIFICANCE_CHECKS
    )
    return max(inspected, 1)


def _level_text(level: float, adjusted: float, family: int) -> str:
    if family == 1:
        return f"level {level:.4g}"
    return f"level {level:.4g} Šidák-adjusted over {family} cells to {adjusted:.6g} per cell"


def _adjusted_interval(cell: Cell, adjusted: float) -> list[float] | None:
    if cell.standard_error is None or cell.dof is None or cell.mean_difference is None:
        return None
    half = t_quantile(1.0 - (1.0 - adjusted) / 2.0, cell.dof) * cell.standard_error
    return [cell.mean_difference - half, cell.mean_difference + half]


def _cell_numbers(cell: Cell, adjusted: float) -> dict[str, Any]:
    return {
        "column": cell.column,
        "candidate_score": cell.candidate_score,
        "reference_score": cell.reference_score,
        "change_percent": cell.change_percent,
        "mean_difference": cell.mean_difference,
        "p_value": cell.p_value,
        "n_eff": cell.n_eff,
        "n_cycles": cell.n_cycles,
        "symbol": cell.symbol,
        "direction": cell.direction,
        "interval_at_adjusted_level": _adjusted_interval(cell, adjusted),
    }


def _at_least(what: str, attribute: str) -> Callable[[dict, GateEvidence, int], CheckResult]:
    name = f"min_{what}"

    def check(params: dict[str, Any], evidence: GateEvidence, family: int) -> CheckResult:
        minimum = params["minimum"]
        observed = getattr(evidence, attribute)
        if observed is None and evidence.scorecard is not None:
            observed = getattr(evidence.scorecard, attribute)
        if observed is None:
            message = f"no count of verified {what} in the evidence; need at least {minimum}"
            return CheckResult(
                name, False, params, {attribute: None}, {"minimum": minimum}, message
            )
        passed = observed >= minimum
        relation = "≥" if passed else "<"
        message = f"{observed} verified {what} {relation} {minimum} required"
        return CheckResult(
            name, passed, params, {attribute: int(observed)}, {"minimum": minimum}, message
        )

    return check


def _significant_improvement(
    params: dict[str, Any], evidence: GateEvidence, family: int
) -> CheckResult:
    name, metric, level = "significant_improvement", params["metric"], params["level"]
    adjusted = sidak_level(level, family)
    thresholds = {"level": level, "family_size": family, "per_cell_level": adjusted}
    thresholds["max_p_value"] = 1.0 - adjusted
    scorecard = evidence.scorecard
    if scorecard is None or not scorecard.has_metric(metric):
        what = "no scorecard" if scorecard is None else f"the scorecard has no {metric}"
        return CheckResult(name, False, params, {}, thresholds, f"{what}: cannot show improvement")
    cell = scorecard.cell(metric, OVERALL)
    observed = _cell_numbers(cell, adjusted)
    level_text = _level_text(level, adjusted, family)
    if not cell.assessed:
        n_eff = "unknown" if cell.n_eff is None else f"{cell.n_eff:.1f}"
        message = (
            f"{metric} overall: too few effective cycles for a verdict (n_eff {n_eff} < "
            f"floor {scorecard.floor:g})"
        )
        return CheckResult(name, False, params, observed, thresholds, message)
    passed = cell.direction == "better" and cell.p_value < 1.0 - adjusted
    change = "n/a" if cell.change_percent is None else f"{cell.change_percent:+.2f} %"
    if passed:
        message = (
            f"{metric} overall significantly better: change {change}, "
            f"p = {cell.p_value:.3g} < {1.0 - adjusted:.3g} ({level_text})"
        )
    elif cell.direction != "better":
        message = f"{metric} overall is not better: change {change}, p = {cell.p_value:.3g}"
    else:
        message = (
            f"{metric} overall better ({change}) but not significantly: "
            f"p = {cell.p_value:.3g} ≥ {1.0 - adjusted:.3g} ({level_text})"
        )
    return CheckResult(name, passed, params, observed, thresholds, message)


def _no_significant_degradation(
    params: dict[str, Any], evidence: GateEvidence, family: int
) -> CheckResult:
    name, metrics, level = "no_significant_degradation", params["metrics"], params["level"]
    adjusted = sidak_level(level, family)
    thresholds = {"level": level, "family_size": family, "per_cell_level": adjusted}
    thresholds["max_p_value"] = 1.0 - adjusted
    scorecard = evidence.scorecard
    if scorecard is None:
        return CheckResult(name, False, params, {}, thresholds, "no scorecard: cannot check")
    absent = [metric for metric in metrics if not scorecard.has_metric(metric)]
    if absent:
        message = f"the scorecard has no {', '.join(absent)}: cannot check for degradation"
        return CheckResult(name, False, params, {"absent_metrics": absent}, thresholds, message)
    cells = [cell for metric in metrics for cell in scorecard.cells_of(metric)]
    assessed = [cell for cell in cells if cell.assessed]
    worse = [
        cell
        for cell in assessed
        if cell.direction == "worse" and cell.p_value is not None and cell.p_value < 1.0 - adjusted
    ]
    observed = {
        "cells_checked": len(assessed),
        "cells_without_verdict": [f"{c.metric} {c.column}" for c in cells if not c.assessed],
        "worse_cells": [{"metric": c.metric, **_cell_numbers(c, adjusted)} for c in worse],
    }
    level_text = _level_text(level, adjusted, family)
    if worse:
        listed = ", ".join(
            f"{c.metric} {c.column} (p = {c.p_value:.3g}"
            + ("" if c.change_percent is None else f", {c.change_percent:+.2f} %")
            + ")"
            for c in worse
        )
        message = f"significantly worse ({level_text}): {listed}"
        return CheckResult(name, False, params, observed, thresholds, message)
    message = f"no cell of {', '.join(metrics)} significantly worse in {len(assessed)} checked"
    if observed["cells_without_verdict"]:
        message += f" ({len(observed['cells_without_verdict'])} without a verdict: too few cycles)"
    return CheckResult(name, True, params, observed, thresholds, message + f" ({level_text})")


def _offline_not_worse(params: dict[str, Any], evidence: GateEvidence, family: int) -> CheckResult:
    name, metric = "offline_not_worse", params["metric"]
    higher_is_better = get_metric(metric).higher_is_better
    thresholds = {"higher_is_better": higher_is_better}
    if evidence.offline_reference is None:
        observed = {"candidate": _offline(evidence.offline_candidate, metric), "reference": None}
        message = f"no reference to compare offline {metric} with (no operational candidate)"
        return CheckResult(name, True, params, observed, thresholds, message)
    candidate = _offline(evidence.offline_candidate, metric)
    reference = _offline(evidence.offline_reference, metric)
    observed = {"candidate": candidate, "reference": reference}
    if candidate is None or reference is None:
        whose = "candidate" if candidate is None else "reference"
        message = f"no offline {metric} for the {whose}: cannot compare"
        return CheckResult(name, False, params, observed, thresholds, message)
    passed = candidate >= reference if higher_is_better else candidate <= reference
    better = "higher" if higher_is_better else "lower"
    verb = "not worse than" if passed else "worse than"
    message = (
        f"offline {metric}: candidate {candidate:.6g} {verb} reference {reference:.6g} "
        f"({better} is better)"
    )
    return CheckResult(name, passed, params, observed, thresholds, message)


def _offline(scores: Mapping[str, float] | None, metric: str) -> float | None:
    """The offline score of ``metric``, under its own name or any alias of it."""
    if not scores:
        return None
    canonical = get_metric(metric).name
    names = [metric, canonical] + [alias for alias, name in ALIASES.items() if name == canonical]
    value = next((scores[name] for name in names if scores.get(name) is not None), None)
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _max_failure_rate(params: dict[str, Any], evidence: GateEvidence, family: int) -> CheckResult:
    name, maximum = "max_failure_rate", params["maximum"]
    failures, attempts = evidence.failures, evidence.attempts
    observed: dict[str, Any] = {"failures": failures, "attempts": attempts, "rate": None}
    if not attempts or failures is None:
        message = "no attempted cycles in the evidence: cannot compute a failure rate"
        return CheckResult(name, False, params, observed, {"maximum": maximum}, message)
    rate = failures / attempts
    observed["rate"] = rate
    passed = rate <= maximum
    relation = "≤" if passed else ">"
    message = f"{failures} of {attempts} cycles failed: rate {rate:.4g} {relation} {maximum:g}"
    return CheckResult(name, passed, params, observed, {"maximum": maximum}, message)


_CHECKS: dict[str, Callable[[dict[str, Any], GateEvidence, int], CheckResult]] = {
    "min_cycles": _at_least("cycles", "n_cycles"),
    "min_cases": _at_least("cases", "n_cases"),
    "significant_improvement": _significant_improvement,
    "no_significant_degradation": _no_significant_degradation,
    "offline_not_worse": _offline_not_worse,
    "max_failure_rate": _max_failure_rate,
}
