"""Hostile piece paths are refused with a 4xx and one line, never a 5xx (issue 25 item 4:
`PUT /pieces/pieces/d/d/.../d/` answered `500 RecursionError`), on both byte paths."""

from __future__ import annotations

import http.client
import random
from pathlib import Path
from typing import Any

import pytest

from .harness import Daemon, prepare_home

pytestmark = pytest.mark.timeout(240)

HOSTILE = {
    "deep-folder": "d/" * 300,  # the path: a few hundred folders ending in '/'
    "deeper-folder": "d/" * 2000,  # 4000 bytes: makedirs recursed past Python's limit
    "deep-object": "d/" * 2000 + "x",
    "too-long": "d/" * 3000 + "x",  # past PATH_MAX: ENAMETOOLONG
    "long-name": "x" * 5000,
    "slash": "a/",
    "dot-slash": "a/./",
}


def _request(d: Daemon, verb: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:  # http.client sends the path as it is
        conn.request(verb, f"/pieces/pieces/{path}", body=b"hostile" if verb == "PUT" else None, headers=d.auth())
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("open_files", ["true", "false"], ids=["sendfile", "ring"])
def test_hostile_paths_are_4xx_never_5xx(start_daemon: Any, tmp_path: Path, open_files: str) -> None:
    d: Daemon = start_daemon(prepare_home(tmp_path / "home", append=f'[Common.PieceStores.Meta]\nOpenFiles = "{open_files}"\n'))
    store = d.home / "data" / "pieces"
    for name, path in HOSTILE.items():
        for verb in ("PUT", "GET", "HEAD", "DELETE"):
            status, body = _request(d, verb, path)
            assert 400 <= status < 500, (name, verb, status, body[:300])
            if verb != "HEAD":
                assert b"Traceback" not in body and b"RecursionError" not in body and body.count(b"\n") <= 1, (name, body[:300])
    # the refusals say why
    assert b"names a folder" in _request(d, "PUT", HOSTILE["deep-folder"])[1]
    assert b"folders deep; at most 256" in _request(d, "PUT", HOSTILE["deep-object"])[1]
    assert b"bytes long; at most 4096" in _request(d, "PUT", HOSTILE["too-long"])[1]
    # nothing was stored under another name, and the store still works
    assert not (store / "a").exists() and not (store / "d").exists()
    assert _request(d, "PUT", "ok/" * 200 + "x")[0] == 201  # deep, within the bounds
    assert _request(d, "GET", "ok/" * 200 + "x") == (200, b"hostile")
    assert d.rpc_error("pieces.stat", {"store": "pieces", "path": "d/" * 300})["code"] == -32602
    # and odd ones at random (fixed seed): encoded dots, slashes, NULs, bytes that are no UTF-8
    rnd = random.Random(25)
    parts = ["a", "d", "/", ".", "%2e", "%2f", "%ff", "%00", "..", "%0a", "x" * 100, ".vsm-tmp"]
    for _ in range(100):
        path = "".join(rnd.choice(parts) for _ in range(rnd.randint(1, 60)))
        for verb in ("PUT", "GET", "DELETE"):
            status, body = _request(d, verb, path)
            assert status < 500, (verb, path, status, body[:300])
    assert d.healthy()
