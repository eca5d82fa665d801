"""Front-end libraries served by the app itself (an operations network may be closed)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_file

bp = Blueprint("vendor", __name__)


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@bp.get("/vendor/plotly.min.js")
def plotly_js():
    return send_file(_plotly_js(), mimetype="text/javascript", max_age=86400)
