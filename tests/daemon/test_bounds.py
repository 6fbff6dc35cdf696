"""Bounded work per request (issue 20 item 3), through the real daemon: each cap answers its
documented error and the daemon goes on serving."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator

import pytest

from .harness import Daemon, finish, prepare_home, start

pytestmark = pytest.mark.timeout(180)

MAX_RESPONSE = 1_000_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = prepare_home(
        tmp_path_factory.mktemp("bounds") / "home",
        api=f"MaxResponseBytes = {MAX_RESPONSE}\nMaxListLimit = 500\nHeaderTimeout = 1\nBodyTimeout = 1",
        # two workers: one stream at a time, one worker kept for small calls
        append="[Common.Plugins.fsstore]\nWorkers = 2\n",
    )
    d = start(home)
    try:
        d.rpc("sectors.import", {"states": [{"ID": {"Miner": 9, "Number": n}, "SectorType": 8} for n in range(600)]})
        yield d
    finally:
        finish(d)


def call(method: str, params: Any, id_: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}


def test_list_limit_is_capped(daemon: Daemon) -> None:
    assert len(daemon.rpc("sectors.list", {"limit": 500, "miner": 9})) == 500
    for bad in (501, 10**9, -1, "10", True):
        err = daemon.rpc_error("sectors.list", {"limit": bad})
        assert err["code"] == -32602 and "MaxListLimit" in err["message"], (bad, err)


def test_batch_results_are_bounded_together(daemon: Daemon) -> None:
    """20 lists of 500 sectors (~250 kB each) in one batch: the reply stays under MaxResponseBytes."""
    batch = [call("sectors.list", {"limit": 500, "miner": 9}, i) for i in range(20)]
    status, _, body = daemon.request("POST", "/rpc/v0", json.dumps(batch).encode())
    assert status == 200
    replies = json.loads(body)
    assert len(replies) == 20 and len(body) < MAX_RESPONSE + 20 * 1000
    codes = [r["error"]["code"] for r in replies if "error" in r]
    assert codes and set(codes) == {-32005}, codes
    assert all("MaxResponseBytes" in r["error"]["message"] for r in replies if "error" in r)
    assert daemon.rpc("status")


def test_stalled_uploads_never_block_the_stores_small_calls(daemon: Daemon) -> None:
    """Four stalled uploads on a store of two workers: stat and a new PUT still go through (the
    fsstore upload writes into a file the worker opened, holding no worker; other stores'
    streams are capped at the workers less one: tests/core/test_stream_cap.py)."""
    head = (f"PUT /pieces/pieces/stalled.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
            f"Content-Length: 1000000\r\n\r\n").encode()
    stalled = [socket.create_connection(("127.0.0.1", daemon.port), timeout=30) for _ in range(4)]
    try:
        for s in stalled:
            s.sendall(head + b"x" * 1000)  # then nothing
        time.sleep(0.5)
        err = daemon.rpc_error("pieces.stat", {"store": "pieces", "path": "second.bin"})
        assert "not found" in err["message"], err
        status, _, body = daemon.request("PUT", "/pieces/pieces/second.bin", b"y" * 10)
        assert status == 201, (status, body)
    finally:
        for s in stalled:
            s.close()
    assert daemon.request("GET", "/pieces/pieces/second.bin")[2] == b"y" * 10
    deadline = time.monotonic() + 30
    while daemon.request("HEAD", "/pieces/pieces/stalled.bin")[0] != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_slow_body_is_408(daemon: Daemon) -> None:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    try:
        sock.sendall(f"POST /rpc/v0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\nContent-Length: 100\r\n\r\n{{".encode())
        reply = sock.recv(4096)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"BodyTimeout" in reply


def test_slow_headers_are_cut(daemon: Daemon) -> None:
    """Slowloris: a request line and headers that never end are dropped after HeaderTimeout."""
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for _ in range(100):  # a header line now and then, never the blank line
            try:
                sock.sendall(b"X-a: b\r\n")
                if sock.recv(4096, socket.MSG_DONTWAIT) == b"":
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the daemon kept a connection whose headers never ended for 10 s")
    finally:
        sock.close()
    assert daemon.healthy()
