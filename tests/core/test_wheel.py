"""An installed wheel (not only a checkout) carries the bundled plugins and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

from .conftest import REPO

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)],
        check=True,
        capture_output=True,
    )
    (built,) = dist.glob("vsm_pool-*.whl")
    return built


def test_wheel_carries_bundled_plugins_and_builds_them(tmp_path, wheel):
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


# Every import a benchmark makes, at module level or inside a function, resolved in the
# installed copy: a module only a checkout has (`tests`, issue 14) or a name moved away
# (`from vsm import _host`) fails here in seconds, without running the suites for minutes.
_CHECK_BENCH_IMPORTS = textwrap.dedent(
    """
    import ast, importlib, pathlib, sys
    from vsm.home import bundled_root
    root = bundled_root()
    assert "site-packages" in str(root), root
    sys.path.insert(0, str(root))  # as `vsm-pool bench` does
    from bench.run import SUITES
    missing = []
    for path in sorted((root / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wanted = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                wanted = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in wanted:
                if module.split(".")[0] == "ray":
                    continue  # optional: its suite says how to install it
                try:
                    mod = importlib.import_module(module)
                    if name is not None and name != "*" and not hasattr(mod, name):
                        importlib.import_module(module + "." + name)
                except ImportError as e:
                    missing.append(f"{path.name}:{node.lineno}: {e}")
    for suite, module in SUITES.items():
        if suite != "ray":
            importlib.import_module(module)
    print("\\n".join(missing) or "OK")
    """
)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, wheel):
    """A fresh venv holding the wheel (as `pip install .` leaves it), the dependencies borrowed
    from this interpreter: (python, console script, environment without PYTHONPATH)."""
    tmp_path = tmp_path_factory.mktemp("wheel-venv")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the wheel first: with the dependencies' path in place, pip would find this project's
    # own installed copy there (CI installs it non-editable) and install nothing
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-compile", "-q", str(wheel)],
                   check=True, capture_output=True)
    # the dependencies come from this interpreter's site-packages, as one plain path entry
    # (its .pth files, e.g. an editable checkout, are not processed from there)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (tmp_path / "venv-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    os.replace(tmp_path / "venv-deps.pth", os.path.join(site, "venv-deps.pth"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return py, venv / "bin" / "vsm-pool", env


def test_bench_runs_from_a_wheel_in_a_fresh_venv(tmp_path, wheel_venv):
    py, script, env = wheel_venv
    env = dict(env, VSM_HOME=str(tmp_path / "home"))
    proc = subprocess.run([str(py), "-c", _CHECK_BENCH_IMPORTS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK", proc.stdout
    # the console script itself, end to end: a suite that starts no pool
    proc = subprocess.run([str(script), "bench", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "--suite" in proc.stdout, proc.stderr


def test_daemon_started_in_the_checkout_runs_the_installed_code(tmp_path, wheel_venv):
    """The README's `pip install . && vsm-pool start`, typed in the checkout: the workers import
    the installed vsm, as the manager does, not the checkout's vsm/ from the current folder
    (which the sandbox refuses, so both sinks were disabled: issue 24 item 2)."""
    import json
    import socket
    import time

    py, script, env = wheel_venv
    env = dict(env, VSM_HOME=str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen([str(script), "start", "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        status: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            proc = subprocess.run([str(script), "status", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
            if proc.returncode == 0:
                status = json.loads(proc.stdout)
                if not any(p["state"] == "starting" for p in status["plugins"]):
                    break
            time.sleep(0.5)
        states = {p["name"]: p["state"] for p in status["plugins"]}
        assert states and all(s in ("ready", "loaded") for s in states.values()), (states, status.get("problems"))
        assert not status.get("problems"), status["problems"]
    finally:
        subprocess.run([str(script), "stop"], cwd=REPO, env=env, capture_output=True, timeout=60)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, 9)
            daemon.wait()
