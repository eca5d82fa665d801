"""Candidate pages: the list (per routine, filtered by stage) and one candidate with its
lineage, parameters, offline scores per segment and stage history."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from numex.lifecycle import STAGES
from numex.services import experiments, routines
from numex.web.context import runtime

bp = Blueprint("candidates", __name__, url_prefix="/candidates")


@bp.get("/")
def index():
    routine = request.args.get("routine") or None
    stage = request.args.get("stage") or None
    rt = runtime()
    return render_template(
        "candidates/list.html",
        candidates=experiments.list_candidates(rt, routine=routine, stage=stage),
        routine=routine,
        stage=stage,
        stages=STAGES,
        routine_names=[r.name for r in routines.overview(rt)],
    )


@bp.get("/<int:candidate_id>")
def show(candidate_id: int):
    candidate = experiments.get_candidate(runtime(), candidate_id)
    return render_template("candidates/show.html", candidate=candidate)
