"""Access to the runtime from inside a request."""

from __future__ import annotations

from flask import current_app

from numex.services.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["numex"]
