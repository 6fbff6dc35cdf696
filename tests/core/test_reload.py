"""Plugins at run time: reload a new build under load, a refused reload, disable/enable of a
sink that catches up, validate and onFlush, and that nothing of an old pool is left."""

from __future__ import annotations

import io
import re
import shutil
import threading
import time

import psutil
import pytest

from vsm.plugin.artifact import build
from vsm.config import load_config
from vsm.errors import PluginLoadError
from vsm.home import ensure_home
from vsm.manager import Manager
from vsm.sdk.sectors import SectorID, SectorState

from .conftest import BUNDLED

pytestmark = pytest.mark.timeout(240)


SOURCE_DIRS = {"duckdb": "duckdb_sink", "parquet": "parquet_sink"}


def _bump(tmp_path, name: str, version: str, extra_module: str = "") -> "Path":  # noqa: F821
    """A new build of a bundled plugin: its source copied, version bumped, built elsewhere."""
    src = tmp_path / f"src-{name}-{version}"
    shutil.copytree(BUNDLED / SOURCE_DIRS.get(name, name), src)
    manifest = src / "manifest.toml"
    manifest.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', manifest.read_text()))
    if extra_module:
        module = next(p for p in src.glob("*.py"))
        module.write_text(module.read_text() + extra_module)
    artifact, m, _ = build(src, tmp_path / f"out-{name}-{version}")
    assert m.version == version
    return artifact


@pytest.fixture
def manager(tmp_path):
    home = tmp_path / "home"
    ensure_home(home)
    cfg, _ = load_config(None, home)
    m = Manager(cfg).start()
    yield m
    m.close()


def _worker_pids(manager, name):
    plugin = next(p for p in manager.registry.plugins if p.manifest.name == name)
    return {w["pid"] for w in plugin.pool.status()["workers"]}


def test_reload_each_kind_under_load_loses_no_call_and_no_event(tmp_path, manager):
    kv = manager.db.open_collection("load")
    store = manager.store("pieces")
    errors: list[BaseException] = []
    counts = {"kv": 0, "pieces": 0, "sectors": 0}
    stop = threading.Event()
    manager.sectors.import_states([SectorState(id=SectorID(9, n), sector_type=8) for n in range(200)])

    def loop(kind, fn):
        i = 0
        while not stop.is_set():
            try:
                fn(i)
                counts[kind] += 1
            except BaseException as e:  # every failure is a test failure, reported below
                errors.append(e)
            i += 1

    def kv_op(i):
        kv.put(b"k%d" % i, b"v%d" % i)
        assert kv.get(b"k%d" % i) == b"v%d" % i

    def piece_op(i):
        data = bytes([i % 251]) * (256 << 10)
        assert store.put(f"load/{i % 20}", io.BytesIO(data)) == len(data)

    def sector_op(i):
        manager.sectors.update(SectorID(9, i % 200), {"AbortReason": f"tick {i}"})

    threads = [threading.Thread(target=loop, args=a) for a in (("kv", kv_op), ("pieces", piece_op), ("sectors", sector_op))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for name in ("sqlitekv", "fsstore", "duckdb"):
            old_pids = _worker_pids(manager, name)
            described = manager.reload(name, str(_bump(tmp_path, name, "9.9.9")))
            assert described["version"] == "9.9.9" and described["previous_version"] == "0.1.0"
            assert described["state"] == "ready"
            time.sleep(0.5)
            assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in old_pids), name
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} calls failed during reloads, first: {errors[0]!r}"
    assert min(counts.values()) > 0, counts
    assert manager.sectors.wait_delivered(timeout=60)
    head = manager.sectors.status()["journal"]["head"]
    rows = manager.sink_pool("duckdb").call("query", "select count(*) n, count(distinct seq) d, min(seq) lo, max(seq) hi from sector_events")
    from vsm.sectors import ipc_to_table

    n, d, lo, hi = ipc_to_table(rows).to_pylist()[0].values()
    assert (n, d, lo, hi) == (head, head, 1, head)  # every event exactly once after deduplication


