"""CLI commands that run the daemon or talk to it: start, stop, status, pieces, sectors, query.

With a daemon running for the home folder, every command goes through its API. Without one,
the commands that make sense offline (sectors import/get/list, pieces, query) start the manager
in-process for the one command, on the same config, and stop it after.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import click
from tqdm import tqdm

from .cli import _home_option, _print, main
from .client import DaemonError, daemon_client, pid_alive

__all__: list[str] = []


def _load(home: Path | None, config_file: Path | None) -> tuple[Any, Path]:
    from .config import load_config, resolve_home
    from .home import ensure_home

    home_dir = resolve_home(home)
    if config_file is None:
        ensure_home(home_dir)
    cfg, warnings = load_config(config_file, home_dir)
    from loguru import logger

    for w in warnings:
        logger.warning(w)
    return cfg, home_dir


class LocalClient:
    """The Client interface over an in-process manager (no daemon running)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def call(self, method: str, params: Any = None) -> Any:
        from .rpc import METHODS

        fn = METHODS.get(method)
        if fn is None:
            raise DaemonError(f"{method}: needs a running daemon (vsm-pool start)")
        params = params or {}
        return fn(self.manager, *params) if isinstance(params, list) else fn(self.manager, **params)

    def put_piece(self, store: str, path: str, source: Any, size: int, progress: Any = None) -> Any:
        reader = _Progress(source, progress)
        n = self.manager.store(store).put(path, reader)
        return {"store": store, "path": path, "size": n}

    def get_piece(self, store: str, path: str, sink: Any, progress: Any = None) -> int:
        reader = self.manager.store(store).get(path)
        total = 0
        try:
            while chunk := reader.read(1 << 20):
                sink.write(chunk)
                total += len(chunk)
                if progress:
                    progress(len(chunk))
        finally:
            reader.close()
        return total


class _Progress:
    def __init__(self, source: Any, progress: Any) -> None:
        self.source, self.progress = source, progress

    def readinto(self, buf: Any) -> int:
        n = self.source.readinto(buf)
        if n and self.progress:
            self.progress(n)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data and self.progress:
            self.progress(len(data))
        return data


@contextlib.contextmanager
def _client(home: Path | None, config_file: Path | None, *, offline: bool = True) -> Iterator[Any]:
    client = daemon_client(home, config_file)
    if client is not None:
        yield client
        return
    if not offline:
        raise click.ClickException("no vsm-pool daemon is running for this home folder (start one with `vsm-pool start`)")
    from .manager import Manager

    cfg, _ = _load(home, config_file)
    manager = Manager(cfg).start()
    try:
        yield LocalClient(manager)
    finally:
        manager.close()


def _config_option(f: Any) -> Any:
    return click.option("--config", "config_file", type=click.Path(path_type=Path), help="Config file (default: <home>/config.toml).")(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


# --- daemon ----------------------------------------------------------------------------------


@main.command()
@_home_option
@_config_option
@click.option("--listen", help="host:port to serve on (default: [Common.Api] Listen).")
def start(home: Path | None, config_file: Path | None, listen: str | None) -> None:
    """Run the daemon: load the plugins, start their pools, serve the API."""
    import dataclasses

    from .daemon import run_daemon

    cfg, home_dir = _load(home, config_file)
    if listen:
        cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, listen=listen))
    run_daemon(cfg, home_dir)


