"""Sector-state benchmarks: Arrow fan-out vs direct DuckDB ingest, bulk import, commit-to-row delay.

    python -m bench.bench_sectors [--quick]

Sinks run in their own processes (a minimal fork + pipe endpoint here, standing in for an
executors pool: only frame references cross the pipe, the batch is read from the journal file).
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, AllocatedSector, SectorID  # noqa: E402
from vsm.sectors import SectorStateManager, SinkHost  # noqa: E402
from vsm.sectors._dispatch import SinkDispatcher  # noqa: E402
from vsm.sectors._journal import Journal  # noqa: E402


def _load(name: str, module: str) -> Any:
    path = os.path.join(ROOT, "plugins", name, module + ".py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class _Noop:
    def on_batch(self, batch: pa.RecordBatch) -> None:
        self.last = batch.column(0)[-1]


class _TimedDuck:
    """DuckDB sink that notes (last seq, wall time) after each committed batch."""

    def __init__(self, path: str) -> None:
        self.inner = _load("duckdb_sink", "duckdb_sink").open({"Path": path})
        self.marks: list[tuple[int, float]] = []

    def on_batch(self, batch: pa.RecordBatch) -> None:
        self.inner.on_batch(batch)
        self.marks.append((int(batch.column(0)[-1].as_py()), time.time()))

    def query(self, sql: str) -> Any:
        if sql == "__marks__":
            return pa.table({"seq": [m[0] for m in self.marks], "t": [m[1] for m in self.marks]})
        return self.inner.query(sql)


def _make_sink(kind: str, arg: str) -> SinkHost:
    if kind == "duckdb":
        return SinkHost(sink_obj=_TimedDuck(arg))
    if kind == "parquet":
        return SinkHost.from_module(_load("parquet_sink", "parquet_sink"), {"Constructor": "open"}, {"Path": arg})
    return SinkHost(sink_obj=_Noop())


def _serve(conn: Any, kind: str, arg: str) -> None:
    host = _make_sink(kind, arg)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            host.close()
            conn.send("bye")
            return
        op, args = msg
        try:
            conn.send(("ok", getattr(host, op)(*args)))
        except Exception as e:  # noqa: BLE001
            conn.send(("err", repr(e)))


class ProcSink:
    """A sink in its own process; deliver() sends frame references only."""

    def __init__(self, kind: str, arg: str) -> None:
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, kind, arg), daemon=True)
        self.proc.start()
        assert self.conn.recv() == "ready"
        self.lock = threading.Lock()

    def _call(self, op: str, *args: Any) -> Any:
        with self.lock:
            self.conn.send((op, args))
            st, val = self.conn.recv()
        if st != "ok":
            raise RuntimeError(val)
        return val

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int:
        return int(self._call("deliver", segments_dir, frames, after_seq))

    def query(self, sql: str) -> pa.Table:
        return pa.ipc.open_stream(self._call("query", sql)).read_all()

    def close(self) -> None:
        try:
            with self.lock:
                self.conn.send(None)
                self.conn.recv()
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def _event_batches(n_batches: int, rows: int) -> list[pa.RecordBatch]:
    from tests.sectors.helpers import make_state

    base = [make_state(1000, i).to_arrow_row() for i in range(rows)]
    out = []
    now = time.time_ns() // 1000
    for b in range(n_batches):
        for i, r in enumerate(base):
            r.update(seq=b * rows + i + 1, kind="import", time=now, worker_state="online", changed_fields=None, number=b * rows + i)
        out.append(pa.RecordBatch.from_pylist(base, schema=SECTOR_EVENT_SCHEMA))
    return out


def bench_fanout(quick: bool, tmp: str) -> list[dict[str, Any]]:
    n_batches, rows = (10, 5000) if quick else (40, 10000)
    batches = _event_batches(n_batches, rows)
    total = n_batches * rows
    # direct: the same batches into DuckDB in this process
    duck = _load("duckdb_sink", "duckdb_sink").open({"Path": os.path.join(tmp, "direct.duckdb")})
    t0 = time.perf_counter()
    for b in batches:
        duck.on_batch(b)
    direct = total / (time.perf_counter() - t0)
    duck.close()
    # fan-out: journal frames -> 3 sink processes (duckdb, parquet, noop) in parallel
    j = Journal(os.path.join(tmp, "fan"), fsync=False)
    for b in batches:
        j.append(b, int(b.column(0)[0].as_py()), int(b.column(0)[-1].as_py()))
    sinks = {
        "duckdb": ProcSink("duckdb", os.path.join(tmp, "fan.duckdb")),
        "parquet": ProcSink("parquet", os.path.join(tmp, "fanpq")),
        "noop": ProcSink("noop", ""),
    }
    os.makedirs(os.path.join(tmp, "fan", "sinks"), exist_ok=True)
    wm = {"v": total}
    ds = [
        SinkDispatcher(n, s, j, os.path.join(tmp, "fan", "sinks"), get_watermark=lambda: wm["v"],
                       wait_watermark=lambda a, t: wm["v"], max_rows=rows)
        for n, s in sinks.items()
    ]
    t0 = time.perf_counter()
    for d in ds:
        d.start()
    while ds[0].checkpoint < total:
        time.sleep(0.001)
    fan = total / (time.perf_counter() - t0)
    while any(d.checkpoint < total for d in ds):
        time.sleep(0.005)
    all_done = total / (time.perf_counter() - t0)
    for d in ds:
        d.stop()
    for s in sinks.values():
        s.close()
    j.close()
    return [
        {"workload": "duckdb_ingest", "variant": "direct_in_process", "value": round(direct), "unit": "rows/s", "ratio_vs": {}},
        {"workload": "duckdb_ingest", "variant": "journal_fanout_3_sinks", "value": round(fan), "unit": "rows/s",
         "ratio_vs": {"direct_in_process": round(fan / direct, 3)}},
        {"workload": "duckdb_ingest", "variant": "journal_fanout_all_3_done", "value": round(all_done), "unit": "rows/s",
         "ratio_vs": {"direct_in_process": round(all_done / direct, 3)}},
    ]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_import(quick: bool, tmp: str) -> list[dict[str, Any]]:
    from tests.sectors.helpers import make_state

    n = 50_000 if quick else 1_000_000
    kv = _load("memdb", "memdb").open({})
    sinks = {
        "duckdb": ProcSink("duckdb", os.path.join(tmp, "imp.duckdb")),
        "parquet": ProcSink("parquet", os.path.join(tmp, "imppq")),
        "noop": ProcSink("noop", ""),
    }
    m = SectorStateManager(kv, os.path.join(tmp, "imp"), sinks=sinks, fsync=True)
    rss0 = _rss_mb()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], _rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    m.import_states(make_state(2000, i) for i in range(n))
    t_kv = time.perf_counter() - t0
    m.wait_delivered(600)
    t_all = time.perf_counter() - t0
    stop.set()
    cnt = sinks["duckdb"].query("SELECT count(*) AS n FROM sectors").column(0)[0].as_py()
    m.close()
    for s in sinks.values():
        s.close()
    assert cnt == n, cnt
    return [
        {"workload": f"bulk_import_{n}", "variant": "kv_committed", "value": round(n / t_kv), "unit": "sectors/s", "ratio_vs": {}},
        {"workload": f"bulk_import_{n}", "variant": "kv_and_3_sinks_done", "value": round(n / t_all), "unit": "sectors/s",
         "ratio_vs": {"kv_committed": round(t_kv / t_all, 3)}},
        {"workload": f"bulk_import_{n}", "variant": "manager_peak_rss", "value": round(peak[0], 1), "unit": "MiB",
         "ratio_vs": {"start_rss": round(peak[0] / rss0, 2)}},
    ]


def bench_delay(quick: bool, tmp: str) -> list[dict[str, Any]]:
    secs = 5 if quick else 30
    rate = 1000
    kv = _load("memdb", "memdb").open({})
    sinks = {
        "duckdb": ProcSink("duckdb", os.path.join(tmp, "lat.duckdb")),
        "parquet": ProcSink("parquet", os.path.join(tmp, "latpq")),
        "noop": ProcSink("noop", ""),
    }
    m = SectorStateManager(kv, os.path.join(tmp, "lat"), sinks=sinks, fsync=True)
    n_sectors = 2000
    m.init([AllocatedSector(SectorID(3000, i), 8) for i in range(n_sectors)])
    m.wait_delivered(60)
    commit_t: dict[int, float] = {}
    lock = threading.Lock()
    workers = 16
    total = rate * secs

    def drive(k: int) -> None:
        # worker k owns sectors k, k+workers, ...; paced to rate/workers per second
        per = rate / workers
        start = time.perf_counter()
        i = 0
        while i < total // workers:
            due = start + i / per
            d = due - time.perf_counter()
            if d > 0:
                time.sleep(d)
            sid = SectorID(3000, (k + workers * i) % n_sectors)
            m.update(sid, {"AbortReason": f"{k}-{i}"})
            t = time.time()
            with lock:
                commit_t[len(commit_t)] = t  # placeholder; seqs are read back below
            i += 1

    ths = [threading.Thread(target=drive, args=(k,)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    achieved = total / (time.perf_counter() - t0)
    m.wait_delivered(60)
    marks = sinks["duckdb"].query("__marks__")
    ev = sinks["duckdb"].query(
        "SELECT seq, epoch_us(time) AS t FROM sector_events WHERE kind = 'update' ORDER BY seq"
    ).to_pydict()
    mseq, mt = marks.column("seq").to_pylist(), marks.column("t").to_pylist()
    delays = []
    j = 0
    for s, t in zip(ev["seq"], ev["t"]):
        while mseq[j] < s:
            j += 1
        delays.append(mt[j] - t / 1e6)
    delays.sort()
    m.close()
    for s in sinks.values():
        s.close()

    def pct(p: float) -> float:
        return round(delays[min(len(delays) - 1, int(p * len(delays)))] * 1000, 2)

    return [
        {"workload": f"update_{rate}_per_s_{secs}s", "variant": "event_to_duckdb_row_p50", "value": pct(0.5), "unit": "ms",
         "ratio_vs": {}},
        {"workload": f"update_{rate}_per_s_{secs}s", "variant": "event_to_duckdb_row_p99", "value": pct(0.99), "unit": "ms",
         "ratio_vs": {"p50": round(pct(0.99) / max(pct(0.5), 1e-9), 2)}},
        {"workload": f"update_{rate}_per_s_{secs}s", "variant": "achieved_rate", "value": round(achieved), "unit": "updates/s",
         "ratio_vs": {"target": round(achieved / rate, 3)}},
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="bench_sectors_")
    try:
        rows: list[dict[str, Any]] = []
        rows += bench_fanout(quick, tmp)
        rows += bench_delay(quick, tmp)
        rows += bench_import(quick, tmp)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(json.dumps(row))
