"""``numex promote``, ``numex signoff``, ``numex rollback``: the gates from the command line.

Commands that act for a person take their API token (``--token`` or NUMEX_TOKEN);
reading (``show``, ``list``, ``history``) needs only database access.
"""

from __future__ import annotations

from typing import Any

import click

from numex.cli.common import (
    NumexGroup,
    emit,
    get_runtime,
    json_option,
    table,
    token_actor,
    token_option,
)
from numex.db import REQUEST_STATUSES

#: The stages a promotion request leads into (numex.services.promotions.TARGETS).
TARGETS = ("parallel", "operational")


def _promotions():
    """The promotions service, imported when a command runs: it pulls in the scoring
    stack (scipy, pandas), which ``numex --help`` should not wait for."""
    from numex.services import promotions

    return promotions


def _short(digest: str | None) -> str:
    return (digest or "")[:19] + "…" if digest else "-"


def render_request(view: dict[str, Any]) -> None:
    """A promotion request for people: status, checks, sign-offs, what it waits for."""
    candidate = view["candidate"]
    click.echo(
        f"promotion request #{view['id']}: {view['routine']}/{candidate['name']} "
        f"(#{candidate['id']}) {view['from_stage']} → {view['target_stage']}  [{view['status']}]"
    )
    click.echo(f"requested by {view['requested_by']} at {view['created_at'][:19]}")
    if view["reason"]:
        click.echo(f"reason: {view['reason']}")
    evidence = view["evidence"]
    click.echo(
        f"evidence revision {evidence['revision']}: {evidence['digest']} "
        f"({'all checks pass' if evidence['all_checks_pass'] else 'some checks fail'})"
    )
    click.echo("checks:")
    for check in view["checks"]:
        mark = "PASS" if check["passed"] else ("OVERRIDDEN" if check["overridden"] else "FAIL")
        click.echo(f"  {mark:<10} {check['name']}: {check['message']}")
        if check["overridden"]:
            o = check["overridden"]
            click.echo(f"             override by {o['by']}: {o['justification']}")
    click.echo(f"sign-offs ({view['approvals']} of {view['required_sign_offs']} approvals count):")
    if not view["sign_offs"]:
        click.echo("  none yet")
    for s in view["sign_offs"]:
        stale = "" if s["on_current_evidence"] else "  (given on earlier evidence)"
        click.echo(f"  {s['decision']:<8} {s['user']} at {s['at'][:19]}: {s['comment']}{stale}")
        for change in s["changes_since"]:
            click.echo(
                f"           changed since: {change['item']}: "
                f"{change['before']} → {change['after']}"
            )
    if view.get("withdrawal"):
        w = view["withdrawal"]
        click.echo(f"withdrawn by {w['by']}: {w['reason']}")
    if view["transition"]:
        t = view["transition"]
        click.echo(f"executed: {t['from']} → {t['to']} at {t['at'][:19]} by {t['actor']}")
    for waiting in view["waiting_for"]:
        click.echo(f"waiting for: {waiting}")


def _request_rows(views: list[dict[str, Any]]) -> None:
    if not views:
        click.echo("no promotion requests")
        return
    table(
        [
            [
                v["id"],
                v["status"],
                v["routine"],
                v["candidate"]["name"],
                f"{v['from_stage']} → {v['target_stage']}",
                v["requested_by"],
                f"{v['approvals']}/{v['required_sign_offs']}",
                "yes" if v["evidence"]["all_checks_pass"] else "no",
            ]
            for v in views
        ],
        ["id", "status", "routine", "candidate", "move", "requested by", "approvals", "checks"],
    )


@click.group(cls=NumexGroup)
def promote() -> None:
    """Promotion requests: request, show, list, withdraw, override, refresh, history."""


@promote.command("request")
@click.argument("candidate")
@click.option("--to", "target", required=True, type=click.Choice(TARGETS), help="Stage to enter.")
@click.option("--reason", default="", help="Why the candidate should be promoted.")
@token_option
@json_option
def request_(candidate: str, target: str, reason: str, token: str | None, as_json: bool) -> None:
    """Request promotion of CANDIDATE (id or ROUTINE/NAME) into the next stage."""
    actor = token_actor(token)
    view = _promotions().request_promotion(get_runtime(), candidate, target, actor, reason)
    emit(view, as_json, render_request)


@promote.command("show")
@click.argument("request_id", type=int)
@json_option
def show(request_id: int, as_json: bool) -> None:
    """Show promotion request REQUEST_ID with its evidence, checks and sign-offs (an open
    request's evidence is rebuilt first from the latest verified cycles)."""
    view = _promotions().get_request(get_runtime(), request_id, refresh=True)
    emit(view, as_json, render_request)


@promote.command("evidence")
@click.argument("request_id", type=int)
@click.option("--digest", default=None, help="An earlier revision's digest (default: current).")
def evidence(request_id: int, digest: str | None) -> None:
    """Print the full frozen evidence document of REQUEST_ID as JSON."""
    emit(_promotions().evidence_content(get_runtime(), request_id, digest), True, print)


