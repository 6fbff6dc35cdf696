"""`vsm-pool sinks status|rebuild|forget`: the SyncSectorState sinks, attached or not; refilling one
whose events left the journal; forgetting one whose plugin is gone."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import config_option, daemon_or_fail, home_option, json_option, print_table

__all__ = ["sinks"]


@click.group()
def sinks() -> None:
    """Sector-state sinks: their checkpoints and lag, and rebuilding one from the sector states."""


@sinks.command("status")
@home_option
@config_option
@json_option
def sinks_status(home: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Every sink with a checkpoint (disabled ones too): state, checkpoint, lag, what is wrong."""
    st = daemon_or_fail(home, config_file).call("sinks.status")
    rows = [{"sink": n, **s, "problem": s.get("needs_rebuild") or ""} for n, s in st["sinks"].items()]
    print_table(rows, ["sink", "state", "attached", "checkpoint", "lag", "problem"], as_json)
    journal = st.get("journal") or {}
    for state in ("stalled", "held", "broken"):  # lag counts up to the watermark: a stuck one shows here
        if journal.get(state) and not as_json:
            click.echo(f"journal: {state}: {journal[state]}")


@sinks.command("rebuild")
@home_option
@config_option
@json_option
@click.argument("name")
def sinks_rebuild(home: Path | None, config_file: Path | None, as_json: bool, name: str) -> None:
    """Refill sink NAME from the sector states in the KV (one row per sector, kind "rebuild"),
    then let it go on from the journal. For a sink marked as needing a rebuild (its events left
    the journal: `vsm-pool status` says so); it keeps what it had, and lacks the history of the
    events it missed."""
    client = daemon_or_fail(home, config_file)
    client.timeout = 24 * 3600.0  # ~11k sector states/s here: 5M take ~8 min, past the usual 600 s
    done = client.call("sinks.rebuild", {"name": name})
    if as_json:
        click.echo(json.dumps(done))
    else:
        click.echo(f"rebuilt sink {name}: {done['rows']} sector states in {done['seconds']:.1f}s; it goes on from seq {done['last_seq']}")


@sinks.command("forget")
@home_option
@config_option
@click.argument("name")
def sinks_forget(home: Path | None, config_file: Path | None, name: str) -> None:
    """Delete the checkpoint of sink NAME (not attached: its plugin is disabled or gone), so the
    journal stops keeping its events. Enabled again later, it needs a rebuild."""
    daemon_or_fail(home, config_file).call("sinks.forget", {"name": name})
    click.echo(f"forgot sink {name}: the journal no longer keeps its events")
