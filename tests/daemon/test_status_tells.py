"""Status tells every degraded state (issue 24, item 4): a disabled sink is a problem with its
fix in `vsm-pool status`, /metrics and the dashboard badge; `plugin rescan` lists and keeps
every artifact that did not load (and exits 1), goes on past a duplicate name, shows a new
plugin's limits, and never swaps a running newer build (a `plugin dev` one) for an older one."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import ROOT, Daemon, cli_env, prepare_home, run_cli
from .test_authoring import _lines, _next
from .test_dashboard import browser  # noqa: F401  (the fixture: Debian's chromium through playwright)

pytestmark = pytest.mark.timeout(240)


def _problems(d: Daemon) -> dict[str, dict[str, str]]:
    return {p["part"]: p for p in json.loads(d.cli("status", "--json").stdout)["problems"]}


def _metric_parts(d: Daemon) -> set[str]:
    text = d.request("GET", "/metrics")[2].decode()
    return set(re.findall(r'^vsm_problem\{[^}]*part="([^"]+)"', text, re.M))


def test_a_disabled_sink_is_a_problem_in_status_metrics_and_the_badge(start_daemon: Any, browser: Any) -> None:  # noqa: F811
    d: Daemon = start_daemon()  # the default home: what `vsm-pool start` makes
    assert "problems: none" in d.cli("status").stdout
    d.cli("plugin", "disable", "parquet")
    st = d.cli("status").stdout  # no event since: the sink is not behind, and still degraded
    assert "problems: none" not in st, st
    assert "sink/parquet: disabled: disabled by `vsm-pool plugin disable`" in st and "fix: `vsm-pool plugin enable parquet`" in st, st
    assert "sink/parquet" in _metric_parts(d)
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{d.port}/login")
        page.fill("#token", d.token)
        page.click("button[type=submit]")
        page.wait_for_function("document.querySelector('#health').textContent.startsWith('DEGRADED')", timeout=20_000)
        assert "sink/parquet: disabled" in page.text_content("#problems") and "plugin enable parquet" in page.text_content("#problems")
    finally:
        page.close()
    d.cli("plugin", "enable", "parquet")
    assert "problems: none" in d.cli("status").stdout


def _build(d: Daemon, tmp_path: Path, kind: str, name: str, out: Path, extra: str = "") -> Path:
    """A new plugin from `plugin new`, built by `plugin build` into `out`."""
    d.cli("plugin", "new", "--kind", kind, "--dir", str(tmp_path / "src"), name)
    src = tmp_path / "src" / name
    if extra:
        module = src / f"{name}.py"
        module.write_text(module.read_text() + extra)
    d.cli("plugin", "build", "--src-dir", str(src), "--out-dir", str(out))
    return out / f"plugin-{name}.vsmp"


def test_rescan_lists_every_broken_artifact_goes_on_past_a_duplicate_and_shows_limits(start_daemon: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    d: Daemon = start_daemon(prepare_home(home, append=f'[Common.Plugins.brokensink.Meta]\nPath = "{home / "data" / "brokensink"}"\n'))
    plugins = d.home / "plugins"
    (plugins / "plugin-notes.vsmp").write_text("not a plugin")
    memdb = (plugins / "plugin-memdb.vsmp").read_bytes()
    (plugins / "plugin-cut.vsmp").write_bytes(memdb[: len(memdb) // 2])
    shutil.copy(plugins / "plugin-parquet.vsmp", plugins / "plugin-parquet-copy.vsmp")  # a second 'parquet'
    _build(d, tmp_path, "SyncSectorState", "brokensink", plugins, "\nraise RuntimeError('broken on purpose')\n")
    _build(d, tmp_path, "KVStore", "newkv", plugins)  # the one good new artifact

    out = d.cli("plugin", "rescan", "--json", check=False)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "4 artifact(s) did not load" in out.stderr and "Traceback" not in out.stderr, out.stderr
    rows = {Path(r["artifact"]).name: r for r in json.loads(out.stdout)}
    for name in ("plugin-notes.vsmp", "plugin-cut.vsmp", "plugin-parquet-copy.vsmp", "plugin-brokensink.vsmp"):
        assert rows[name]["change"] in ("failed", "refused") and rows[name]["error"], rows
    assert "declared by" in rows["plugin-parquet-copy.vsmp"]["error"] and "broken on purpose" in rows["plugin-brokensink.vsmp"]["error"]
    assert rows["plugin-newkv.vsmp"]["change"] == "loaded", rows
    # the rescanned plugin shows its limits like the others; the running parquet serves on
    listed = {r["name"]: r for r in json.loads(d.cli("plugin", "list", "--json").stdout) if r["state"] != "failed"}
    assert listed["newkv"].get("limits") and listed["newkv"]["limits"] == listed["memdb"]["limits"], listed["newkv"]
    assert listed["parquet"]["state"] == "ready" and listed["parquet"]["artifact"].endswith("plugin-parquet.vsmp")

    # every one is in status, /metrics and what the badge reads, until fixed
    problems = _problems(d)
    for part in ("plugin/notes", "plugin/cut", "plugin/parquet", "sink/brokensink"):
        assert part in problems and problems[part]["fix"], (part, problems)
    assert "broken on purpose" in problems["sink/brokensink"]["cause"]
    assert {"plugin/notes", "plugin/cut", "plugin/parquet", "sink/brokensink"} <= _metric_parts(d)
    st = d.cli("status").stdout
    assert "plugin/cut: failed:" in st and "problems: none" not in st, st

    # fixed: the sink rebuilt (it starts in place of the build that failed), the others removed
    module = tmp_path / "src" / "brokensink" / "brokensink.py"
    module.write_text(module.read_text().replace("\nraise RuntimeError('broken on purpose')\n", "\n"))
    time.sleep(1.1)  # a build time (in seconds) after the broken build's
    d.cli("plugin", "build", "--src-dir", str(module.parent), "--out-dir", str(plugins))
    for name in ("plugin-notes.vsmp", "plugin-cut.vsmp", "plugin-parquet-copy.vsmp"):
        (plugins / name).unlink()
    out = d.cli("plugin", "rescan", "--json")
    assert {Path(r["artifact"]).name: r["change"] for r in json.loads(out.stdout)} == {
        "plugin-notes.vsmp": "removed", "plugin-cut.vsmp": "removed", "plugin-parquet-copy.vsmp": "removed", "plugin-brokensink.vsmp": "reloaded"}
    assert next(r for r in d.rpc("plugin.list") if r["name"] == "brokensink")["state"] == "ready"
    assert "problems: none" in d.cli("status").stdout


def test_rescan_never_swaps_a_plugin_dev_build_for_the_older_artifact(start_daemon: Any, tmp_path: Path) -> None:
    home = prepare_home(tmp_path / "home")
    d: Daemon = start_daemon(home)
    d.cli("plugin", "new", "--kind", "RegisterJsonRpc", "--dir", str(tmp_path / "src"), "devrpc")
    module = tmp_path / "src" / "devrpc" / "devrpc.py"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsm", "plugin", "dev", str(module.parent), "--no-kit", "--interval", "0.1"],
        cwd=ROOT, env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        q: queue.Queue[str] = _lines(proc)
        assert "installed as" in _next(q, proc)  # build 1, in the plugins dir
        module.write_text(module.read_text().replace("        return text\n", "        return text.upper()\n"))
        assert "reloaded" in _next(q, proc)  # build 2, from the dev folder
        assert d.rpc("DEVRPC.echo", ["hi"]) == "HI"
        rows = json.loads(run_cli(home, "plugin", "rescan", "--json").stdout)
        row = next(r for r in rows if r["name"] == "devrpc")
        assert row["change"] == "kept" and "which serves on" in row["error"] and "build-2" in row["error"], rows
        assert d.rpc("DEVRPC.echo", ["hi"]) == "HI"  # still build 2
    finally:
        proc.terminate()
        proc.wait(60)
