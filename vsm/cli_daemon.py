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
from .client import DaemonError, daemon_client

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
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
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
            [{"sink": n, **{k: s.get(k, "") for k in ("state", "checkpoint", "lag", "last_error")}} for n, s in sinks.items()],
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
