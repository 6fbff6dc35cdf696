"""JSON-RPC at /rpc/v0 and the token rules: every bad input gets its error, and the daemon goes on."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from .harness import Daemon, finish, prepare_home, start

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """This module's daemon has a small [Common.Api] MaxBodyBytes."""
    home = prepare_home(tmp_path_factory.mktemp("rpc") / "home", api=f"MaxBodyBytes = {MAX_BODY}")
    d = start(home)
    try:
        yield d
    finally:
        finish(d)


def call(method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
    req: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        req["params"] = params
    return req


# --- token -----------------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/rpc/v0", json.dumps(call("status")).encode()),
    ("GET", "/metrics", None),
    ("PUT", "/pieces/pieces/t.bin", b"abc"),
    ("GET", "/pieces/pieces/t.bin", None),
    ("HEAD", "/pieces/pieces/t.bin", None),
    ("DELETE", "/pieces/pieces/t.bin", None),
    ("GET", "/pieces/nope/x", None),
    ("GET", "/no/such/route", None),
    ("POST", "/healthz", None),  # only GET /healthz is open
]


@pytest.mark.parametrize("token", [None, "wrong", "BAD", " "], ids=["missing", "wrong", "upper", "blank"])
@pytest.mark.parametrize("verb,path,body", ENDPOINTS, ids=[f"{v} {p}" for v, p, _ in ENDPOINTS])
def test_every_endpoint_but_healthz_needs_the_token(daemon: Daemon, verb: str, path: str, body: bytes | None, token: str | None) -> None:
    status, _, data = daemon.request(verb, path, body, token=token)
    assert status == 401, (verb, path, status, data)
    if verb != "HEAD":
        assert b"token" in data and b"result" not in data, data  # nothing else leaks out
    assert daemon.request("HEAD", "/pieces/pieces/t.bin")[0] == 404  # and the PUT stored nothing


def test_token_variants_refused(daemon: Daemon) -> None:
    for header in (daemon.token, f"Basic {daemon.token}", f"bearer {daemon.token}x", f"Bearer {daemon.token[:-1]}"):
        status, _, _ = daemon.request("GET", "/metrics", headers={"Authorization": header}, token=None)
        assert status == 401, header


def test_healthz_needs_no_token(daemon: Daemon) -> None:
    status, _, body = daemon.request("GET", "/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_cli_reads_the_token_itself(daemon: Daemon) -> None:
    proc = daemon.cli("status", "--json")
    assert json.loads(proc.stdout)["daemon"]["pid"] == daemon.pid
    # a stale token in the home: a clear line, no traceback
    real = daemon.token
    (daemon.home / "token").write_text("not-the-token\n")
    try:
        proc = daemon.cli("status", check=False)
    finally:
        (daemon.home / "token").write_text(real + "\n")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "401" in proc.stderr and "token" in proc.stderr, proc.stderr


# --- JSON-RPC errors -------------------------------------------------------------------------


def test_malformed_json(daemon: Daemon) -> None:
    for raw in (b"{bad", b"", b"\xff\xfe", b'{"jsonrpc": "2.0", "method": "status"', b"[1,"):
        status, reply = daemon.post_rpc(None, raw=raw)
        assert status == 200, (raw, status, reply)
        assert reply["error"]["code"] == -32700 and reply["id"] is None, (raw, reply)
    assert daemon.rpc("pieces.stores")


def test_invalid_requests(daemon: Daemon) -> None:
    for payload in ({"method": "status", "id": 1}, {"jsonrpc": "1.0", "method": "status", "id": 1},
                    {"jsonrpc": "2.0", "method": 5, "id": 1}, 5, "status", None):
        status, reply = daemon.post_rpc(payload)
        assert status == 200 and reply["error"]["code"] == -32600, (payload, reply)
    status, reply = daemon.post_rpc([])
    assert reply["error"]["code"] == -32600


def test_unknown_method(daemon: Daemon) -> None:
    for name in ("nope", "sectors.nope", "DAMOCLES_LIMITER.nope", "DAMOCLES_LIMITER._check_slot", "DAMOCLES_LIMITER.__init__", "NOPE.Acquire", "",
                 "__init__", "METHODS", "daemon.nope"):
        err = daemon.rpc_error(name)
        assert err["code"] == -32601, (name, err)
        assert repr(name) in err["message"]


@pytest.mark.parametrize(
    "method,params",
    [
        ("sectors.get", {"x": 1}),
        ("sectors.get", {"miner": 1}),
        ("sectors.get", {"miner": "a", "number": 1}),
        ("sectors.get", {"miner": -1, "number": 1}),
        ("sectors.get", [1, 2, 3]),
        ("sectors.import", {"states": "nope"}),
        ("sectors.import", {"states": [{"ID": "x"}]}),
        ("sectors.update", {"miner": 1, "number": 1, "fields": {}}),
        ("pieces.stat", {"store": "pieces"}),
        ("status", {"verbose": True}),
        ("status", 5),
        ("status", "x"),
        ("DAMOCLES_LIMITER.Acquire", {"nme": "add_pieces", "id": "w"}),
        ("DAMOCLES_LIMITER.Acquire", []),
    ],
)
def test_wrong_params(daemon: Daemon, method: str, params: Any) -> None:
    status, reply = daemon.post_rpc(call(method, params, id_="p"))
    assert status == 200
    assert reply["id"] == "p" and reply["error"]["code"] == -32602, reply
    assert "Traceback" not in reply["error"]["message"]


def test_batch_with_one_bad_entry(daemon: Daemon) -> None:
    batch = [
        call("pieces.stores", id_=1),
        call("nope", id_=2),
        call("sectors.get", {"x": 1}, id_=3),
        5,
        call("DAMOCLES_LIMITER.Extend", ["0-nope", "w"], id_=4),
        {"jsonrpc": "2.0", "method": "pieces.stores"},  # a notification: no reply
    ]
    status, replies = daemon.post_rpc(batch)
    assert status == 200 and isinstance(replies, list) and len(replies) == 5, replies
    by_id = {r["id"]: r for r in replies if r["id"] is not None}
    assert by_id[1]["result"][0]["name"] == "pieces"
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32602
    assert "result" in by_id[4]
    assert [r["error"]["code"] for r in replies if r["id"] is None] == [-32600]
    # only notifications: no content at all
    status, _, body = daemon.request("POST", "/rpc/v0", json.dumps([{"jsonrpc": "2.0", "method": "pieces.stores"}]).encode())
    assert status == 204 and body == b""


def test_oversized_body_is_413(daemon: Daemon) -> None:
    big = json.dumps(call("sectors.import", {"states": ["x" * (MAX_BODY + 1)]})).encode()
    status, reply = daemon.post_rpc(None, raw=big)
    assert status == 413, (status, reply)
    assert reply["error"]["code"] == -32600 and "MaxBodyBytes" in reply["error"]["message"], reply
    # a body that says it is huge and sends nothing more: refused on the header, connection freed
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=30)
    try:
        sock.sendall(
            f"POST /rpc/v0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * MAX_BODY}\r\n\r\n".encode()
        )
        head = sock.recv(4096)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    # piece uploads stream and are not bound by MaxBodyBytes
    data = b"\x01" * (4 * MAX_BODY)
    status, _, body = daemon.request("PUT", "/pieces/pieces/big-enough.bin", data)
    assert status == 201, body
    assert daemon.request("GET", "/pieces/pieces/big-enough.bin")[2] == data
    assert daemon.rpc("pieces.stores")


