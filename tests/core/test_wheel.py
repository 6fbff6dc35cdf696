"""An installed wheel (not only a checkout) carries the bundled plugins and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO

pytestmark = pytest.mark.timeout(300)


def test_wheel_carries_bundled_plugins_and_builds_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("vsm_pool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("vsm/_bundled/plugins/memdb/manifest.toml", "vsm/_bundled/plugins/sqlitekv/sqlitekv.py",
                     "vsm/_bundled/bench/run.py", "vsm/sdk/py.typed", "executors/_pool.py"):
        assert expected in names, expected
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True)
    # Run from elsewhere, with only the installed copy of vsm importable.
    env = dict(os.environ, PYTHONPATH=str(site), VSM_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "vsm", "config", "init"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    built = sorted(p.name for p in (tmp_path / "home" / "plugins").iterdir())
    assert {"plugin-memdb.vsmp", "plugin-sqlitekv.vsmp", "plugin-fsstore.vsmp"} <= set(built)
    where = subprocess.run([sys.executable, "-c", "import vsm; print(vsm.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(site))
