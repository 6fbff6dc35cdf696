"""A plugin's own environment (issue 15): planned from its requirements, created once under
<home>/envs/<key>, shared and reused, offline from an artifact built --with-deps, and every
failure one line that names the plugin, the requirement and the cause."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import sys

import pytest

from bench.env_plugins import version_plugin
from vsm.errors import PluginLoadError
from vsm.plugin import envs
from vsm.plugin.artifact import build
from vsm.plugin.loader import PluginState, Registry, discover
from vsm.sdk import Kind, Manifest

from .conftest import run_cli

pytestmark = pytest.mark.timeout(180)


def _manifest(*requirements: str) -> Manifest:
    return Manifest(name="p", kind=Kind.RegisterJsonRpc, requirements=requirements)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed once we return: connections are refused


def _registry(tmp_path, *sources, with_deps=False):
    out = tmp_path / "plugins"
    for src in sources:
        build(src, out, with_deps=with_deps)
    plugins, _ = discover(out, entry_points=False)
    return Registry(plugins, envs_dir=tmp_path / "envs"), {p.manifest.name: p for p in plugins}


def _envs(tmp_path):
    return sorted(p.name for p in (tmp_path / "envs").iterdir() if not p.name.endswith(".lock"))


def test_plan_none_when_the_manager_satisfies_every_requirement():
    # the bundled sinks: duckdb and pyarrow come with vsm-pool, no environment is made
    assert envs.plan(_manifest("packaging>=20", "pyarrow>=15")) is None
    assert envs.plan(_manifest("packaging==21.3; python_version < '3'")) is None
    one = envs.plan(_manifest("packaging==21.3", "six"))
    assert one is not None and one.requirements == ("packaging==21.3", "six")
    assert envs.plan(_manifest("six", "packaging == 21.3")) == one  # order and spelling do not matter
    assert envs.plan(_manifest("packaging==24.*")).key != one.key  # type: ignore[union-attr]
    assert envs.plan(_manifest("packaging==21.3", "pyarrow>=15")).pip_requirements() == ["packaging==21.3"]  # type: ignore[union-attr]


def test_same_requirements_share_one_environment_made_once_then_reused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    registry, plugins = _registry(tmp_path, version_plugin(src, "pkgx", ["packaging==21.3"]), version_plugin(src, "pkgy", ["packaging==21.3"]))
    try:
        seen = [registry.start(plugins[n]).call("invoke", "version", {}) for n in ("pkgx", "pkgy")]
    finally:
        registry.close()
    (key,) = _envs(tmp_path)
    site = tmp_path / "envs" / key / "site"
    # the manager itself never imports from an environment
    assert sys.modules["packaging"].__version__ == importlib.metadata.version("packaging") != "21.3"
    assert not any(str(tmp_path) in p for p in sys.path)
    assert all(s["version"] == s["metadata"] == "21.3" and s["file"].startswith(str(site)) for s in seen), seen
    info = json.loads((tmp_path / "envs" / key / "env.json").read_text())
    assert info["packages"]["packaging"] == "21.3" and info["requirements"] == ["packaging==21.3"]
    stamp = (tmp_path / "envs" / key / "env.json").stat().st_mtime_ns

    def no_uv(*args):
        raise AssertionError(f"a second start ran uv {args}")

    monkeypatch.setattr(envs, "_uv", no_uv)  # a second start creates nothing
    plugins2, _ = discover(tmp_path / "plugins", entry_points=False)
    registry2 = Registry(plugins2, envs_dir=tmp_path / "envs")
    assert plugins2[0].describe()["env"]["packages"]["packaging"] == "21.3"  # listed before its start
    try:
        assert registry2.start(plugins2[0]).call("invoke", "version", {})["version"] == "21.3"
    finally:
        registry2.close()
    assert _envs(tmp_path) == [key] and (tmp_path / "envs" / key / "env.json").stat().st_mtime_ns == stamp


def _bad_sdist(folder):
    """A source distribution whose build fails (its setup.py exits with a message)."""
    import io
    import tarfile

    folder.mkdir()
    files = {
        "vsm_badbuild-1.0/setup.py": b"raise SystemExit('this package cannot be built here')\n",
        "vsm_badbuild-1.0/pyproject.toml": b'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n',
        "vsm_badbuild-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: vsm-badbuild\nVersion: 1.0\n",
    }
    with tarfile.open(folder / "vsm_badbuild-1.0.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder


def _wheel_needing_old_cloudpickle(folder):
    """A pure-Python wheel whose metadata requires cloudpickle<1 (vsm-pool's runtime has 3.x)."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir()
    info = "vsm_oldpickle-1.0.dist-info"
    files = {
        "vsm_oldpickle/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: vsm-oldpickle\nVersion: 1.0\nRequires-Dist: cloudpickle<1\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    digest = {p: base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode() for p, d in files.items()}
    record = "".join(f"{p},sha256={digest[p]},{len(d)}\n" for p, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / "vsm_oldpickle-1.0-py3-none-any.whl", "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr(f"{info}/RECORD", record)
    return folder


@pytest.mark.parametrize("case", ["no matching version", "index unreachable", "build error", "runtime conflict below"])
def test_failure_is_one_line_naming_plugin_requirement_cause_and_disables_the_plugin(tmp_path, monkeypatch, case):
    if case == "no matching version":
        req, cause = "packaging==99.1", "no matching version: Because there is no version of packaging==99.1"
    elif case == "index unreachable":
        req, cause = "attrs==21.1.0", "the package index is unreachable ("
        monkeypatch.setenv("UV_INDEX_URL", f"http://127.0.0.1:{_closed_port()}/simple")
        monkeypatch.setenv("UV_NO_CACHE", "1")
        monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    elif case == "build error":
        req, cause = "vsm-badbuild==1.0", "build error: Failed to build `vsm-badbuild==1.0`: this package cannot be built here"
        monkeypatch.setenv("UV_FIND_LINKS", str(_bad_sdist(tmp_path / "links")))
    else:  # a dependency of the requirement wants another version of the workers' runtime
        req, cause = "vsm-oldpickle==1.0", "conflicts with vsm-pool's runtime: every worker runs cloudpickle "
        monkeypatch.setenv("UV_FIND_LINKS", str(_wheel_needing_old_cloudpickle(tmp_path / "links")))
    registry, plugins = _registry(tmp_path, version_plugin(tmp_path / "src", "broken", [req]))
    with pytest.raises(PluginLoadError) as info:
        registry.start(plugins["broken"])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"plugin 'RegisterJsonRpc/broken': cannot create its environment: requirement '{req}': {cause}"), text
    assert plugins["broken"].state is PluginState.DISABLED and plugins["broken"].pool is None
    assert _envs(tmp_path) == []  # no half environment, no leftover .tmp-*


def test_strict_stops_start_up_on_an_environment_failure(tmp_path):
    registry, _ = _registry(tmp_path, version_plugin(tmp_path / "src", "broken", ["packaging==99.1"]))
    with pytest.raises(PluginLoadError, match="broken': cannot create its environment: requirement 'packaging==99.1'"):
        registry.start_all(needed=set(), strict=True)
    registry.close()


def test_with_deps_artifact_loads_with_the_index_unreachable(tmp_path, monkeypatch):
    src = version_plugin(tmp_path / "src", "offline", ["packaging==21.3"])
    built = run_cli("plugin", "build", "--src-dir", str(src), "--out-dir", str(tmp_path / "plugins"), "--with-deps", check=True)
    assert "bundled 2 wheel(s) for this platform: packaging-21.3-py3-none-any.whl, pyparsing-" in built.stderr
    closed = f"http://127.0.0.1:{_closed_port()}/simple"
    for var, value in {"UV_INDEX_URL": closed, "PIP_INDEX_URL": closed, "PIP_NO_INDEX": "1", "UV_NO_CACHE": "1", "UV_HTTP_RETRIES": "0"}.items():
        monkeypatch.setenv(var, value)
    plugins, _ = discover(tmp_path / "plugins", entry_points=False)
    registry = Registry(plugins, envs_dir=tmp_path / "envs")
    try:
        seen = registry.start(plugins[0]).call("invoke", "version", {})
    finally:
        registry.close()
    assert seen["version"] == "21.3" and "/envs/" in seen["file"]
    (key,) = _envs(tmp_path)
    assert json.loads((tmp_path / "envs" / key / "env.json").read_text())["source"] == "wheels bundled in plugin-offline.vsmp"


def test_a_package_needing_another_runtime_version_is_found(tmp_path):
    """A lock made on another machine (--with-deps) can pull in a package that wants another
    pyarrow than the workers run: refused, naming both."""
    dist = tmp_path / "oldarrow_user-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: oldarrow-user\nVersion: 1.0\nRequires-Dist: pyarrow<1\n")
    problem = envs._runtime_conflict(tmp_path)
    assert problem.startswith("oldarrow-user 1.0 requires 'pyarrow<1', which conflicts with vsm-pool's runtime: every worker runs pyarrow ")


def test_pip_settings_reach_uv_with_pip_merge_of_indexes(tmp_path, monkeypatch):
    for var in (*envs._UV_INDEX_VARS, "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS"):  # this machine's own pip files out of the way
        monkeypatch.setenv(var, str(tmp_path / "nowhere"))
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://mirror.invalid/simple\nextra-index-url = file:///a/simple file:///b/simple\n[install]\nfind-links = /w\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    args = envs.index_args()
    assert args[:3] == ["--no-index", "--index-url", "http://mirror.invalid/simple"]
    assert args[3:] == ["--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple", "--find-links", "/w", "--index-strategy", "unsafe-best-match"]
    monkeypatch.setenv("UV_INDEX_URL", "http://uv.invalid/simple")  # uv's own settings win
    assert envs.index_args() == []


def test_env_list_and_prune_keep_what_artifacts_use(tmp_path):
    home = tmp_path / "home"
    run_cli("config", "init", home=home, check=True)
    plugins_dir = home / "plugins"
    src = tmp_path / "src"
    build(version_plugin(src, "kept", ["packaging==21.3"]), plugins_dir)
    gone = build(version_plugin(src, "gone", ["packaging==24.*"]), plugins_dir)[0]
    found, _ = discover(plugins_dir, entry_points=False)
    by_name = {p.manifest.name: p for p in found}
    for name in ("kept", "gone"):
        envs.ensure(by_name[name].env, home / "envs", name)  # type: ignore[arg-type]
    gone.unlink()
    stale = home / "envs" / ".tmp-0123456789abcdef-99999999"  # a creator killed -9
    stale.mkdir()
    listed = json.loads(run_cli("plugin", "env", "list", "--json", home=home, check=True).stdout)
    used = {e["key"]: e["used_by"] for e in listed}
    assert used == {by_name["kept"].env.key: ["kept"], by_name["gone"].env.key: []}  # type: ignore[union-attr]
    out = run_cli("plugin", "env", "prune", home=home, check=True).stdout
    assert f"removed {home / 'envs' / by_name['gone'].env.key}" in out and "2 environment(s) removed" in out  # type: ignore[union-attr]
    assert sorted(p.name for p in (home / "envs").iterdir() if not p.name.endswith(".lock")) == [by_name["kept"].env.key]  # type: ignore[union-attr]
    table = run_cli("plugin", "list", home=home, check=True).stdout
    assert f"{by_name['kept'].env.key}: packaging 21.3, pyparsing" in table  # type: ignore[union-attr]


def test_on_ray_the_requirements_become_runtime_env_pip(tmp_path, monkeypatch):
    """The same manifest on the Ray backend: no local environment; its requirements (runtime
    ones left out) go to the actors' runtime_env pip (tests/ray installs them for real)."""
    from vsm.plugin import loader

    made = []

    class Refused(Exception):
        pass

    def fake_make_pool(spec, backend, **options):
        made.append((spec, backend, options))
        raise Refused

    monkeypatch.setattr(loader, "make_pool", fake_make_pool)
    registry, plugins = _registry(tmp_path, version_plugin(tmp_path / "src", "rayenv", ["packaging==21.3", "pyarrow>=15"]))
    with pytest.raises(Refused):
        registry.start(plugins["rayenv"], backend="ray")
    (spec, backend, options), = made
    assert backend == "ray" and options["runtime_env"] == {"pip": ["packaging==21.3"]} and spec.site_dirs == ()
    assert not (tmp_path / "envs").exists()
