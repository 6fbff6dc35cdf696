"""`vsm-pool`: the command line. Errors a user can cause end as one line on stderr, exit 2.

One module per command group (plugin.py, daemon.py for start/stop/status, sectors.py, pieces.py,
query.py, tools.py for config/util/bench); _common.py holds their shared options and the client
of the running daemon (client.py) or of a manager started in-process for one command.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from loguru import logger

from .. import __version__
from ..errors import VsmError
from .daemon import start, status, stop
from .pieces import pieces
from .plugin import plugin
from .query import query
from .sectors import sectors
from .tools import bench, config, util

__all__ = ["main"]


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="{time:YYYY-MM-DDTHH:mm:ss.SSSZZ} {level: <7} {message}")
    # vsm.sectors logs through the standard library: its lines go to the same place
    vsm_log = logging.getLogger("vsm")
    if not any(isinstance(h, _ToLoguru) for h in vsm_log.handlers):
        vsm_log.addHandler(_ToLoguru())
    vsm_log.setLevel(logging.DEBUG if verbose else logging.INFO)


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") else record.levelno
        logger.opt(exception=record.exc_info).log(level, record.getMessage())


class _Cli(click.Group):
    """Turns the manager's own errors into one clean line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VsmError as e:
            click.echo(f"vsm-pool: error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="vsm-pool")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """vsm-pool: venus-sector-manager's plugin system, one worker pool per plugin."""
    _setup_logging(verbose)


for _command in (bench, config, pieces, plugin, query, sectors, start, status, stop, util):
    main.add_command(_command)
