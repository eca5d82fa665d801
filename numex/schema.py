"""Migrations run from code: ``numex db upgrade|current|downgrade``."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from numex.db import make_engine
from numex.resources import resource_path


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at numex's migrations and ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(resource_path("migrations")))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def is_current(database_url: str) -> bool:
    engine = make_engine(database_url)
    try:
        return current_revision(engine) == head_revision(database_url)
    finally:
        engine.dispose()
