"""``numex routine``: routines."""

from __future__ import annotations

import click

from numex.cli.common import NumexGroup, emit, get_runtime, json_option, table
from numex.services import routines


@click.group(cls=NumexGroup)
def routine() -> None:
    """Routines: list, load, bootstrap."""


@routine.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List routines with their operational and parallel candidates."""
    data = [r.to_dict() for r in routines.overview(get_runtime())]

    def render(rows):
        if not rows:
            click.echo("no routines yet: numex routine load experiments/<routine>/routine.yaml")
            return
        table(
            [
                [
                    r["name"],
                    f"v{r['version']}",
                    (r["operational"] or {}).get("name", "-"),
                    ", ".join(c["name"] for c in r["parallel"]) or "-",
                    r["pending_requests"],
                ]
                for r in rows
            ],
            ["routine", "version", "operational", "parallel", "pending"],
        )

    emit(data, as_json, render)
