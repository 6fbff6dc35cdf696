"""HTTP Range on piece GETs (issue 26 item 4), as curl sees it, on both byte paths: fsstore's
file path (sendfile of the range) and the shared-memory ring (OpenFiles = false: the worker
seeks, only the range crosses the ring)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import Daemon, prepare_home

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
CURL = shutil.which("curl")


def _curl(d: Daemon, path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl's view of a piece GET: status, headers (lower-case names), body."""
    if CURL is None:
        pytest.skip("no curl (apt-get install curl)")
    proc = subprocess.run(
        [CURL, "-sS", "-D", "-", "-H", f"Authorization: Bearer {d.token}", *args, f"http://127.0.0.1:{d.port}/pieces/pieces/{path}"],
        capture_output=True, timeout=60, check=True,
    )
    head, _, body = proc.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("open_files", ["true", "false"], ids=["sendfile", "ring"])
def test_ranges_through_the_daemon(start_daemon: Any, tmp_path: Path, open_files: str) -> None:
    d: Daemon = start_daemon(prepare_home(tmp_path / "home", append=f'[Common.PieceStores.Meta]\nOpenFiles = "{open_files}"\n'))
    n = 3 * MiB + 5  # ranges that cross the ring's 1 MiB slots
    data = os.urandom(n)
    assert d.request("PUT", "/pieces/pieces/r/p.bin", data)[0] == 201

    status, h, body = _curl(d, "r/p.bin", "-r", "0-9")  # what the issue's `curl -r 0-9` got: 200 and everything
    assert (status, body) == (206, data[:10]), (status, len(body))
    assert h["content-range"] == f"bytes 0-9/{n}" and h["content-length"] == "10" and h["accept-ranges"] == "bytes"
    etag, modified = h["etag"], h["last-modified"]
    assert etag.startswith('"') and etag.endswith('"') and modified.endswith("GMT")

    for spec, want, first in (
        (f"{MiB - 3}-{2 * MiB + 3}", data[MiB - 3 : 2 * MiB + 4], MiB - 3),  # across two slot edges
        ("-5", data[-5:], n - 5),  # the last 5 bytes
        (f"{n - 7}-", data[-7:], n - 7),  # from an offset to the end
        (f"{n - 2}-{n + 1000}", data[-2:], n - 2),  # a last byte past the end is clipped
    ):
        status, h, body = _curl(d, "r/p.bin", "-r", spec)
        assert status == 206 and body == want, (spec, status, len(body))
        assert h["content-range"] == f"bytes {first}-{first + len(want) - 1}/{n}", (spec, h)

    status, h, body = _curl(d, "r/p.bin", "-r", f"{n}-")  # starts at the end: nothing to send
    assert status == 416 and h["content-range"] == f"bytes */{n}", (status, h)
    assert b"outside the piece" in body and b"Traceback" not in body

    # what is not served as a range gets the whole piece, as RFC 9110 allows
    for args in (["-r", "0-1,5-6"], ["-H", "Range: bytes=9-2"], ["-H", "Range: items=0-1"]):
        status, h, body = _curl(d, "r/p.bin", *args)
        assert status == 200 and body == data and h["accept-ranges"] == "bytes", (args, status)

    # If-Range: the range only while the piece is the one the client has
    assert _curl(d, "r/p.bin", "-r", "0-9", "-H", f"If-Range: {etag}")[::2] == (206, data[:10])
    assert _curl(d, "r/p.bin", "-r", "0-9", "-H", f"If-Range: {modified}")[::2] == (206, data[:10])
    assert _curl(d, "r/p.bin", "-r", "0-9", "-H", f"If-Range: W/{etag}")[::2] == (200, data)  # weak: never
    assert _curl(d, "r/p.bin", "-r", "0-9", "-H", 'If-Range: "other"')[::2] == (200, data)

    # HEAD says the same; a new version of the piece has another ETag, and an old If-Range
    # gets the whole new piece instead of a range of it
    status, head, _ = d.request("HEAD", "/pieces/pieces/r/p.bin")
    assert status == 200 and head["etag"] == etag and head["accept-ranges"] == "bytes" and head["last-modified"] == modified
    time.sleep(0.01)
    other = os.urandom(n)
    assert d.request("PUT", "/pieces/pieces/r/p.bin", other)[0] == 201
    status, h, body = _curl(d, "r/p.bin", "-r", "0-9", "-H", f"If-Range: {etag}")
    assert status == 200 and body == other and h["etag"] != etag

    # an empty piece has no byte to range over
    assert d.request("PUT", "/pieces/pieces/r/empty", b"")[0] == 201
    status, h, _ = _curl(d, "r/empty", "-r", "-5")
    assert status == 416 and h["content-range"] == "bytes */0"
    assert _curl(d, "r/missing", "-r", "0-9")[0] == 404
    assert d.healthy()
