"""The HTML pages, one blueprint per area."""

from __future__ import annotations

from flask import Flask


def register_ui(app: Flask) -> None:
    from numex.web.ui import audit, dashboard, promotions

    app.register_blueprint(dashboard.bp)

    from numex.web.ui import candidates, routines

    app.register_blueprint(candidates.bp)
    app.register_blueprint(routines.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(promotions.bp)

    from numex.web.ui import cycles

    app.register_blueprint(cycles.bp)

    from numex.web.ui import registry

    registry.init_app(app)

    from numex.web.ui import scorecards

    app.register_blueprint(scorecards.bp)
