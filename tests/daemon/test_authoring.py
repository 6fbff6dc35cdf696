"""What a plugin author sees from the daemon: a plugin that fails to import is called an import
error, with its own file and line, and `status` shows the whole message."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsm.plugin.artifact import build

from .harness import prepare_home

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
