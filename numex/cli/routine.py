"""``numex routine``: routines."""

from __future__ import annotations

from pathlib import Path

import click

from numex.cli.common import NumexGroup, emit, get_runtime, json_option, table, token_option
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


@routine.command("load")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@token_option
@json_option
def load(path: Path, token: str | None, as_json: bool) -> None:
    """Create or update a routine from PATH (its folder or its routine.yaml).

    A changed definition is recorded as a new version; an unchanged one changes nothing.
    """
    from numex.cli.experiment import acting
    from numex.services import experiments

    result = experiments.load_routine(get_runtime(), path, acting(token))
    emit(result.to_dict(), as_json, lambda r: click.echo(r["message"]))


@routine.command("bootstrap")
@click.argument("routine_name", metavar="ROUTINE")
@click.argument("candidate")
@click.option("--reason", default="", help="Why this candidate goes first (recorded).")
@token_option
@json_option
def bootstrap(
    routine_name: str, candidate: str, reason: str, token: str | None, as_json: bool
) -> None:
    """Make CANDIDATE (name or id) the first operational candidate of ROUTINE.

    Allowed only while the routine has no operational candidate; recorded and audited.
    """
    from numex.cli.experiment import acting
    from numex.services import experiments

    moves = experiments.bootstrap(
        get_runtime(), routine_name, candidate, acting(token), reason=reason
    )

    def render(rows: list[dict]) -> None:
        for t in rows:
            click.echo(f"candidate #{t['candidate_id']}: {t['from']} → {t['to']} ({t['kind']})")
        click.echo(f"routine {routine_name}: operational candidate is now {candidate}")

    emit(moves, as_json, render)
