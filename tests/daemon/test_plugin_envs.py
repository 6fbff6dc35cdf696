"""Plugins with their own environments in the real daemon (issue 15): two plugins pinning
conflicting versions of one library each see their own, the manager and plugins without an
environment keep the manager's, a reload to new requirements prepares the new environment
before the swap with no call failing, and a second start creates nothing."""

from __future__ import annotations

import importlib.metadata
import re
import threading
from pathlib import Path

import pytest

from bench.env_plugins import version_plugin
from vsm.plugin.artifact import build

from .harness import prepare_home

pytestmark = pytest.mark.timeout(240)

CREATED = "creating its environment"


def test_conflicting_pins_side_by_side_reload_and_reuse(start_daemon, tmp_path: Path) -> None:
    # pkga also runs sandboxed (Landlock where the kernel has it): it must still read its environment
    home = prepare_home(tmp_path / "home", append='[Common.Plugins.pkga]\nSandbox = "best-effort"\n')
    src = tmp_path / "src"
    for name, reqs in (("pkga", ["packaging==21.3"]), ("pkgb", ["packaging==24.*"]), ("pkgm", [])):
        build(version_plugin(src, name, reqs), home / "plugins")
    envs_dir = home / "envs"
    d = start_daemon(home)
    a, b, m = (d.rpc(f"{n}.version") for n in ("PKGA", "PKGB", "PKGM"))
    assert a["version"] == a["metadata"] == "21.3" and a["file"].startswith(str(envs_dir)), a
    assert b["version"].startswith("24.") and b["file"].startswith(str(envs_dir)), b
    assert a["file"].split("/site/")[0] != b["file"].split("/site/")[0]
    # the manager's own packaging is untouched: a plugin without an environment sees it
    manager_version = importlib.metadata.version("packaging")
    assert m["version"] == m["metadata"] == manager_version and not m["file"].startswith(str(envs_dir)), m

    rows = {r["name"]: r for r in d.rpc("plugin.list")}
    assert rows["pkga"]["sandbox"]["mode"] == "best-effort" and rows["pkga"]["sandbox"]["state"] in ("on", "partial", "off")
    assert rows["pkga"]["env"]["packages"]["packaging"] == "21.3" and rows["pkgm"]["env"] is None
    key_a = rows["pkga"]["env"]["key"]
    status = d.cli("status").stdout
    assert f"{key_a}: packaging 21.3, pyparsing " in status, status
    assert f"{rows['pkgb']['env']['key']}: packaging 24." in d.cli("plugin", "list").stdout

    # reload to a build with other requirements: the new environment is made first, calls go on
    newer = version_plugin(tmp_path / "src2", "pkgb", ["packaging==23.*"])
    artifact, _, _ = build(newer, tmp_path / "out")
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def call_loop() -> None:
        while not stop.is_set():
            try:
                seen.append(d.rpc("PKGB.version")["version"])
            except BaseException as e:  # noqa: BLE001 - any failure is what we look for
                errors.append(e)

    caller = threading.Thread(target=call_loop)
    caller.start()
    try:
        out = d.cli("plugin", "reload", "pkgb", str(artifact)).stdout
    finally:
        stop.set()
        caller.join(30)
    assert not errors, errors[:3]
    assert out.startswith("reloaded RegisterJsonRpc/pkgb"), out
    assert d.rpc("PKGB.version")["version"].startswith("23.")
    assert seen and seen[0].startswith("24.")
    log = d.log_text()
    assert log.count(CREATED) == 3  # pkga, pkgb, the reload's
    # progress as it goes, then how long it took
    assert re.search(rf"plugin 'RegisterJsonRpc/pkga': environment {key_a}: Resolved 2 packages in ", log), log[-3000:]
    assert re.search(rf"plugin 'RegisterJsonRpc/pkga': environment {key_a} ready in [0-9.]+ s: packaging 21.3, pyparsing ", log)
    d.stop()

    # a second start creates nothing: every environment is there already
    made = d.log_text().count(CREATED)
    d2 = start_daemon(home)
    assert d2.rpc("PKGA.version")["version"] == "21.3"
    assert d2.rpc("PKGB.version")["version"].startswith("24.")  # its artifact in the plugins dir
    assert d2.log_text().count(CREATED) == made
