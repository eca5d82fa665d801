"""``numex user``: people, roles and API tokens. Administration: needs only database access."""

from __future__ import annotations

import sys

import click

from numex.cli.common import NumexGroup, admin_actor, emit, get_runtime, json_option, table
from numex.db import ROLES
from numex.services import users


@click.group(cls=NumexGroup)
def user() -> None:
    """Users, roles and API tokens."""


@user.command("add")
@click.argument("username")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(ROLES),
    help="A role to hold (repeat for several).",
)
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
def add(
    username: str, roles: tuple[str, ...], display_name: str, password_stdin: bool, as_json: bool
) -> None:
    """Add USERNAME with roles; prints a generated password once unless --password-stdin."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    new = users.add_user(
        get_runtime(),
        username,
        list(roles),
        admin_actor(),
        password=password,
        display_name=display_name,
    )
    emit(
        new.__dict__,
        as_json,
        lambda n: click.echo(
            f"added {n['username']} ({', '.join(n['roles'])})"
            + (f"\npassword (shown once): {n['password']}" if n["password"] else "")
        ),
    )


@user.command("roles")
@click.argument("username")
@click.option("--role", "roles", multiple=True, required=True, type=click.Choice(ROLES))
def roles_(username: str, roles: tuple[str, ...]) -> None:
    """Replace USERNAME's roles."""
    result = users.set_roles(get_runtime(), username, list(roles), admin_actor())
    click.echo(f"{username}: {', '.join(result)}")


@user.command("password")
@click.argument("username")
def password(username: str) -> None:
    """Set USERNAME's password (read from standard input)."""
    users.set_password(get_runtime(), username, sys.stdin.readline().rstrip("\n"), admin_actor())
    click.echo(f"password of {username} set")


@user.command("token")
@click.argument("username")
@click.option("--name", default="", help="What the token is for.")
@json_option
def token(username: str, name: str, as_json: bool) -> None:
    """Create an API token for USERNAME; it is printed once, only its hash is kept."""
    new = users.create_token(get_runtime(), username, admin_actor(), name=name)
    emit(new.__dict__, as_json, lambda n: click.echo(n["token"]))


@user.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List users and their roles."""
    emit(
        users.list_users(get_runtime()),
        as_json,
        lambda rows: table(
            [[u["username"], ", ".join(u["roles"]), u["tokens"], u["active"]] for u in rows],
            ["user", "roles", "tokens", "active"],
        ),
    )
