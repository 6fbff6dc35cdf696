"""Start, a second start, stop (CLI, SIGTERM, SIGINT, mid-upload): the daemon leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.server.daemon import SHUTDOWN_GRACE
from vsm.home import DEFAULT_PLUGINS

from .harness import Daemon, launch, prepare_home, run_cli

pytestmark = pytest.mark.timeout(180)

LOADED = re.compile(r"loaded plugin '(\w+)/([\w-]+)', build time: '([^']+)'\.$", re.M)


def test_first_start_creates_home(start_daemon: Any, tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "home"  # not there yet: start makes it
    d: Daemon = start_daemon(home)
    assert (home / "config.toml").is_file()
    assert "[Common.Plugins]" in (home / "config.toml").read_text()
    built = sorted(p.name for p in (home / "plugins").iterdir())
    assert len([n for n in built if n.startswith("plugin-")]) >= len(DEFAULT_PLUGINS), built
    mode = stat.S_IMODE((home / "token").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert len(d.token) >= 32
    loaded = {f"{k}/{n}": t for k, n, t in LOADED.findall(d.log_text())}
    assert "KVStore/sqlitekv" in loaded, d.log_text()
    assert {"ObjStore/fsstore", "SyncSectorState/duckdb", "RegisterJsonRpc/concurrent-limiter"} <= set(loaded), loaded
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", t) for t in loaded.values()), loaded
    assert (home / "data" / "kv" / "kv.sqlite").exists()  # the persistent embedded KVStore, in its own folder

    # a second start keeps the token and the config
    token, config = d.token, (home / "config.toml").read_text()
    assert d.stop() == 0
    d2: Daemon = start_daemon(home)
    assert d2.token == token
    assert (home / "config.toml").read_text() == config


def test_second_start_same_home_or_busy_port(start_daemon: Any, tmp_path: Path) -> None:
    d: Daemon = start_daemon()
    # same home, another port: the home's lock says who runs
    proc = run_cli(d.home, "start", "--home", str(d.home), "--listen", "127.0.0.1:0", check=False, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "already running" in last and str(d.pid) in last and str(d.port) in last, proc.stderr
    # another home, the same port
    other = tmp_path / "other"
    proc = run_cli(other, "start", "--home", str(other), "--listen", f"127.0.0.1:{d.port}", check=False, timeout=60)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{d.port}" in last and "in use" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (other / "daemon.json").exists()
    # the first one never noticed
    assert d.healthy()
    assert d.rpc("status")["daemon"]["pid"] == d.pid


def test_cli_stop_leaves_nothing(start_daemon: Any) -> None:
    d: Daemon = start_daemon()
    proc = d.cli("stop", timeout=90)
    assert f"(pid {d.pid}) stopped" in proc.stdout
    assert d.stop(sig=None) == 0  # checks: no worker, no shm, no daemon.json
    assert "vsm-pool stopped" in d.log_text()
    # nothing runs now: a clear line, exit != 0
    proc = d.cli("stop", check=False)
    assert proc.returncode != 0 and "no vsm-pool daemon is running" in proc.stderr
    proc = d.cli("status", check=False)
    assert proc.returncode != 0 and "no vsm-pool daemon is running" in proc.stderr


def test_sigint_leaves_nothing(start_daemon: Any) -> None:
    d: Daemon = start_daemon()
    d.rpc("pieces.stores")
    assert d.stop(signal.SIGINT) == 0
    assert "vsm-pool stopped" in d.log_text()


def test_sigusr1_writes_every_threads_stack_to_the_log(start_daemon: Any) -> None:
    """Where a daemon or a worker hangs: SIGUSR1 writes their threads' stacks into the log
    (faulthandler), and both go on serving."""
    d: Daemon = start_daemon()
    worker = next(w["pid"] for r in d.rpc("plugin.list") if r["name"] == "fsstore" for w in r["pool"]["workers"])
    for pid, where in ((d.pid, "vsm/server/daemon.py"), (worker, "executors/_worker.py")):
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while where not in d.log_text():
            assert time.monotonic() < deadline, d.log_text()[-3000:]
            time.sleep(0.05)
    assert "Thread 0x" in d.log_text()
    assert d.rpc("pieces.stores") and worker in [w["pid"] for r in d.rpc("plugin.list") if r["name"] == "fsstore" for w in r["pool"]["workers"]]
    assert d.stop() == 0


def test_sigterm_during_upload_stops(start_daemon: Any) -> None:
    """An upload in flight when SIGTERM comes: the daemon fails or finishes it and exits; the
    half-sent piece is not visible."""
    d: Daemon = start_daemon()
    sock = socket.create_connection(("127.0.0.1", d.port))
    size = 1 << 30
    sock.sendall(
        f"PUT /pieces/pieces/inflight.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n"
        f"Content-Length: {size}\r\n\r\n".encode()
    )
    stop = threading.Event()

    def feed() -> None:
        block = b"\x5a" * (1 << 20)
        try:
            while not stop.is_set():
                sock.sendall(block)
                time.sleep(0.01)
        except OSError:
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM, timeout=60) == 0
        took = time.monotonic() - t0
    finally:
        stop.set()
        sock.close()
        t.join(10)
    assert took < SHUTDOWN_GRACE + 10, f"stopping took {took:.1f}s"
    assert not (d.home / "data" / "pieces" / "inflight.bin").exists()
    assert not [n for n in os.listdir(d.home / "data" / "pieces") if "inflight" in n]  # nor its temp file
    assert re.search(r"upload pieces/inflight.bin (cancelled|failed).*nothing stored", d.log_text()), d.log_text()[-2000:]


def test_start_failure_is_one_line(tmp_path: Path) -> None:
    """A broken config stops start-up with one line naming the file and key, and no process."""
    home = tmp_path / "home"
    run_cli(home, "config", "init", "--home", str(home))
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace('Listen = "127.0.0.1:1789"', 'Listen = "nowhere"'))
    proc, log, _ = launch(home)
    assert proc.wait(60) != 0
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "config.toml" in text and "Listen" in text, text


@pytest.mark.parametrize("content", ["", "\n", "short\n"], ids=["empty", "newline", "short"])
def test_empty_or_trivial_token_is_replaced(start_daemon: Any, tmp_path: Path, content: str) -> None:
    home = prepare_home(tmp_path / "home")
    (home / "token").write_text(content)
    (home / "token").chmod(0o644)
    d: Daemon = start_daemon(home)
    assert len(d.token) >= 32 and d.token != content.strip()
    assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
    for header in ("Bearer ", "Bearer", f"Bearer {content.strip()}"):
        assert d.request("GET", "/metrics", headers={"Authorization": header}, token=None)[0] == 401, header
    assert d.request("GET", "/metrics")[0] == 200
    assert "writing a new one" in d.log_text()
