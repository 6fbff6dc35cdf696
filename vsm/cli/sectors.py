"""`vsm-pool sectors import|get|list|update|finalize|restore`: sector states."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ._common import config_option, home_option, json_option, open_client
from ..errors import VsmError
from .client import DaemonError

__all__ = ["sectors"]


@click.group()
def sectors() -> None:
    """Sector states: import, get, list, update, finalize, restore."""


def _show_state(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    sid = state.get("ID", {})
    flags = [k for k in ("Finalized", "Removed", "Imported", "NeedRebuild", "Upgraded", "Unsealing") if state.get(k)]
    latest = (state.get("LatestState") or {}).get("StateChange", {}).get("Next", "")
    click.echo(
        f"m-{sid.get('Miner')}-n-{sid.get('Number')}  {state.get('WorkerState', '')}  type {state.get('SectorType')}"
        f"  pieces {len(state.get('Pieces') or [])}  deals {len(state.get('Deals') or [])}"
        + (f"  state {latest}" if latest else "")
        + (f"  [{', '.join(flags)}]" if flags else "")
        + (f"  abort: {state['AbortReason']}" if state.get("AbortReason") else "")
    )


@sectors.command("import")
@home_option
@config_option
@click.option("--override", is_flag=True, help="Replace sectors that exist already.")
@click.option("--online", "worker_state", flag_value="online", help="Import every state online (default: as damocles' import-json, offline if Finalized).")
@click.option("--offline", "worker_state", flag_value="offline", help="Import every state offline (as damocles' import from lotus).")
@click.option("--chunk", default=10_000, show_default=True, help="States per Arrow batch.")
@click.option("--skip", default=0, show_default=True, metavar="N",
              help="Leave out FILE's first N states (lines refused not counted): those an --override import that broke off committed.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def sectors_import(home: Path | None, config_file: Path | None, override: bool, worker_state: str | None, chunk: int, skip: int,
                   file: Path) -> None:
    """Bulk-load FILE: JSON lines of SectorState in damocles' encoding, or Parquet in the Arrow
    schema. Finalized states go offline (`offline_meta`), the others online, as damocles'
    `util sealer sectors state import-json` routes them. Lines Go's json.Unmarshal would
    refuse are reported (file:line: field: cause) and left out, the others imported; exit
    status 1 if any line was refused."""
    from tqdm import tqdm

    from ..sectors import ImportReport, read_ahead, read_import_batches

    report = ImportReport()
    shown = 0
    unreadable: list[Exception] = []
    again = _again(override, worker_state, chunk, skip, file)
    with open_client(home, config_file) as client, tqdm(unit=" sectors", desc="import", file=sys.stderr, disable=None) as bar:

        def batches() -> Any:  # what the import takes, as it takes it (flat memory)
            nonlocal shown
            # the next batches are read (and decoded) while this one is on its way
            try:
                for batch in read_ahead(read_import_batches(str(file), chunk=chunk, report=report), 2):
                    for refused in report.refused[shown:]:
                        bar.write(f"refused {refused}", file=sys.stderr)
                    shown = len(report.refused)
                    bar.update(batch.num_rows)
                    if left[0] >= batch.num_rows:
                        left[0] -= batch.num_rows
                        continue
                    batch, left[0] = batch.slice(left[0]), 0
                    yield batch
            except Exception as e:  # noqa: BLE001 - the file cannot be read on (a corrupt row group):
                unreadable.append(e)  # the stream ends here, the daemon commits what it got and says so

        left = [skip]  # --skip: states still to leave out
        try:
            result = client.import_batches(batches(), override, worker_state)
        except DaemonError as e:
            said = _broken_off(str(e), e.reply, again)
            if said is None:
                raise
            raise DaemonError(said) from None
    written, total = result["written"], result["received"]
    for refused in report.refused[shown:]:
        click.echo(f"refused {refused}", err=True)
    if unreadable:
        cause = " ".join(str(unreadable[0]).split())  # pyarrow's text spans lines
        raise VsmError(f"{file}: cannot be read past its first {skip + total + len(report.refused)} states "
                       f"({type(unreadable[0]).__name__}: {cause}); {written} states were committed; fix the file and "
                       + again(written))
    click.echo(
        f"imported {written} of {skip + total + len(report.refused)} sectors from {file}"
        + (f" ({skip} left out with --skip)" if skip else "")
        + ("" if written == total or override else " (the rest exist already; --override replaces them)")
        + (f"; {report.summary()}" if report.summary() else "")
    )
    if report.refused:
        if _pretty_printed(file):
            click.echo(f"{file} holds pretty-printed JSON (a state over several lines); the import reads one state a line, as "
                       f"damocles' export-json writes them: `jq -c . {file} > states.jsonl`, then import states.jsonl", err=True)
        sys.exit(1)


def _pretty_printed(file: Path) -> bool:
    """Whether FILE's first line is only an opening brace or bracket: JSON printed with indents
    (`jq .`), refused line by line as `not JSON` (issue 26)."""
    with open(file, "rb") as f:
        return f.readline(64).strip() in (b"{", b"[")


def _broken_off(error: str, reply: Any, again: Callable[[int], str]) -> str | None:
    """The one line of an import that broke off: what the daemon committed (when it could still
    answer) and how to go on. The daemon writes every chunk it journaled before it answers, so
    a re-run finds exactly those states stored."""
    if isinstance(reply, dict) and isinstance(reply.get("written"), int):
        return f"{error}; {reply['written']} states were committed before it broke off; {again(reply['written'])}"
    if "upload broke off" in error:  # no answer: the daemon died, or its stop outlasted the grace
        return f"{error}; the daemon did not say how many states were committed; once it runs, {again(-1)}"
    return None


def _again(override: bool, worker_state: str | None, chunk: int, skip: int, file: Path) -> Callable[[int], str]:
    """How to continue after `committed` states (-1: unknown). Without --override the same command:
    states stored already are skipped, as damocles' import skips them. With it, they would be
    written again (each a new import event): the committed ones are a prefix of FILE's states
    (the daemon writes chunks in order, each journaled one before it answers), so --skip them."""

    def again(committed: int) -> str:
        if not override:
            return "run the same command again to continue: the states already stored are skipped, none gets a second import event"
        if committed < 0:
            return "with --override the same command writes every state again (each a new import event)"
        flags = " ".join(f for f in ("--override", worker_state and f"--{worker_state}", chunk != 10_000 and f"--chunk {chunk}") if f)
        return (f"continue with `vsm-pool sectors import {flags} --skip {skip + committed} {shlex.quote(str(file))}` "
                "(the same command again would write the committed states again, each a new import event)")

    return again


@sectors.command("get")
@home_option
@config_option
@json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_get(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """One sector's state."""
    with open_client(home, config_file) as client:
        _show_state(client.call("sectors.get", {"miner": miner, "number": number}), as_json)


