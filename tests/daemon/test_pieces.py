"""Pieces through the daemon: a 1 GiB round trip in flat memory, and every bad transfer."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from .harness import Daemon, kill_tree, prepare_home

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def _fsstore(d: Daemon) -> dict[str, Any]:
    for p in d.rpc("plugin.list"):
        if p["kind"] == "ObjStore" and p["name"] == "fsstore":
            return p["pool"]  # type: ignore[no-any-return]
    raise AssertionError("no fsstore pool")


def _store_dir(d: Daemon) -> Path:
    return d.home / "data" / "pieces"


def _put_raw(d: Daemon, path: str, data: bytes) -> tuple[int, bytes]:
    status, _, body = d.request("PUT", f"/pieces/pieces/{path}", data, {"Content-Type": "application/octet-stream"})
    return status, body


class _RssSampler:
    """Peak RSS of the daemon and its workers, sampled in a thread."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.base = d.tree_rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.d.tree_rss())

    def __enter__(self) -> "_RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.base


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """1 GiB of a repeated random 1 MiB block (cheap, not sparse), and its sha256."""
    path = tmp_path / "piece-1g.bin"
    block = os.urandom(MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(1024):
            f.write(block)
            h.update(block)
    try:
        yield path, h.hexdigest()
    finally:
        path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.timeout(600)
def test_1gib_piece_up_and_down_in_flat_memory(daemon: Daemon, big_file: tuple[Path, str], tmp_path: Path) -> None:
    src, digest = big_file
    out = tmp_path / "back.bin"
    try:
        with _RssSampler(daemon) as up:
            t0 = time.monotonic()
            proc = daemon.cli("pieces", "put", str(src), "pieces/big/piece-1g.bin", timeout=500)
            t_up = time.monotonic() - t0
        assert f"stored {1 << 30} bytes at pieces/big/piece-1g.bin" in proc.stdout
        assert daemon.cli("pieces", "stat", "pieces/big/piece-1g.bin").stdout.strip() == f"pieces/big/piece-1g.bin: {1 << 30} bytes"
        with _RssSampler(daemon) as down:
            t0 = time.monotonic()
            proc = daemon.cli("pieces", "get", "pieces/big/piece-1g.bin", str(out), timeout=500)
            t_down = time.monotonic() - t0
        assert out.stat().st_size == 1 << 30
        assert _sha256(out) == digest
        print(
            f"1 GiB up {t_up:.1f}s ({1024 / t_up:.0f} MiB/s), peak RSS growth {up.growth / MiB:.0f} MiB; "
            f"down {t_down:.1f}s ({1024 / t_down:.0f} MiB/s), peak RSS growth {down.growth / MiB:.0f} MiB"
        )
        assert up.growth < 256 * MiB, f"daemon + workers grew by {up.growth / MiB:.0f} MiB during a 1 GiB upload"
        assert down.growth < 256 * MiB, f"daemon + workers grew by {down.growth / MiB:.0f} MiB during a 1 GiB download"
    finally:
        out.unlink(missing_ok=True)
        (_store_dir(daemon) / "big" / "piece-1g.bin").unlink(missing_ok=True)


def test_put_stat_get_delete_raw_http(daemon: Daemon) -> None:
    data = os.urandom(3 * MiB + 17)
    status, body = _put_raw(daemon, "raw/a.bin", data)
    assert status == 201, body
    status, headers, _ = daemon.request("HEAD", "/pieces/pieces/raw/a.bin")
    assert status == 200 and int(headers["content-length"]) == len(data)
    status, _, got = daemon.request("GET", "/pieces/pieces/raw/a.bin")
    assert status == 200 and got == data
    assert daemon.rpc("pieces.stat", {"store": "pieces", "path": "raw/a.bin"})["size"] == len(data)
    assert daemon.request("DELETE", "/pieces/pieces/raw/a.bin")[0] == 204
    assert daemon.request("HEAD", "/pieces/pieces/raw/a.bin")[0] == 404
    assert daemon.request("GET", "/pieces/pieces/raw/a.bin")[0] == 404
    assert daemon.request("DELETE", "/pieces/pieces/raw/a.bin")[0] == 404
    # an empty piece is a piece
    assert _put_raw(daemon, "raw/empty", b"")[0] == 201
    assert daemon.request("GET", "/pieces/pieces/raw/empty")[:3:2] == (200, b"")


def test_unknown_store(daemon: Daemon, tmp_path: Path) -> None:
    for verb in ("GET", "HEAD", "DELETE", "PUT"):
        status, _, body = daemon.request(verb, "/pieces/nope/x.bin", b"abc" if verb == "PUT" else None)
        assert status == 404, (verb, status, body)
        if verb != "HEAD":
            assert b"no store named 'nope'" in body and b"pieces" in body, body
    err = daemon.rpc_error("pieces.stat", {"store": "nope", "path": "x"})
    assert "no store named 'nope'" in err["message"]
    # through the CLI, with a body bigger than the socket buffers: one line, no traceback
    f = tmp_path / "p.bin"
    f.write_bytes(os.urandom(16 * MiB))
    proc = daemon.cli("pieces", "put", str(f), "nope/x.bin", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "no store named 'nope'" in proc.stderr.strip().splitlines()[-1], proc.stderr
    proc = daemon.cli("pieces", "get", "nope/x.bin", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "no store named 'nope'" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    assert daemon.healthy()


ESCAPES = ["..%2F..%2Fetc%2Fpasswd", "a/../../x", "a/../../../etc/passwd", "%2Fetc%2Fpasswd", "..", "a/%2E%2E/%2E%2E/x"]


@pytest.mark.parametrize("path", ESCAPES)
def test_path_escaping_the_store_is_400(daemon: Daemon, path: str) -> None:
    outside = daemon.home / "data" / "x"
    for verb in ("PUT", "GET", "HEAD", "DELETE"):
        conn = daemon.conn()
        try:
            # http.client sends the path as it is: no client-side normalising of `..`
            conn.request(verb, f"/pieces/pieces/{path}", body=b"evil" if verb == "PUT" else None, headers=daemon.auth())
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 400, (verb, path, resp.status, body)
        if verb != "HEAD":
            assert b"outside of store" in body or b"must be relative" in body or b"invalid object path" in body, body
    assert not outside.exists() and not (daemon.home / "x").exists()
    assert daemon.healthy()


def test_upload_cut_off_half_way(daemon: Daemon) -> None:
    before = _fsstore(daemon)
    size = 64 * MiB
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(
        f"PUT /pieces/pieces/cut/half.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    block = os.urandom(MiB)
    for _ in range(size // MiB // 2):
        sock.sendall(block)
    time.sleep(0.3)
    sock.close()
    folder = _store_dir(daemon) / "cut"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the temp file goes once the worker saw the abort
        leftovers = sorted(os.listdir(folder)) if folder.exists() else []
        if not leftovers:
            break
        time.sleep(0.05)
    assert leftovers == [], f"left in the store after a cut-off upload: {leftovers}"
    assert daemon.request("HEAD", "/pieces/pieces/cut/half.bin")[0] == 404
    assert "not found" in daemon.rpc_error("pieces.stat", {"store": "pieces", "path": "cut/half.bin"})["message"]
    # the pool was not hurt: no restart, and the next upload works
    after = _fsstore(daemon)
    assert after["restarts"] == before["restarts"] and after["state"] == "ready"
    assert _put_raw(daemon, "cut/half.bin", b"whole")[0] == 201
    assert daemon.request("GET", "/pieces/pieces/cut/half.bin")[2] == b"whole"


def test_short_body_with_content_length(daemon: Daemon) -> None:
    """Content-Length says more than the client sends, then it half-closes: not stored."""
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    sock.sendall(
        f"PUT /pieces/pieces/cut/short.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
        f"Content-Length: 1000\r\n\r\n".encode() + b"x" * 500
    )
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(30)
    try:
        reply = sock.recv(65536)
    except OSError:
        reply = b""
    sock.close()
    assert not reply or reply.startswith(b"HTTP/1.1 4"), reply[:200]
    time.sleep(0.2)
    assert daemon.request("HEAD", "/pieces/pieces/cut/short.bin")[0] == 404
    assert daemon.healthy()


def test_client_disconnects_mid_download(daemon: Daemon) -> None:
    data = os.urandom(64 * MiB)
    assert _put_raw(daemon, "dl/64m.bin", data)[0] == 201
    before = _fsstore(daemon)
    for _ in range(12):  # more than one ring's slots and more than the pool's workers
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(f"GET /pieces/pieces/dl/64m.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n\r\n".encode())
        got = 0
        while got < 2 * MiB:
            chunk = sock.recv(MiB)
            assert chunk
            got += len(chunk)
        sock.close()
    # the stream was released each time: a whole download still works, without waiting for a worker
    conn = daemon.conn(timeout=20)
    try:
        conn.request("GET", "/pieces/pieces/dl/64m.bin", headers=daemon.auth())
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == data
    finally:
        conn.close()
    deadline = time.monotonic() + 10
    while True:
        after = _fsstore(daemon)
        if all(w["outstanding"] == 0 for w in after["workers"]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(w["outstanding"] == 0 and w["alive"] for w in after["workers"]), after
    assert after["restarts"] == before["restarts"] and after["state"] == "ready", after
    assert daemon.rpc("pieces.stat", {"store": "pieces", "path": "dl/64m.bin"})["size"] == len(data)


def _stall_then_ask(d: Daemon) -> None:
    """Hold a download without reading, then ask the same store small questions: answered at once."""
    data = os.urandom(32 * MiB)
    assert _put_raw(d, "dl/stall.bin", data)[0] == 201
    sock = socket.create_connection(("127.0.0.1", d.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.sendall(f"GET /pieces/pieces/dl/stall.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n\r\n".encode())
        sock.recv(65536)  # started; now stop reading
        time.sleep(0.5)
        assert d.rpc("pieces.stores")[0]["name"] == "pieces"
        assert d.healthy()
        # a HEAD that had to wait for the held worker would get 503 after the CallTimeout (3 s)
        status = d.request("HEAD", "/pieces/pieces/dl/stall.bin")[0]
        assert status == 200, f"HEAD on the store during a held download: {status}"
        assert _fsstore(d)["restarts"] == 0
    finally:
        sock.close()


def test_store_calls_during_a_held_download_default_workers(start_daemon: Any, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", append="[Common.Plugins.fsstore]\nCallTimeout = 3")
    _stall_then_ask(start_daemon(home))


@pytest.mark.parametrize("open_files", ["false", "true"])
def test_one_worker_busy_streaming_times_out_small_calls_but_keeps_the_stream(start_daemon: Any, tmp_path: Path, open_files: str) -> None:
    """With Workers = 1 on the ring path (OpenFiles = false) the stat cannot run beside the
    held download: it gets 503 after its CallTimeout, and the download is not killed for it
    (no restart). On the file path (the default) the download holds no worker: 200 at once."""
    d = start_daemon(prepare_home(
        tmp_path / "home",
        append=f'[Common.PieceStores.Meta]\nOpenFiles = "{open_files}"\n[Common.Plugins.fsstore]\nWorkers = 1\nCallTimeout = 2',
    ))
    data = os.urandom(32 * MiB)
    assert _put_raw(d, "dl/held.bin", data)[0] == 201
    sock = socket.create_connection(("127.0.0.1", d.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.sendall(f"GET /pieces/pieces/dl/held.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n\r\n".encode())
        got = sock.recv(65536)
        assert got.startswith(b"HTTP/1.1 200")
        # 200 on the file path: a HEAD that waited for the one worker would get 503 (CallTimeout)
        assert d.request("HEAD", "/pieces/pieces/dl/held.bin")[0] == (503 if open_files == "false" else 200)
        assert _fsstore(d)["restarts"] == 0
        sock.settimeout(60)
        total = len(got.split(b"\r\n\r\n", 1)[1])
        while total < len(data):  # the held download still completes
            chunk = sock.recv(1 << 20)
            assert chunk, f"download cut after {total} bytes"
            total += len(chunk)
    finally:
        sock.close()


def test_store_calls_during_a_held_download_two_workers(start_daemon: Any, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home", append="[Common.Plugins.fsstore]\nWorkers = 2\nCallTimeout = 3")
    _stall_then_ask(start_daemon(home))


@pytest.mark.parametrize("name", ["odd/a b.bin", "odd/q?x=1#frag", "odd/pct%41.bin", "odd/ünï.bin"])
def test_cli_names_that_need_quoting(daemon: Daemon, tmp_path: Path, name: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    daemon.cli("pieces", "put", str(src), f"pieces/{name}")
    assert (_store_dir(daemon) / name).read_bytes() == src.read_bytes()  # stored under that very name
    assert daemon.cli("pieces", "stat", f"pieces/{name}").stdout.strip().endswith("100000 bytes")
    out = tmp_path / "out.bin"
    daemon.cli("pieces", "get", f"pieces/{name}", str(out))
    assert out.read_bytes() == src.read_bytes()
    daemon.cli("pieces", "del", f"pieces/{name}")
    proc = daemon.cli("pieces", "get", f"pieces/{name}", str(out), check=False)
    assert proc.returncode != 0 and "not found" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


IDLE = {"VSM_TRANSFER_IDLE_TIMEOUT": "2"}


def test_stalled_upload_is_failed_and_frees_the_store(start_daemon: Any) -> None:
    """A client that sends half a piece and then nothing, connection open: failed after the idle
    timeout, nothing stored, and the store's only worker serves the next transfer."""
    d: Daemon = start_daemon(env=IDLE)
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    try:
        sock.sendall(
            f"PUT /pieces/pieces/stall/up.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n"
            f"Content-Length: {8 * MiB}\r\n\r\n".encode() + b"u" * MiB
        )
        t0 = time.monotonic()
        reply = sock.recv(65536)
        took = time.monotonic() - t0
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"upload stalled" in reply and b"stall/up.bin" in reply, reply
    assert 1.5 < took < 20, took
    assert d.request("HEAD", "/pieces/pieces/stall/up.bin")[0] == 404
    folder = _store_dir(d) / "stall"
    assert not folder.exists() or os.listdir(folder) == [], os.listdir(folder)  # no temp file either
    assert _put_raw(d, "stall/next.bin", b"next")[0] == 201
    assert d.request("GET", "/pieces/pieces/stall/next.bin")[2] == b"next"


def test_stalled_download_is_dropped_and_frees_the_store(start_daemon: Any) -> None:
    d: Daemon = start_daemon(env=IDLE)
    data = os.urandom(32 * MiB)
    assert _put_raw(d, "stall/down.bin", data)[0] == 201
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        sock.sendall(f"GET /pieces/pieces/stall/down.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n\r\n".encode())
        got = len(sock.recv(65536))
        # the held stream is dropped after the idle timeout; the next download does not wait long
        t0 = time.monotonic()
        conn = d.conn(timeout=30)
        try:
            conn.request("GET", "/pieces/pieces/stall/down.bin", headers=d.auth())
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == data
        finally:
            conn.close()
        assert time.monotonic() - t0 < 20
        # the store has workers to spare, so the second download did not wait for the drop:
        # wait for it, then the stalled client finds its body cut short
        deadline = time.monotonic() + 15
        while "dropped: the client took no byte" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        while chunk := sock.recv(MiB):
            got += len(chunk)
        assert got < len(data)
    finally:
        sock.close()
    assert "dropped: the client took no byte" in d.log_text()
    pool = _fsstore(d)
    assert pool["restarts"] == 0 and all(w["outstanding"] == 0 for w in pool["workers"]), pool


def test_daemon_killed_mid_upload_leaves_nothing_visible(start_daemon: Any) -> None:
    """kill -9 of the daemon (and its workers) half way through a PUT on the file path: the
    old object is whole and no file, temp or not, appears (pieces.py's crash argument)."""
    d: Daemon = start_daemon()
    assert _put_raw(d, "crash/obj.bin", b"old")[0] == 201
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    try:
        sock.sendall(
            f"PUT /pieces/pieces/crash/obj.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n"
            f"Content-Length: {64 * MiB}\r\n\r\n".encode() + b"n" * (8 * MiB)
        )
        time.sleep(1.0)  # the daemon has the store's file open and the bytes in it
        d.stopped = True
        kill_tree(d.proc)
    finally:
        sock.close()
    folder = _store_dir(d) / "crash"
    assert sorted(os.listdir(folder)) == ["obj.bin"] and (folder / "obj.bin").read_bytes() == b"old"
