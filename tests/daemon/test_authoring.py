"""What a plugin author sees from the daemon: a plugin that fails to import is called an import
error, with its own file and line, and `status` shows the whole message; `plugin dev` rebuilds
on save, swaps the build into the daemon and keeps the last good one serving."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vsm.plugin.artifact import build

from .harness import ROOT, cli_env, prepare_home

pytestmark = pytest.mark.timeout(180)

LONG = "the limiter needs its settings file limiter-settings.toml beside the plugins dir, " * 3


def test_import_error_is_named_and_status_shows_it_whole(tmp_path: Path, start_daemon) -> None:
    src = tmp_path / "src" / "broken"
    src.mkdir(parents=True)
    (src / "manifest.toml").write_text('name = "broken"\nkind = "RegisterJsonRpc"\nexport = [{extPoint = "Handler", impl = "handler"}]\n')
    (src / "broken.py").write_text(f"import os\nraise RuntimeError({LONG.strip()!r})\ndef handler(): pass\n")
    home = prepare_home(tmp_path / "home")
    build(src, home / "plugins")
    d = start_daemon(home)
    out = d.cli("status").stdout
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("RegisterJsonRpc/broken"))
    indent = next(line for line in lines if "LAST_ERROR" in line).index("LAST_ERROR")
    text = lines[row][indent:]
    for more in lines[row + 1:]:
        if more[:indent].strip():
            break
        text += " " + more[indent:]
    assert text.startswith("import error: ") and text.endswith(f"RuntimeError: {LONG.strip()} (at broken.py:2 in <module>)"), out
    assert lines[row + 1].startswith(" " * indent), out  # wrapped under its column, not cut
    assert "import error in plugin 'RegisterJsonRpc/broken'" in d.log_text()


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            q.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return q


def _next(q: queue.Queue[str], proc: subprocess.Popen[str], timeout: float = 90.0) -> str:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"plugin dev said nothing for {timeout:.0f}s (exit code {proc.poll()})") from None


def test_plugin_dev_rebuilds_reloads_and_keeps_the_last_good_build(tmp_path: Path, start_daemon) -> None:
    home = prepare_home(tmp_path / "home")
    d = start_daemon(home)
    d.cli("plugin", "new", "--kind", "RegisterJsonRpc", "--dir", str(tmp_path / "src"), "devrpc")
    module = tmp_path / "src" / "devrpc" / "devrpc.py"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsm", "plugin", "dev", str(module.parent), "--interval", "0.1"],
        cwd=ROOT, env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        q = _lines(proc)
        first = _next(q, proc)
        assert re.match(r"\[\d\d:\d\d:\d\d\] build 1 of devrpc: installed as .*plugin-devrpc.vsmp and loaded; kit 6 passed, 0 failed$", first), first
        assert d.rpc("DEVRPC.echo", ["hi"]) == "hi"

        module.write_text(module.read_text().replace("        return text\n", "        return text.upper()\n"))
        line = _next(q, proc)
        assert re.match(r"\[.{8}\] build 2 of devrpc: reloaded; kit 6 passed, 0 failed$", line), line
        assert d.rpc("DEVRPC.echo", ["hi"]) == "HI"

        good = module.read_text()
        module.write_text(good + "\ndef broken(:\n")
        line = _next(q, proc)
        n = len(good.splitlines()) + 2
        assert re.match(rf"\[.{{8}}\] build 3: broken: .*devrpc.py:{n}: syntax error: .*; still serving build 2$", line), line
        assert d.rpc("DEVRPC.echo", ["hi"]) == "HI"

        module.write_text(good + "\nraise RuntimeError('not today')\n")
        line = _next(q, proc)
        assert re.match(r"\[.{8}\] build 4 of devrpc: refused: .*import error.*RuntimeError: not today \(at devrpc.py:\d+ in <module>\).*; still serving build 2$", line), line
        assert d.rpc("DEVRPC.echo", ["hi"]) == "HI"
    finally:
        proc.terminate()
        proc.wait(60)
    rest = []
    while True:
        try:
            rest.append(q.get(timeout=5))
        except queue.Empty:
            break
    assert proc.returncode == 0 and rest[-1:] == ["stopped; build 2 serves on"], rest
