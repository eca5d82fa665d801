"""Error handling: JSON under /api, friendly pages elsewhere; never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from numex.services.errors import NumexError

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def json_error(status: int, code: str, message: str, details: dict | None = None):
    body = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return jsonify(body), status


def register(app: Flask) -> None:
    @app.errorhandler(NumexError)
    def numex_error(error: NumexError):
        if _wants_json():
            return json_error(error.status, error.code, error.message, error.details)
        return (
            render_template("errors/error.html", status=error.status, message=error.message),
            error.status,
        )

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        message = f"The form could not be accepted: {error.description}"
        if _wants_json():
            return json_error(400, "csrf", message)
        return render_template("errors/error.html", status=400, message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        if _wants_json():
            return json_error(status, error.name.lower().replace(" ", "_"), error.description)
        template = "errors/404.html" if status == 404 else "errors/error.html"
        return render_template(template, status=status, message=error.description), status

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side; the error has been logged."
        if _wants_json():
            return json_error(500, "internal_error", message)
        return render_template("errors/500.html", status=500, message=message), 500
