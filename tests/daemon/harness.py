"""Test harness: the real daemon as a subprocess: start on a free port, wait for /healthz, talk to it through
the CLI and raw HTTP, stop it with a signal and check that it left nothing behind.

"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.faults import free_port, shm_entries  # noqa: F401 - re-exported for the daemon tests

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


def cli_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VSM_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("COLUMNS", None)
    return env


def run_cli(home: Path, *args: str, timeout: float = 120.0, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m vsm ARGS` with VSM_HOME=home (the CLI finds the daemon and its token itself)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vsm", *args], cwd=ROOT, env={**cli_env(home), **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vsm {' '.join(args)} -> exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


class Daemon:
    """A running `vsm-pool start`, with raw HTTP helpers."""

    def __init__(self, home: Path, port: int, proc: subprocess.Popen[bytes], log: Path, shm_before: set[str]) -> None:
        self.home, self.port, self.proc, self.log, self.shm_before = home, port, proc, log, shm_before
        self.token = (home / "token").read_text().strip()
        self.stopped = False
        self.workers = self.tree()  # snapshot while it runs: checked again after it stopped
        assert self.workers, f"the daemon runs no worker process; log:\n{self.log_text()[-3000:]}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    # -- raw HTTP ------------------------------------------------------------------------
    def conn(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def auth(self, token: str | None = "") -> dict[str, str]:
        """Headers with the daemon's token; `token=None` sends none, another string sends that."""
        if token is None:
            return {}
        return {"Authorization": f"Bearer {token or self.token}"}

    def request(self, verb: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                token: str | None = "") -> tuple[int, dict[str, str], bytes]:
        conn = self.conn()
        try:
            conn.request(verb, path, body=body, headers={**self.auth(token), **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def post_rpc(self, payload: Any, raw: bytes | None = None, token: str | None = "") -> tuple[int, Any]:
        body = raw if raw is not None else json.dumps(payload).encode()
        status, _, data = self.request("POST", "/rpc/v0", body, {"Content-Type": "application/json"}, token)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data

    def rpc(self, method: str, params: Any = None) -> Any:
        """The result of one call; AssertionError with the error object otherwise."""
        status, reply = self.post_rpc({"jsonrpc": "2.0", "id": 1, "method": method, "params": params if params is not None else {}})
        assert status == 200, (status, reply)
        assert "error" not in reply, reply
        return reply["result"]

    def rpc_error(self, method: str, params: Any = None) -> dict[str, Any]:
        status, reply = self.post_rpc({"jsonrpc": "2.0", "id": 7, "method": method, "params": params if params is not None else {}})
        assert status == 200, (status, reply)
        assert "error" in reply and reply["id"] == 7, reply
        return reply["error"]  # type: ignore[no-any-return]

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", token=None)[0] == 200
        except OSError:
            return False

    def wait_delivered(self, timeout: float = 60.0) -> int:
        """Wait until every attached sink has every event journaled so far; the head seq.
        Not `lag == 0`: an acknowledged update's event passes the durable watermark a moment
        after the reply, and lag counts up to the watermark only."""
        deadline = time.monotonic() + timeout
        head = self.rpc("sinks.status")["journal"]["head"]
        while True:
            st = self.rpc("sinks.status")
            if st["journal"]["watermark"] >= head and all(s["checkpoint"] >= head for s in st["sinks"].values() if s["attached"]):
                return int(head)
            assert time.monotonic() < deadline, f"sinks did not catch up with seq {head} within {timeout}s: {st}"
            time.sleep(0.05)

    def cli(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, **kw)

    # -- processes -----------------------------------------------------------------------
    def tree(self) -> list[psutil.Process]:
        """The daemon's descendants (its forkserver and every plugin worker)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def tree_rss(self) -> int:
        total = 0
        for p in [psutil.Process(self.pid), *self.tree()]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the daemon (None: someone else asked it to stop), wait, and check it left no
        process, no /dev/shm segment and no daemon.json behind. Returns its exit code."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        now = self.tree()
        descendants = now + [p for p in self.workers if p.pid not in {q.pid for q in now}]
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc)
            raise AssertionError(f"the daemon did not exit within {timeout}s of {sig!r}; log:\n{self.log_text()[-3000:]}") from None
        alive = descendants
        deadline = time.monotonic() + 10
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _running(p)]
            time.sleep(0.02)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        assert not alive, f"the daemon left processes behind: {[(p.pid, p.cmdline()[:3]) for p in alive]}"
        leaked = shm_entries() - self.shm_before
        assert not leaked, f"the daemon left shared memory behind: {sorted(leaked)}"
        assert not (self.home / "daemon.json").exists(), "daemon.json outlived the daemon"
        return rc


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.kill()
    proc.wait(10)
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def prepare_home(home: Path, api: str = "", append: str = "") -> Path:
    """A home with the default config, plus `api` lines in [Common.Api] and `append` (whole
    tables) at the end; the daemon started on it keeps this config."""
    from vsm.home import ensure_home

    config = ensure_home(home)
    text = config.read_text()
    if api:
        assert "\n[Common.Api]\n" in text
        text = text.replace("\n[Common.Api]\n", f"\n[Common.Api]\n{api.strip()}\n")
    config.write_text(text + ("\n" + append.strip() + "\n" if append else ""))
    return home


def launch(home: Path, port: int | None = None, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = port or free_port()
    home.parent.mkdir(parents=True, exist_ok=True)  # the home itself is the daemon's to make (issue 26)
    log = home.parent / f"{home.name}-daemon.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vsm", "start", "--home", str(home), "--listen", f"127.0.0.1:{port}", *extra],
            cwd=ROOT, env={**cli_env(home), **(env or {})}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return proc, log, port


def start(home: Path, port: int | None = None, *extra: str, env: dict[str, str] | None = None) -> Daemon:
    shm_before = shm_entries()
    proc, log, port = launch(home, port, *extra, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode} while starting; log:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            # ready, and no plugin still starting (the daemon serves before that: test_startup.py)
            ok = resp.status == 200 and "plugins_starting" not in json.loads(resp.read() or b"{}")
            conn.close()
            if ok and (home / "token").exists():
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"the daemon did not answer /healthz within {START_TIMEOUT}s; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Daemon(home, port, proc, log, shm_before)


def stop_checked(d: Daemon) -> None:
    if d.proc.poll() is None or not d.stopped:
        rc = d.stop()
        assert rc == 0, f"the daemon exited with {rc} on SIGTERM; log:\n{d.log_text()[-3000:]}"


def finish(d: Daemon) -> None:
    """The end of a daemon a test started: stopped with SIGTERM and checked, unless the test
    stopped it; killed with its whole tree if it still runs (also when the check fails)."""
    try:
        if not d.stopped:
            stop_checked(d)
    finally:
        if d.proc.poll() is None:
            kill_tree(d.proc)
