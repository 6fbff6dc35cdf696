"""Plugins written from docs/plugin-format.md alone (tests/conformance/authored/, one or more of
each kind, none copied from a template or a bundled plugin) pass their kits, built by the real
build command and tested by the real `vsm-pool plugin test`."""

from __future__ import annotations

import sys
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

AUTHORED = Path(__file__).resolve().parent / "authored"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vsm", *args], capture_output=True, text=True, timeout=110)


@pytest.mark.parametrize("name", sorted(p.name for p in AUTHORED.iterdir() if (p / "manifest.toml").is_file()))
def test_a_plugin_written_from_the_docs_passes_its_kit(tmp_path, name):
    built = _cli("plugin", "build", "--src-dir", str(AUTHORED / name), "--out-dir", str(tmp_path))
    assert built.returncode == 0, built.stderr
    proc = _cli("plugin", "test", str(tmp_path / f"plugin-{name}.vsmp"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and " 0 failed" in proc.stdout.splitlines()[-1], proc.stdout


def test_every_kind_is_authored():
    kinds = {line.split('"')[1] for p in AUTHORED.glob("*/manifest.toml") for line in p.read_text().splitlines() if line.startswith("kind =")}
    assert kinds == {"KVStore", "ObjStore", "SyncSectorState", "RegisterJsonRpc"}
