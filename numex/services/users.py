"""Users, roles and API tokens.

Passwords are hashed with werkzeug's scrypt; API tokens are random and only their
SHA-256 digest is stored, so a leaked database does not leak credentials.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from numex.db import ROLES, ApiToken, Role, User, utcnow
from numex.services import audit
from numex.services.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from numex.services.runtime import Actor, Runtime

TOKEN_PREFIX = "nx_"
#: werkzeug hash method for new passwords; tests set a cheap one through the environment.
PASSWORD_METHOD = os.environ.get("NUMEX_PASSWORD_HASH_METHOD", "scrypt")
_USERNAME = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")
#: Token look-ups this process trusts for ``settings.token_cache_s``, per database: token
#: digest → (monotonic expiry, actor).
_token_cache: dict[str, dict[str, tuple[float, Actor]]] = {}
#: More distinct tokens than this in one process's cache and it starts again.
_TOKEN_CACHE_SIZE = 10_000


_DUMMY_HASH = generate_password_hash("numex", method=PASSWORD_METHOD)


def actor_for(user: User) -> Actor:
    """The Actor a user acts as."""
    return Actor(name=user.username, user_id=user.id, roles=frozenset(user.role_names))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def _check_roles(roles: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise InvalidInput(
            f"unknown role(s) {', '.join(map(repr, unknown))}; valid roles: {', '.join(ROLES)}"
        )
    if not roles:
        raise InvalidInput(f"a user needs at least one role; valid roles: {', '.join(ROLES)}")
    return list(dict.fromkeys(roles))


@dataclass
class NewUser:
    username: str
    roles: list[str]
    password: str | None  # shown once when numex generated it


def add_user(
    rt: Runtime,
    username: str,
    roles: list[str],
    actor: Actor,
    *,
    password: str | None = None,
    display_name: str = "",
    generate_password: bool = True,
) -> NewUser:
    """Create a user with ``roles``. Without ``password`` one is generated and returned once."""
    actor.require("admin", to="add users")
    if not _USERNAME.match(username):
        raise InvalidInput(
            f"user name {username!r} is not valid: use 2-64 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter"
        )
    roles = _check_roles(roles)
    generated = None
    if password is None and generate_password:
        password = generated = secrets.token_urlsafe(12)
    if password is not None and len(password) < 8:
        raise InvalidInput("a password needs at least 8 characters")
    with rt.transaction() as session:
        if session.scalar(select(User.id).where(User.username == username)):
            raise Conflict(f"user {username!r} already exists")
        role_rows = session.scalars(select(Role).where(Role.name.in_(roles))).all()
        user = User(
            username=username,
            display_name=display_name or username,
            password_hash=generate_password_hash(password, method=PASSWORD_METHOD)
            if password
            else None,
            roles=list(role_rows),
        )
        session.add(user)
        session.flush()
        audit.record(
            session, actor, "user.added", "user", user.id, {"username": username, "roles": roles}
        )
    return NewUser(username=username, roles=roles, password=generated)


def set_roles(rt: Runtime, username: str, roles: list[str], actor: Actor) -> list[str]:
    """Replace a user's roles."""
    actor.require("admin", to="change roles")
    roles = _check_roles(roles)
    with rt.transaction() as session:
        user = _user(session, username)
        before = sorted(user.role_names)
        user.roles = list(session.scalars(select(Role).where(Role.name.in_(roles))).all())
        audit.record(
            session,
            actor,
            "user.roles_changed",
            "user",
            user.id,
            {"username": username, "before": before, "after": sorted(roles)},
        )
    forget_tokens(rt)
    return sorted(roles)


def set_password(rt: Runtime, username: str, password: str, actor: Actor) -> None:
    """Set a user's password (the user themself or an admin)."""
    if actor.name != username:
        actor.require("admin", to="set another user's password")
    if len(password) < 8:
        raise InvalidInput("a password needs at least 8 characters")
    with rt.transaction() as session:
        user = _user(session, username)
        user.password_hash = generate_password_hash(password, method=PASSWORD_METHOD)
        audit.record(session, actor, "user.password_set", "user", user.id, {"username": username})


