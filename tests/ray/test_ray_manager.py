"""The whole manager on Ray, chosen in config: the KVStore, the piece store and the sinks run as
Ray actors; pieces stream and sector events fan out to the sinks as with local pools."""

from __future__ import annotations

import io

import pytest

from vsm.config import load_config
from vsm.home import ensure_home
from vsm.manager import Manager
from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import ipc_to_table

pytestmark = pytest.mark.timeout(180)


def test_manager_runs_every_pool_on_ray_from_config(ray_cluster, tmp_path):
    home = tmp_path / "home"
    ensure_home(home)
    config = home / "config.toml"
    text = config.read_text().replace("[Common.Plugins]\n", f'[Common.Plugins]\nBackend = "ray"\nRayAddress = "{ray_cluster.address}"\n', 1)
    config.write_text(text + '\n[Common.Plugins.fsstore]\nWorkers = 2\nRayResources = { CPU = 0 }\n')
    cfg, _ = load_config(None, home)
    manager = Manager(cfg).start()
    try:
        backends = {p.manifest.name: p.pool.status().get("backend") for p in manager.registry.plugins if p.pool is not None}
        assert set(backends.values()) == {"ray"}, backends
        store = manager.store("pieces")
        data = bytes(range(256)) * 40000
        assert store.put("ray/piece.bin", io.BytesIO(data)) == len(data)
        assert store.get("ray/piece.bin").read() == data
        manager.sectors.import_states([SectorState(id=SectorID(5, n), sector_type=8) for n in range(300)])
        manager.sectors.update(SectorID(5, 1), {"Finalized": True})
        assert manager.sectors.wait_delivered(timeout=90)
        table = ipc_to_table(manager.sink_pool("duckdb").call("query", "select count(*) n, max(seq) m from sector_events"))
        assert table.to_pylist() == [{"n": 301, "m": 301}]
    finally:
        manager.close()

