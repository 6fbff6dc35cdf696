"""`vsm-pool plugin bench ARTIFACT`: each kind's workloads in the plugin's pool beside the same
plugin in-process, in one run, with ratios (no speed is asserted: only that both sides ran)."""

from __future__ import annotations

import json
import os

import pytest

from vsm.plugin.artifact import build

from .conftest import BUNDLED, run_cli

pytestmark = pytest.mark.timeout(180)

WORKLOADS = {
    "memdb": ["put 100 B, one call at a time", "get 100 B, one call at a time", "scan 2000 keys", "update of 100 puts (fn shipped by value)"],
    "fsstore": ["put 64 MiB", "get 64 MiB", "stat, one call at a time"],
    "duckdb_sink": ["20000 rows in deliveries of 5000"],
    "concurrent_limiter": ["DAMOCLES_LIMITER.Acquire(name, id)"],
}


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_plugin_bench_runs_each_workload_in_the_pool_and_in_process(tmp_path, name):
    artifact, _, _ = build(BUNDLED / name, tmp_path)
    proc = run_cli("plugin", "bench", str(artifact), "--quick", "--json", timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["workload"]: r for r in report["rows"]}
    assert set(WORKLOADS[name]) <= set(rows), rows
    for r in rows.values():
        assert r["pool"] > 0 and r["inline"] > 0 and r["ratio"] == pytest.approx(r["pool"] / r["inline"]), r
    assert not [p for p in os.listdir("/tmp") if p.startswith(f"vsm-bench-{report['plugin'].split('/')[1]}-")]


def test_plugin_bench_prints_a_table(tmp_path):
    artifact, _, _ = build(BUNDLED / "memdb", tmp_path)
    proc = run_cli("plugin", "bench", str(artifact), "--quick", timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["workload", "in", "its", "pool", "in-process", "ratio"]
    assert lines[1].startswith("put 100 B, one call at a time") and lines[1].split()[-1].replace(".", "").isdigit()
    assert lines[-1] == "KVStore/memdb: pool of 1 worker(s) vs in-process, one run; ratio = pool / in-process"
