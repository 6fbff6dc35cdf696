"""Client mistakes and plugin failures over the real daemon (issue 20 item 4, issue 13 item 7):
never a 500, never a traceback or a server path in the answer, one log line per error."""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest

from vsm.plugin.artifact import build

from .harness import ROOT, Daemon, finish, prepare_home, start

pytestmark = pytest.mark.timeout(180)

OOPS_MANIFEST = """\
name = "oops"
kind = "RegisterJsonRpc"
module = "oops"
version = "0.1.0"
onInit = "on_init"
export = [ {extPoint = "Handler", impl = "handler"} ]
"""

OOPS_MODULE = '''\
import os


def on_init(plugins_dir, manifest):
    if os.path.exists(os.path.join(plugins_dir, "oops.fail")):
        raise RuntimeError("oops.fail says no")


class Private(Exception):  # the manager cannot import this module: it will not unpickle there
    pass


class Oops:
    def value_error(self):
        raise ValueError(f"bad state in {os.path.dirname(os.path.abspath(__file__))}/state.db")

    def private(self):
        raise Private("the plugin's own exception")

    def type_error_inside(self, x):
        return x + "a"  # a bug of the plugin's when x is a number

    def echo(self, x):
        return x


def handler():
    return "OOPS", Oops()
'''


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("errors")
    home = prepare_home(base / "home")
    src = base / "src" / "oops"
    src.mkdir(parents=True)
    (src / "manifest.toml").write_text(OOPS_MANIFEST)
    (src / "oops.py").write_text(OOPS_MODULE)
    build(src, home / "plugins")
    d = start(home)
    try:
        yield d
    finally:
        finish(d)


def _clean(d: Daemon, text: str) -> None:
    """No traceback and no path of the server's in what a client reads."""
    assert "Traceback" not in text and 'File "' not in text, text
    for place in (str(d.home), str(ROOT), "/tmp/", "site-packages"):
        assert place not in text, (place, text)


def _err(d: Daemon, payload: Any = None, raw: bytes | None = None) -> dict[str, Any]:
    status, reply = d.post_rpc(payload, raw=raw)
    assert status == 200, (status, reply)
    assert isinstance(reply, dict) and "error" in reply, reply
    _clean(d, json.dumps(reply))
    return reply["error"]  # type: ignore[no-any-return]


def call(method: str, params: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {} if params is None else params}


def test_json_nested_100k_deep_is_a_parse_error(daemon: Daemon) -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        err = _err(daemon, raw=raw)
        assert err["code"] == -32700 and "nested deeper" in err["message"], err
    assert daemon.rpc("OOPS.echo", {"x": json.loads("[" * 50 + "]" * 50)})  # deep enough for anyone
    # parsed, but too deep to pickle for the plugin's worker: the caller's params
    err = _err(daemon, call("OOPS.echo", {"x": json.loads("[" * 500 + "]" * 500)}))
    assert err["code"] == -32602 and "cannot be passed on" in err["message"], err


def test_duplicated_key_is_refused(daemon: Daemon) -> None:
    """A JSON object naming `method` twice could stop the daemon: which one is meant is ambiguous."""
    raw = b'{"jsonrpc": "2.0", "id": 1, "method": "status", "method": "daemon.stop"}'
    err = _err(daemon, raw=raw)
    assert err["code"] == -32600 and "duplicated key 'method'" in err["message"], err
    raw = b'{"jsonrpc": "2.0", "id": 1, "method": "OOPS.echo", "params": {"x": {"a": 1, "a": 2}}}'
    assert _err(daemon, raw=raw)["code"] == -32600
    assert daemon.healthy() and daemon.proc.poll() is None


@pytest.mark.parametrize("params", [{"now": True}, [1], {"x": None}], ids=["object", "array", "null-member"])
def test_daemon_stop_refuses_junk_params(daemon: Daemon, params: Any) -> None:
    err = _err(daemon, call("daemon.stop", params))
    assert err["code"] == -32602 and "takes none" in err["message"], err
    assert daemon.healthy() and daemon.proc.poll() is None


