"""Online serving: ``POST /routines/<r>/predict``, reading a prediction request back, and
the shadow worker's counters."""

from __future__ import annotations

from flask import jsonify, request

from numex.services import shadow
from numex.services.errors import InvalidInput
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime


@api.post("/routines/<routine>/predict")
def predict(routine: str):
    """``{"records": [{...}, ...]}`` → the operational forecasts and a request id."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "records" not in body:
        raise InvalidInput(
            'send a JSON body {"records": [{...}, ...]} with Content-Type: application/json'
        )
    result = shadow.predict(runtime(), routine, body["records"], current_actor())
    return jsonify(result.to_dict())


@api.get("/routines/<routine>/predictions/<request_id>")
def prediction(routine: str, request_id: str):
    """A prediction request with every candidate's forecasts stored under it so far."""
    return jsonify(shadow.get_request(runtime(), routine, request_id, current_actor()))


@api.get("/shadow/stats")
def shadow_stats():
    """The shadow worker's counters: enqueued, dropped, done, failed, queue depth."""
    current_actor().require(*shadow.PREDICT_ROLES, to="read the shadow serving counters")
    return jsonify(shadow.worker_for(runtime()).snapshot_stats())
