"""``numex demo``: the seattle-tmax demo routine."""

from __future__ import annotations

import click

from numex.cli.common import NumexGroup, emit, get_runtime, json_option
from numex.cli.experiment import progress_echo


@click.group(cls=NumexGroup)
def demo() -> None:
    """The demo routine (seattle-tmax)."""


@demo.command("load")
@json_option
def load(as_json: bool) -> None:
    """Load seattle-tmax, register persistence, ridge and gbm, and make persistence the
    operational candidate. Running it again changes nothing."""
    from numex.demo import load_demo

    result = load_demo(get_runtime(), progress=progress_echo())

    def render(r: dict) -> None:
        click.echo(
            "demo loaded: numex candidate list --routine seattle-tmax"
            if r["changed"]
            else "demo already loaded; nothing changed"
        )

    emit(result.to_dict(), as_json, render)
