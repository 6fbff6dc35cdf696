"""The fault suite (issue 13): the real daemon under load (imports, updates, piece PUT/GET, a
RegisterJsonRpc namespace), while the workers of every pool kind and the daemon itself are
killed -9, a sink is disabled and enabled, a sink's pool is crash-looped and reloaded, and
updates carry values that cannot be typed. Then, from the files of the stopped daemon: every
journaled event in every sink exactly once by seq, every acknowledged update and import in the
final state, every acknowledged piece intact (sha256), no partial object and no temp file, no
process and no /dev/shm entry left. Recovery times are printed (pytest -s) and recorded as
properties. The machinery is bench/faults.py; the long run is `vsm-pool bench --suite soak`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bench.faults import RPC_PLUGIN, Daemon, Load, prepare_home, shm_entries, verify

pytestmark = pytest.mark.timeout(600)


def _wait_for(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_nothing_is_lost_under_faults(tmp_path: Path, record_property: Any) -> None:
    shm_before = shm_entries()
    d = Daemon(prepare_home(tmp_path / "home"))
    recovery: dict[str, float] = {}
    try:
        recovery["daemon start"] = d.start()
        load = Load(d).start()
        try:
            _wait_for(lambda: load.ok["import"] >= 3 and load.ok["put"] >= 3 and load.ok["update"] >= 10)
            # a pool of every kind loses its workers under load
            recovery["KVStore sqlitekv, 2 workers killed"] = d.kill_workers("sqlitekv", 2)
            recovery["ObjStore fsstore, 4 workers killed"] = d.kill_workers("fsstore", 4)
            recovery["SyncSectorState duckdb, worker killed"] = d.kill_workers("duckdb")
            recovery["SyncSectorState parquet, worker killed"] = d.kill_workers("parquet")
            recovery[f"RegisterJsonRpc {RPC_PLUGIN}, worker killed"] = d.kill_workers(RPC_PLUGIN)
            # a sink disabled and enabled again keeps its events (item 1)
            d.rpc("plugin.disable", {"name": "parquet"})
            time.sleep(1.0)
            d.rpc("plugin.enable", {"name": "parquet"})
            # a sink pool failed by the crash-loop breaker comes back with reload (item 3)
            recovery["duckdb pool failed by the breaker, reloaded"] = d.crash_loop_and_reload("duckdb")
            # a value that cannot be typed fails that call only (item 2)
            sid = next(iter(load.imported))
            for fields in ({"SectorType": "abc"}, {"Seed": 123}, {"Pieces": [{"x": 1}]}):
                with pytest.raises(RuntimeError, match="-32602|SectorType|Seed|Pieces"):
                    d.rpc("sectors.update", {"miner": sid[0], "number": sid[1], "fields": fields})
            # the daemon itself: alone (its workers exit by themselves), then its whole tree
            for whole in (False, True):
                time.sleep(1.0)
                what = "daemon and workers" if whole else "daemon"
                d.kill9(whole_tree=whole)
                recovery[f"kill -9 {what}: restart to /healthz"] = d.start()
                recovery[f"kill -9 {what}: restart to sinks caught up"] = d.caught_up()
            time.sleep(1.0)
        finally:
            load.stop()
        recovery["sinks caught up after the load"] = d.caught_up()
        problems = d.rpc("status")["problems"]
        assert [p["part"] for p in problems] == ["sink/verify-hold"], problems
        assert d.stop() == 0, d.log_tail()
        report = verify(d, load, shm_before)
    finally:
        d.kill9(whole_tree=True)
    report["recovery_seconds"] = {k: round(v, 3) for k, v in recovery.items()}
    print(json.dumps(report, indent=2))
    for k, v in report.items():
        record_property(k, v)
    assert report["events"] > 0 and load.ok["update"] > 0 and load.ok["put"] > 0
    for sink in ("duckdb", "parquet"):
        assert (report[f"{sink}_lost"], report[f"{sink}_duplicates"], report[f"{sink}_unknown"]) == (0, 0, 0), report
    assert report["updates_lost"] == report["imports_lost"] == report["sink_state_mismatches"] == 0, report
    assert report["pieces_intact"] == report["pieces_acked"] and report["bad_reads"] == 0, report
    assert report["partial_objects"] == report["temp_files"] == 0, report
    assert report["processes_left"] == report["shm_left"] == 0, report
