"""Dashboard and health check."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template
from sqlalchemy import text

from numex import schema
from numex.services import routines
from numex.web.context import runtime

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    return render_template("dashboard/index.html", routines=routines.overview(runtime()))


@bp.get("/healthz")
def healthz():
    """Liveness and readiness: the database answers and its schema is at head."""
    rt = runtime()
    try:
        with rt.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = schema.current_revision(rt.engine)
        head = schema.head_revision(rt.settings.database_url)
    except Exception as error:  # any database failure is "unhealthy", reported, not raised
        return jsonify(status="error", database="unreachable", detail=str(error)[:300]), 503
    if revision != head:
        return jsonify(
            status="error",
            database="ok",
            schema=revision,
            head=head,
            detail="run `numex db upgrade`",
        ), 503
    return jsonify(status="ok", database="ok", schema=revision, dialect=rt.dialect)
