"""The HTML pages, one blueprint per area."""

from __future__ import annotations

from flask import Flask


def register_ui(app: Flask) -> None:
    from numex.web.ui import audit, dashboard

    app.register_blueprint(dashboard.bp)
    app.register_blueprint(audit.bp)
