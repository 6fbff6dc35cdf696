"""Ray backend benchmarks: RayPool beside the local ProcessPool, in one run.

    python -m bench.bench_ray [--quick]        (or: python -m vsm bench --suite ray --quick)

Small calls: get/put of 100-byte values on a dict-backed object through
  ProcessPool.call one at a time | RayPool.call one at a time | a bare Ray actor call
  (actor.call.remote + ray.get, no pool: Ray's own floor) | ProcessPool.submit x N then wait |
  RayPool.submit x N then wait.
Bytes: stream_put of a generated source (1 GiB, --quick 256 MiB) into an object that drops
  the bytes, and stream_get of a generated object read into one buffer: RayPool (8 MiB chunks
  through the object store, 4 in flight) vs ProcessPool (shared-memory ring).

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
        return rows
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    from bench.run import format_table

    quick = "--quick" in sys.argv
    print(format_table({"rows": run(quick), "errors": {}}))
