"""Errors a user can cause. Each maps to an HTTP status and a CLI exit code."""

from __future__ import annotations


class NumexError(Exception):
    """Base of every error a user can cause; ``str()`` is the message shown to them."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(NumexError):
    code = "invalid_input"
    status = 400


class NotFound(NumexError):
    code = "not_found"
    status = 404


class PermissionDenied(NumexError):
    code = "forbidden"
    status = 403


class Unauthenticated(NumexError):
    code = "unauthenticated"
    status = 401


class Conflict(NumexError):
    code = "conflict"
    status = 409
