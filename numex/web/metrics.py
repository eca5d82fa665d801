"""``/metrics``: Prometheus text exposition of numex's counters, for ops.

Not public: the counters name routines and candidates and show traffic volumes. A
Prometheus server scrapes it with the bearer token of a user holding the ops (or admin)
role (``authorization: {credentials_file: ...}`` in its scrape config).
"""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from numex.services import shadow
from numex.web.auth import role_required
from numex.web.context import runtime

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@role_required("ops", "admin")
def metrics():
    body = shadow.exposition(shadow.worker_for(runtime()))
    return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)
