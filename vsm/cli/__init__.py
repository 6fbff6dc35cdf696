"""`vsm-pool`: the command line. Errors a user can cause end as one line on stderr, exit 2.

One module per command group (plugin.py, daemon.py for start/stop/status, sectors.py, sinks.py,
pieces.py, query.py, tools.py for config/util/bench); _common.py holds their shared options and the client
of the running daemon (client.py) or of a manager started in-process for one command.

Start-up cost (issue 14): a command is imported only when it runs, and the commands that
talk to a running daemon (status, query, sectors get, pieces stat...) import neither pyarrow,
duckdb, multiprocess, aiohttp, loguru nor tqdm on that path (tests/core/test_cli_imports.py).
Logging is set up before anything that logs is imported: at once for the commands that run
the manager or build plugins, on their in-process branch for the client commands
(`_common.setup_logging`).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from .. import __version__
from ..errors import VsmError
from ._common import setup_logging

__all__ = ["main"]

# command name -> (module, attribute); imported when the command runs (or for --help)
_COMMANDS = {
    "auth": ("auth", "auth"),
    "backup": ("backup", "backup"),
    "doctor": ("doctor", "doctor"),
    "restore": ("backup", "restore"),
    "bench": ("tools", "bench"),
    "config": ("tools", "config"),
    "pieces": ("pieces", "pieces"),
    "plugin": ("plugin", "plugin"),
    "query": ("query", "query"),
    "sectors": ("sectors", "sectors"),
    "selftest": ("selftest", "selftest"),
    "sinks": ("sinks", "sinks"),
    "start": ("daemon", "start"),
    "status": ("daemon", "status"),
    "stop": ("daemon", "stop"),
    "util": ("tools", "util"),
}
# commands whose daemon path needs no logging: they set it up on their in-process branch
_CLIENT_COMMANDS = {"auth", "pieces", "query", "sectors", "sinks", "status", "stop"}


class _Cli(click.Group):
    """Imports a command on use, and turns the manager's own errors into one clean line
    instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        where = _COMMANDS.get(name)
        if where is None:
            return None
        return getattr(importlib.import_module(f".{where[0]}", __name__), where[1])  # type: ignore[no-any-return]

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VsmError as e:
            click.echo(f"vsm-pool: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="vsm-pool")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--no-wait", is_flag=True, help="A daemon still starting is an error instead of a wait.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, no_wait: bool) -> None:
    """vsm-pool: venus-sector-manager's plugin system, one worker pool per plugin."""
    setup_logging(verbose, now=ctx.invoked_subcommand not in _CLIENT_COMMANDS)
    if no_wait:
        from . import client

        client.WAIT_FOR_START = False
