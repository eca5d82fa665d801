"""The routine page: candidates in stage lanes and the recorded definition versions.

Other areas add to it without editing it: the template includes
``routines/_cycles.html`` and ``routines/_extra.html`` when they exist, with
``routine`` (the dict of :func:`numex.services.routines.detail`) in scope.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from numex.services import routines
from numex.web.context import runtime

bp = Blueprint("routines", __name__, url_prefix="/routines")


@bp.get("/<name>")
def show(name: str):
    return render_template("routines/show.html", routine=routines.detail(runtime(), name))
