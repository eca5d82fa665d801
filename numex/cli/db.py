"""``numex db``: migrations, run from code. Needs only database access."""

from __future__ import annotations

import click

from numex import schema
from numex.cli.common import NumexGroup, emit, get_runtime, json_option


@click.group(cls=NumexGroup)
def db() -> None:
    """Database schema: upgrade, current, downgrade."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Migrate the database to REVISION (default: head)."""
    rt = get_runtime()
    schema.upgrade(rt.settings.database_url, revision)
    click.echo(f"database at {schema.current_revision(rt.engine)} ({rt.dialect})")


@db.command()
@json_option
def current(as_json: bool) -> None:
    """Show the database's revision and the code's head."""
    rt = get_runtime()
    data = {
        "current": schema.current_revision(rt.engine),
        "head": schema.head_revision(rt.settings.database_url),
        "dialect": rt.dialect,
    }
    data["up_to_date"] = data["current"] == data["head"]
    emit(
        data,
        as_json,
        lambda d: click.echo(
            f"current: {d['current'] or '(empty)'}  head: {d['head']}"
            + ("" if d["up_to_date"] else "  — run `numex db upgrade`")
        ),
    )


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ("base" removes everything)."""
    rt = get_runtime()
    schema.downgrade(rt.settings.database_url, revision)
    click.echo(f"database at {schema.current_revision(rt.engine) or '(base)'}")