@promote.command("list")
@click.option("--status", type=click.Choice(REQUEST_STATUSES), default=None)
@click.option("--routine", default=None)
@json_option
def list_(status: str | None, routine: str | None, as_json: bool) -> None:
    """List promotion requests, newest first."""
    emit(_promotions().list_requests(get_runtime(), status, routine), as_json, _request_rows)


@promote.command("withdraw")
@click.argument("request_id", type=int)
@click.option("--reason", required=True, help="Why the request is withdrawn.")
@token_option
@json_option
def withdraw(request_id: int, reason: str, token: str | None, as_json: bool) -> None:
    """Withdraw your own open request REQUEST_ID."""
    view = _promotions().withdraw(get_runtime(), request_id, token_actor(token), reason)
    emit(view, as_json, render_request)


@promote.command("override")
@click.argument("request_id", type=int)
@click.argument("check")
@click.option("--justification", required=True, help="Why the failed check may be waived.")
@token_option
@json_option
def override(
    request_id: int, check: str, justification: str, token: str | None, as_json: bool
) -> None:
    """Override failed CHECK of REQUEST_ID (admin), with a written justification."""
    view = _promotions().override_check(
        get_runtime(), request_id, check, token_actor(token), justification
    )
    emit(view, as_json, render_request)


@promote.command("refresh")
@click.argument("request_id", type=int, required=False)
@click.option("--routine", default=None, help="Only the open requests of this routine.")
@token_option
@json_option
def refresh(request_id: int | None, routine: str | None, token: str | None, as_json: bool) -> None:
    """Rebuild the evidence of REQUEST_ID (or of every open request) from the latest cycles."""
    actor = token_actor(token)
    if request_id is not None:
        result = _promotions().refresh_evidence(get_runtime(), request_id, actor)
        summary = (
            [{"request_id": request_id, "changes": result["changes"]}] if result["changed"] else []
        )
    else:
        summary = _promotions().refresh_open_requests(get_runtime(), actor, routine)

    def render(rows):
        if not rows:
            click.echo("evidence unchanged")
        for row in rows:
            click.echo(f"request #{row['request_id']}: new evidence")
            for change in row["changes"]:
                click.echo(f"  {change['item']}: {change['before']} → {change['after']}")

    emit(summary, as_json, render)


@promote.command("history")
@click.argument("routine")
@json_option
def history(routine: str, as_json: bool) -> None:
    """Who was operational when in ROUTINE, with each decision."""

    def render(periods):
        if not periods:
            click.echo(f"{routine} has had no operational candidate yet")
        for p in periods:
            until = (p["until"] or "now")[:19]
            click.echo(
                f"{p['from'][:19]} – {until}  {p['candidate']['name']} (#{p['candidate']['id']})"
            )
            entered = p["entered"]
            click.echo(f"    in:  {entered['kind']} by {entered['actor']}: {entered['reason']}")
            if entered["request"]:
                for s in entered["request"]["sign_offs"]:
                    click.echo(f"         {s['decision']} by {s['user']}: {s['comment']}")
            if p["left"]:
                left = p["left"]
                click.echo(f"    out: {left['kind']} by {left['actor']}: {left['reason']}")

    emit(_promotions().operational_history(get_runtime(), routine), as_json, render)


@click.command("signoff", cls=click.Command)
@click.argument("request_id", type=int)
@click.option("--approve", "decision", flag_value="approve", help="Approve the promotion.")
@click.option("--reject", "decision", flag_value="reject", help="Reject it (closes the request).")
@click.option("--comment", required=True, help="Why (required).")
@click.option(
    "--evidence",
    "evidence_digest",
    default=None,
    help="The evidence digest you reviewed; refused if the evidence has changed since.",
)
@token_option
@json_option
def signoff(
    request_id: int,
    decision: str | None,
    comment: str,
    evidence_digest: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Sign off promotion request REQUEST_ID: --approve or --reject, with --comment."""
    if decision is None:
        raise click.UsageError("give --approve or --reject")
    view = _promotions().sign_off(
        get_runtime(),
        request_id,
        token_actor(token),
        decision,
        comment,
        evidence_digest=evidence_digest,
    )
    emit(view, as_json, render_request)


@click.command("rollback")
@click.argument("routine")
@click.option("--reason", required=True, help="Why the routine is rolled back.")
@token_option
@json_option
def rollback(routine: str, reason: str, token: str | None, as_json: bool) -> None:
    """Reinstate ROUTINE's previous operational candidate (ops), with a reason."""
    result = _promotions().rollback(get_runtime(), routine, token_actor(token), reason)
    emit(
        result,
        as_json,
        lambda r: click.echo(
            f"{r['routine']}: {r['reinstated']['name']} (#{r['reinstated']['id']}) is operational "
            f"again"
            + (f"; {r['retired']['name']} (#{r['retired']['id']}) retired" if r["retired"] else "")
        ),
    )
