"""The web app: ``create_app(config)`` builds it, one blueprint per area."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from numex.config import Settings, load_settings
from numex.resources import resource_path
from numex.services.runtime import Runtime
from numex.web.extensions import bootstrap, csrf

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the numex web app.

    ``config``: UPPER-CASE keys go to Flask's config (``TESTING``, ...); lower-case keys
    override numex settings (``database_url``, ``home``, ...). ``settings`` replaces them
    wholesale.
    """
    config = dict(config or {})
    flask_config = {k: v for k, v in config.items() if k.isupper()}
    overrides = {k: v for k, v in config.items() if not k.isupper()}
    settings = settings or load_settings(**overrides)

    app = Flask(
        __name__,
        template_folder=str(resource_path("templates")),
        static_folder="static",
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        BOOTSTRAP_SERVE_LOCAL=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.config.update(flask_config)
    rt = app.extensions["numex"] = Runtime(settings)
    # Online shadow serving: its threads start on the first /predict of each process and
    # stop at exit (or with stop_shadow_worker).
    from numex.services import shadow

    app.extensions["numex.shadow"] = shadow.worker_for(rt)

    bootstrap.init_app(app)
    csrf.init_app(app)

    from numex.web import auth, errors, metrics, vendor
    from numex.web.api import api
    from numex.web.ui import register_ui

    auth.init_app(app)
    register_ui(app)
    app.register_blueprint(vendor.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(api, url_prefix="/api/v1")
    # The JSON API authenticates with bearer tokens, not cookies: CSRF does not apply.
    csrf.exempt(api)
    errors.register(app)
    return app


def stop_shadow_worker(app: Flask, timeout: float = 5.0) -> None:
    """Stop the app's shadow worker (it finishes queued work for up to ``timeout`` s)."""
    worker = app.extensions.get("numex.shadow")
    if worker is not None:
        worker.stop(timeout)
