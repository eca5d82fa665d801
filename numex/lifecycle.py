"""The stage lifecycle: one pure table of allowed moves.

experiment → parallel → operational → retired
     └──────────┴→ rejected            retired → operational (rollback)
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("experiment", "parallel", "operational", "retired", "rejected")

#: (from, to) → what the move is called. Anything not here is refused.
ALLOWED_MOVES: dict[tuple[str, str], str] = {
    ("experiment", "parallel"): "promotion",
    ("parallel", "operational"): "promotion",
    ("experiment", "rejected"): "rejection",
    ("parallel", "rejected"): "rejection",
    ("operational", "retired"): "retirement",
    ("retired", "operational"): "rollback",
}


class StageMoveRefused(ValueError):
    """A stage change the lifecycle does not allow."""


def check_move(from_stage: str, to_stage: str) -> str:
    """Return the name of the move ``from_stage → to_stage``, or raise StageMoveRefused."""
    for stage in (from_stage, to_stage):
        if stage not in STAGES:
            raise StageMoveRefused(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    move = ALLOWED_MOVES.get((from_stage, to_stage))
    if move is None:
        allowed = [to for (frm, to) in ALLOWED_MOVES if frm == from_stage]
        valid = ", ".join(allowed) if allowed else "none (it is a final stage)"
        raise StageMoveRefused(
            f"a candidate cannot move from {from_stage!r} to {to_stage!r}; "
            f"from {from_stage!r} it may move to: {valid}"
        )
    return move


def next_stage(stage: str) -> str | None:
    """The stage a promotion from ``stage`` leads to, if any."""
    return {"experiment": "parallel", "parallel": "operational"}.get(stage)
