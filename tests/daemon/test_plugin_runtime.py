"""Plugins at run time through the daemon's CLI: disable/enable a sink (it catches up), a
refused disable, reload of a new build and of a broken one, flush, rescan."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from vsm.plugin.artifact import build
from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import write_import_file

from .harness import ROOT, Daemon

pytestmark = pytest.mark.timeout(240)


def _new_build(tmp_path: Path, folder: str, version: str, extra: str = "") -> Path:
    src = tmp_path / f"{folder}-{version}"
    shutil.copytree(ROOT / "plugins" / folder, src)
    manifest = src / "manifest.toml"
    manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', manifest.read_text()))
    if extra:
        module = next(src.glob("*.py"))
        module.write_text(module.read_text() + extra)
    artifact, _, _ = build(src, tmp_path / f"out-{folder}-{version}")
    return artifact


def _sink(d: Daemon, name: str) -> dict:
    return d.rpc("sinks.status")["sinks"].get(name, {})


def _head(d: Daemon) -> int:
    return d.rpc("sinks.status")["journal"]["head"]


def test_disable_enable_sink_catches_up(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.cli("plugin", "disable", "parquet").stdout.strip() == "disabled SyncSectorState/parquet"
    rows = {r["name"]: r for r in daemon.rpc("plugin.list")}
    assert rows["parquet"]["state"] == "disabled"
    assert "parquet" in daemon.cli("plugin", "list").stdout
    states = tmp_path / "states.jsonl"
    write_import_file(str(states), [SectorState(id=SectorID(77, n), sector_type=8) for n in range(400)])
    daemon.cli("sectors", "import", str(states))
    head = _head(daemon)
    assert "parquet" not in daemon.rpc("sinks.status")["sinks"]
    out = daemon.cli("plugin", "enable", "parquet").stdout
    assert out.startswith("enabled SyncSectorState/parquet: ready"), out
    deadline = time.monotonic() + 60
    while _sink(daemon, "parquet").get("checkpoint", 0) < head and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sink(daemon, "parquet")["checkpoint"] >= head


def test_disable_refused_for_what_the_config_uses(daemon: Daemon) -> None:
    proc = daemon.cli("plugin", "disable", "fsstore", check=False)
    assert proc.returncode != 0
    assert "cannot disable 'ObjStore/fsstore': it is used by Common.PieceStores[0] (store 'pieces')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_reload_new_build_and_broken_build(daemon: Daemon, tmp_path: Path) -> None:
    good = _new_build(tmp_path, "fsstore", "2.0.0")
    out = daemon.cli("plugin", "reload", "fsstore", str(good)).stdout
    assert out.startswith("reloaded ObjStore/fsstore: 0.1.0 -> 2.0.0"), out
    broken = _new_build(tmp_path, "fsstore", "3.0.0", "\ndef open(cfg):\n    raise RuntimeError('broken build')\n")
    proc = daemon.cli("plugin", "reload", "fsstore", str(broken), check=False)
    assert proc.returncode != 0 and "broken build" in proc.stderr and "refused" in proc.stderr
    rows = {r["name"]: r for r in daemon.rpc("plugin.list")}
    assert rows["fsstore"]["version"] == "2.0.0" and rows["fsstore"]["state"] == "ready"
    status, _, _ = daemon.request("PUT", "/pieces/pieces/reload/ok.bin", b"still serving", {"Content-Type": "application/octet-stream"})
    assert status == 201


def test_flush_and_rescan(daemon: Daemon, tmp_path: Path) -> None:
    out = daemon.cli("plugin", "flush", "concurrent-limiter").stdout
    assert "no onFlush hook" in out
    # a changed artifact in the plugins dir is picked up only on request
    plugins_dir = daemon.home / "plugins"
    before = {r["name"]: r["version"] for r in daemon.rpc("plugin.list")}
    newer = _new_build(tmp_path, "concurrent_limiter", "5.0.0")
    shutil.copy(newer, plugins_dir / "plugin-concurrent-limiter.vsmp")
    time.sleep(0.5)
    assert {r["name"]: r["version"] for r in daemon.rpc("plugin.list")} == before  # not silently
    rows = daemon.rpc("plugin.rescan")
    name = "concurrent-limiter"
    assert {"name": name, "change": "reloaded"}.items() <= next(r for r in rows if r["name"] == name).items()
    assert {r["name"]: r["version"] for r in daemon.rpc("plugin.list")}[name] == "5.0.0"
    assert daemon.rpc("DAMOCLES_LIMITER.Extend", ["0-nope", "x"]) is False