@main.command()
@_home_option
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon to exit.")
def stop(home: Path | None, timeout: float) -> None:
    """Ask the daemon to stop, and wait until it has."""
    from .config import resolve_home
    from .daemon import daemon_info

    client = daemon_client(home)
    if client is None:
        raise click.ClickException("no vsm-pool daemon is running for this home folder")
    pid = int((daemon_info(resolve_home(home)) or {}).get("pid", 0))
    client.call("daemon.stop")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            click.echo(f"vsm-pool (pid {pid}) stopped")
            return
        time.sleep(0.1)
    raise click.ClickException(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")


@main.command()
@_home_option
@_json_option
def status(home: Path | None, as_json: bool) -> None:
    """The daemon, each plugin's pool (workers, restarts, state) and each sink's lag."""
    client = daemon_client(home)
    if client is None:
        raise click.ClickException("no vsm-pool daemon is running for this home folder")
    st = client.call("status")
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    d = st["daemon"]
    click.echo(f"daemon: pid {d['pid']}, listening on {d['listen']}, home {d['home']}")
    rows = []
    for p in st["plugins"]:
        pool = p.get("pool") or {}
        rows.append(
            {
                "plugin": f"{p['kind']}/{p['name']}",
                "state": p["state"],
                "workers": sum(1 for w in pool.get("workers", []) if w.get("alive", True)) if pool else "-",
                "restarts": pool.get("restarts", "-"),
                "calls": pool.get("calls", "-"),
                "errors": pool.get("errors", "-"),
                "last_error": (p.get("error") or pool.get("last_error") or "")[:80],
            }
        )
    _print(rows, ["plugin", "state", "workers", "restarts", "calls", "errors", "last_error"], False)
    sectors = st.get("sectors") or {}
    sinks = sectors.get("sinks", {})
    if sinks:
        click.echo("")
        _print(
            [{"sink": n, **{k: "" if s.get(k) is None else s[k] for k in ("state", "checkpoint", "lag", "last_error")}} for n, s in sinks.items()],
            ["sink", "state", "checkpoint", "lag", "last_error"],
            False,
        )


# --- pieces ----------------------------------------------------------------------------------


@main.group()
def pieces() -> None:
    """Put, get, stat and delete pieces in a configured store."""


def _split(target: str) -> tuple[str, str]:
    store, sep, path = target.partition("/")
    if not sep or not path:
        raise click.BadParameter(f"{target!r}: expected STORE/PATH, e.g. pieces/baga6ea4sea...")
    return store, path


def _bar(total: int | None, label: str) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr, disable=None)


@pieces.command("put")
@_home_option
@_config_option
@_json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target")
def pieces_put(home: Path | None, config_file: Path | None, as_json: bool, file: Path, target: str) -> None:
    """Upload FILE to STORE/PATH."""
    store, path = _split(target)
    size = file.stat().st_size
    with _client(home, config_file) as client, open(file, "rb", buffering=0) as source, _bar(size, path) as bar:
        result = client.put_piece(store, path, source, size, bar.update)
    click.echo(json.dumps(result) if as_json else f"stored {result['size']} bytes at {store}/{path}")


@pieces.command("get")
@_home_option
@_config_option
@click.argument("target")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def pieces_get(home: Path | None, config_file: Path | None, target: str, file: Path) -> None:
    """Download STORE/PATH into FILE ("-" for standard output)."""
    store, path = _split(target)
    with _client(home, config_file) as client:
        if str(file) == "-":
            n = client.get_piece(store, path, sys.stdout.buffer)
            return
        tmp = file.with_name(f".{file.name}.part")
        try:
            with open(tmp, "wb") as sink, _bar(None, path) as bar:
                n = client.get_piece(store, path, sink, bar.update)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
    click.echo(f"wrote {n} bytes to {file}", err=True)


@pieces.command("stat")
@_home_option
@_config_option
@_json_option
@click.argument("target")
def pieces_stat(home: Path | None, config_file: Path | None, as_json: bool, target: str) -> None:
    """Size of STORE/PATH."""
    store, path = _split(target)
    with _client(home, config_file) as client:
        result = client.call("pieces.stat", {"store": store, "path": path})
    click.echo(json.dumps(result) if as_json else f"{store}/{path}: {result['size']} bytes")


@pieces.command("del")
@_home_option
@_config_option
@click.argument("target")
def pieces_del(home: Path | None, config_file: Path | None, target: str) -> None:
    """Delete STORE/PATH."""
    store, path = _split(target)
    with _client(home, config_file) as client:
        client.call("pieces.delete", {"store": store, "path": path})
    click.echo(f"deleted {store}/{path}")


# --- sectors ---------------------------------------------------------------------------------


