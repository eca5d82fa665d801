"""The MLflow registry's lag and delivery: ``GET /registry/status``, ``POST /registry/sync``."""

from __future__ import annotations

from flask import jsonify, request

from numex.services import registry_sync
from numex.web.api import api
from numex.web.auth import current_actor
from numex.web.context import runtime


@api.get("/registry/status")
def registry_status():
    """Pending registry changes (``?routine=`` narrows it), the oldest's age, the last error."""
    status = registry_sync.registry_status(runtime(), request.args.get("routine") or None)
    return jsonify(status.to_dict())


@api.post("/registry/sync")
def registry_sync_now():
    """Deliver pending changes to MLflow (ops or admin). 200 when everything was
    delivered, 502 when MLflow refused or could not be reached (the body says why)."""
    report = registry_sync.sync(runtime(), current_actor(), wait_s=5.0)
    return jsonify(report.to_dict()), 200 if report.ok or report.skipped else 502
