"""`vsm-pool selftest`: does this install work? The quick check a new user runs before the test
suite (issue 26), in well under a minute:

    temporary home --start--> a real daemon (its own process, the bundled plugins built, each
    in its pool, sandboxed as usual) --HTTP--> a sector state in and out, a piece in and out,
    the DuckDB sink's row, status: every plugin ready and no problem --> stop, home removed

Every step prints one line; the first that fails ends the run with exit status 1, the daemon
stopped and its home kept (with its log) for a look.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["selftest"]

STEP_TIMEOUT = 60.0  # seconds for the daemon to serve, and for the sinks to catch up
MINER, NUMBER = 1000, 1
PIECE = os.urandom(1 << 20)  # 1 MiB: one ring slot and more; random, so a short read shows


class _Failed(Exception):
    """A step's check did not hold: its message says what was seen."""


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary home (config, data, the daemon's log) afterwards.")
def selftest(keep: bool) -> None:
    """Check this install: start a daemon on a temporary home, check that status shows every
    plugin ready, put and get a sector state and a piece, read the state back from the DuckDB
    sink; then stop it and remove the home. Exit status 1 if a step fails."""
    try:
        home = Path(tempfile.mkdtemp(prefix="vsm-selftest-"))
    except OSError as e:
        raise click.ClickException(f"cannot make a temporary home in {tempfile.gettempdir()}: {e.strerror} (set TMPDIR to a writable folder)") from None
    log = home / "selftest-daemon.log"
    run = _Run(home, log)
    ok = False
    try:
        run.step("start", run.start)
        run.step("status", run.status)
        run.step("sector state", run.sector_state)
        run.step("piece", run.piece)
        run.step("sinks", run.sinks)
        run.step("stop", run.stop)
        ok = True
    finally:
        run.kill()
        if ok and not keep:
            shutil.rmtree(home, ignore_errors=True)
    took = time.monotonic() - run.began
    click.echo(f"selftest passed in {took:.1f} s" + (f"; the home is kept in {home}" if keep else ""))


class _Run:
    def __init__(self, home: Path, log: Path) -> None:
        self.home, self.log = home, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.began = time.monotonic()

    def step(self, name: str, check: Callable[[], str]) -> None:
        since = time.monotonic()
        try:
            said = check()
        except Exception as e:  # a step's failure, whatever raised it: one line, the home kept
            self.kill()
            raise click.ClickException(
                f"selftest failed at '{name}': {e}; the temporary home is kept in {self.home} (the daemon's log: {self.log})"
            ) from None
        click.echo(f"  ok  {name}: {said} ({time.monotonic() - since:.1f} s)")

    def start(self) -> str:
        """`vsm-pool start` on the new home, in its own process, on a free port."""
        from ..home import daemon_info, read_token
        from .client import Client, pid_alive

        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vsm", "start", "--home", str(self.home), "--listen", "127.0.0.1:0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + STEP_TIMEOUT
        info: dict[str, Any] | None = None
        while not (info and info.get("listen") and pid_alive(int(info.get("pid", 0)))):
            if self.proc.poll() is not None:
                raise _Failed(f"the daemon exited with status {self.proc.returncode}: {_last_line(self.log)}")
            if time.monotonic() > deadline:
                raise _Failed(f"the daemon did not serve within {STEP_TIMEOUT:.0f} s: {_last_line(self.log)}")
            time.sleep(0.1)
            info = daemon_info(self.home)
        # the home's own token, whatever $VSM_TOKEN says: this daemon is the selftest's
        self.client = Client(info["listen"], read_token(self.home), token_from=str(self.home / "token"))
        self.client.wait_ready(timeout=STEP_TIMEOUT)
        self.client.wait_for_plugins = True
        while self.client.health()[1].get("plugins_starting"):  # ready, plugins still starting (their onInit)
            if time.monotonic() > deadline:
                raise _Failed(f"plugins still starting after {STEP_TIMEOUT:.0f} s: {', '.join(self.client.health()[1]['plugins_starting'])}")
            time.sleep(0.1)
        return f"pid {info['pid']} serving on {info['listen']}, home {self.home}"

    def sector_state(self) -> str:
        self.client.call("sectors.init", {"sectors": [{"miner": MINER, "number": NUMBER, "proof_type": 8}]})
        got = self.client.call("sectors.get", {"miner": MINER, "number": NUMBER})
        if got.get("ID") != {"Miner": MINER, "Number": NUMBER}:
            raise _Failed(f"sectors.get gave back {got.get('ID')!r}, not the state put")
        return f"m-{MINER}-n-{NUMBER} stored and read back"

    def piece(self) -> str:
        path = "selftest/piece.bin"
        self.client.put_piece("pieces", path, io.BytesIO(PIECE), len(PIECE))
        back = io.BytesIO()
        self.client.get_piece("pieces", path, back)
        if hashlib.sha256(back.getvalue()).digest() != hashlib.sha256(PIECE).digest():
            raise _Failed(f"the piece read back differs ({len(back.getvalue())} bytes, {len(PIECE)} put)")
        return f"{len(PIECE) >> 20} MiB put into store 'pieces' and read back"

    def sinks(self) -> str:
        """Every attached sink has the state's event; DuckDB's table has its row."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            st = self.client.call("sinks.status")
            head = st["journal"]["head"]
            behind = [n for n, s in st["sinks"].items() if s["attached"] and s["checkpoint"] < head]
            if not behind and st["journal"]["watermark"] >= head:
                break
            if time.monotonic() > deadline:
                raise _Failed(f"sinks {', '.join(behind)} did not get event {head} within {STEP_TIMEOUT:.0f} s")
            time.sleep(0.1)
        rows = self.client.call("query", {"sql": f"select count(*) from sectors where miner = {MINER}", "sink": "duckdb"})["rows"]
        if rows != [[1]]:
            raise _Failed(f"the DuckDB sink holds {rows!r} rows for the state, not [[1]]")
        return f"{', '.join(sorted(st['sinks']))} have every event; DuckDB has the state's row"

    def status(self) -> str:
        """Every plugin ready (one whose kind this config does not use stays loaded, unstarted),
        and no problem."""
        st = self.client.call("status")
        bad = [f"{p['kind']}/{p['name']}: {p['state']}" for p in st["plugins"] if p["state"] not in ("ready", "loaded")]
        problems = [f"{p['part']}: {p['state']}: {p['cause']}" for p in st.get("problems") or []]
        if bad or problems:
            raise _Failed("; ".join(bad + problems))
        ready = sum(p["state"] == "ready" for p in st["plugins"])
        return f"{ready} plugins ready ({len(st['plugins']) - ready} loaded, unused), no problem"

    def stop(self) -> str:
        assert self.proc is not None
        self.client.call("daemon.stop")
        try:
            code = self.proc.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise _Failed(f"the daemon did not stop within {STEP_TIMEOUT:.0f} s") from None
        if code != 0:
            raise _Failed(f"the daemon exited with status {code}: {_last_line(self.log)}")
        return "stopped, exit status 0"

    def kill(self) -> None:
        """The daemon and its workers gone, whatever happened (a failed step)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _last_line(log: Path) -> str:
    """The daemon log's last line: where it says why it stopped."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1].strip() if lines else "(its log is empty)"
