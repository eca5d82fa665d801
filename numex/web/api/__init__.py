"""The JSON API under /api/v1. Errors are always JSON: {"error": {"code", "message"}}."""

from __future__ import annotations

from flask import Blueprint, jsonify

from numex.services import routines
from numex.web.context import runtime

api = Blueprint("api", __name__)


@api.get("/routines")
def list_routines():
    return jsonify(routines=[r.to_dict() for r in routines.overview(runtime())])


# Routes of other areas register themselves on the blueprint.
from numex.web.api import (  # noqa: E402, F401
    candidates,
    cycles,
    promotions,
    registry,
    scorecards,
    shadow,
)
