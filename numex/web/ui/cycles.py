"""Cycles on the routine page (a section included by ``routines/show.html``) and the
full, paginated list of a routine's cycles."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from numex.services import cycles
from numex.services.errors import InvalidInput
from numex.web.context import runtime

bp = Blueprint("cycles", __name__, url_prefix="/routines")

PER_PAGE = 50


@bp.app_template_global("routine_cycles")
def routine_cycles(name: str) -> dict[str, Any]:
    """The data of the routine page's cycles section (``routines/_cycles.html``)."""
    return cycles.routine_section(runtime(), name)


@bp.get("/<name>/cycles")
def index(name: str):
    """Every cycle of the routine, newest first, a page at a time."""
    try:
        page = int(request.args.get("page", "1"))
    except ValueError:
        raise InvalidInput(f"page={request.args.get('page')!r} is not a page number") from None
    status = request.args.get("status") or None
    if status is not None and status not in cycles.DONE_STATUSES + ("pending", "running"):
        raise InvalidInput(f"status={status!r} is not a cycle status")
    listing = cycles.list_cycles(
        runtime(), name, page=max(page, 1), per_page=PER_PAGE, status=status
    )
    return render_template("cycles/index.html", name=name, listing=listing, status=status)
