"""Sign-in for people (Flask-Login sessions, CSRF-protected forms) and bearer tokens for
the API. Every page needs a signed-in user; every API call a token or a session."""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from numex.services import users
from numex.services.errors import PermissionDenied, Unauthenticated
from numex.services.runtime import Actor
from numex.web.context import runtime

bp = Blueprint("auth", __name__)
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to see that page."
login_manager.login_message_category = "info"

#: Endpoints anyone may reach without signing in.
PUBLIC_ENDPOINTS = {
    "auth.login",
    "static",
    "bootstrap.static",
    "vendor.plotly_js",
    "dashboard.healthz",
}


class WebUser(UserMixin):
    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.id = str(actor.user_id)

    @property
    def username(self) -> str:
        return self.actor.name

    def has_role(self, *names: str) -> bool:
        return self.actor.has_role(*names)


@login_manager.user_loader
def _load_user(user_id: str) -> WebUser | None:
    actor = users.load_actor(runtime(), int(user_id))
    return WebUser(actor) if actor else None


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def authenticate_request() -> None:
    """Before every request: find who is acting, or refuse (401 JSON / sign-in redirect)."""
    g.actor = None
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    token = _bearer_token()
    if token is not None:
        g.actor = users.actor_for_token(runtime(), token)  # raises Unauthenticated → 401 JSON
        return None
    if current_user.is_authenticated:
        g.actor = current_user.actor
        return None
    if request.path.startswith("/api/") or request.path == "/metrics":
        raise Unauthenticated(
            "sign in or send 'Authorization: Bearer <token>' (create a token with "
            "`numex user token USERNAME`)"
        )
    return login_manager.unauthorized()


def current_actor() -> Actor:
    """Who is acting in this request (set by :func:`authenticate_request`)."""
    actor = g.get("actor")
    if actor is None:
        raise Unauthenticated("not signed in")
    return actor


def role_required(*roles: str) -> Callable:
    """A view decorator: the signed-in user must hold one of ``roles`` (else 403)."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            actor = current_actor()
            if not actor.has_role(*roles):
                raise PermissionDenied(
                    f"this page needs role {' or '.join(roles)}; "
                    f"you hold: {', '.join(sorted(actor.roles)) or 'none'}"
                )
            return view(*args, **kwargs)

        return wrapper

    return decorate


def _safe_next(target: str | None) -> str:
    if target and not urlsplit(target).netloc and target.startswith("/"):
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        actor = users.authenticate(runtime(), form.username.data.strip(), form.password.data)
        if actor is None:
            flash("Unknown user name or wrong password.", "error")
        else:
            login_user(WebUser(actor))
            flash(f"Signed in as {actor.name}.", "success")
            return redirect(_safe_next(request.args.get("next")))
    status = 400 if request.method == "POST" else 200
    return render_template("auth/login.html", form=form), status


@bp.post("/logout")
def logout():
    logout_user()
    flash("Signed out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app) -> None:
    login_manager.init_app(app)
    app.register_blueprint(bp)
    app.before_request(authenticate_request)

    @app.context_processor
    def _inject_actor():
        actor = g.get("actor")
        return {"actor": actor}
