"""The conformance kits through Ray-hosted pools of the bundled plugins: built artifacts,
discovered and started by the Registry with backend="ray", used through the manager's proxies."""

from __future__ import annotations

import os
import pathlib

import pytest

from vsm.plugin.artifact import build
from vsm.plugin.conformance import format_results, run_kvstore_kit, run_objstore_kit
from vsm.plugin.loader import Registry, discover
from vsm.plugin.proxies import PooledDB, PooledStore
from vsm.sdk import Config

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("plugins")
    for name in ("memdb", "sqlitekv", "fsstore"):
        build(REPO / "plugins" / name, out)
    return out


def _start(artifacts: pathlib.Path, name: str, workers: int = 1):
    plugins, _ = discover(artifacts, entry_points=False)
    plugin = next(p for p in plugins if p.manifest.name == name)
    registry = Registry(plugins)
    pool = registry.start(plugin, backend="ray", workers=workers)
    assert pool.status().get("backend") == "ray"
    return registry, pool


@pytest.mark.parametrize("name,workers", [("memdb", 1), ("sqlitekv", 2)])
def test_kvstore_kit_through_ray(ray_cluster, artifacts, tmp_path, name, workers):
    registry, pool = _start(artifacts, name, workers)
    try:
        meta = {"Path": str(tmp_path / "kit.db")} if name == "sqlitekv" else {}
        db = PooledDB(pool, meta)
        db.run()
        try:
            results = run_kvstore_kit(db)
        finally:
            db.close()
        assert results and all(r.passed for r in results), format_results(results)
    finally:
        registry.close()


def test_objstore_kit_through_ray(ray_cluster, artifacts, tmp_path):
    registry, pool = _start(artifacts, "fsstore", 2)
    location = tmp_path / "store"
    location.mkdir()
    try:

        def make_store(read_only: bool) -> PooledStore:
            # the kit's contract: every store it asks for sees the same folder
            name = "kit-read-only" if read_only else "kit"
            return PooledStore(pool, Config(name=name, path=str(location), read_only=read_only))

        results = run_objstore_kit(make_store)
        assert results and all(r.passed for r in results), format_results(results)
    finally:
        registry.close()


@pytest.mark.skipif(
    os.environ.get("VSM_RAY_PIP_TEST") != "1",
    reason="set VSM_RAY_PIP_TEST=1: Ray clones the manager's virtualenv for a pip runtime_env "
    "(measured ~16 s and ~950 MB under /tmp/ray per run here); tests/core/test_envs.py checks "
    "the runtime_env that is passed",
)
def test_requirements_installed_by_ray_runtime_env_pip(ray_cluster, tmp_path):
    """The manifest that makes a local environment works on Ray: its requirements (vsm-pool's
    runtime ones left out) become runtime_env pip, which Ray installs on the actor's node (it
    needs virtualenv there, and index access); nothing is made under <home>/envs."""
    from bench.env_plugins import version_plugin

    build(version_plugin(tmp_path / "src", "rayenv", ["packaging==21.3", "pyarrow>=15"]), tmp_path / "plugins")
    plugins, _ = discover(tmp_path / "plugins", entry_points=False)
    registry = Registry(plugins, envs_dir=tmp_path / "envs")
    try:
        pool = registry.start(plugins[0], backend="ray", workers=1)
        assert pool.pinned().runtime_env == {"pip": ["packaging==21.3"]}
        seen = pool.call("invoke", "version", {})
        assert seen["version"] == seen["metadata"] == "21.3", seen
    finally:
        registry.close()
    assert not (tmp_path / "envs").exists()