@sectors.command("list")
@home_option
@config_option
@json_option
@click.option("--offline", "worker_state", flag_value="offline", default="online", help="List finalized (offline) sectors.")
@click.option("--miner", type=int)
@click.option("--limit", default=1000, show_default=True)
def sectors_list(home: Path | None, config_file: Path | None, as_json: bool, worker_state: str, miner: int | None, limit: int) -> None:
    """Sectors in key order."""
    with open_client(home, config_file) as client:
        states = client.call("sectors.list", {"worker_state": worker_state, "miner": miner, "limit": limit})
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    for state in states:
        _show_state(state, False)


@sectors.command("update")
@home_option
@config_option
@json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
@click.argument("fields", nargs=-1, required=True)
def sectors_update(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int, fields: tuple[str, ...]) -> None:
    """Set FIELD=VALUE on a sector (Go field names; VALUE is JSON, or a plain string)."""
    parsed: dict[str, Any] = {}
    for item in fields:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE", param_hint="FIELDS")
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    with open_client(home, config_file) as client:
        _show_state(client.call("sectors.update", {"miner": miner, "number": number, "fields": parsed}), as_json)


@sectors.command("finalize")
@home_option
@config_option
@json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_finalize(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """Move a sector from online to offline."""
    with open_client(home, config_file) as client:
        _show_state(client.call("sectors.finalize", {"miner": miner, "number": number}), as_json)


@sectors.command("restore")
@home_option
@config_option
@json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_restore(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """Move a sector from offline back to online."""
    with open_client(home, config_file) as client:
        _show_state(client.call("sectors.restore", {"miner": miner, "number": number}), as_json)
