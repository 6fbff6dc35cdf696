from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "plugins"


def run_cli(*args: str, home: Path | None = None, check: bool = False, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    if home is not None:
        full_env["VSM_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "vsm", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"vsm-pool {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def write_plugin(tmp_path):
    """Write a plugin source folder from a manifest text and a module text."""

    def write(manifest: str, module: str = "", name: str = "p", module_name: str | None = None) -> Path:
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        (folder / "manifest.toml").write_text(manifest)
        (folder / f"{module_name or name}.py").write_text(module)
        return folder

    return write