@main.group()
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
@_home_option
@_config_option
@click.option("--override", is_flag=True, help="Replace sectors that exist already.")
@click.option("--offline", "worker_state", flag_value="offline", default="online", help="Import into the offline (finalized) collection.")
@click.option("--chunk", default=5000, show_default=True, help="States per request.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def sectors_import(home: Path | None, config_file: Path | None, override: bool, worker_state: str, chunk: int, file: Path) -> None:
    """Bulk-load FILE: JSON lines of SectorState in damocles' encoding, or Parquet in the Arrow schema."""
    from .sectors import read_import_file

    written = total = 0
    with _client(home, config_file) as client, tqdm(unit=" sectors", desc="import", file=sys.stderr, disable=None) as bar:
        for states in read_import_file(str(file), chunk=chunk):
            payload = [s.to_go_dict() for s in states]
            written += client.call("sectors.import", {"states": payload, "override": override, "worker_state": worker_state})
            total += len(states)
            bar.update(len(states))
    click.echo(f"imported {written} of {total} sectors from {file}" + ("" if written == total or override else " (the rest exist already; --override replaces them)"))


@sectors.command("get")
@_home_option
@_config_option
@_json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_get(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """One sector's state."""
    with _client(home, config_file) as client:
        _show_state(client.call("sectors.get", {"miner": miner, "number": number}), as_json)


@sectors.command("list")
@_home_option
@_config_option
@_json_option
@click.option("--offline", "worker_state", flag_value="offline", default="online", help="List finalized (offline) sectors.")
@click.option("--miner", type=int)
@click.option("--limit", default=1000, show_default=True)
def sectors_list(home: Path | None, config_file: Path | None, as_json: bool, worker_state: str, miner: int | None, limit: int) -> None:
    """Sectors in key order."""
    with _client(home, config_file) as client:
        states = client.call("sectors.list", {"worker_state": worker_state, "miner": miner, "limit": limit})
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    for state in states:
        _show_state(state, False)


@sectors.command("update")
@_home_option
@_config_option
@_json_option
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
    with _client(home, config_file) as client:
        _show_state(client.call("sectors.update", {"miner": miner, "number": number, "fields": parsed}), as_json)


@sectors.command("finalize")
@_home_option
@_config_option
@_json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_finalize(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """Move a sector from online to offline."""
    with _client(home, config_file) as client:
        _show_state(client.call("sectors.finalize", {"miner": miner, "number": number}), as_json)


@sectors.command("restore")
@_home_option
@_config_option
@_json_option
@click.argument("miner", type=int)
@click.argument("number", type=int)
def sectors_restore(home: Path | None, config_file: Path | None, as_json: bool, miner: int, number: int) -> None:
    """Move a sector from offline back to online."""
    with _client(home, config_file) as client:
        _show_state(client.call("sectors.restore", {"miner": miner, "number": number}), as_json)


# --- query -----------------------------------------------------------------------------------


@main.command()
@_home_option
@_config_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of standard output (required for parquet).")
@click.option("--sink", default="duckdb", show_default=True, help="The sink plugin whose database answers.")
@click.argument("sql")
def query(home: Path | None, config_file: Path | None, fmt: str, out: Path | None, sink: str, sql: str) -> None:
    """Run SQL over the DuckDB sink (tables sector_events and sectors)."""
    import base64

    import pyarrow as pa

    client = daemon_client(home, config_file)
    if client is not None:
        from .sectors import ipc_to_table

        table = ipc_to_table(base64.b64decode(client.call("query.arrow", {"sql": sql, "sink": sink})))
    else:
        from .sectors import query_duckdb

        cfg, _ = _load(home, config_file)
        path = cfg.settings(sink).meta.get("Path")
        if not path:
            raise click.ClickException(f"{cfg.file}: Common.Plugins.{sink}.Meta.Path: not set, so there is no database to query")
        if not Path(path).exists():
            raise click.ClickException(f"{path}: no sector database yet (it is created when the daemon first runs)")
        try:
            table = query_duckdb(path, sql)
        except Exception as e:
            raise click.ClickException(f"query failed: {e}") from None
    _write_table(table, fmt, out)


def _write_table(table: Any, fmt: str, out: Path | None) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        if out is None:
            raise click.UsageError("--format parquet needs --out FILE")
        pq.write_table(table, out)
        return
    if fmt == "csv":
        if out is not None:
            pacsv.write_csv(table, out)
        else:
            import io

            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            click.echo(buf.getvalue().decode(), nl=False)
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), indent=2, default=str)
    else:
        rows = [{k: ("" if v is None else v) for k, v in r.items()} for r in table.to_pylist()]
        import io as _io

        buf = _io.StringIO()
        widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in table.column_names}
        buf.write("  ".join(c.ljust(widths[c]) for c in table.column_names).rstrip() + "\n")
        for r in rows:
            buf.write("  ".join(str(r[c]).ljust(widths[c]) for c in table.column_names).rstrip() + "\n")
        buf.write(f"({table.num_rows} rows)\n")
        text = buf.getvalue().rstrip("\n")
    if out is not None:
        out.write_text(text + "\n")
    else:
        click.echo(text)
