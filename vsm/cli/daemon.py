"""`vsm-pool start`, `stop` and `status`: run the daemon, stop it, show its pools and sinks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ._common import config_option, env_text, home_option, json_option, load_and_prepare, no_daemon, print_table
from .client import daemon_client, pid_alive

__all__ = ["start", "status", "stop"]


@click.command()
@home_option
@config_option
@click.option("--listen", help="host:port to serve on (default: [Common.Api] Listen).")
@click.option("--debug", is_flag=True, help="Debug logging: the full trace of every error a client causes (like -v).")
def start(home: Path | None, config_file: Path | None, listen: str | None, debug: bool) -> None:
    """Run the daemon: load the plugins, start their pools, serve the API."""
    import dataclasses

    from ..config import resolve_home
    from ..home import mark_starting

    marker = mark_starting(resolve_home(home))  # first: `vsm-pool status` right after waits for us
    try:
        if debug:
            from ._common import setup_logging

            setup_logging(True)

        from ..server.daemon import run_daemon

        cfg, home_dir = load_and_prepare(home, config_file)
        if listen:
            cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, listen=listen))
        run_daemon(cfg, home_dir, cli_listen=listen or "")
    finally:
        marker.unlink(missing_ok=True)


@click.command()
@home_option
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the daemon to exit.")
def stop(home: Path | None, timeout: float) -> None:
    """Ask the daemon to stop, and wait until it has."""
    import os
    import signal

    from ..config import resolve_home
    from ..home import daemon_info, starting_pid
    from .client import DaemonStarting

    try:
        client = daemon_client(home, wait=False)
    except DaemonStarting:  # a start that does not listen yet (issue 26): a signal it takes
        client = None
        pid = starting_pid(resolve_home(home))
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it ended meanwhile
    else:
        if client is None:
            raise no_daemon(home)
        pid = int((daemon_info(resolve_home(home)) or {}).get("pid", 0))
        if client.health()[0] == 503:  # still starting: it answers no call yet, a signal it takes
            os.kill(pid, signal.SIGTERM)
        else:
            client.call("daemon.stop")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            click.echo(f"vsm-pool (pid {pid}) stopped")
            return
        time.sleep(0.1)
    raise click.ClickException(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s")


@click.command()
@home_option
@json_option
def status(home: Path | None, as_json: bool) -> None:
    """The daemon, each plugin's pool (workers, restarts, state) and each sink's lag."""
    client = daemon_client(home)
    if client is None:
        raise no_daemon(home)
    st = client.call("status")
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    d = st["daemon"]
    click.echo(f"daemon: pid {d['pid']}, listening on {d['listen']}, home {d['home']}")
    _print_config(st.get("config") or {})
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
                "limits": (p.get("limits") or {}).get("text", ""),
                "sandbox": (p.get("sandbox") or {}).get("text", ""),
                "last_error": p.get("error") or pool.get("last_error") or "",
                "env": env_text(p.get("env")),
            }
        )
    print_table(rows, ["plugin", "state", "workers", "restarts", "calls", "errors", "env", "limits", "sandbox", "last_error"], False)
    sectors = st.get("sectors") or {}
    sinks = sectors.get("sinks", {})
    if sinks:
        click.echo("")
        print_table(
            [{"sink": n, **{k: "" if s.get(k) is None else s[k] for k in ("state", "checkpoint", "lag", "last_error")}} for n, s in sinks.items()],
            ["sink", "state", "checkpoint", "lag", "last_error"],
            False,
        )
    _print_problems(st.get("problems") or [])


def _print_config(drift: dict[str, Any]) -> None:
    """The running config against the file on disk (issue 26: a store added to the file was
    a 404 until a restart, with no word on why)."""
    if drift.get("error"):
        click.echo(f"config: {drift['error']} (the daemon runs on the config it started with)")
    elif drift.get("differs"):
        click.echo(f"config: {drift['file']} on disk differs from the running config ({', '.join(drift['changes'])}): "
                   "`vsm-pool config reload` applies it")
    for line in drift.get("not_applied") or []:
        click.echo(f"config: not applied at the last reload: {line}")


def _print_problems(rows: list[dict[str, str]]) -> None:
    """What is broken or degraded, why, and the command that fixes it (a green table never
    hides a broken part: issue 13)."""
    click.echo("")
    if not rows:
        click.echo("problems: none")
        return
    click.echo(f"problems ({len(rows)}):")
    for p in rows:
        click.echo(f"  {p['part']}: {p['state']}: {p['cause']}")
        click.echo(f"      fix: {p['fix']}")
