"""JSON API for cycles, stored forecasts and late observations of a routine.

- ``GET  /routines/<r>/cycles?page=&per_page=&status=`` — cycles, newest first, with
  each candidate's result (any signed-in role).
- ``POST /routines/<r>/cycles`` — ``{"at": TIME}`` runs one cycle, ``{"from": T1, "to":
  T2}`` backfills; ``"rerun": true`` runs done cycles again (role ops).
- ``GET  /routines/<r>/forecasts?candidate=&cycle=&page=&per_page=`` — stored forecasts
  with their observations (any signed-in role).
- ``POST /routines/<r>/observations`` — JSON records (a list or ``{"records": [...]}``)
  with the routine's case keys and target (role ops or scientist); 400 names bad records.
"""

from __future__ import annotations

from flask import jsonify, request

from numex.services import cycles, forecasts, observations
from numex.services.errors import InvalidInput
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime


def _int_arg(name: str, default: int, *, low: int = 1, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidInput(f"{name}={value} is out of range; valid: {bound}")
    return value


@api.get("/routines/<routine>/cycles")
def list_cycles(routine: str):
    """A page of the routine's cycles, newest first."""
    current_actor()
    status = request.args.get("status") or None
    if status is not None and status not in cycles.DONE_STATUSES + ("pending", "running"):
        raise InvalidInput(
            f"status={status!r} is not a cycle status; valid: pending, running, forecast, "
            "verified, failed"
        )
    page = cycles.list_cycles(
        runtime(),
        routine,
        page=_int_arg("page", 1),
        per_page=_int_arg("per_page", 50, high=forecasts.MAX_PER_PAGE),
        status=status,
    )
    return jsonify(page.to_dict())


@api.post("/routines/<routine>/cycles")
def run_cycles(routine: str):
    """Run one cycle (``at``) or backfill (``from`` and ``to``); needs role ops."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"at": TIME} or {"from": T1, "to": T2}')
    unknown = sorted(set(body) - {"at", "from", "to", "rerun"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}; valid: at, from, to, rerun")
    rerun = body.get("rerun", False)
    if not isinstance(rerun, bool):
        raise InvalidInput("field 'rerun' must be true or false")
    actor = current_actor()
    if "at" in body and not ({"from", "to"} & set(body)):
        outcome = cycles.run_cycle(runtime(), routine, body["at"], actor, rerun=rerun)
        return jsonify(outcome.to_dict())
    if "at" not in body and {"from", "to"} <= set(body):
        report = cycles.backfill(runtime(), routine, body["from"], body["to"], actor, rerun=rerun)
        return jsonify(report.to_dict())
    raise InvalidInput('give either "at", or both "from" and "to"')


@api.get("/routines/<routine>/forecasts")
def list_forecasts(routine: str):
    """A page of stored forecasts, oldest first; ``candidate`` (name or id) and ``cycle``
    (id or a time in its window) filter."""
    current_actor()
    page = forecasts.forecast_page(
        runtime(),
        routine,
        candidate=request.args.get("candidate") or None,
        cycle=request.args.get("cycle") or None,
        page=_int_arg("page", 1),
        per_page=_int_arg("per_page", 100, high=forecasts.MAX_PER_PAGE),
    )
    return jsonify(page.to_dict())


@api.post("/routines/<routine>/observations")
def post_observations(routine: str):
    """Late observations as JSON records; the report names unknown cases."""
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidInput(
            "send JSON records with Content-Type: application/json: [{...}, ...] or "
            '{"records": [{...}, ...]}'
        )
    actor = current_actor()
    actor.require(*observations.LOAD_ROLES, to="load observations")
    result = observations.load_observations(
        runtime(), routine, body, actor, source_name=f"POST by {actor.name}"
    )
    return jsonify(result.to_dict())
