"""The MLflow registry's lag in the UI, a "sync now" button for ops, and background
delivery after decisions.

``templates/_registry_status.html`` shows "MLflow registry behind by N changes" wherever
it is included (the dashboard; a routine page with ``registry_routine`` set to the
routine's name). It calls the template global ``registry_status(routine)``, which reads
numex's database only and never contacts MLflow.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, flash, redirect, request, url_for
from flask_wtf import FlaskForm

from numex.services import registry_sync
from numex.services.errors import NumexError
from numex.web.auth import current_actor, role_required
from numex.web.context import runtime

bp = Blueprint("registry", __name__, url_prefix="/registry")


class SyncForm(FlaskForm):
    """No fields: the CSRF token only."""


def _back() -> str:
    target = request.form.get("next") or ""
    if target.startswith("/") and not urlsplit(target).netloc:
        return target
    return url_for("dashboard.index")


@bp.post("/sync")
@role_required("ops", "admin")
def sync_now():
    form = SyncForm()
    if not form.validate_on_submit():
        flash("The form expired; please try again.", "error")
        return redirect(_back())
    report = registry_sync.sync(runtime(), current_actor(), wait_s=5.0)
    if report.ok:
        flash(
            f"MLflow registry synced: {report.delivered} change(s) delivered.",
            "success",
        )
    elif report.skipped:
        flash(f"Registry sync skipped: {report.skipped}", "info")
    else:
        error = report.error or next((r.error for r in report.routines if r.error), "")
        flash(
            f"MLflow registry still behind by {report.pending} change(s): {error}",
            "error",
        )
    return redirect(_back())


def _status_for_template(routine: str | None = None) -> registry_sync.RegistryStatus | None:
    try:
        return registry_sync.registry_status(runtime(), routine)
    except NumexError:  # an unknown routine name in a template: show nothing
        return None


def init_app(app: Flask) -> None:
    """Register the sync endpoint and template helpers; in a serving process (not under
    TESTING, and unless NUMEX_REGISTRY_AUTOSYNC=0) deliver registry changes in the
    background right after each decision commits."""
    app.register_blueprint(bp)
    app.add_template_global(_status_for_template, "registry_status")
    rt = app.extensions["numex"]
    autosync = app.config.get("NUMEX_REGISTRY_AUTOSYNC")
    if autosync is None:
        autosync = rt.settings.registry_autosync and not app.testing
    if autosync:
        registry_sync.follow_commits(rt)