def test_cli_call_over_the_body_limit_is_one_line(daemon: Daemon, tmp_path: Path) -> None:
    from vsm.sdk.sectors import SectorID, SectorState
    from vsm.sectors import write_import_file

    proc = daemon.cli("sectors", "update", "1000", "1", "AbortReason=" + "x" * MAX_BODY, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "MaxBodyBytes" in proc.stderr.strip().splitlines()[-1], proc.stderr
    # a bulk import streams (one request of Arrow batches) and is not bound by it
    path = tmp_path / "many.jsonl"
    write_import_file(str(path), (SectorState(SectorID(1000, n), 8) for n in range(2000)))
    proc = daemon.cli("sectors", "import", "--chunk", "50", str(path))
    assert "imported 2000 of 2000" in proc.stdout


# --- RegisterJsonRpc -------------------------------------------------------------------------


def test_limiter_acquire_release(daemon: Daemon) -> None:
    """The bundled RegisterJsonRpc plugin: damocles' concurrent-limiter, namespace
    DAMOCLES_LIMITER, add_pieces limited to 1024 by default; params as damocles-worker sends
    them (a list) or by name."""
    first = daemon.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "worker-a"])
    assert first == "0-add_pieces"
    assert daemon.rpc("DAMOCLES_LIMITER.Acquire", {"name": "add_pieces", "id": "worker-b"}) == "1-add_pieces"
    assert daemon.rpc("DAMOCLES_LIMITER.Extend", ["0-add_pieces", "worker-a"]) is True
    assert daemon.rpc("DAMOCLES_LIMITER.Extend", ["0-add_pieces", "worker-b"]) is False  # held by another
    assert daemon.rpc("DAMOCLES_LIMITER.Release", {"slot": "0-add_pieces", "id": "worker-b"}) is True  # not its: no change
    assert daemon.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "worker-c"]) == "2-add_pieces"
    assert daemon.rpc("DAMOCLES_LIMITER.Release", ["0-add_pieces", "worker-a"]) is True
    assert daemon.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "worker-d"]) == "0-add_pieces"
    assert "invalid name: pc1" in daemon.rpc_error("DAMOCLES_LIMITER.Acquire", ["pc1", "w"])["message"]
    assert "invalid slot nope" in daemon.rpc_error("DAMOCLES_LIMITER.Release", ["nope", "w"])["message"]
    # a batch mixing plugin and manager methods
    status, replies = daemon.post_rpc(
        [call("DAMOCLES_LIMITER.Release", ["1-add_pieces", "worker-b"], id_=1), call("DAMOCLES_LIMITER.Acquire", ["add_pieces", "e"], id_=2), call("status", id_=3)]
    )
    by_id = {r["id"]: r for r in replies}
    assert by_id[1]["result"] is True and by_id[2]["result"] == "1-add_pieces" and "daemon" in by_id[3]["result"]
    plugins = {f"{p['kind']}/{p['name']}": p for p in daemon.rpc("plugin.list")}
    assert plugins["RegisterJsonRpc/concurrent-limiter"]["state"] == "ready"
    assert plugins["RegisterJsonRpc/concurrent-limiter"]["pool"]["calls"] >= 8
    # its config file, as the Go example writes it: every line commented out
    cfg = (daemon.home / "plugins" / "concurrent-limiter.toml").read_text()
    assert cfg == f'# Default config:\n#DataDir = "{daemon.home / "plugins" / ".concurrent-limiter"}"\n#\n#[Concurrent]\n#add_pieces = 1024\n#'


def test_daemon_keeps_serving_after_all_that(daemon: Daemon) -> None:
    assert daemon.healthy()
    assert daemon.rpc("status")["daemon"]["pid"] == daemon.pid
    assert all(p["state"] != "failed" for p in daemon.rpc("plugin.list"))
