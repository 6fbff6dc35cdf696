"""Ray backend benchmarks: RayPool beside the local ProcessPool, in one run.

    python -m bench.bench_ray [--quick]        (or: vsm-pool bench --backend ray --quick)

Small calls: get/put of 100-byte values on a dict-backed object through
  ProcessPool.call one at a time | RayPool.call one at a time | a bare Ray actor call
  (actor.call.remote + ray.get, no pool: Ray's own floor) | ProcessPool.submit x N then wait |
  RayPool.submit x N then wait.
Bytes: stream_put of a generated source (1 GiB, --quick 256 MiB) into an object that drops
  the bytes, and stream_get of a generated object read into one buffer: RayPool (8 MiB chunks
  through the object store, 4 in flight) vs ProcessPool (shared-memory ring).
Fan-out: sector-state event batches (40 x 10k rows, --quick 10 x 5k) from a journal into the
  duckdb sink with the parquet and a no-op sink attached, one dispatcher thread per sink, as
  bench/bench_sectors.py builds it (real plugin pools from the bundled sources): sinks in Ray
  pools (each frame put into the object store once, read by all three actors) vs the same
  sinks in local pools (frame references, the workers map the journal). Best of 2 rounds,
  alternating. Also the object-store puts per frame (1.0: one copy for all three sinks).

Uses the Ray this process is connected to, else starts a one-node local Ray
(num_cpus=2, no dashboard) and shuts down only that one. Without Ray the suite yields no rows.
Rows: {"workload", "variant", "value", "unit", "ratio_vs": {peer: value / peer value}}.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.bench_executor import NKEYS, VALUE, BenchKV, GenSource, _best_rate, _row  # noqa: E402
from executors import PoolSpec, ProcessPool, make_pool, prestart  # noqa: E402

MiB = 1 << 20


class RayBenchKV(BenchKV):
    """BenchKV plus a generated object to read back."""

    def produce(self, size: int) -> GenSource:
        return GenSource(size)


def _connect() -> tuple[Any, bool]:
    import ray

    if ray.is_initialized():
        return ray, False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray, True


def small_calls(ray: Any, quick: bool) -> list[dict[str, Any]]:
    wl = "small calls get/put 100 B"
    keys = [f"key-{i % NKEYS:06d}" for i in range(20000)]
    n_seq = 500 if quick else 3000
    n_fut = 2000 if quick else 10000
    rep = 3
    rows: list[dict[str, Any]] = []
    pp = ProcessPool(PoolSpec(name="bench/kv", init=RayBenchKV))
    rp = make_pool(PoolSpec(name="bench/kv", init=RayBenchKV), backend="ray")
    pp.start()
    rp.start()
    try:

        def seq(pool: Any) -> Any:
            def run() -> int:
                call = pool.call
                for i in range(n_seq):
                    if i & 1:
                        call("put", keys[i], VALUE)
                    else:
                        call("get", keys[i])
                return n_seq

            return run

        def fut(pool: Any) -> Any:
            def run() -> int:
                sub = pool.submit
                fs = [sub("put", keys[i], VALUE) if i & 1 else sub("get", keys[i]) for i in range(n_fut)]
                for f in fs:
                    f.result()
                return n_fut

            return run

        actor = rp._workers[0].actor  # the pool's own actor, called bare: Ray's floor

        def bare() -> int:
            for i in range(n_seq):
                ray.get(actor.call.remote("put", (keys[i], VALUE)) if i & 1 else actor.call.remote("get", (keys[i],)))
            return n_seq

        rows.append(_row(wl, "ProcessPool.call 1 at a time", _best_rate(seq(pp), rep), "calls/s"))
        rows.append(_row(wl, "RayPool.call 1 at a time", _best_rate(seq(rp), rep), "calls/s"))
        rows.append(_row(wl, "bare Ray actor .remote+get", _best_rate(bare, rep), "calls/s"))
        rows.append(_row(wl, f"ProcessPool.submit x{n_fut}", _best_rate(fut(pp), rep), "calls/s"))
        rows.append(_row(wl, f"RayPool.submit x{n_fut}", _best_rate(fut(rp), rep), "calls/s"))
    finally:
        rp.close()
        pp.close()
    local_seq, ray_seq, bare, local_fut, ray_fut = rows
    ray_seq["ratio_vs"] = {"vs local": ray_seq["value"] / local_seq["value"], "vs bare Ray": ray_seq["value"] / bare["value"]}
    bare["ratio_vs"] = {"vs local": bare["value"] / local_seq["value"]}
    ray_fut["ratio_vs"] = {"vs local": ray_fut["value"] / local_fut["value"]}
    return rows


def byte_streams(quick: bool) -> list[dict[str, Any]]:
    size = (256 if quick else 1024) * MiB
    rows: list[dict[str, Any]] = []
    pp = ProcessPool(PoolSpec(name="bench/objstore", init=RayBenchKV, ring_slots=8))
    rp = make_pool(PoolSpec(name="bench/objstore", init=RayBenchKV), backend="ray")
    pp.start()
    rp.start()
    try:
        for pool, label in ((pp, "ProcessPool (shm ring)"), (rp, "RayPool (object store, 8 MiB x4)")):
            best = 0.0
            for _ in range(2):
                t = time.perf_counter()
                n = pool.stream_put("drop", ("bench",), GenSource(size))
                best = max(best, n / (time.perf_counter() - t))
                assert n == size
            rows.append(_row(f"stream_put {size >> 20} MiB", label, best / 1e9, "GB/s"))
        for pool, label in ((pp, "ProcessPool (shm ring)"), (rp, "RayPool (object store, 8 MiB x4)")):
            best = 0.0
            buf = bytearray(8 * MiB)
            for _ in range(2):
                t = time.perf_counter()
                n = 0
                with pool.stream_get("produce", (size,)) as r:
                    while k := r.readinto(buf):
                        n += k
                best = max(best, n / (time.perf_counter() - t))
                assert n == size
            rows.append(_row(f"stream_get {size >> 20} MiB", label, best / 1e9, "GB/s"))
    finally:
        rp.close()
        pp.close()
    for r in rows:
        peer = next(p for p in rows if p["workload"] == r["workload"] and p["variant"].startswith("ProcessPool"))
        if peer is not r:
            r["ratio_vs"]["vs local"] = r["value"] / peer["value"]
    return rows


def _sink_pools(eng: Any, tag: str, backend: str) -> dict[str, Any]:
    """bench_sectors.Engine.sinks with the backend chosen: fresh duckdb file, parquet dir, noop."""
    from vsm.sdk import Kind

    out = {}
    for name, meta in (
        ("duckdb", {"Path": os.path.join(eng.tmp, f"{tag}.duckdb")}),
        ("parquet", {"Path": os.path.join(eng.tmp, f"{tag}_pq")}),
        ("noop", {}),
    ):
        pool = eng.registry.start(eng._plugin(Kind.SyncSectorState, name), backend=backend)
        eng.pools.append(pool)
        pool.broadcast("open_sink", meta, replay=True)
        out[name] = pool
    return out


def _fanout_round(eng: Any, batches: list[Any], rows: int, tag: str, backend: str) -> tuple[float, float, float]:
    """rows/s until duckdb is done, until all 3 are done; object-store puts per frame."""
    from bench.bench_sectors import _query
    from vsm.sectors._dispatch import SinkDispatcher, shared_batches
    from vsm.sectors._journal import Journal

    total = len(batches) * rows
    jdir = os.path.join(eng.tmp, tag)
    j = Journal(jdir, fsync=False)
    for b in batches:
        j.append(b, int(b.column(0)[0].as_py()), int(b.column(0)[-1].as_py()))
    sinks = _sink_pools(eng, tag, backend)
    os.makedirs(os.path.join(jdir, "sinks"), exist_ok=True)
    ds = [
        SinkDispatcher(n, p, j, os.path.join(jdir, "sinks"), get_watermark=lambda: total,
                       wait_watermark=lambda a, t: (time.sleep(min(t, 0.05)), total)[1], max_rows=rows)
        for n, p in sinks.items()
    ]
    try:
        t0 = time.perf_counter()
        for d in ds:
            d.start()
        while ds[0].checkpoint < total:
            time.sleep(0.001)
        duck_done = time.perf_counter() - t0
        while any(d.checkpoint < total for d in ds):
            time.sleep(0.001)
        all_done = time.perf_counter() - t0
        puts = shared_batches(j).puts
        for d in ds:
            d.stop()
        n = _query(sinks["duckdb"], "SELECT count(*) AS n FROM sector_events").column(0)[0].as_py()
        assert n == total, (backend, n, total)
        assert not any(d.errors for d in ds), [(d.name, d.last_error) for d in ds]
    finally:
        for d in ds:
            d.stop()
        j.close()
        eng.stop()
    return total / duck_done, total / all_done, puts / len(batches)


def fanout(quick: bool) -> list[dict[str, Any]]:
    import shutil
    import tempfile

    from bench.bench_sectors import Engine, _event_batches

    n_batches, rows = (10, 5000) if quick else (40, 10000)
    batches = _event_batches(n_batches, rows)
    tmp = tempfile.mkdtemp(prefix="bench_ray_fanout_")
    eng = Engine(tmp)
    best: dict[str, list[float]] = {"process": [0.0, 0.0, 0.0], "ray": [0.0, 0.0, 0.0]}
    try:
        for r in range(2):
            for backend in ("process", "ray"):
                got = _fanout_round(eng, batches, rows, f"{backend}{r}", backend)
                b = best[backend]
                b[0], b[1], b[2] = max(b[0], got[0]), max(b[1], got[1]), got[2]
    finally:
        eng.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    wl = f"fan-out {n_batches}x{rows} rows, 3 sinks"
    local, ray_ = best["process"], best["ray"]
    return [
        _row(wl, "local pools: duckdb done", round(local[0]), "rows/s"),
        _row(wl, "Ray pools: duckdb done", round(ray_[0]), "rows/s", ratio_vs={"vs local": ray_[0] / local[0]}),
        _row(wl, "local pools: all 3 sinks done", round(local[1]), "rows/s"),
        _row(wl, "Ray pools: all 3 sinks done", round(ray_[1]), "rows/s", ratio_vs={"vs local": ray_[1] / local[1]}),
        _row(wl, "Ray: object-store puts per frame", ray_[2], "puts", ratio_vs={"vs 1 per sink": ray_[2] / 3}),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        print(f"[ray] skipped: import ray failed ({exc}); pip install 'vsm-pool[ray]'", file=sys.stderr)
        return []
    prestart()
    ray, started = _connect()
    try:
        t = time.perf_counter()
        p = make_pool(PoolSpec(name="bench/start", init=RayBenchKV, workers=2), backend="ray")
        p.start()
        ray_start = time.perf_counter() - t
        p.close()
        t = time.perf_counter()
        q = ProcessPool(PoolSpec(name="bench/start", init=RayBenchKV, workers=2))
        q.start()
        local_start = time.perf_counter() - t
        q.close()
        rows = [
            _row("start 2-worker pool", "ProcessPool", local_start * 1e3, "ms"),
            _row("start 2-worker pool", "RayPool", ray_start * 1e3, "ms", ratio_vs={"vs local": ray_start / local_start}),
        ]
        rows += small_calls(ray, quick)
        rows += byte_streams(quick)
        rows += fanout(quick)
        return rows
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    from bench.run import format_table

    quick = "--quick" in sys.argv
    print(format_table({"rows": run(quick), "errors": {}}))
