"""Tokens with permission levels (issue 20 item 1), through the real daemon and CLI: every
method and endpoint checked against every level, tokens made, listed and revoked by the CLI."""

from __future__ import annotations

import json
import os
import stat
from typing import Iterator

import pytest

from vsm.server.auth import HTTP_LEVELS, RPC_LEVELS, Level
from vsm.server.methods import METHODS

from .harness import Daemon, finish, prepare_home, start

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start(prepare_home(tmp_path_factory.mktemp("auth") / "home"))
    try:
        yield d
    finally:
        finish(d)


@pytest.fixture(scope="module")
def tokens(daemon: Daemon) -> dict[str, str]:
    """A token of each level, made by the CLI (admin: the home's token file)."""
    out = {"admin": daemon.token}
    for perm in ("read", "write"):
        proc = daemon.cli("auth", "create-token", "--perm", perm, "--name", f"t-{perm}")
        out[perm] = proc.stdout.strip()
        assert len(out[perm]) >= 40 and "\n" not in out[perm], proc.stdout
    return out


def test_every_method_has_a_level() -> None:
    """A new manager method must be given a level here (else it needs admin)."""
    assert set(METHODS) | {"daemon.stop"} == set(RPC_LEVELS), set(METHODS) ^ set(RPC_LEVELS)


# Each method with params it refuses: an allowed caller gets -32602 (nothing runs), a caller
# below the method's level -32003 before the params are even looked at.
PROBES = sorted(RPC_LEVELS) + ["DAMOCLES_LIMITER.Acquire"]
LEVEL_OF = {**{m: RPC_LEVELS[m].label for m in RPC_LEVELS}, "DAMOCLES_LIMITER.Acquire": "write"}


@pytest.mark.parametrize("perm", ["read", "write", "admin"])
@pytest.mark.parametrize("method", PROBES)
def test_each_method_against_each_level(daemon: Daemon, tokens: dict[str, str], method: str, perm: str) -> None:
    status, reply = daemon.post_rpc({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"__probe": 1}}, token=tokens[perm])
    assert status == 200, (status, reply)
    need = Level.parse(LEVEL_OF[method])
    code = reply["error"]["code"]
    if Level.parse(perm) >= need:
        assert code == -32602, reply
    else:
        assert code == -32003, reply
        assert f"needs {'an' if need is Level.ADMIN else 'a'} {need.label} token; this one is {perm}" in reply["error"]["message"]
    assert daemon.healthy()


ROUTES = [("GET", "/pieces/pieces/a.bin"), ("HEAD", "/pieces/pieces/a.bin"), ("PUT", "/pieces/pieces/a.bin"),
          ("DELETE", "/pieces/pieces/a.bin"), ("GET", "/metrics"), ("POST", "/sectors/import")]


@pytest.mark.parametrize("perm", ["read", "write", "admin"])
@pytest.mark.parametrize("verb,path", ROUTES, ids=[f"{v} {p}" for v, p in ROUTES])
def test_each_endpoint_against_each_level(daemon: Daemon, tokens: dict[str, str], verb: str, path: str, perm: str) -> None:
    need = HTTP_LEVELS[(verb, path.strip("/").split("/")[0])]
    status, _, body = daemon.request(verb, path, b"piece" if verb == "PUT" else None, token=tokens[perm])
    if Level.parse(perm) >= need:
        assert status in (200, 201, 204, 400, 404), (status, body)
    else:
        assert status == 403, (status, body)
        if verb != "HEAD":
            assert f"{need.label} token; this one is {perm}" in json.loads(body)["error"]


def test_batch_is_checked_per_call(daemon: Daemon, tokens: dict[str, str]) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "status"}, {"jsonrpc": "2.0", "id": 2, "method": "daemon.stop"}]
    status, replies = daemon.post_rpc(batch, token=tokens["read"])
    by_id = {r["id"]: r for r in replies}
    assert "result" in by_id[1] and by_id[2]["error"]["code"] == -32003
    assert daemon.healthy()


def test_tokens_stored_hashed_and_revoked(daemon: Daemon, tokens: dict[str, str]) -> None:
    stored = daemon.home / "tokens.json"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    text = stored.read_text()
    assert tokens["read"] not in text and tokens["write"] not in text
    listed = json.loads(daemon.cli("auth", "list", "--json").stdout)
    assert {r["name"]: r["perm"] for r in listed} == {"(token file)": "admin", "t-read": "read", "t-write": "write"}
    assert tokens["read"] not in json.dumps(listed)
    # a token made now works at once, and is refused once revoked
    fresh = daemon.cli("auth", "create-token", "--perm", "read").stdout.strip()
    assert daemon.request("GET", "/metrics", token=fresh)[0] == 200
    name = [r for r in json.loads(daemon.cli("auth", "list", "--json").stdout) if r["name"].startswith("read-")][0]
    assert daemon.cli("auth", "revoke", name["id"]).stdout.startswith(f"revoked token {name['name']!r}")
    assert daemon.request("GET", "/metrics", token=fresh)[0] == 401
    assert daemon.request("GET", "/metrics", token=tokens["read"])[0] == 200
    # mistakes are one line
    proc = daemon.cli("auth", "revoke", "nope", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("Error: no token named or with id 'nope'"), proc.stderr
    proc = daemon.cli("auth", "create-token", "--perm", "read", "--name", "t-read", check=False)
    assert proc.returncode == 1 and "exists" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_with_a_read_token(daemon: Daemon, tokens: dict[str, str]) -> None:
    env = {"VSM_TOKEN": tokens["read"]}
    from .harness import run_cli

    assert "daemon: pid" in run_cli(daemon.home, "status", env=env).stdout
    proc = run_cli(daemon.home, "stop", env=env, check=False)
    assert proc.returncode != 0 and "daemon.stop needs an admin token; this one is read" in proc.stderr, proc.stderr
    assert daemon.healthy()
