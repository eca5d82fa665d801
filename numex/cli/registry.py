"""``numex registry``: deliver pending changes to MLflow's model registry, or show the lag."""

from __future__ import annotations

import sys

import click

from numex.cli.common import NumexGroup, admin_actor, emit, get_runtime, json_option
from numex.services import registry_sync


@click.group(cls=NumexGroup)
def registry() -> None:
    """MLflow's registry follows numex: sync it, or see how far behind it is."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@registry.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also rewrite routines with nothing pending (every stage tag, every alias).",
)
@json_option
def sync(everything: bool, as_json: bool) -> None:
    """Deliver pending stage changes to MLflow: the `numex.stage` tag on each model
    version and the `operational` alias on each routine's registered model.

    Exits 1 when something could not be delivered (it stays pending for the next run).
    An administration command: database access is the credential.
    """
    report = registry_sync.sync(get_runtime(), admin_actor(), everything=everything)

    def render(r):
        if r["skipped"]:
            click.echo(f"registry sync skipped: {r['skipped']}")
        for routine in r["routines"]:
            alias = routine["alias"] or "(none: alias removed)"
            if routine["ok"]:
                click.echo(
                    f"{routine['routine']}: {len(routine['rows'])} change(s) delivered; "
                    f"{routine['registered_model']}@{registry_sync.ALIAS} → {alias}; "
                    f"{len(routine['tags'])} version tag(s) set"
                )
            else:
                click.echo(f"{routine['routine']}: FAILED: {routine['error']}")
            for note in routine["notes"]:
                click.echo(f"  note: {note}")
        if r["error"] and not r["routines"]:
            click.echo(f"registry sync FAILED: {r['error']}")
        if r["ok"] and not r["routines"]:
            click.echo("MLflow registry already up to date: nothing pending")
        if r["pending"]:
            click.echo(f"{r['pending']} change(s) still pending; run `numex registry sync` again")

    emit(report.to_dict(), as_json, render)
    if not report.ok:
        sys.exit(1)


@registry.command()
@click.option("--routine", help="Only this routine.")
@json_option
def status(routine: str | None, as_json: bool) -> None:
    """How many registry changes are waiting for MLflow, since when, and the last error.
    Reads numex's database only; never contacts MLflow."""
    result = registry_sync.registry_status(get_runtime(), routine)

    def render(r):
        scope = f"routine {r['routine']}: " if r["routine"] else ""
        if not r["behind"]:
            click.echo(f"{scope}MLflow registry in sync (last delivery {r['last_delivered_at']})")
            return
        click.echo(
            f"{scope}MLflow registry behind by {r['pending']} change(s); oldest waiting "
            f"{_age(r['oldest_pending_age_s'])}, {r['attempts']} attempt(s)"
        )
        if r["last_error"]:
            click.echo(f"last error: {r['last_error']}")

    emit(result.to_dict(), as_json, render)
