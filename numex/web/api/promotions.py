"""JSON API for promotion requests, sign-offs, overrides and rollback.

Every route calls :mod:`numex.services.promotions`, which checks roles and rules;
errors it raises become JSON 4xx answers (403, 409, 400, 404).
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from numex.services import promotions
from numex.services.errors import InvalidInput
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime


def _body(*required: str) -> dict[str, Any]:
    """The JSON object sent; InvalidInput naming any missing field."""
    body = request.get_json(silent=True)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("send a JSON object as the request body")
    missing = [name for name in required if not str(body.get(name) or "").strip()]
    if missing:
        raise InvalidInput(f"missing field(s): {', '.join(missing)}")
    return body


@api.post("/candidates/<candidate_id>/promotion-requests")
def create_promotion_request(candidate_id: str):
    """Request promotion: ``{"target": "parallel"|"operational", "reason": "…"}``."""
    body = _body()
    target = body.get("target") or body.get("to")
    if not target:
        raise InvalidInput(f"missing field: target (one of {', '.join(promotions.TARGETS)})")
    view = promotions.request_promotion(
        runtime(), candidate_id, str(target), current_actor(), str(body.get("reason") or "")
    )
    return jsonify(view), 201


@api.get("/promotion-requests")
def list_promotion_requests():
    status = request.args.get("status") or None
    routine = request.args.get("routine") or None
    return jsonify(requests=promotions.list_requests(runtime(), status, routine))


@api.get("/inbox")
def inbox():
    """Open requests awaiting the caller's sign-off."""
    return jsonify(requests=promotions.inbox(runtime(), current_actor()))


@api.get("/promotion-requests/<int:request_id>")
def get_promotion_request(request_id: int):
    """The request, its evidence rebuilt first when it is open."""
    return jsonify(promotions.get_request(runtime(), request_id, refresh=True))


@api.get("/promotion-requests/<int:request_id>/evidence")
def get_evidence(request_id: int):
    """The full frozen evidence (``?digest=`` for an earlier revision)."""
    digest = request.args.get("digest") or None
    return jsonify(promotions.evidence_content(runtime(), request_id, digest))


@api.post("/promotion-requests/<int:request_id>/evidence")
def refresh_evidence(request_id: int):
    """Rebuild the evidence; a new revision when it changed."""
    return jsonify(promotions.refresh_evidence(runtime(), request_id, current_actor()))


@api.post("/promotion-requests/<int:request_id>/sign-offs")
def create_sign_off(request_id: int):
    """``{"decision": "approve"|"reject", "comment": "…", "evidence_digest": "sha256:…"}``
    (``evidence_digest`` optional: the evidence reviewed; refused with 409 if it changed)."""
    body = _body("decision", "comment")
    view = promotions.sign_off(
        runtime(),
        request_id,
        current_actor(),
        str(body["decision"]),
        str(body["comment"]),
        evidence_digest=body.get("evidence_digest") or None,
    )
    return jsonify(view), 201


@api.post("/promotion-requests/<int:request_id>/withdraw")
def withdraw_request(request_id: int):
    body = _body("reason")
    return jsonify(promotions.withdraw(runtime(), request_id, current_actor(), str(body["reason"])))


@api.post("/promotion-requests/<int:request_id>/overrides")
def create_override(request_id: int):
    """``{"check": "min_cycles", "justification": "…"}`` (admin)."""
    body = _body("check", "justification")
    view = promotions.override_check(
        runtime(), request_id, str(body["check"]), current_actor(), str(body["justification"])
    )
    return jsonify(view), 201


@api.post("/routines/<name>/rollback")
def rollback(name: str):
    """``{"reason": "…"}`` (ops): reinstate the previous operational candidate."""
    body = _body("reason")
    return jsonify(promotions.rollback(runtime(), name, current_actor(), str(body["reason"])))


@api.get("/routines/<name>/operational-history")
def operational_history(name: str):
    return jsonify(history=promotions.operational_history(runtime(), name))
