"""The evidence of a promotion request: scorecard, gate checks with their numbers, lineage.

:func:`build_evidence` assembles it from the database as one JSON document in
canonical form (floats to 12 significant digits, sorted keys) whose digest,
``sha256:<hex>`` of :func:`numex.services.audit.canonical_json`, identifies it.
Nothing time-dependent goes into the content, so rebuilding evidence when
nothing changed gives the same digest, and a new digest always means the
evidence itself changed (new verified cycles, a new operational reference, …).

:func:`changes` compares two evidence documents the way a reviewer cares about:
check verdicts, the numbers behind them and the key scorecard figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from numex.db import Candidate
from numex.gates import Gate, GateEvidence, gate_passed
from numex.scoring import OVERALL, Scorecard
from numex.services import audit
from numex.services.errors import InvalidInput
from numex.services.stages import operational_of

#: Bump when the shape of the content changes.
EVIDENCE_SCHEMA = 1

#: Scorecard figures per metric (overall column) compared between two evidence documents.
SUMMARY_FIELDS = ("candidate_score", "reference_score", "change_percent", "p_value", "symbol")

#: Candidate fields recorded as lineage.
LINEAGE_FIELDS = (
    "source",
    "author",
    "lineage_digest",
    "spec_digest",
    "data_digest",
    "code_commit",
    "code_dirty",
    "params",
    "features",
    "mlflow_experiment_id",
    "mlflow_run_id",
    "model_uri",
    "registered_model_name",
    "model_version",
)


@dataclass(frozen=True)
class EvidenceDocument:
    """Evidence content (canonical, JSON-ready), its digest and whether every check passed."""

    content: dict[str, Any]
    digest: str
    all_checks_pass: bool


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data with floats rounded to 12 significant digits (NaN and
    infinities become None), so a stored document digests the same after a round trip."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        rounded = float(f"{value:.12g}")
        return 0.0 if rounded == 0 else rounded
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return canonical(value.item())
    return str(value)


def gate_for(candidate: Candidate, target: str) -> tuple[dict[str, Any], Gate]:
    """The raw spec and parsed :class:`Gate` of the routine's gate into ``target``."""
    definition = candidate.routine.current.definition
    gates = definition.get("gates") or {}
    spec = gates.get(target)
    if spec is None:
        raise InvalidInput(
            f"routine {candidate.routine.name} defines no gate into {target!r} "
            f"(gates.{target} in its routine.yaml); defined gates: {', '.join(gates) or 'none'}"
        )
    try:
        return spec, Gate.from_spec(spec, target)
    except ValueError as error:
        raise InvalidInput(f"routine {candidate.routine.name}: {error}") from None


