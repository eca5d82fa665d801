"""JSON API for scorecards.

- ``GET /routines/<r>/scorecard?candidate=&reference=&from=&to=&method=`` — the
  scorecard of ``candidate`` (id or name) against ``reference`` (default: the operational
  candidate) over the cycles from ``from`` to ``to`` (a date ``to`` includes its day) with
  standard errors ``method`` (iid, ar1, ar2 — the default — or dm): the scorecard's dict
  plus its content ``digest`` (any signed-in role). 400 names a bad or unknown
  parameter and the valid values; 404 for an unknown routine or candidate.
"""

from __future__ import annotations

from flask import jsonify, request

from numex.services import scorecards
from numex.services.errors import InvalidInput
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime

PARAMETERS = ("candidate", "reference", "from", "to", "method")


@api.get("/routines/<routine>/scorecard")
def scorecard(routine: str):
    """A candidate's scorecard against a reference, with its digest."""
    current_actor()
    unknown = sorted(set(request.args) - set(PARAMETERS))
    if unknown:
        raise InvalidInput(
            f"unknown parameter(s): {', '.join(unknown)}; valid: {', '.join(PARAMETERS)}",
            details={"parameter": unknown[0]},
        )
    comparison = scorecards.compare(
        runtime(),
        routine,
        request.args.get("candidate"),
        request.args.get("reference"),
        request.args.get("from"),
        request.args.get("to"),
        request.args.get("method"),
    )
    return jsonify(comparison.to_dict())
