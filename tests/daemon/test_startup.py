"""Until the manager is ready the daemon says so (issue 20 item 5): 503 `starting` with
progress on every endpoint, /healthz too; the CLI waits, or with --no-wait says so and exits."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.plugin.artifact import build

from .harness import ROOT, kill_tree, launch, prepare_home, run_cli, shm_entries

pytestmark = pytest.mark.timeout(180)


def _get(port: int, path: str, token: str = "", verb: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(verb, path, body=body, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(raw) if raw else {}


def _health_until(port: int, proc: subprocess.Popen[bytes], log: Path, ok: Any, timeout: float = 90) -> tuple[int, dict]:
    """Poll /healthz until ok(status, body) (status 0: not listening yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _get(port, "/healthz")
        except OSError:
            status, body = 0, {}
        if ok(status, body):
            return status, body
        assert time.monotonic() < deadline and proc.poll() is None, (status, body, log.read_text()[-3000:])
        time.sleep(0.05)


def _home_with_slow_kv(tmp_path: Path, gate: Path) -> Path:
    """A home whose DB is _slow_kv's plugin."""
    home = prepare_home(tmp_path / "home")
    config = home / "config.toml"
    config.write_text(config.read_text().replace('Driver = "sqlite"', 'Driver = "plugin"\n[Common.DB.Plugin]\nPluginName = "slowdb"', 1))
    _slow_kv(tmp_path, home, gate)
    return home


def _slow_kv(tmp_path: Path, home: Path, gate: Path) -> None:
    """A KVStore (memdb's code) whose onInit waits until `gate` exists: the DB blocks start-up."""
    src = tmp_path / "slowdb"
    shutil.copytree(ROOT / "plugins" / "memdb", src)
    manifest = src / "manifest.toml"
    manifest.write_text(re.sub(r'(?m)^name = ".*"$', 'name = "slowdb"', manifest.read_text()))
    module = src / "memdb.py"
    module.write_text(module.read_text() + f'''

_first_on_init = on_init


def on_init(plugins_dir, manifest):  # noqa: F811
    import os, time
    while not os.path.exists({str(gate)!r}):
        time.sleep(0.05)
    _first_on_init(plugins_dir, manifest)
''')
    build(src, home / "plugins")


def test_starting_daemon_answers_503_and_the_cli_waits(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    home = _home_with_slow_kv(tmp_path, gate)
    shm_before = shm_entries()
    proc, log, port = launch(home)
    try:
        status, body = _health_until(port, proc, log, lambda status, _: status != 0)
        assert status == 503 and body["status"] == "starting" and "phase" in body["progress"], body
        token = (home / "token").read_text().strip()
        for verb, path in (("GET", "/metrics"), ("GET", "/pieces/pieces/x"), ("PUT", "/pieces/pieces/x")):
            status, body = _get(port, path, token, verb, b"x" if verb == "PUT" else None)
            assert status == 503 and body["error"].startswith("starting: "), (path, body)
        status, body = _get(port, "/rpc/v0", token, "POST", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "status"}).encode())
        assert status == 503 and body["error"]["code"] == -32004 and "phase" in body["error"]["data"], body
        # --no-wait: one line, exit 2
        proc_cli = run_cli(home, "--no-wait", "status", check=False)
        assert proc_cli.returncode == 2 and "Traceback" not in proc_cli.stderr, proc_cli.stderr
        assert proc_cli.stderr.strip().splitlines()[-1].startswith("vsm-pool: error: the daemon is starting: "), proc_cli.stderr
        # without it the CLI waits, showing what the daemon does, then answers
        import sys

        from .harness import cli_env

        waiting = subprocess.Popen([sys.executable, "-m", "vsm", "status"], cwd=ROOT, env=cli_env(home),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # it waits, saying so (the gate opens only then)
        gate.write_text("")
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert first.startswith("the daemon is starting: ") and f"listening on 127.0.0.1:{port}" in out, (first, out, err)
        status, body = _get(port, "/healthz")
        assert status == 200 and body["status"] == "ok", body  # other plugins may still start: test below
    finally:
        gate.write_text("")
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except Exception:
                kill_tree(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert not (shm_entries() - shm_before)


def test_stop_while_starting(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    home = _home_with_slow_kv(tmp_path, gate)
    proc, log, port = launch(home)
    try:
        deadline = time.monotonic() + 60
        while not (home / "daemon.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        import sys

        from .harness import cli_env

        stop = subprocess.Popen([sys.executable, "-m", "vsm", "stop"], cwd=ROOT, env=cli_env(home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        gate.write_text("")  # the start-up step running ends; then it stops
        out, err = stop.communicate(timeout=90)
        assert stop.returncode == 0 and "stopped" in out, (out, err)
    finally:
        gate.write_text("")
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


# --- a plugin whose onInit hangs holds only what needs it (issue 20 item 6) ---------------

_GATED_ON_INIT = '''

def on_init(plugins_dir, manifest):
    import os, time
    while not os.path.exists({gate!r}):
        time.sleep(0.05)
'''


def _gated(kind: str, name: str, tmp_path: Path, home: Path, gate: Path, module: str = "") -> None:
    """A scaffolded plugin (`plugin new`) of that kind whose onInit waits until `gate` exists."""
    from vsm.plugin.scaffold import write_plugin_source

    src = write_plugin_source(kind, name, tmp_path / f"src-{name}")
    manifest = src / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('# onInit = "on_init"', 'onInit = "on_init"'))
    code = src / f"{name}.py"
    code.write_text((module or code.read_text()) + _GATED_ON_INIT.format(gate=str(gate)))
    build(src, home / "plugins")


def _gated_home(tmp_path: Path, gate: Path, append: str = "", only: str = "") -> Path:
    """The default home plus an RPC plugin, a sink and a piece store (or `only` one of them)
    whose onInit waits until `gate` exists."""
    events = tmp_path / "slowsink-events"
    home = prepare_home(tmp_path / "home", append=f"""
[Common.Plugins.slowsink.Meta]
Path = "{events}"
[[Common.PieceStores]]
Name = "slow"
Path = "{tmp_path / 'slow-pieces'}"
PluginName = "slowstore"
{append}""" if not only else append)
    if only in ("", "slowrpc"):
        _gated("RegisterJsonRpc", "slowrpc", tmp_path, home, gate,
               "class Handler:\n    def hello(self):\n        return 'hi'\n\n\ndef handler():\n    return 'slowrpc', Handler()\n")
    if not only:
        _gated("SyncSectorState", "slowsink", tmp_path, home, gate)
        _gated("ObjStore", "slowstore", tmp_path, home, gate)
    return home


_SLOW = {"RegisterJsonRpc/slowrpc", "SyncSectorState/slowsink", "ObjStore/slowstore"}


def _sink_seqs(folder: Path) -> list[int]:
    import pyarrow as pa

    seqs: list[int] = []
    for part in sorted(folder.glob("part-*.arrow")):
        with pa.memory_map(str(part)) as f:
            seqs += pa.ipc.open_file(f).read_all().column("seq").to_pylist()
    return seqs


def test_plugins_serve_while_one_on_init_hangs(tmp_path: Path) -> None:
    """Three plugins hang in onInit: the daemon is ready without them; the DB, the sectors, the
    default store and the other plugins serve; what needs a hung one answers `starting`; each
    shows as starting in status and problems; once they are ready everything works (the sink
    catches up on the events it missed)."""
    from .harness import Daemon

    gate = tmp_path / "gate"
    home = _gated_home(tmp_path, gate)
    proc, log, port = launch(home)
    d = Daemon.__new__(Daemon)  # the harness's helpers, on a daemon that is not fully started
    d.home, d.port, d.proc, d.log, d.shm_before, d.stopped = home, port, proc, log, shm_entries(), False
    try:  # ready, the other plugins too, while the three still start
        _health_until(port, proc, log, lambda status, body: status == 200 and set(body["plugins_starting"]) == _SLOW)
        d.token = (home / "token").read_text().strip()
        d.workers = d.tree()
        # what does not need them serves: sectors (the DB, the journal), the default store, the limiter
        d.rpc("sectors.init", {"sectors": [{"miner": 1000, "number": n, "proof_type": 8} for n in range(5)]})
        d.rpc("sectors.update", {"miner": 1000, "number": 3, "fields": {"Finalized": True}})
        assert d.rpc("sectors.get", {"miner": 1000, "number": 3})["Finalized"] is True
        assert d.request("PUT", "/pieces/pieces/a", b"x" * 100)[0] in (200, 201)
        assert d.request("GET", "/pieces/pieces/a")[2] == b"x" * 100
        assert d.rpc("DAMOCLES_LIMITER.Acquire", ["add_pieces", "w1"]) == "0-add_pieces"
        # what needs a starting plugin says so: 503 / -32004, with the plugin and how long
        status, headers, raw = d.request("PUT", "/pieces/slow/a", b"x")
        assert status == 503 and headers.get("retry-after") == "1", (status, raw)
        assert json.loads(raw)["error"].startswith("starting: store 'slow' opens once its plugin 'ObjStore/slowstore' is starting ("), raw
        err = d.rpc_error("slowrpc.hello")
        assert err["code"] == -32004 and "plugin 'RegisterJsonRpc/slowrpc' is starting" in err["message"], err
        err = d.rpc_error("plugin.reload", {"name": "slowsink"})
        assert err["code"] == -32004 and "plugin 'SyncSectorState/slowsink' is starting" in err["message"], err
        st = d.rpc("status")
        states = {f"{p['kind']}/{p['name']}": p["state"] for p in st["plugins"]}
        assert {label for label, state in states.items() if state == "starting"} == _SLOW, states
        assert states["KVStore/sqlitekv"] == states["SyncSectorState/duckdb"] == "ready", states
        assert st["stores"]["slow"]["state"] == "starting" and st["stores"]["pieces"]["state"] == "ready", st["stores"]
        starting = {p["part"] for p in st["problems"] if p["state"] == "starting"}
        assert starting == {"plugin/slowrpc", "plugin/slowsink", "plugin/slowstore"}, st["problems"]
        text = d.cli("status").stdout
        assert re.search(r"^RegisterJsonRpc/slowrpc\s+starting", text, re.M), text
        # the CLI waits for a starting plugin's call, then answers
        import sys

        from .harness import cli_env

        waiting = subprocess.Popen([sys.executable, "-m", "vsm", "plugin", "flush", "slowsink"], cwd=ROOT, env=cli_env(home),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # it waits, saying why (the gate opens only then)
        gate.write_text("")
        out, err_text = waiting.communicate(timeout=60)
        assert waiting.returncode == 0 and first.startswith("waiting: ") and "slowsink' is starting" in first, (first, out, err_text)
        _health_until(port, proc, log, lambda status, body: status == 200 and "plugins_starting" not in body, 60)
        assert d.rpc("slowrpc.hello") == "hi"
        assert d.request("PUT", "/pieces/slow/a", b"y" * 10)[0] in (200, 201)
        assert (tmp_path / "slow-pieces" / "a").read_bytes() == b"y" * 10
        head = d.rpc("sinks.status")["journal"]["head"]
        deadline = time.monotonic() + 30  # the sink attached late gets every event from the journal
        while _sink_seqs(tmp_path / "slowsink-events") != list(range(1, head + 1)):
            assert time.monotonic() < deadline, (_sink_seqs(tmp_path / "slowsink-events"), head)
            time.sleep(0.05)
        assert not d.rpc("status")["problems"]
    finally:
        gate.write_text("")
        rc = d.stop() if hasattr(d, "workers") else None
        if proc.poll() is None:
            kill_tree(proc)
    assert rc == 0, log.read_text()[-3000:]


def test_a_hung_on_init_is_disabled_after_start_timeout_or_stops_a_strict_daemon(tmp_path: Path) -> None:
    from .harness import start as start_daemon

    home = _gated_home(tmp_path, tmp_path / "never", "[Common.Plugins.slowrpc]\nStartTimeout = 1.5\n", only="slowrpc")
    d = start_daemon(home)  # the harness waits until no plugin is starting
    try:
        plugins = {p["name"]: p for p in d.rpc("status")["plugins"]}
        assert plugins["slowrpc"]["state"] == "disabled", plugins["slowrpc"]
        assert "did not finish init within 1.5s" in plugins["slowrpc"]["error"], plugins["slowrpc"]
        problem = next(p for p in d.rpc("status")["problems"] if p["part"] == "plugin/slowrpc")
        assert problem["state"] == "disabled" and "within 1.5s" in problem["cause"], problem
        assert d.rpc_error("slowrpc.hello")["code"] == -32601
    finally:
        rc = d.stop()
    assert rc == 0, d.log_text()[-3000:]
    # Strict: the daemon served meanwhile, then stops with the cause
    config = home / "config.toml"
    config.write_text(config.read_text().replace("Strict = false", "Strict = true", 1))
    proc, log, port = launch(home)
    try:
        _health_until(port, proc, log, lambda status, _: status == 200 or proc.poll() is not None)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    text = log.read_text()
    assert "did not finish init within 1.5s" in text and "Strict = true" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
