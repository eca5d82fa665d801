"""The audit log page: filterable, with the chain's verification status."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from numex.services import audit
from numex.web.context import runtime

bp = Blueprint("audit", __name__, url_prefix="/audit")

PER_PAGE = 50


@bp.get("/")
def index():
    filters = {k: request.args.get(k) or None for k in ("action", "actor", "routine")}
    page = max(int(request.args.get("page", 1) or 1), 1)
    events, total = audit.list_events(
        runtime(), **filters, limit=PER_PAGE, offset=(page - 1) * PER_PAGE
    )
    return render_template(
        "audit/index.html",
        events=events,
        total=total,
        page=page,
        pages=max((total + PER_PAGE - 1) // PER_PAGE, 1),
        filters=filters,
        chain=audit.verify(runtime()),
    )