def authenticate(rt: Runtime, username: str, password: str) -> Actor | None:
    """The actor for a correct user name and password, else None (no hint which was wrong)."""
    with rt.read() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or not user.is_active or not user.password_hash:
            # Spend the same time as a real check so timing does not reveal user names.
            check_password_hash(_DUMMY_HASH, password)
            return None
        if not check_password_hash(user.password_hash, password):
            return None
        return actor_for(user)


def load_actor(rt: Runtime, user_id: int) -> Actor | None:
    with rt.read() as session:
        user = session.get(User, user_id)
        return actor_for(user) if user is not None and user.is_active else None


@dataclass
class NewToken:
    token: str
    prefix: str
    username: str
    name: str


def create_token(rt: Runtime, username: str, actor: Actor, *, name: str = "") -> NewToken:
    """A new API token for ``username`` (themself, or an admin for anyone). Shown once."""
    if actor.name != username:
        actor.require("admin", to="create tokens for other users")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with rt.transaction() as session:
        user = _user(session, username)
        row = ApiToken(user_id=user.id, name=name, prefix=token[:10], token_hash=_token_hash(token))
        session.add(row)
        session.flush()
        audit.record(
            session,
            actor,
            "token.created",
            "api_token",
            row.id,
            {"username": username, "name": name, "prefix": row.prefix},
        )
    return NewToken(token=token, prefix=token[:10], username=username, name=name)


def revoke_token(rt: Runtime, prefix: str, actor: Actor) -> None:
    with rt.transaction() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.prefix == prefix))
        if row is None:
            raise NotFound(f"no token starting {prefix!r}")
        if row.user.username != actor.name:
            actor.require("admin", to="revoke other users' tokens")
        row.revoked_at = utcnow()
        audit.record(session, actor, "token.revoked", "api_token", row.id, {"prefix": prefix})
    forget_tokens(rt)


def actor_for_token(rt: Runtime, token: str | None) -> Actor:
    """The actor a bearer token stands for; Unauthenticated if it is missing, unknown or revoked.

    A look-up is trusted for ``NUMEX_TOKEN_CACHE_SECONDS`` (5 by default; 0 turns the
    cache off) in this process, sparing every API call a query: a revocation or role
    change made in this process is seen at once, one made by another process (the CLI,
    another web worker) within that time.
    """
    if not token:
        raise Unauthenticated(
            "this needs an API token: pass --token or set NUMEX_TOKEN "
            "(create one with `numex user token USERNAME`)"
        )
    digest = _token_hash(token)
    cache = _token_cache.setdefault(rt.settings.database_url, {})
    now = time.monotonic()
    found = cache.get(digest)
    if found is not None and found[0] > now:
        return found[1]
    with rt.read() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
        if row is None or row.revoked_at is not None or not row.user.is_active:
            cache.pop(digest, None)
            raise Unauthenticated("the API token is unknown or revoked")
        actor = actor_for(row.user)
    if rt.settings.token_cache_s > 0:
        if len(cache) >= _TOKEN_CACHE_SIZE:
            cache.clear()
        cache[digest] = (now + rt.settings.token_cache_s, actor)
    return actor


def forget_tokens(rt: Runtime) -> None:
    """Drop this process's cached token look-ups: a revocation or a role change is seen
    at once here, and by other processes within ``NUMEX_TOKEN_CACHE_SECONDS``."""
    _token_cache.pop(rt.settings.database_url, None)


def list_users(rt: Runtime) -> list[dict]:
    with rt.read() as session:
        return [
            {
                "username": u.username,
                "display_name": u.display_name,
                "roles": sorted(u.role_names),
                "active": u.is_active,
                "tokens": sum(t.revoked_at is None for t in u.tokens),
            }
            for u in session.scalars(select(User).order_by(User.username))
        ]
