"""Plugins that cannot hurt the host (issue 16), through the real daemon: resource limits per
plugin (MemoryLimit, MaxOpenFiles, CPUs, Nice) applied in every worker and shown in status."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from vsm.plugin.artifact import build

from .harness import Daemon, prepare_home

pytestmark = pytest.mark.timeout(180)

HOG = '''
import os


class Hog:
    def grow(self, step_mib=4, pause=0.005):
        """Allocate until it stops (a runaway cache): MemoryError under a MemoryLimit."""
        import time

        held = []
        while True:
            held.append(bytearray(step_mib << 20))
            time.sleep(pause)

    def pid(self):
        return os.getpid()


def handler():
    return "HOG", Hog()
'''


def write_plugin(parent: Path, name: str, kind: str, module: str, impl: str, extra: str = "") -> Path:
    """A plugin source folder (manifest.toml + module) built into an artifact in `parent`/out."""
    src = parent / name
    src.mkdir(parents=True)
    point = "Handler" if kind == "RegisterJsonRpc" else "Constructor"
    (src / "manifest.toml").write_text(
        f'name = "{name}"\nkind = "{kind}"\nmodule = "{name}"\nversion = "1.0.0"\n'
        f'export = [{{extPoint = "{point}", impl = "{impl}"}}]\n{extra}'
    )
    (src / f"{name}.py").write_text(module)
    artifact, _, _ = build(src, parent / "out")
    return artifact


def test_memory_limit_fails_the_call_and_the_rest_serves(start_daemon, tmp_path: Path) -> None:
    home = tmp_path / "home"
    prepare_home(home, append='[Common.Plugins.hog]\nMemoryLimit = "256MiB"\nMaxOpenFiles = 512\nNice = 3\nCPUs = "0"\n')
    artifact = write_plugin(tmp_path / "src", "hog", "RegisterJsonRpc", HOG, "handler")
    os.replace(artifact, home / "plugins" / artifact.name)
    d: Daemon = start_daemon(home)
    manager_rss = psutil.Process(d.pid).memory_info().rss
    pid = d.rpc("HOG.pid")

    result: dict = {}
    hog = threading.Thread(target=lambda: result.update(error=d.rpc_error("HOG.grow")))
    hog.start()
    served = 0
    while hog.is_alive() or served < 3:  # the other plugins serve while the hog grows
        assert d.rpc("VSM_LIMITER.acquire", {"name": f"iso-{served}"})
        status, _, _ = d.request("PUT", f"/pieces/pieces/iso/{served}.bin", b"x" * 1000, {"Content-Type": "application/octet-stream"})
        assert status == 201
        served += 1
    hog.join()
    error = result["error"]
    assert error["code"] == -32001, error
    message = error["message"]
    assert "\n" not in message, message
    assert message.startswith("MemoryLimitExceeded: plugin 'RegisterJsonRpc/hog' ran out of memory"), message
    assert "256MiB" in message and "[Common.Plugins.hog]" in message, message

    # the worker lived (an error, not a crash), and the manager did not grow with it
    assert d.rpc("HOG.pid") == pid
    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    assert rows["hog"]["pool"]["restarts"] == 0
    assert psutil.Process(d.pid).memory_info().rss < manager_rss + (64 << 20)

    # applied in the worker as configured, and shown in plugin list / status (text and JSON)
    worker = psutil.Process(pid)
    assert worker.rlimit(psutil.RLIMIT_DATA) == (256 << 20, 256 << 20)
    assert worker.rlimit(psutil.RLIMIT_NOFILE) == (512, 512)
    assert worker.nice() == 3 and worker.cpu_affinity() == [0]
    limits = rows["hog"]["limits"]
    assert limits["memory_limit"] == 256 << 20 and limits["max_open_files"] == 512 and limits["cpus"] == [0] and limits["nice"] == 3
    assert limits["text"] == "mem 256MiB, files 512, cpus 0, nice 3"
    assert rows["fsstore"]["limits"]["memory_limit"] == 4 << 30  # the default for every plugin
    fs_worker = psutil.Process(rows["fsstore"]["pool"]["workers"][0]["pid"])
    assert fs_worker.rlimit(psutil.RLIMIT_DATA) == (4 << 30, 4 << 30)
    listing = d.cli("plugin", "list").stdout
    assert "mem 256MiB, files 512, cpus 0, nice 3" in listing and "mem 4GiB, files 4096" in listing, listing
    assert "mem 256MiB, files 512, cpus 0, nice 3" in d.cli("status").stdout
    as_json = json.loads(d.cli("status", "--json").stdout)
    assert {p["name"]: p for p in as_json["plugins"]}["hog"]["limits"]["nice"] == 3
