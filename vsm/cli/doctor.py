"""`vsm-pool doctor [--repair]`: check every file of a stopped home (vsm/care/doctor.py does the work)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._common import config_option, home_option

__all__ = ["doctor"]


@click.command()
@home_option
@config_option
@click.option("--repair", is_flag=True, help="Set each damaged sink file aside (kept, renamed) and rebuild its sink from the KV.")
def doctor(home: Path | None, config_file: Path | None, repair: bool) -> None:
    """Check every file of the home (config, tokens, plugin artifacts, the KV, the sinks' files,
    the journal): one line per problem with the file and the way back; exit 0 only when all is
    well. The daemon must be stopped."""
    from tqdm import tqdm

    from ..config import resolve_home
    from ..care.doctor import check_home, repair as repair_home
    from ..home import daemon_info
    from .client import pid_alive

    home_dir = resolve_home(home)
    running = daemon_info(home_dir)
    if running and pid_alive(int(running.get("pid", 0))):
        raise click.ClickException(f"the daemon (pid {running['pid']}) runs on {home_dir}: doctor reads the files as they lie, "
                                   "so stop it first (vsm-pool stop)")
    if not home_dir.is_dir():
        raise click.ClickException(f"{home_dir}: no such home folder (choose one with --home DIR or $VSM_HOME)")
    with tqdm(total=7, desc="doctor", unit=" check", file=sys.stderr, disable=None) as bar:
        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1)

        problems = check_home(home_dir, config_file, step)
    for p in problems:
        click.echo(p.line())
    if repair and any(p.sink for p in problems):
        rebuilt = repair_home(home_dir, problems, config_file, log=click.echo)
        click.echo("rebuilt " + (", ".join(f"sink {n} ({rows} sector states)" for n, rows in rebuilt.items()) or "no sink (none attached)"))
        problems = check_home(home_dir, config_file)
        for p in problems:
            click.echo(f"still: {p.line()}")
    if problems:
        click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {home_dir}", err=True)
        sys.exit(1)
    click.echo(f"{home_dir}: every file checked, no problem")
