"""The backend plugins (redis, s3store, sqlsink) as users run them: in the real daemon, with no
Sandbox key (so sandboxed by default, confined to the ports of their Addr / Endpoint / DSN),
against the real servers. Each does its work there (a denial would stop it: the sinks' errors
and the store's put say so)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from vsm.plugin.artifact import build
from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import write_import_file

from ..daemon.conftest import start_daemon  # noqa: F401 - the daemon fixture
from ..daemon.harness import ROOT, Daemon, prepare_home
from ..daemon.test_isolation import wait_sinks
from .conftest import ServerProcess, sql_connect

pytestmark = pytest.mark.timeout(180)

KEYS = {"AccessKey": "testing-access-key", "SecretKey": "testing-secret-key"}


@pytest.fixture
def bucket(moto: ServerProcess) -> Iterator[tuple[str, str]]:
    import boto3

    endpoint = f"http://{moto.addr}"
    name = f"vsm-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEYS["AccessKey"], aws_secret_access_key=KEYS["SecretKey"])
    s3.create_bucket(Bucket=name)
    yield endpoint, name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def test_backends_serve_sandboxed_by_default(start_daemon, tmp_path: Path, redis_meta: dict[str, str], bucket: tuple[str, str], sql_dsn: str, table_prefix: str) -> None:  # noqa: F811
    endpoint, bucket_name = bucket
    home = tmp_path / "home"
    prepare_home(
        home,
        append=f'[[Common.PieceStores]]\nName = "s3"\nPath = "/s3"\nPluginName = "s3store"\n[Common.PieceStores.Meta]\n'
        f'Bucket = "{bucket_name}"\nEndpoint = "{endpoint}"\nAccessKey = "{KEYS["AccessKey"]}"\nSecretKey = "{KEYS["SecretKey"]}"\n'
        f'[Common.Plugins.sqlsink.Meta]\nDSN = "{sql_dsn}"\nTablePrefix = "{table_prefix}"\n',
    )
    text = (home / "config.toml").read_text()
    text = text.replace('Driver = "sqlite"', 'Driver = "plugin"\n[Common.DB.Plugin]\nPluginName = "redis"', 1)
    meta = "".join(f'{k} = "{v}"\n' for k, v in redis_meta.items())
    text = re.sub(r"\[Common.DB.Plugin.Meta\]\nPath = [^\n]*\n", f"[Common.DB.Plugin.Meta]\n{meta}", text, count=1)
    (home / "config.toml").write_text(text)
    for name in ("redis", "s3store", "sqlsink"):
        build(ROOT / "plugins" / name, home / "plugins")

    d: Daemon = start_daemon(home)
    rows = {r["name"]: r["sandbox"] for r in d.rpc("plugin.list")}
    ports = {"redis": int(redis_meta["Addr"].rsplit(":", 1)[1]), "s3store": int(endpoint.rsplit(":", 1)[1]), "sqlsink": int(re.search(r":(\d+)/", sql_dsn)[1])}  # type: ignore[index]
    for name, port in ports.items():
        assert rows[name]["state"] == "on" and rows[name]["connect"] == [port], (name, rows[name])

    states = tmp_path / "states.jsonl"
    write_import_file(str(states), [SectorState(id=SectorID(79, n), sector_type=8) for n in range(30)])
    assert "imported 30 of 30" in d.cli("sectors", "import", str(states)).stdout  # into Redis
    status, _, _ = d.request("PUT", "/pieces/s3/iso/p.bin", b"piece" * 1000, {"Content-Type": "application/octet-stream"})
    assert status == 201
    status, _, body = d.request("GET", "/pieces/s3/iso/p.bin")
    assert status == 200 and body == b"piece" * 1000
    wait_sinks(d, {"duckdb", "parquet", "sqlsink"})
    assert _count(sql_dsn, f"{table_prefix}sectors") == 30


def _count(dsn: str, table: str) -> Any:
    conn = sql_connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchall()[0][0]
    finally:
        conn.close()
