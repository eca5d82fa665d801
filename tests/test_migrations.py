"""The migrations can never drift from the models, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from numex import schema
from numex.db import Base, make_engine


def _diff(url):
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_fresh_database_migrated_to_head_matches_the_models(empty_database_url):
    schema.upgrade(empty_database_url)
    assert _diff(empty_database_url) == []
    engine = make_engine(empty_database_url)
    assert schema.current_revision(engine) == schema.head_revision(empty_database_url)
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(empty_database_url):
    schema.upgrade(empty_database_url)
    schema.downgrade(empty_database_url, "base")
    engine = make_engine(empty_database_url)
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
    engine.dispose()
    schema.upgrade(empty_database_url)
    assert _diff(empty_database_url) == []


def test_roles_are_seeded(empty_database_url):
    schema.upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    with engine.connect() as connection:
        names = {row[0] for row in connection.execute(text("SELECT name FROM roles"))}
    engine.dispose()
    assert names == {"viewer", "scientist", "reviewer", "ops", "admin"}


def test_cli_upgrade_current_downgrade(runner, empty_database_url, monkeypatch):
    monkeypatch.setenv("NUMEX_DATABASE_URL", empty_database_url)
    head = schema.head_revision(empty_database_url)
    assert f"database at {head}" in runner.invoke("db", "upgrade").output
    current = runner.invoke("db", "current", "--json")
    assert '"up_to_date": true' in current.output
    assert "(base)" in runner.invoke("db", "downgrade", "base").output
    assert '"up_to_date": false' in runner.invoke("db", "current", "--json").output
