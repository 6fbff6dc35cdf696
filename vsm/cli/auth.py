"""`vsm-pool auth`: API tokens with permission levels (read, write, admin), made and revoked in
the home folder; a running daemon sees the change from its next request."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import home_option, json_option, print_table

__all__ = ["auth"]


def _store(home: Path | None):  # type: ignore[no-untyped-def]
    from ..config import resolve_home
    from ..server.auth import TokenStore

    return TokenStore(resolve_home(home))


@click.group()
def auth() -> None:
    """API tokens: create-token, list, revoke (<home>/token stays the admin token)."""


@auth.command("create-token")
@home_option
@click.option("--perm", required=True, type=click.Choice(["read", "write", "admin"]), help="What the token may do (README: Permissions).")
@click.option("--name", default=None, help="A name to list and revoke it by (default: <perm>-<id>).")
def create_token(home: Path | None, perm: str, name: str | None) -> None:
    """Make a token; it is printed once (stdout) and stored only as its hash."""
    try:
        token, entry = _store(home).create(perm, name)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"token {entry['name']!r} (id {entry['id']}, {entry['perm']}); it is shown only now:", err=True)
    click.echo(token)


@auth.command("list")
@home_option
@json_option
def list_tokens(home: Path | None, as_json: bool) -> None:
    """Every token's name, id, level and age (never the token)."""
    import time

    try:
        rows = _store(home).list()
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for r in rows:
        r["created"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])) if r.get("created") else "-"
    print_table(rows, ["name", "id", "perm", "created"], as_json)


@auth.command("revoke")
@home_option
@click.argument("name_or_id")
def revoke(home: Path | None, name_or_id: str) -> None:
    """Revoke a token by name or id: refused from the daemon's next request on."""
    try:
        entry = _store(home).revoke(name_or_id)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"revoked token {entry['name']!r} (id {entry['id']}, {entry['perm']})")
