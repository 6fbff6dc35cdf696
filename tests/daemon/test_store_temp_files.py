"""No temp file is left in a store by a worker or a daemon killed during a PUT (issue 13, item
5): the store's named temp files live in <store>/.vsm-tmp and opening the store (the worker's
replacement, the next daemon) deletes those whose writer is gone; the daemon's own PUT uses
O_TMPFILE where it can, which leaves nothing to delete."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from .harness import Daemon, prepare_home, start

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20


def _leftovers(store: Path) -> list[str]:
    """Every file in the store that is not a finished object."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".vsm-tmp" in p.parts))


def _writers(names: list[str]) -> dict[int, str]:
    """The state of each temp file's writer pid (<host>-<pid>-<random>.tmp): gone, or its
    /proc state letter (Z: a zombie init has not reaped yet)."""
    out = {}
    for name in names:
        pid = int(Path(name).name.split("-")[1])
        try:
            out[pid] = psutil.Process(pid).status()
        except psutil.Error:
            out[pid] = "gone"
    return out


def _begin_put(d: Daemon, path: str, total: int) -> socket.socket:
    """A PUT that sends its headers and 2 MiB of `total` bytes, then stalls."""
    sock = socket.create_connection(("127.0.0.1", d.port))
    head = (f"PUT /pieces/pieces/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n")
    sock.sendall(head.encode() + os.urandom(2 * MiB))
    return sock


def _fsstore_workers(d: Daemon) -> list[int]:
    row = next(r for r in d.rpc("plugin.list") if r["name"] == "fsstore")
    return [w["pid"] for w in row["pool"]["workers"] if w.get("alive")]


def _wait(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _home(tmp_path: Path, open_files: bool) -> Path:
    return prepare_home(tmp_path / "home", append=f'[Common.PieceStores.Meta]\nOpenFiles = "{str(open_files).lower()}"\n')


@pytest.mark.parametrize("open_files", [False, True], ids=["ring-put", "sendfile-put"])
def test_worker_killed_mid_put_leaves_no_temp_file(start_daemon: Any, tmp_path: Path, open_files: bool) -> None:
    d: Daemon = start_daemon(_home(tmp_path, open_files))
    store = d.home / "data" / "pieces"
    sock = _begin_put(d, "killed/mid-put.bin", 64 * MiB)
    if not open_files:  # the ring put names its temp file: it is there while the put runs
        _wait(lambda: _leftovers(store))
    else:
        time.sleep(1.0)
    killed = set(_fsstore_workers(d))
    for pid in killed:
        psutil.Process(pid).kill()
    sock.close()
    # replaced: none of the killed (the pool may not have noticed their deaths yet), 4 ready
    _wait(lambda: not killed & set(_fsstore_workers(d)) and len(_fsstore_workers(d)) == 4
          and next(r for r in d.rpc("plugin.list") if r["name"] == "fsstore")["pool"]["state"] == "ready")
    _wait(lambda: not _leftovers(store), 10)
    assert not (store / "killed" / "mid-put.bin").exists()
    status, _, body = d.request("PUT", "/pieces/pieces/killed/after.bin", b"ok")
    assert status == 201, body
    assert _leftovers(store) == []


def test_daemon_killed_mid_put_leaves_no_temp_file_after_restart(tmp_path: Path) -> None:
    home = _home(tmp_path, False)
    d = start(home)
    store = home / "data" / "pieces"
    try:
        sock = _begin_put(d, "killed/daemon.bin", 64 * MiB)
        _wait(lambda: _leftovers(store))
        tree = [psutil.Process(d.pid), *d.tree()]
        for p in tree:  # the whole tree at once (OOM killer, power cut)
            p.kill()
        d.proc.wait(30)
        # until init has reaped them (it polls here: ~1-2 s): a writer still a zombie counts as
        # running, so a restart within that time would rightly keep its temp file
        psutil.wait_procs(tree, timeout=30)
        sock.close()
        assert _leftovers(store)  # the dead worker's temp file: there until the store is opened
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    (home / "daemon.json").unlink(missing_ok=True)
    d2 = start(home)
    try:
        left = _leftovers(store)
        assert left == [], f"{left}: their writers are {_writers(left)}"
        assert not (store / "killed" / "daemon.bin").exists()
    finally:
        assert d2.stop() == 0
