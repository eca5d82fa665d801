"""The runtime every service works in: settings, the database, who is acting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from numex.config import Settings, load_settings
from numex.db import READ_ONLY, make_engine, make_session_factory, transaction
from numex.services.errors import PermissionDenied


@dataclass(frozen=True)
class Actor:
    """Who is acting: a signed-in user, a token's owner, or the system itself."""

    name: str
    user_id: int | None = None
    roles: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        """An administrative actor (database access is the credential): holds every role."""
        return cls(name=name, user_id=None, roles=frozenset({"__system__"}))

    @property
    def is_system(self) -> bool:
        return "__system__" in self.roles

    def has_role(self, *names: str) -> bool:
        return self.is_system or bool(self.roles & set(names))

    def require(self, *names: str, to: str) -> None:
        """Raise PermissionDenied unless the actor holds one of ``names``."""
        if not self.has_role(*names):
            held = ", ".join(sorted(self.roles)) or "none"
            raise PermissionDenied(
                f"{self.name} may not {to}: needs role {' or '.join(names)} (holds: {held})"
            )


class Runtime:
    """Settings plus the database; services open one transaction per call on it."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_session_factory(self.engine)
        # Reads take no write lock on SQLite (a deferred transaction: a WAL snapshot).
        self.read_sessions = make_session_factory(
            self.engine.execution_options(**{READ_ONLY: True})
        )
        self.cache: dict = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; closing it ends the transaction and detaches (without
        expiring) what was loaded, so results stay usable after the block. Nothing is
        committed: on SQLite it holds no write lock, and a write in it may be refused."""
        session = self.read_sessions()
        try:
            yield session
        finally:
            session.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()
