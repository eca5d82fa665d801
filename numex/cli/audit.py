"""``numex audit``: verify the hash chain, export, list."""

from __future__ import annotations

import sys

import click

from numex.cli.common import NumexGroup, emit, get_runtime, json_option, table
from numex.services import audit


@click.group(cls=NumexGroup)
def audit_() -> None:
    """The audit log: verify, export, list."""


@audit_.command()
@json_option
def verify(as_json: bool) -> None:
    """Check the hash chain; exits 1 when any event was edited, inserted or deleted."""
    report = audit.verify(get_runtime())

    def render(r):
        if r["ok"]:
            click.echo(f"audit chain intact: {r['events']} events, last hash {r['last_hash']}")
        else:
            click.echo(f"audit chain BROKEN ({len(r['problems'])} problems):")
            for problem in r["problems"]:
                click.echo(f"  event {problem['seq']}: {problem['kind']}: {problem['message']}")

    emit(report.to_dict(), as_json, render)
    if not report.ok:
        sys.exit(1)


@audit_.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File (default: stdout).")
def export(fmt: str, output) -> None:
    """Export every event, oldest first, with its hashes."""
    for line in audit.export_jsonl(get_runtime()):
        output.write(line + "\n")


@audit_.command("list")
@click.option("--action")
@click.option("--actor")
@click.option("--routine")
@click.option("--limit", default=50, show_default=True)
@json_option
def list_(action, actor, routine, limit, as_json) -> None:
    """The newest events, filtered."""
    events, _total = audit.list_events(
        get_runtime(), action=action, actor=actor, routine=routine, limit=limit
    )
    rows = [
        {
            "seq": e.seq,
            "occurred_at": e.occurred_at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "entity": f"{e.entity_type}:{e.entity_id}",
            "routine": e.routine,
            "payload": e.payload,
        }
        for e in events
    ]
    emit(
        rows,
        as_json,
        lambda rs: table(
            [[r["seq"], r["occurred_at"][:19], r["actor"], r["action"], r["entity"]] for r in rs],
            ["seq", "when", "actor", "action", "entity"],
        ),
    )
