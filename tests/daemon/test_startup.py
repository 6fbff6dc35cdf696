"""Until the manager is ready the daemon says so (issue 20 item 5): 503 `starting` with
progress on every endpoint, /healthz too; the CLI waits, or with --no-wait says so and exits."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
from pathlib import Path

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
    home = prepare_home(tmp_path / "home")
    config = home / "config.toml"
    config.write_text(config.read_text().replace('Driver = "sqlite"', 'Driver = "plugin"\n[Common.DB.Plugin]\nPluginName = "slowdb"', 1))
    _slow_kv(tmp_path, home, gate)
    shm_before = shm_entries()
    proc, log, port = launch(home)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(port, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.05)
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
        import subprocess
        import sys

        from .harness import cli_env

        waiting = subprocess.Popen([sys.executable, "-m", "vsm", "status"], cwd=ROOT, env=cli_env(home),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.communicate()
        gate.write_text("")
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "the daemon is starting: " in err and f"listening on 127.0.0.1:{port}" in out, (out, err)
        status, body = _get(port, "/healthz")
        assert status == 200 and body == {"status": "ok"}
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
    home = prepare_home(tmp_path / "home")
    config = home / "config.toml"
    config.write_text(config.read_text().replace('Driver = "sqlite"', 'Driver = "plugin"\n[Common.DB.Plugin]\nPluginName = "slowdb"', 1))
    _slow_kv(tmp_path, home, gate)
    proc, log, port = launch(home)
    try:
        deadline = time.monotonic() + 60
        while not (home / "daemon.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        import subprocess
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
