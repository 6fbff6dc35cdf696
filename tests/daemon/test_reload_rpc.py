"""Reload and rescan keep the daemon's view of plugins true (issue 13, item 9): a reloaded
RegisterJsonRpc plugin serves its new build's methods (a removed one is "method not found"),
and `plugin rescan` drops a plugin whose artifact was deleted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vsm.plugin.artifact import build
from vsm.plugin.scaffold import write_plugin_source

from .harness import Daemon

pytestmark = pytest.mark.timeout(180)


def _rpc_build(tmp_path: Path, version: str, methods: str) -> Path:
    src = write_plugin_source("RegisterJsonRpc", "myrpc", tmp_path / f"src-{version}")
    manifest = src / "manifest.toml"
    manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', manifest.read_text()))
    (src / "myrpc.py").write_text(f"class Handler:\n{methods}\n\ndef handler():\n    return 'myrpc', Handler()\n")
    artifact, _, _ = build(src, tmp_path / f"out-{version}")
    return artifact


def test_reload_refreshes_methods_and_rescan_drops_a_deleted_artifact(daemon: Daemon, tmp_path: Path) -> None:
    v1 = _rpc_build(tmp_path, "1.0.0", "    def hello(self):\n        return 'v1'\n")
    target = daemon.home / "plugins" / "plugin-myrpc.vsmp"
    target.write_bytes(v1.read_bytes())
    rows = daemon.rpc("plugin.rescan")
    assert {"name": "myrpc", "change": "loaded"}.items() <= next(r for r in rows if r["name"] == "myrpc").items()
    assert daemon.rpc("myrpc.hello") == "v1"

    v2 = _rpc_build(tmp_path, "2.0.0", "    def goodbye(self):\n        return 'v2'\n")
    target.write_bytes(v2.read_bytes())
    daemon.cli("plugin", "reload", "myrpc")  # its file in the plugins dir, read again
    assert daemon.rpc("myrpc.goodbye") == "v2"  # the new build's method is found
    err = daemon.rpc_error("myrpc.hello")  # the removed one is not found, not an AttributeError
    assert err["code"] == -32601 and "AttributeError" not in err["message"], err

    target.unlink()
    rows = daemon.rpc("plugin.rescan")
    assert {"name": "myrpc", "change": "removed"}.items() <= next(r for r in rows if r["name"] == "myrpc").items()
    assert "myrpc" not in {r["name"] for r in daemon.rpc("plugin.list")}
    assert daemon.rpc_error("myrpc.goodbye")["code"] == -32601
    assert "myrpc" not in daemon.cli("plugin", "list").stdout
