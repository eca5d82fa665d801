"""JSON API for candidates: list, show, and register a model already in MLflow.

Every route calls :mod:`numex.services.experiments`, which checks roles; its errors
become JSON 4xx answers naming the problem.
"""

from __future__ import annotations

from flask import jsonify, request

from numex.services import experiments
from numex.services.errors import InvalidInput
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime


@api.get("/candidates")
def list_candidates():
    """Candidates, newest first; ``?routine=`` and ``?stage=`` filter."""
    return jsonify(
        candidates=experiments.list_candidates(
            runtime(),
            routine=request.args.get("routine") or None,
            stage=request.args.get("stage") or None,
        )
    )


@api.get("/candidates/<int:candidate_id>")
def get_candidate(candidate_id: int):
    """One candidate: lineage, parameters, offline scores, stage history."""
    return jsonify(experiments.get_candidate(runtime(), candidate_id))


@api.post("/candidates")
def register_candidate():
    """Bring your own model: ``{"routine": "…", "model_uri": "models:/…", "name": "…"}``
    (``name`` optional). Needs the scientist role. 201 with the registration."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput(
            'send a JSON object: {"routine": "<routine>", "model_uri": "models:/<name>/<version>"'
            ' or "runs:/<run_id>/<path>", "name": "<optional candidate name>"}'
        )
    unknown = sorted(set(body) - {"routine", "model_uri", "name"})
    if unknown:
        raise InvalidInput(
            f"unknown field(s): {', '.join(unknown)}; valid fields: routine, model_uri, name"
        )
    for field in ("routine", "model_uri"):
        value = body.get(field)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"field {field!r} is required and must be a non-empty string")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InvalidInput("field 'name' must be a non-empty string when given")
    actor = current_actor()
    # Refuse early, before MLflow is asked to load anything.
    actor.require("scientist", to="register a candidate")
    result = experiments.register_model_uri(
        runtime(), body["routine"].strip(), body["model_uri"].strip(), actor, name=name
    )
    return jsonify(result.to_dict()), 201
