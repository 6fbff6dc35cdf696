"""`vsm-pool util migrate`: every collection from one KVStore plugin to another, real pools,
real Redis, through the real CLI, with the count check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vsm.plugin.artifact import build

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsm", *args], capture_output=True, text=True, timeout=150, env=dict(os.environ))


def _seed_sqlite(path: Path) -> dict[str, int]:
    sys.path.insert(0, str(REPO / "plugins" / "sqlitekv"))
    try:
        import sqlitekv
    finally:
        sys.path.pop(0)
    # damocles' collections, those its own migrate tool leaves out (unseal, prover), and one of
    # a plugin's own: every collection present is copied
    sizes = {"meta": 2500, "offline_meta": 7, "common": 1, "worker": 3, "unseal": 2, "prover": 4, "my-plugin-data": 5}
    db = sqlitekv.open({"Path": str(path)})
    db.run()
    for coll, n in sizes.items():
        db.open_collection(coll).update(lambda t, n=n: [t.put(b"k%06d" % i, b"\xff" * 64 + b"%d" % i) for i in range(n)])
    db.close()
    return sizes


@pytest.fixture
def plugins_dir(tmp_path):
    out = tmp_path / "plugins"
    for name in ("sqlitekv", "redis", "memdb"):
        build(REPO / "plugins" / name, out)
    return out


def test_migrate_sqlite_to_redis_and_back(tmp_path, plugins_dir, redis_meta):
    sizes = _seed_sqlite(tmp_path / "src.db")
    to_meta = [f"--to-meta={k}={v}" for k, v in redis_meta.items()]
    proc = _cli("util", "migrate", "--dir", str(plugins_dir), "--from", "sqlitekv", "--from-meta", f"Path={tmp_path / 'src.db'}", "--to", "redis", *to_meta)
    assert proc.returncode == 0, proc.stderr
    assert f"migrated {sum(sizes.values())} keys in {len(sizes)} collections from sqlitekv to redis" in proc.stdout
    assert all(f"{name} " in proc.stdout for name in sizes), proc.stdout
    back_meta = [f"--from-meta={k}={v}" for k, v in redis_meta.items()]
    proc = _cli("util", "migrate", "--dir", str(plugins_dir), "--from", "redis", *back_meta, "--to", "sqlitekv", "--to-meta", f"Path={tmp_path / 'back.db'}")
    assert proc.returncode == 0, proc.stderr
    import sqlite3

    counts = dict(sqlite3.connect(tmp_path / "back.db").execute("select coll, count(*) from kv group by coll").fetchall())
    assert counts == sizes


def test_migrate_unknown_plugin_is_one_line(tmp_path, plugins_dir):
    proc = _cli("util", "migrate", "--dir", str(plugins_dir), "--from", "sqlitekv", "--from-meta", f"Path={tmp_path / 'x.db'}", "--to", "mongo")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vsm-pool: error: no loaded KVStore plugin 'mongo' (loaded: memdb, redis, sqlitekv)"
