"""What every CLI command shares: the runtime, --json output, user-facing errors."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

from numex.services.errors import NumexError
from numex.services.runtime import Actor, Runtime


class NumexGroup(click.Group):
    """A click group that turns user errors into a message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NumexError as error:
            click.echo(f"error: {error.message}", err=True)
            sys.exit(1)
        except (OperationalError, ProgrammingError) as error:
            if not _missing_schema(error):
                raise
            click.echo(
                "error: the database has no numex schema (or an old one): "
                "run `numex db upgrade` first",
                err=True,
            )
            sys.exit(1)
        except ValueError as error:
            # Spec validation (numex.specs.SpecError) and lifecycle refusals are ValueErrors
            # whose message is written for the user.
            if type(error).__module__.startswith("numex"):
                click.echo(f"error: {error}", err=True)
                sys.exit(1)
            raise


def _missing_schema(error: Exception) -> bool:
    text = str(error).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def get_runtime(ctx: click.Context | None = None) -> Runtime:
    """The runtime for this invocation, created once and closed when the command ends."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    rt = root.meta.get("numex.runtime")
    if rt is None:
        rt = Runtime()
        root.meta["numex.runtime"] = rt
        root.call_on_close(rt.close)
    return rt


def admin_actor() -> Actor:
    """The actor for administration commands, where database access is the credential."""
    return Actor.system(f"cli:{getpass.getuser()}")


def token_option(command: Callable) -> Callable:
    """``--token`` (or NUMEX_TOKEN): who acts, for commands that act for a person."""
    return click.option(
        "--token",
        envvar="NUMEX_TOKEN",
        help="Your API token (or set NUMEX_TOKEN). Create one with `numex user token`.",
    )(command)


def token_actor(token: str | None) -> Actor:
    """The person a token stands for; a clear error when it is missing or unknown."""
    from numex.services import users

    return users.actor_for_token(get_runtime(), token)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON (for scripts) or through ``render`` (for people)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_default, allow_nan=False))
    else:
        render(data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripting.")


def table(rows: list[list[Any]], headers: list[str]) -> None:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
        if n == 0:
            click.echo("  ".join("-" * width for width in widths))
