"""Pages of the gates: the reviewer inbox, promotion requests with the sign-off form,
the "Request promotion" button, and a routine's operational history with rollback.

Every form carries a CSRF token (Flask-WTF). Whether a form is shown is decided by
the same rules the service enforces (:func:`numex.services.promotions.may_sign`); a
forged POST from someone the form is hidden from reaches the service, is refused, and
the page answers with a flash message and the refusal's status (403, 409, 400).
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, RadioField, SelectField, TextAreaField
from wtforms.validators import DataRequired, InputRequired

from numex.services import promotions
from numex.services.errors import NumexError
from numex.web.auth import current_actor, role_required
from numex.web.context import runtime

bp = Blueprint("promotions", __name__)


class SignOffForm(FlaskForm):
    decision = RadioField(
        "Decision",
        choices=["approve", "reject"],
        validators=[InputRequired(message="Choose approve or reject.")],
    )
    comment = TextAreaField(
        "Comment", validators=[DataRequired(message="A comment is required: say why.")]
    )
    evidence_digest = HiddenField()


class WithdrawForm(FlaskForm):
    reason = TextAreaField(
        "Reason", validators=[DataRequired(message="Say why the request is withdrawn.")]
    )


class OverrideForm(FlaskForm):
    check = SelectField("Failed check", choices=[], validate_choice=False)
    justification = TextAreaField(
        "Justification",
        validators=[DataRequired(message="A written justification is required.")],
    )


class RefreshForm(FlaskForm):
    """No fields: the CSRF token only."""


class RequestPromotionForm(FlaskForm):
    target = HiddenField(validators=[DataRequired()])
    reason = TextAreaField("Reason")


class RollbackForm(FlaskForm):
    reason = TextAreaField(
        "Reason", validators=[DataRequired(message="A reason is required for a rollback.")]
    )
    confirm = BooleanField(
        "I confirm", validators=[DataRequired(message="Tick the box to confirm the rollback.")]
    )


def _form_errors(form: FlaskForm) -> None:
    for field, errors in form.errors.items():
        for error in errors:
            flash(error if field != "csrf_token" else f"The form expired: {error}", "error")


# --- inbox and list ---------------------------------------------------------------------


@bp.get("/inbox")
@role_required("reviewer")
def inbox():
    """Open requests awaiting the signed-in reviewer."""
    return render_template(
        "promotions/inbox.html", requests=promotions.inbox(runtime(), current_actor())
    )


@bp.get("/requests/")
def index():
    status = request.args.get("status") or None
    try:
        rows = promotions.list_requests(runtime(), status)
    except NumexError as error:
        flash(error.message, "error")
        rows, status = promotions.list_requests(runtime()), None
    return render_template("promotions/list.html", requests=rows, status=status)


# --- one request ------------------------------------------------------------------------


def _render_request(
    request_id: int,
    status: int = 200,
    *,
    sign_form: SignOffForm | None = None,
    withdraw_form: WithdrawForm | None = None,
    override_form: OverrideForm | None = None,
    refresh: bool = False,
):
    rt, actor = runtime(), current_actor()
    view = promotions.get_request(rt, request_id, refresh=refresh)
    refusal = promotions.may_sign(rt, request_id, actor)
    sign_form = sign_form or SignOffForm(formdata=None)
    sign_form.evidence_digest.data = view["evidence"]["digest"]
    failing = [c["name"] for c in view["checks"] if not c["effective_pass"]]
    override_form = override_form or OverrideForm(formdata=None)
    override_form.check.choices = failing
    is_open = view["status"] == "open"
    return (
        render_template(
            "promotions/request.html",
            view=view,
            refusal=refusal,
            may_sign=refusal is None,
            may_withdraw=is_open and actor.name == view["requested_by"],
            may_override=is_open and actor.has_role("admin") and bool(failing),
            may_refresh=is_open and actor.has_role("scientist", "reviewer", "ops", "admin"),
            sign_form=sign_form,
            withdraw_form=withdraw_form or WithdrawForm(formdata=None),
            override_form=override_form,
            refresh_form=RefreshForm(formdata=None),
        ),
        status,
    )


@bp.get("/requests/<int:request_id>")
def show(request_id: int):
    """A request: checks with their numbers, evidence digest, scorecard summary, lineage,
    sign-offs so far and the forms the signed-in user may use. The evidence of an open
    request is rebuilt first, so the page shows every verified cycle."""
    return _render_request(request_id, refresh=True)


def _refused(error: NumexError, request_id: int, **forms):
    flash(error.message, "error")
    return _render_request(request_id, error.status, **forms)


@bp.post("/requests/<int:request_id>/sign-off")
def sign_off(request_id: int):
    form = SignOffForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _render_request(request_id, 400, sign_form=form)
    try:
        view = promotions.sign_off(
            runtime(),
            request_id,
            current_actor(),
            form.decision.data,
            form.comment.data,
            evidence_digest=form.evidence_digest.data or None,
        )
    except NumexError as error:
        return _refused(error, request_id, sign_form=form)
    if view["status"] == "executed":
        flash(
            f"Signed. The gate is complete: {view['candidate']['name']} is now "
            f"{view['target_stage']}.",
            "success",
        )
    elif view["status"] == "rejected":
        flash(f"Rejected. Request #{request_id} is closed.", "warning")
    else:
        flash("Signed off. " + "; ".join(view["waiting_for"]).capitalize(), "success")
    return redirect(url_for("promotions.show", request_id=request_id))


@bp.post("/requests/<int:request_id>/withdraw")
def withdraw(request_id: int):
    form = WithdrawForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _render_request(request_id, 400, withdraw_form=form)
    try:
        promotions.withdraw(runtime(), request_id, current_actor(), form.reason.data)
    except NumexError as error:
        return _refused(error, request_id, withdraw_form=form)
    flash(f"Request #{request_id} withdrawn.", "info")
    return redirect(url_for("promotions.show", request_id=request_id))


@bp.post("/requests/<int:request_id>/override")
def override(request_id: int):
    form = OverrideForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _render_request(request_id, 400, override_form=form)
    try:
        view = promotions.override_check(
            runtime(), request_id, form.check.data or "", current_actor(), form.justification.data
        )
    except NumexError as error:
        return _refused(error, request_id, override_form=form)
    flash(f"Check {form.check.data} overridden.", "success")
    if view["status"] == "executed":
        flash(f"The gate is complete: {view['candidate']['name']} is now {view['target_stage']}.")
    return redirect(url_for("promotions.show", request_id=request_id))


@bp.post("/requests/<int:request_id>/refresh")
def refresh(request_id: int):
    form = RefreshForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _render_request(request_id, 400)
    try:
        result = promotions.refresh_evidence(runtime(), request_id, current_actor())
    except NumexError as error:
        return _refused(error, request_id)
    if result["changed"]:
        flash(f"New evidence: {len(result['changes'])} item(s) changed.", "warning")
    else:
        flash("The evidence is unchanged.", "info")
    return redirect(url_for("promotions.show", request_id=request_id))


# --- requesting from the candidate page --------------------------------------------------


@bp.post("/candidates/<int:candidate_id>/request-promotion")
def request_promotion(candidate_id: int):
    form = RequestPromotionForm()
    back = request.referrer or url_for("promotions.index")
    if not form.validate_on_submit():
        _form_errors(form)
        return redirect(back)
    try:
        view = promotions.request_promotion(
            runtime(), candidate_id, form.target.data, current_actor(), form.reason.data or ""
        )
    except NumexError as error:
        flash(error.message, "error")
        return render_template("errors/error.html", status=error.status, message=error.message), (
            error.status
        )
    flash(
        f"Promotion of {view['candidate']['name']} to {view['target_stage']} requested "
        f"(request #{view['id']}).",
        "success",
    )
    return redirect(url_for("promotions.show", request_id=view["id"]))


def promotion_button_state(candidate_id: int) -> dict:
    """What the "Request promotion" include shows for a candidate and the signed-in user."""
    from numex.lifecycle import next_stage

    rt, actor = runtime(), current_actor()
    with rt.read() as session:
        from numex.db import Candidate

        candidate = session.get(Candidate, candidate_id)
        stage = candidate.stage if candidate else None
    open_request = promotions.open_request_for(rt, candidate_id)
    target = next_stage(stage) if stage else None
    return {
        "target": target,
        "open_request": open_request,
        "can_request": bool(target) and open_request is None and actor.has_role("scientist"),
        "form": RequestPromotionForm(formdata=None, target=target),
    }


# --- operational history and rollback -------------------------------------------------------


def _render_history(name: str, status: int = 200, form: RollbackForm | None = None):
    rt, actor = runtime(), current_actor()
    periods = promotions.operational_history(rt, name)
    current = periods[0] if periods and periods[0]["until"] is None else None
    previous = promotions.rollback_target(rt, name)
    return (
        render_template(
            "promotions/history.html",
            routine=name,
            periods=periods,
            current=current,
            previous=previous,
            may_rollback=actor.has_role("ops") and previous is not None,
            form=form or RollbackForm(formdata=None),
        ),
        status,
    )


@bp.get("/routines/<name>/history")
def history(name: str):
    """Who was operational when, with each decision; the rollback button for ops."""
    return _render_history(name)


@bp.post("/routines/<name>/rollback")
def rollback(name: str):
    form = RollbackForm()
    if not form.validate_on_submit():
        _form_errors(form)
        return _render_history(name, 400, form)
    try:
        result = promotions.rollback(runtime(), name, current_actor(), form.reason.data)
    except NumexError as error:
        flash(error.message, "error")
        return _render_history(name, error.status, form)
    flash(
        f"Rolled back: {result['reinstated']['name']} is operational again"
        + (f"; {result['retired']['name']} retired." if result["retired"] else "."),
        "success",
    )
    return redirect(url_for("promotions.history", name=name))


@bp.app_context_processor
def _inject():
    return {"promotion_button_state": promotion_button_state}