def test_reload_to_a_build_that_fails_init_keeps_the_old_pool(tmp_path, manager):
    bad = _bump(tmp_path, "fsstore", "6.6.6", "\ndef open(cfg):\n    raise RuntimeError('broken build')\n")
    pids = _worker_pids(manager, "fsstore")
    with pytest.raises(PluginLoadError, match="reload of 'ObjStore/fsstore' refused.*broken build"):
        manager.reload("fsstore", str(bad))
    assert _worker_pids(manager, "fsstore") == pids
    assert manager.store("pieces").put("still/works", io.BytesIO(b"ok")) == 2
    plugin = next(p for p in manager.registry.plugins if p.manifest.name == "fsstore")
    assert plugin.manifest.version == "0.1.0"


def test_disabled_sink_catches_up_when_enabled_and_state_survives_restart(tmp_path, manager):
    manager.disable("parquet")
    assert "parquet" not in manager.sectors.status()["sinks"]
    manager.sectors.import_states([SectorState(id=SectorID(3, n), sector_type=8) for n in range(300)])
    head = manager.sectors.status()["journal"]["head"]
    assert manager.sectors.wait_delivered(timeout=30)  # duckdb keeps up meanwhile
    cfg = manager.config
    manager.close()
    again = Manager(cfg).start()  # the disabled state survives a restart
    try:
        parquet = next(p for p in again.registry.plugins if p.manifest.name == "parquet")
        assert parquet.state.value == "disabled" and parquet.pool is None
        again.enable("parquet")
        assert again.sectors.wait_delivered(timeout=60)
        assert again.sectors.status()["sinks"]["parquet"]["checkpoint"] >= head
    finally:
        again.close()


def test_disable_refuses_a_plugin_the_config_uses(manager):
    with pytest.raises(PluginLoadError, match=r"cannot disable 'KVStore/sqlitekv': it is used by Common.DB"):
        manager.disable("sqlitekv")
    with pytest.raises(PluginLoadError, match=r"cannot disable 'ObjStore/fsstore': it is used by Common.PieceStores\[0\] \(store 'pieces'\)"):
        manager.disable("fsstore")


def test_validate_refuses_and_flush_reaches_every_worker(tmp_path, write_plugin):
    marks = tmp_path / "marks"
    marks.mkdir()
    module = (
        "import os\n"
        f"MARKS = {str(marks)!r}\n"
        "def open(meta): return None\n"
        "def validate(manifest, loaded):\n"
        "    if 'memdb' in loaded:\n"
        "        raise ValueError('cannot run beside memdb')\n"
        "def flush(manifest):\n"
        "    with __builtins__['open'](os.path.join(MARKS, str(os.getpid())), 'w') if isinstance(__builtins__, dict) else __builtins__.open(os.path.join(MARKS, str(os.getpid())), 'w'): pass\n"
    )
    folder = write_plugin(
        'name = "picky"\nkind = "KVStore"\nvalidate = "validate"\nonFlush = "flush"\nexport = [{extPoint="Constructor", impl="open"}]\n',
        module,
        name="picky",
    )
    from vsm.plugin.loader import Registry, discover

    out = tmp_path / "plugins"
    build(folder, out)
    plugins, _ = discover(out, entry_points=False)
    registry = Registry(plugins)
    try:
        pool = registry.start(plugins[0], workers=2)
        assert registry.flush("picky") == [True, True]
        assert {p.name for p in marks.iterdir()} == {str(w["pid"]) for w in pool.status()["workers"]}
    finally:
        registry.close()
    build(BUNDLED / "memdb", out)
    plugins, _ = discover(out, entry_points=False)
    registry = Registry(plugins)
    try:
        with pytest.raises(PluginLoadError, match="KVStore/picky.*ValueError: cannot run beside memdb"):
            registry.start(next(p for p in plugins if p.manifest.name == "picky"))
    finally:
        registry.close()