CASES = [
    # (method, params, code, words in the message)
    ("OOPS.value_error", {}, -32001, ["ValueError: bad state in"]),
    ("OOPS.private", {}, -32001, ["the plugin's own exception (Private)"]),
    ("OOPS.type_error_inside", {"x": 1}, -32001, ["TypeError"]),
    ("OOPS.echo", {"y": 1}, -32602, ["invalid params for OOPS.echo"]),
    ("OOPS.echo", [1, 2], -32602, ["invalid params for OOPS.echo"]),
    ("plugin.enable", {"name": "nope"}, -32602, ["no plugin named 'nope'"]),
    ("plugin.disable", {"name": "nope"}, -32602, ["no plugin named 'nope'"]),
    ("plugin.reload", {"name": "nope"}, -32602, ["no plugin named 'nope'"]),
    ("plugin.flush", {"name": "nope"}, -32602, ["no running plugin 'nope'"]),
    ("plugin.reload", {"name": "fsstore", "artifact": "/nonexistent/plugin-x.vsmp"}, -32000, ["reload of 'ObjStore/fsstore' refused"]),
    ("sectors.get", {"miner": 1, "number": 99999}, -32602, ["no sector m-1-n-99999"]),
    ("pieces.stat", {"store": "pieces", "path": "a\x00b"}, -32602, ["NUL"]),
    ("pieces.stat", {"store": "pieces", "path": "../../etc/passwd"}, -32602, ["outside of store '<store pieces>'"]),
    ("pieces.stat", {"store": "nope", "path": "x"}, -32602, ["no store named 'nope'"]),
]


@pytest.mark.parametrize("method,params,code,words", CASES, ids=[f"{m}-{i}" for i, (m, *_x) in enumerate(CASES)])
def test_error_codes_and_messages(daemon: Daemon, method: str, params: Any, code: int, words: list[str]) -> None:
    err = _err(daemon, call(method, params))
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], (w, err)
    assert "\n" not in err["message"]


def test_one_log_line_per_client_error(daemon: Daemon) -> None:
    before = daemon.log_text()
    _err(daemon, call("sectors.get", {"miner": 3, "number": 4242}))
    _err(daemon, call("OOPS.value_error"))
    _err(daemon, raw=b"{bad")
    new = daemon.log_text()[len(before):]
    lines = [line for line in new.splitlines() if line.strip()]
    assert len([line for line in lines if "rpc sectors.get" in line]) == 1, new
    assert len([line for line in lines if "rpc OOPS.value_error" in line]) == 1, new
    assert len(lines) == 3 and "Traceback" not in new, new


# --- pieces: a client mistake is a 4xx with one line ----------------------------------------


def test_piece_path_with_nul_is_400(daemon: Daemon) -> None:
    for verb in ("PUT", "GET", "HEAD", "DELETE"):
        status, _, body = daemon.request(verb, "/pieces/pieces/a%00b", b"x" if verb == "PUT" else None)
        assert status == 400, (verb, status, body)
        if verb != "HEAD":
            assert "NUL" in json.loads(body)["error"]


def test_piece_name_of_300_characters_is_400(daemon: Daemon) -> None:
    name = "n" * 300
    for verb in ("PUT", "GET", "HEAD", "DELETE"):
        status, _, body = daemon.request(verb, f"/pieces/pieces/d/{name}", b"x" if verb == "PUT" else None)
        assert status == 400, (verb, status, body)
        if verb != "HEAD":
            _clean(daemon, body.decode())
            assert "a name of 300 bytes; at most 255" in json.loads(body)["error"]
    # 255 is allowed, also while its temp file is written
    status, _, body = daemon.request("PUT", f"/pieces/pieces/d/{'m' * 255}", b"ok")
    assert status == 201, body


def test_put_onto_a_folder_is_400(daemon: Daemon) -> None:
    assert daemon.request("PUT", "/pieces/pieces/folder/inner.bin", b"x")[0] == 201
    status, _, body = daemon.request("PUT", "/pieces/pieces/folder", b"y")
    assert status == 400 and "a folder of that name exists" in json.loads(body)["error"], body
    status, _, body = daemon.request("PUT", "/pieces/pieces/folder/inner.bin/deeper", b"y")
    assert status == 400 and "not a folder" in json.loads(body)["error"], body
    _clean(daemon, body.decode())
    assert daemon.request("GET", "/pieces/pieces/folder/inner.bin")[2] == b"x"


def test_no_500_in_the_log(daemon: Daemon) -> None:
    assert not re.search(r"Error handling request|Traceback", daemon.log_text()), daemon.log_text()[-3000:]


def test_plugin_enable_that_fails_exits_non_zero(daemon: Daemon) -> None:
    """issue 20 item 6: `plugin enable` of a plugin whose start then fails says why, exit != 0."""
    assert daemon.cli("plugin", "disable", "oops").returncode == 0
    marker = daemon.home / "plugins" / "oops.fail"
    marker.write_text("")
    try:
        proc = daemon.cli("plugin", "enable", "oops", check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
        assert "oops.fail says no" in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert "enabled" not in proc.stdout
    finally:
        marker.unlink()
    out = daemon.cli("plugin", "enable", "oops").stdout
    assert out.startswith("enabled RegisterJsonRpc/oops: ready"), out
    assert daemon.rpc("OOPS.echo", {"x": 1}) == 1
