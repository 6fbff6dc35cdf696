"""The backend plugins as users run them: built artifacts in their own worker pools, against
the real servers; servers that go away mid-call and come back."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from vsm.plugin.artifact import build
from vsm.plugin.loader import Registry, discover
from vsm.plugin.proxies import PooledDB, PooledStore
from vsm.sdk import Config

from .conftest import PG_DSN, _moto, need_server, sql_connect
from .test_s3store import KEYS, boto_client

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _plugin_test(artifact: Path, meta: dict[str, str]) -> subprocess.CompletedProcess:
    args = [f"--meta={k}={v}" for k, v in meta.items()]
    return subprocess.run([sys.executable, "-m", "vsm", "plugin", "test", str(artifact), *args],
                          capture_output=True, text=True, timeout=150, env=dict(os.environ))


@pytest.fixture
def registry(tmp_path):
    for name in ("redis", "s3store", "sqlsink"):
        build(REPO / "plugins" / name, tmp_path / "plugins")
    plugins, _ = discover(tmp_path / "plugins", entry_points=False)
    reg = Registry(plugins)
    yield reg
    reg.close()


def _by_name(reg: Registry, name: str):
    return next(p for p in reg.plugins if p.manifest.name == name)


def _kit_json(artifact: Path, meta: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "vsm", "plugin", "test", str(artifact), "--json", *[f"--meta={k}={v}" for k, v in meta.items()]],
                          capture_output=True, text=True, timeout=150, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert all(r["status"] != "fail" for r in report["results"]), report
    return report


def test_redis_passes_its_kit_in_a_pool(tmp_path, redis_meta):
    artifact, _, _ = build(REPO / "plugins" / "redis", tmp_path)
    proc = _plugin_test(artifact, redis_meta)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed (cleanup: removed " in proc.stdout.strip().splitlines()[-1]


def test_plugin_test_leaves_nothing_in_redis(tmp_path, redis_meta):
    """Only Addr given: the kit writes under its own KeyPrefix (the manifest's testMeta), and
    removes every key it wrote."""
    import redis

    artifact, _, _ = build(REPO / "plugins" / "redis", tmp_path)
    report = _kit_json(artifact, {"Addr": redis_meta["Addr"]})
    prefix = report["meta"]["KeyPrefix"]
    assert prefix.startswith("kit_") and re.match(r"removed [1-9]\d{4,} keys", report["cleanup"]), report["cleanup"]
    host, _, port = redis_meta["Addr"].rpartition(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        assert list(client.scan_iter(match=f"{prefix}*", count=1000)) == []
    finally:
        client.close()


def test_plugin_test_leaves_nothing_in_s3(tmp_path, moto):
    endpoint, bucket = f"http://{moto.addr}", f"vsm-{uuid.uuid4().hex[:12]}"
    s3 = boto_client(endpoint)
    s3.create_bucket(Bucket=bucket)
    artifact, _, _ = build(REPO / "plugins" / "s3store", tmp_path)
    report = _kit_json(artifact, {"Bucket": bucket, "Endpoint": endpoint, "PartSize": str(5 * MiB), **KEYS})
    assert report["meta"]["Prefix"].startswith("kit_") and re.match(r"removed [1-9]\d* objects$", report["cleanup"]), report
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3store_passes_its_kit_in_a_pool(tmp_path, moto):
    endpoint, bucket = f"http://{moto.addr}", f"vsm-{uuid.uuid4().hex[:12]}"
    boto_client(endpoint).create_bucket(Bucket=bucket)
    artifact, _, _ = build(REPO / "plugins" / "s3store", tmp_path)
    proc = _plugin_test(artifact, {"Bucket": bucket, "Endpoint": endpoint, "PartSize": str(5 * MiB), **KEYS})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed (cleanup: removed " in proc.stdout.strip().splitlines()[-1]


def test_sqlsink_passes_its_kit_and_leaves_no_table(tmp_path, sql_dsn):
    """Only the DSN given: the kit's tables get its own prefix (testMeta), and drop() removes
    them afterwards."""
    dsn = sql_dsn
    artifact, _, _ = build(REPO / "plugins" / "sqlsink", tmp_path)
    report = _kit_json(artifact, {"DSN": dsn})
    prefix = report["meta"]["TablePrefix"]
    assert prefix.startswith("kit_") and report["cleanup"] == "dropped the sink's data (drop())", report
    assert [r["name"] for r in report["results"] if r["status"] == "skip"] == ["go_hooks_get_typed_arguments"]
    conn = sql_connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute("select table_name from information_schema.tables where table_name like %s", (prefix + "%",))
        assert list(cur.fetchall()) == []
    finally:
        conn.close()


def test_redis_going_away_names_plugin_and_server_then_recovers(registry, redis_server):
    pool = registry.start(_by_name(registry, "redis"), workers=2)
    db = PooledDB(pool, {"Addr": redis_server.addr, "KeyPrefix": "t"})
    coll = db.open_collection("meta")
    coll.put(b"k", b"v1")
    redis_server.kill()
    with pytest.raises(Exception) as info:
        coll.get(b"k")
    message = str(info.value)
    assert "redis" in message and redis_server.addr in message, message
    redis_server.start()  # a fresh, empty server on the same port
    coll.put(b"k", b"v2")  # the same pool, its same workers, reconnect
    assert coll.get(b"k") == b"v2"
    assert pool.status()["restarts"] == 0


class _SlowSource(io.RawIOBase):
    """size bytes, a chunk every few milliseconds: long enough to cut the server mid-upload."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left, 1 * MiB)
        if n:
            time.sleep(0.01)
            memoryview(buf)[:n] = b"\x5a" * n
            self.left -= n
        return n


def test_s3_cut_mid_upload_leaves_nothing_and_recovers(tmp_path_factory, registry):
    server = _moto(tmp_path_factory)
    try:
        endpoint, bucket = f"http://{server.addr}", "cut"
        boto_client(endpoint).create_bucket(Bucket=bucket)
        pool = registry.start(_by_name(registry, "s3store"))
        meta = {"Bucket": bucket, "Endpoint": endpoint, "PartSize": str(5 * MiB), **KEYS}
        store = PooledStore(pool, Config(name="pieces-s3", path="/s3", meta=meta))
        killer = threading.Timer(0.4, server.kill)
        killer.start()
        with pytest.raises(Exception) as info:
            store.put("piece.car", _SlowSource(200 * MiB))
        killer.join()
        message = str(info.value)
        assert "s3store" in message and "pieces-s3" in message and server.addr in message, message
        server.start()  # moto keeps nothing: the bucket is new, and nothing is under the name
        boto_client(endpoint).create_bucket(Bucket=bucket)
        with pytest.raises(Exception):
            store.stat("piece.car")
        assert store.put("piece.car", io.BytesIO(b"x" * (6 * MiB))) == 6 * MiB  # the pool recovered
        assert store.stat("piece.car").size == 6 * MiB
    finally:
        server.kill()


def test_sqlsink_receives_sector_events_through_its_pool(tmp_path, registry):
    try:
        sql_connect(PG_DSN).close()
    except Exception as e:
        need_server(f"PostgreSQL at {PG_DSN}", str(e).splitlines()[0])
    from vsm.sdk.sectors import SectorID, SectorState
    from vsm.sectors import SectorStateManager

    build(REPO / "plugins" / "memdb", tmp_path / "kv")
    (kv_plugin,), _ = discover(tmp_path / "kv", entry_points=False)
    kv_registry = Registry([kv_plugin])
    prefix = f"vsmtest_{uuid.uuid4().hex[:10]}_"
    sink = registry.start(_by_name(registry, "sqlsink"))
    sink.broadcast("open_sink", {"DSN": PG_DSN, "TablePrefix": prefix}, replay=True)
    db = PooledDB(kv_registry.start(kv_plugin), {})
    manager = SectorStateManager(db, tmp_path / "journal", sinks={"sqlsink": sink})
    try:
        manager.import_states([SectorState(id=SectorID(7, n), sector_type=8) for n in range(500)])
        manager.update(SectorID(7, 3), {"Finalized": True})
        assert manager.wait_delivered(timeout=60)
        conn = sql_connect(PG_DSN)
        events = conn.execute(f"select count(*) from {prefix}sector_events").fetchone()[0]
        sectors = conn.execute(f"select count(*) from {prefix}sectors").fetchone()[0]
        assert (events, sectors) == (501, 500)
        conn.execute(f"drop table {prefix}sector_events")
        conn.execute(f"drop table {prefix}sectors")
        conn.close()
    finally:
        manager.close()
        kv_registry.close()
