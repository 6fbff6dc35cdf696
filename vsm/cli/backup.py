"""`vsm-pool backup DEST` and `vsm-pool restore SRC --home DIR` (vsm/care/backup.py does the work)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ._common import config_option, home_option, load_config_for, open_client

__all__ = ["backup", "restore"]


def _bar(desc: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=" step", file=sys.stderr, disable=None)


def _stepper(bar: Any) -> Any:
    """step(what): the previous step is done, `what` runs now."""
    begun = [False]

    def step(what: str) -> None:
        if begun[0]:
            bar.update(1)
        begun[0] = True
        bar.set_postfix_str(what)

    return step


@click.command()
@home_option
@config_option
@click.argument("dest", type=click.Path(path_type=Path))
def backup(home: Path | None, config_file: Path | None, dest: Path) -> None:
    """Back the home up into the new folder DEST while the daemon serves: a consistent copy of
    the KV (made by its plugin), the config, the tokens and the plugins. The sinks are rebuilt
    from the KV at `vsm-pool restore`."""
    from ..care.backup import backup_home
    from ..config import resolve_home

    cfg = load_config_for(home, config_file)
    with open_client(home, config_file) as client, _bar("backup", 4) as bar:
        client.timeout = 24 * 3600.0  # a large KV takes its time; the daemon serves meanwhile
        manifest = backup_home(client, cfg, resolve_home(home), dest, _stepper(bar))
        bar.update(bar.total - bar.n)
    kv = manifest["kv"]
    click.echo(
        f"backed up {manifest['home']} into {dest.resolve()}: KV of plugin {kv['plugin']} ({kv['bytes']} bytes in {kv['seconds']:.1f}s), "
        f"{len(manifest['files']) - 1} more files; began {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(manifest['began']))}. "
        f"Restore with: vsm-pool restore {dest} --home NEWDIR"
    )


@click.command()
@click.option("--home", type=click.Path(path_type=Path), required=True, help="The new home folder to make (new or empty).")
@click.argument("src", type=click.Path(path_type=Path))
def restore(home: Path, src: Path) -> None:
    """Make the new home DIR from the backup folder SRC: its config (paths moved under DIR),
    tokens, plugins and KV; every sink rebuilt from the sector states. Start it with
    `vsm-pool start --home DIR`."""
    from ..care.backup import restore_home
    from ._common import setup_logging

    setup_logging()
    with _bar("restore", 5) as bar:
        done = restore_home(src, home, _stepper(bar))
        bar.update(bar.total - bar.n)
    sinks = ", ".join(f"{n} ({rows} sector states)" for n, rows in done["sinks"].items()) or "none"
    click.echo(f"restored {src} into {home.resolve()}: KV at {done['kv']}; sinks rebuilt: {sinks}. Start it with: vsm-pool start --home {home}")
