"""Executor benchmarks: small calls and byte streams, side by side, in one run.

    python -m bench.bench_executor [--quick] [--json out.json]

Small calls: get/put of 100-byte values on a dict-backed object, through
  direct in-process call | InlinePool.call | ProcessPool.call one at a time |
  ProcessPool.submit x N then wait | ProcessPoolExecutor(1).submit().result() |
  multiprocess.Pool(1).apply
Bytes: stream_put of a generated N-GiB source (4 GiB, --quick 256 MiB) into an object that
  drops the bytes (counts them from zero-copy views) or keeps them (readinto a preallocated
  buffer), vs the same in-process, vs ProcessPoolExecutor with pickled 8 MiB chunks, vs a
  plain memory copy of the same size. Peak RSS of manager and worker is reported.
Start: time to start (and close) a 2-worker ProcessPool, forkserver vs fork.

PPExecutor = concurrent.futures.ProcessPoolExecutor.
Rows: {"workload", "variant", "value", "unit", "ratio_vs": {peer: value / peer value}, ...};
ratios are what to compare (this is a noisy 2-vCPU VM, absolute numbers drift).
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import sys
import threading
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from executors import InlinePool, PoolSpec, ProcessPool, prestart  # noqa: E402

VALUE = b"v" * 100
NKEYS = 1000
CHUNK = 8 << 20

# -- services (run inside the pools' workers) ---------------------------------------------------


class BenchKV:
    def __init__(self) -> None:
        self.d = {f"key-{i:06d}": VALUE for i in range(NKEYS)}
        self.keep_buf: bytearray | None = None

    def get(self, k: str) -> bytes | None:
        return self.d.get(k)

    def put(self, k: str, v: bytes) -> None:
        self.d[k] = v

    def drop(self, path: str, reader: Any) -> int:
        """Consume and drop: counts bytes of zero-copy views (or readinto one buffer)."""
        n = 0
        views = getattr(reader, "iter_views", None)
        if views is not None:
            for v in views():
                n += len(v)
            return n
        buf = bytearray(CHUNK)
        while True:
            k = reader.readinto(buf)
            if not k:
                return n
            n += k

    def keep(self, path: str, reader: Any) -> int:
        """Copy every byte into a preallocated (pre-touched) 64 MiB buffer, round robin, as a
        store writing into its own memory would."""
        if self.keep_buf is None:
            self.keep_buf = bytearray(64 << 20)
            self.keep_buf[:] = b"\1" * len(self.keep_buf)
        mv = memoryview(self.keep_buf)
        off = n = 0
        while True:
            if off + CHUNK > len(mv):
                off = 0
            k = reader.readinto(mv[off : off + CHUNK])
            if not k:
                return n
            n += k
            off += k

    def rss_hwm(self) -> int:
        return _hwm(os.getpid())


class GenSource:
    """A source of `size` bytes that holds none of them: readinto copies a pattern."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.pattern = memoryview(bytes(range(256)) * ((CHUNK // 256) + 1))

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        n = min(len(mv), self.left, CHUNK)
        mv[:n] = self.pattern[:n]
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, CHUNK) if n < 0 else min(n, self.left, CHUNK)
        self.left -= n
        return bytes(self.pattern[:n])


# -- ProcessPoolExecutor / multiprocess.Pool side ---------------------------------------------

_PPE_KV: BenchKV | None = None


def _ppe_init() -> None:
    global _PPE_KV
    _PPE_KV = BenchKV()


def _ppe_get(k: str) -> bytes | None:
    assert _PPE_KV is not None
    return _PPE_KV.get(k)


def _ppe_drop(chunk: bytes) -> int:
    return len(chunk)


def _ppe_hwm() -> int:
    return _hwm(os.getpid())