def offline_overall(candidate: Candidate | None) -> dict[str, float] | None:
    """A candidate's offline holdout scores per metric (``offline_scores["overall"]``)."""
    if candidate is None:
        return None
    scores = candidate.offline_scores or {}
    overall = scores.get("overall", scores)
    return {
        str(metric): float(value)
        for metric, value in overall.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def lineage(candidate: Candidate) -> dict[str, Any]:
    """The candidate's lineage fields: MLflow run and model version, digests, code version."""
    return {
        "candidate_id": candidate.id,
        "name": candidate.name,
        "created_at": candidate.created_at.isoformat() if candidate.created_at else None,
        **{name: getattr(candidate, name) for name in LINEAGE_FIELDS},
    }


def summary(scorecard: Scorecard | None) -> dict[str, Any] | None:
    """The key scorecard figures: cycles, cases and, per metric, the overall cell."""
    if scorecard is None:
        return None
    metrics = {}
    for metric in scorecard.metrics:
        cell = scorecard.cell(metric, OVERALL)
        metrics[metric] = {name: getattr(cell, name) for name in SUMMARY_FIELDS}
    return {
        "n_cycles": scorecard.n_cycles,
        "n_cases": scorecard.n_cases,
        "method": scorecard.method,
        "metrics": metrics,
    }


def _scorecard(session: Session, candidate: Candidate, target: str, reference: Candidate | None):
    """The candidate's scorecard against the operational reference over every verified
    cycle; None when there is no reference, or (entering parallel) no paired case yet."""
    from numex.services.scorecards import scorecard_for

    if reference is None or reference.id == candidate.id:
        return None
    try:
        scorecard = scorecard_for(session, candidate.routine, candidate.id, reference.id)
    except ValueError:
        if target == "parallel":  # an experiment has usually forecast nothing yet
            return None
        raise
    if target == "parallel" and scorecard.n_cases == 0:
        return None
    return scorecard


def build_evidence(session: Session, candidate: Candidate, target: str) -> EvidenceDocument:
    """Evidence for promoting ``candidate`` into ``target``, as the database stands now.

    The scorecard is against the routine's operational candidate over every verified
    cycle (entering ``parallel`` it may be absent: experiments have no cycles yet);
    the checks are the routine gate's, with the numbers behind them: paired cycles and
    cases, the candidate's cycle failures/attempts and the offline scores of the
    candidate and of the operational reference.
    """
    from numex.services import cycles

    spec, gate = gate_for(candidate, target)
    reference = operational_of(session, candidate.routine_id)
    scorecard = _scorecard(session, candidate, target, reference)
    # Only cycles run at the current stage: the operational gate judges the parallel run.
    failures, attempts = cycles.failure_counts(session, candidate.id, stage=candidate.stage)
    offline_reference = offline_overall(reference) if reference is not None else None
    numbers = {
        "n_cycles": scorecard.n_cycles if scorecard else 0,
        "n_cases": scorecard.n_cases if scorecard else 0,
        "failures": failures,
        "attempts": attempts,
        "offline_candidate": offline_overall(candidate),
        "offline_reference": offline_reference,
    }
    results = gate.evaluate(
        GateEvidence(
            scorecard=scorecard,
            n_cycles=numbers["n_cycles"],
            n_cases=numbers["n_cases"],
            failures=failures,
            attempts=attempts,
            offline_candidate=numbers["offline_candidate"],
            offline_reference=offline_reference,
        )
    )
    routine = candidate.routine
    content = canonical(
        {
            "schema": EVIDENCE_SCHEMA,
            "routine": {
                "name": routine.name,
                "version": routine.current.version,
                "definition_digest": routine.current.digest,
            },
            "candidate": {"id": candidate.id, "name": candidate.name, "stage": candidate.stage},
            "target": target,
            "reference": (
                {"id": reference.id, "name": reference.name} if reference is not None else None
            ),
            "gate": {"name": target, "sign_offs": gate.required_sign_offs, "spec": spec},
            "numbers": numbers,
            "checks": [result.to_dict() for result in results],
            "all_checks_pass": gate_passed(results),
            "summary": summary(scorecard),
            "scorecard_digest": scorecard.digest() if scorecard else None,
            "scorecard": scorecard.to_dict() if scorecard else None,
            "lineage": lineage(candidate),
        }
    )
    return EvidenceDocument(
        content=content, digest=audit.digest(content), all_checks_pass=content["all_checks_pass"]
    )


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed from evidence ``before`` to evidence ``after``, for reviewers.

    One entry per changed item — ``{"item", "before", "after"}`` — covering the
    reference candidate, each check's verdict and sentence, the numbers behind the
    checks and the key scorecard figures (overall cell per metric). Empty when
    the two documents agree on all of them.
    """
    found: list[dict[str, Any]] = []

    def note(item: str, old: Any, new: Any) -> None:
        if old != new:
            found.append({"item": item, "before": old, "after": new})

    def name(ref: Mapping[str, Any] | None) -> str | None:
        return f"{ref['name']} (#{ref['id']})" if ref else None

    note("reference", name(before.get("reference")), name(after.get("reference")))
    old_checks = {c["name"]: c for c in before.get("checks") or []}
    new_checks = {c["name"]: c for c in after.get("checks") or []}
    for check in dict.fromkeys([*old_checks, *new_checks]):
        old, new = old_checks.get(check), new_checks.get(check)
        old_verdict = None if old is None else ("pass" if old["passed"] else "fail")
        new_verdict = None if new is None else ("pass" if new["passed"] else "fail")
        if old_verdict != new_verdict:
            note(f"check {check}", old_verdict, new_verdict)
        elif old and new and old["message"] != new["message"]:
            note(f"check {check}", old["message"], new["message"])
    old_numbers, new_numbers = before.get("numbers") or {}, after.get("numbers") or {}
    for key in ("n_cycles", "n_cases", "failures", "attempts"):
        note(key, old_numbers.get(key), new_numbers.get(key))
    old_summary = (before.get("summary") or {}).get("metrics") or {}
    new_summary = (after.get("summary") or {}).get("metrics") or {}
    for metric in dict.fromkeys([*old_summary, *new_summary]):
        old, new = old_summary.get(metric) or {}, new_summary.get(metric) or {}
        for field in SUMMARY_FIELDS:
            note(f"{metric} {field.replace('_', ' ')}", old.get(field), new.get(field))
    if (before.get("lineage") or {}) != (after.get("lineage") or {}):
        note("lineage", (before.get("lineage") or {}), (after.get("lineage") or {}))
    return found
