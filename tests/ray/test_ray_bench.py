"""`vsm-pool bench --backend`: which suites run; the Ray fan-out workload on the test cluster."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from vsm.cli import main


@pytest.mark.parametrize(
    "args, suites",
    [
        ([], ["executor", "isolation", "sectors", "operator", "envs"]),
        (["--backend", "process"], ["executor", "isolation", "sectors", "operator", "envs"]),
        (["--backend", "ray"], ["ray"]),
        (["--backend", "both"], ["executor", "isolation", "sectors", "operator", "envs", "ray"]),
        (["--suite", "executor", "--backend", "ray"], ["executor", "ray"]),
        (["--suite", "ray"], ["ray"]),
    ],
)
def test_bench_backend_picks_the_suites(ray_cluster, tmp_path, monkeypatch, args, suites):
    import bench.run

    seen: list[Any] = []
    monkeypatch.setattr(bench.run, "main", lambda names, quick, out: seen.append((names, quick)) or 0)
    res = CliRunner().invoke(main, ["bench", "--quick", "--out", str(tmp_path / "r.json"), *args])
    assert res.exit_code == 0, res.output
    assert seen == [(suites, True)]


def test_bench_backend_rejects_an_unknown_backend(ray_cluster):
    res = CliRunner().invoke(main, ["bench", "--backend", "dask"])
    assert res.exit_code == 2 and "dask" in res.output


@pytest.mark.timeout(240)
def test_fanout_workload_runs_on_ray_beside_local(ray_cluster):
    from bench.bench_ray import fanout

    rows = fanout(quick=True)
    by = {r["variant"]: r for r in rows}
    assert set(by) == {
        "local pools: duckdb done",
        "Ray pools: duckdb done",
        "local pools: all 3 sinks done",
        "Ray pools: all 3 sinks done",
        "Ray: object-store puts per frame",
    }
    for r in rows:
        assert set(r) == {"workload", "variant", "value", "unit", "ratio_vs"} and r["value"] > 0
    assert by["Ray: object-store puts per frame"]["value"] == 1.0  # one copy for the 3 sinks
    assert "vs local" in by["Ray pools: all 3 sinks done"]["ratio_vs"]