# -- helpers ------------------------------------------------------------------------------------


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class _PeakRSS:
    """Samples this process's RSS every 5 ms (VmHWM is a lifetime peak, useless here)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "_PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _best_rate(fn: Callable[[], int], repeat: int) -> float:
    """Best of `repeat` runs of fn (returns the op count), in ops per second."""
    best = 0.0
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        n = fn()
        dt = time.perf_counter() - t
        best = max(best, n / dt)
    return best


def _row(workload: str, variant: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "variant": variant, "value": value, "unit": unit, "ratio_vs": {}, **extra}


def _ratios(rows: list[dict[str, Any]], peers: dict[str, str]) -> None:
    by_variant = {r["variant"]: r for r in rows}
    for r in rows:
        for label, peer in peers.items():
            p = by_variant.get(peer)
            if p is not None and p is not r and p["value"]:
                r["ratio_vs"][label] = r["value"] / p["value"]


# -- workloads ----------------------------------------------------------------------------------


def small_calls(quick: bool) -> list[dict[str, Any]]:
    wl = "small calls get/put 100 B"
    keys = [f"key-{i % NKEYS:06d}" for i in range(20000)]
    n_seq = 3000 if quick else 20000
    n_fut = 10000 if quick else 50000
    n_slow = 1000 if quick else 4000
    rep = 3 if quick else 5
    rows = []

    obj = BenchKV()

    def direct() -> int:
        get, put = obj.get, obj.put
        for i in range(n_seq):
            k = keys[i]
            if i & 1:
                put(k, VALUE)
            else:
                get(k)
        return n_seq

    rows.append(_row(wl, "direct in-process", _best_rate(direct, rep), "calls/s"))

    ip = InlinePool(PoolSpec(name="bench/inline", init=BenchKV))
    ip.start()

    def inline() -> int:
        call = ip.call
        for i in range(n_seq):
            if i & 1:
                call("put", keys[i], VALUE)
            else:
                call("get", keys[i])
        return n_seq

    rows.append(_row(wl, "InlinePool.call", _best_rate(inline, rep), "calls/s"))
    ip.close()

    pp = ProcessPool(PoolSpec(name="bench/kv", init=BenchKV, workers=1))
    pp.start()
    try:

        def seq() -> int:
            call = pp.call
            for i in range(n_seq):
                if i & 1:
                    call("put", keys[i], VALUE)
                else:
                    call("get", keys[i])
            return n_seq

        def inflight() -> int:
            submit = pp.submit
            futs = [submit("put", keys[i % 20000], VALUE) if i & 1 else submit("get", keys[i % 20000]) for i in range(n_fut)]
            for f in futs:
                f.result()
            return n_fut

        rows.append(_row(wl, "ProcessPool.call one at a time", _best_rate(seq, rep), "calls/s"))
        rows.append(_row(wl, f"ProcessPool submit x{n_fut}, wait", _best_rate(inflight, rep), "calls/s"))
    finally:
        pp.close()

    pp2 = ProcessPool(PoolSpec(name="bench/kv2", init=BenchKV, workers=2))
    pp2.start()
    try:

        def inflight2() -> int:
            submit = pp2.submit
            futs = [submit("get", keys[i % 20000]) for i in range(n_fut)]
            for f in futs:
                f.result()
            return n_fut

        rows.append(_row(wl, f"ProcessPool(2) submit x{n_fut}, wait", _best_rate(inflight2, rep), "calls/s"))
    finally:
        pp2.close()

    with cf.ProcessPoolExecutor(1, initializer=_ppe_init) as ex:
        ex.submit(_ppe_get, keys[0]).result()

        def ppe() -> int:
            for i in range(n_slow):
                ex.submit(_ppe_get, keys[i]).result()
            return n_slow

        rows.append(_row(wl, "PPExecutor(1).submit().result()", _best_rate(ppe, rep), "calls/s"))

    import multiprocess

    with multiprocess.Pool(1, initializer=_ppe_init) as mpool:
        mpool.apply(_ppe_get, (keys[0],))

        def mpapply() -> int:
            for i in range(n_slow):
                mpool.apply(_ppe_get, (keys[i],))
            return n_slow

        rows.append(_row(wl, "multiprocess.Pool(1).apply", _best_rate(mpapply, rep), "calls/s"))

    for r in rows:
        r["us_per_call"] = 1e6 / r["value"]
    _ratios(rows, {"vs ProcessPoolExecutor": "PPExecutor(1).submit().result()", "vs direct": "direct in-process"})
    return rows


def bytes_stream(quick: bool) -> list[dict[str, Any]]:
    size = (256 << 20) if quick else (4 << 30)
    wl = f"bytes stream_put {size >> 20} MiB"
    rows = []

    # plain memory copy of the same size, 8 MiB at a time between pre-touched buffers
    src = bytearray(b"\2" * CHUNK)
    dst = bytearray(b"\3" * CHUNK)
    smv, dmv = memoryview(src), memoryview(dst)

    def memcpy() -> int:
        for _ in range(size // CHUNK):
            dmv[:] = smv
        return size

    rows.append(_row(wl, "memcpy (memoryview slice assign)", _best_rate(memcpy, 3) / 1e9, "GB/s"))

    def gen_only() -> int:
        s = GenSource(size)
        while s.readinto(dmv):
            pass
        return size

    rows.append(_row(wl, "source alone (pattern copy)", _best_rate(gen_only, 3) / 1e9, "GB/s"))

    ip = InlinePool(PoolSpec(name="bench/inline-bytes", init=BenchKV))
    ip.start()
    for method in ("drop", "keep"):
        with _PeakRSS() as m:
            rate = _best_rate(lambda: ip.stream_put(method, ("obj",), GenSource(size)), 2)
        rows.append(_row(wl, f"in-process {method}", rate / 1e9, "GB/s", manager_peak_rss_growth_mib=(m.peak - m.base) / 2**20))
    ip.close()

    for slots, slot_bytes in ((8, 1 << 20), (4, 8 << 20)):
        ring = f"ring {slots}x{slot_bytes >> 20}MiB"
        for method in ("drop", "keep"):
            spec = PoolSpec(name=f"bench/bytes-{method}", init=BenchKV, workers=1, ring_slots=slots, slot_bytes=slot_bytes)
            pp = ProcessPool(spec)
            pp.start()
            try:
                pp.stream_put(method, ("warm",), GenSource(64 << 20))
                w0 = pp.call("rss_hwm")
                with _PeakRSS() as m:
                    rate = _best_rate(lambda: pp.stream_put(method, ("obj",), GenSource(size)), 2)
                w1 = pp.call("rss_hwm")
                rows.append(
                    _row(
                        wl,
                        f"ProcessPool put {method} {ring}",
                        rate / 1e9,
                        "GB/s",
                        manager_peak_rss_growth_mib=(m.peak - m.base) / 2**20,
                        worker_peak_rss_mib=w1 / 2**20,
                        worker_peak_growth_mib=(w1 - w0) / 2**20,
                        ring_mib=slots * slot_bytes / 2**20,
                    )
                )
            finally:
                pp.close()

    with cf.ProcessPoolExecutor(1) as ex:
        ex.submit(_ppe_drop, b"x").result()

        def ppe() -> int:
            s = GenSource(size)
            window: list[cf.Future[int]] = []
            n = 0
            while True:
                chunk = s.read(CHUNK)
                if not chunk:
                    break
                window.append(ex.submit(_ppe_drop, chunk))
                if len(window) >= 4:
                    n += window.pop(0).result()
            for f in window:
                n += f.result()
            assert n == size
            return size

        with _PeakRSS() as m:
            rate = _best_rate(ppe, 1)
        whwm = ex.submit(_ppe_hwm).result()
        rows.append(
            _row(
                wl,
                "PPExecutor pickled 8MiB chunks",
                rate / 1e9,
                "GB/s",
                manager_peak_rss_growth_mib=(m.peak - m.base) / 2**20,
                worker_peak_rss_mib=whwm / 2**20,
            )
        )
    _ratios(rows, {"vs memcpy": "memcpy (memoryview slice assign)", "vs ProcessPoolExecutor": "PPExecutor pickled 8MiB chunks"})
    return rows


def start_cost(quick: bool) -> list[dict[str, Any]]:
    """2-worker pool start (init = BenchKV) and close, by start method. The forkserver's own
    start (once per manager) is measured separately by prestart()."""
    wl = "pool start, 2 workers"
    rows = []
    t = time.perf_counter()
    prestart()  # returns once the server is spawned; it imports its preload in the background
    p = ProcessPool(PoolSpec(name="bench/start-first", init=BenchKV, workers=2))
    p.start()
    rows.append(_row(wl, "forkserver first pool (+server)", (time.perf_counter() - t) * 1e3, "ms"))
    p.close()
    n = 3 if quick else 7
    for method in ("forkserver", "fork"):
        starts, closes = [], []
        for _ in range(n):
            p = ProcessPool(PoolSpec(name=f"bench/start-{method}", init=BenchKV, workers=2), start_method=method)
            t = time.perf_counter()
            p.start()
            starts.append(time.perf_counter() - t)
            t = time.perf_counter()
            p.close()
            closes.append(time.perf_counter() - t)
        starts.sort()
        closes.sort()
        rows.append(_row(wl, f"{method} start (median of {n})", starts[n // 2] * 1e3, "ms"))
        rows.append(_row(wl, f"{method} close (median of {n})", closes[n // 2] * 1e3, "ms"))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    rows = []
    rows += start_cost(quick)
    rows += small_calls(quick)
    rows += bytes_stream(quick)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    try:
        from bench.run import format_table

        return format_table({"rows": rows, "errors": {}})
    except Exception:
        return "\n".join(str(r) for r in rows)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    rows = run(quick)
    print(_table(rows))
    for r in rows:
        extra = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k not in ("workload", "variant", "value", "unit", "ratio_vs", "suite")}
        if extra:
            print(f"  {r['variant']}: {extra}")
    if "--json" in argv:
        import json

        path = argv[argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
