"""``numex experiment``: register experiment specs as candidates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from numex.cli.common import (
    NumexGroup,
    admin_actor,
    emit,
    get_runtime,
    json_option,
    token_actor,
    token_option,
)
from numex.services.runtime import Actor


def acting(token: str | None) -> Actor:
    """Who registers: the token's owner when a token is given (``--token`` or
    NUMEX_TOKEN), else the local administrator (database access is the credential)."""
    return token_actor(token) if token else admin_actor()


def progress_echo() -> Callable[[str], None]:
    """Progress lines for long steps, on stderr so --json output stays clean."""

    def echo(message: str) -> None:
        click.echo(f"… {message}", err=True)

    return echo


@click.group(cls=NumexGroup)
def experiment() -> None:
    """Experiments: train, score offline, log to MLflow, register a candidate."""


@experiment.command("register")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Candidate name (default: the spec's name).")
@token_option
@json_option
def register(path: Path, name: str | None, token: str | None, as_json: bool) -> None:
    """Register the experiment spec PATH (experiments/<routine>/<name>.yaml).

    Loads the routine's data, trains with the spec's seed, scores the holdout,
    logs the run and the model to MLflow and records the candidate with its
    lineage. The same spec, data and code again registers nothing.
    """
    from numex.services import experiments

    rt = get_runtime()
    result = experiments.register_experiment(
        rt, path, acting(token), name=name, progress=progress_echo()
    )

    def render(r) -> None:
        click.echo(r["message"])
        for note in r["notes"]:
            click.echo(f"note: {note}")

    emit(result.to_dict(), as_json, render)
