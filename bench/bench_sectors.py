"""Sector-state benchmarks on the real engine: Arrow fan-out vs direct DuckDB ingest, bulk
import, commit-to-DuckDB-row delay.

    python -m bench.bench_sectors [--quick]

The KVStore (memdb) and the sinks (duckdb, parquet and a no-op sink) run in real plugin pools
built from the bundled plugin sources, wired as vsm/manager.py does (artifact -> discover ->
Registry.start -> PooledDB / a sink pool per plugin). The direct variant runs the same DuckDB
sink code in this process on the same batches, in the same run. RSS is this (the manager's)
process only; the pools' workers are separate processes.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vsm.plugin.artifact import build  # noqa: E402
from vsm.plugin.loader import Registry, discover  # noqa: E402
from vsm.plugin.proxies import PooledDB  # noqa: E402
from vsm.sdk import Kind  # noqa: E402
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, SECTOR_STATE_SCHEMA, AllocatedSector, SectorID  # noqa: E402
from vsm.sectors import SectorStateManager, ipc_to_table  # noqa: E402
from vsm.sectors._dispatch import SinkDispatcher  # noqa: E402
from vsm.sectors._journal import Journal  # noqa: E402

_NOOP_MANIFEST = """name = "noop"
description = "bench: a sink that drops every batch"
kind = "SyncSectorState"
module = "noop_sink"
export = [ {extPoint = "OnBatch", impl = "on_batch"} ]
"""
_NOOP_MODULE = "def on_batch(batch):\n    pass\n"


class Engine:
    """Plugin pools from freshly built artifacts: memdb, duckdb, parquet, noop."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        plugins_dir = Path(tmp, "plugins")
        noop = Path(tmp, "noop_src")
        noop.mkdir(parents=True, exist_ok=True)
        (noop / "manifest.toml").write_text(_NOOP_MANIFEST)
        (noop / "noop_sink.py").write_text(_NOOP_MODULE)
        for src in (Path(ROOT, "plugins", "memdb"), Path(ROOT, "plugins", "duckdb_sink"), Path(ROOT, "plugins", "parquet_sink"), noop):
            build(src, plugins_dir)
        plugins, _ = discover(plugins_dir, entry_points=False)
        self.registry = Registry(plugins)
        self.pools: list[Any] = []

    def _plugin(self, kind: Kind, name: str) -> Any:
        p = self.registry.get(kind, name)
        assert p is not None, name
        return p

    def _pool(self, kind: Kind, name: str) -> Any:
        pool = self.registry.start(self._plugin(kind, name))
        self.pools.append(pool)
        return pool

    def kv(self) -> PooledDB:
        db = PooledDB(self._pool(Kind.KVStore, "memdb"), {})
        db.run()
        return db

    def sinks(self, tag: str) -> dict[str, Any]:
        """Fresh sink pools (new DuckDB file, new Parquet dir) named by tag."""
        out = {}
        for name, meta in (
            ("duckdb", {"Path": os.path.join(self.tmp, f"{tag}.duckdb")}),
            ("parquet", {"Path": os.path.join(self.tmp, f"{tag}_pq")}),
            ("noop", {}),
        ):
            pool = self._pool(Kind.SyncSectorState, name)
            pool.broadcast("open_sink", meta, replay=True)
            out[name] = pool
        return out

    def stop(self) -> None:
        for plugin in self.registry.plugins:
            if plugin.pool is not None:
                pool, plugin.pool = plugin.pool, None
                pool.close(10)
        self.pools.clear()


class TimedSink:
    """A sink endpoint (pool) that notes (last seq delivered, wall time) when deliver returns,
    i.e. once the sink committed the rows: the time a query could see them."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.marks: list[tuple[int, float]] = []

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int:
        last = int(self.pool.call("deliver", segments_dir, frames, after_seq, timeout=300))
        self.marks.append((last, time.time()))
        return last


def _query(pool: Any, sql: str) -> pa.Table:
    return ipc_to_table(pool.call("query", sql, timeout=300))


def _load(name: str, module: str) -> Any:
    path = os.path.join(ROOT, "plugins", name, module + ".py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _state_batch(rows: int, miner: int, first: int = 0) -> pa.RecordBatch:
    """Realistic states first .. first+rows-1 of `miner` (bench/states.py): every row its own
    CIDs, digests and messages, as real data has them (issue 24)."""
    from bench.states import state_batch

    return state_batch(miner, first, rows)


def _event_batches(n_batches: int, rows: int) -> list[pa.RecordBatch]:
    now = pa.array([time.time_ns() // 1000] * rows, pa.int64()).cast(SECTOR_EVENT_SCHEMA.field("time").type)
    out = []
    for b in range(n_batches):
        st = _state_batch(rows, 1000, b * rows)
        head = [
            pa.array(range(b * rows + 1, (b + 1) * rows + 1), pa.uint64()),
            pa.array(["import"] * rows),
            now,
            pa.array(["online"] * rows),
            pa.nulls(rows, pa.list_(pa.string())),
        ]
        out.append(pa.RecordBatch.from_arrays(head + st.columns, schema=SECTOR_EVENT_SCHEMA))
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_fanout(quick: bool, eng: Engine) -> list[dict[str, Any]]:
    n_batches, rows = (10, 5000) if quick else (40, 10000)
    batches = _event_batches(n_batches, rows)
    total = n_batches * rows
    # direct: the same batches into the same DuckDB sink code, in this process
    duck = _load("duckdb_sink", "duckdb_sink").open({"Path": os.path.join(eng.tmp, "direct.duckdb")})
    t0 = time.perf_counter()
    for b in batches:
        duck.on_batch(b)
    direct = total / (time.perf_counter() - t0)
    duck.close()
    # fan-out: journal frames -> 3 sink pools in parallel, frame references only on the wire
    jdir = os.path.join(eng.tmp, "fan")
    j = Journal(jdir, fsync=False)
    for b in batches:
        j.append(b, int(b.column(0)[0].as_py()), int(b.column(0)[-1].as_py()))
    sinks = eng.sinks("fan")
    os.makedirs(os.path.join(jdir, "sinks"), exist_ok=True)
    ds = [
        # a caught-up dispatcher waits (sleeps) as with the manager's watermark condition
        SinkDispatcher(n, p, j, os.path.join(jdir, "sinks"), get_watermark=lambda: total,
                       wait_watermark=lambda a, t: (time.sleep(min(t, 0.05)), total)[1], max_rows=rows)  # same batches as direct
        for n, p in sinks.items()
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
    n = _query(sinks["duckdb"], "SELECT count(*) AS n FROM sector_events").column(0)[0].as_py()
    assert n == total, n
    j.close()
    eng.stop()
    return [
        {"workload": "duckdb_ingest", "variant": "direct_in_process", "value": round(direct), "unit": "rows/s", "ratio_vs": {}},
        {"workload": "duckdb_ingest", "variant": "pool_fanout_duckdb_done", "value": round(fan), "unit": "rows/s",
         "ratio_vs": {"direct_in_process": round(fan / direct, 3)}},
        {"workload": "duckdb_ingest", "variant": "pool_fanout_all_3_done", "value": round(all_done), "unit": "rows/s",
         "ratio_vs": {"direct_in_process": round(all_done / direct, 3)}},
    ]


def _parquet_input(path: str, n: int) -> None:
    """n distinct realistic states of miner 2000 as Parquet (the import benches' input)."""
    import pyarrow.parquet as pq

    from bench.states import state_batches

    with pq.ParquetWriter(path, SECTOR_STATE_SCHEMA) as w:
        for batch in state_batches(2000, n):
            w.write_batch(batch)


def _parquet_batches(path: str) -> Iterator[pa.RecordBatch]:
    """A Parquet file's batches, one row group at a time (ours are 10k rows): pyarrow's
    ParquetFile.iter_batches keeps about the file's size allocated until it ends (500k
    realistic states: 335 MiB held, 16 MiB this way), which the reader's RSS would show."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    for i in range(f.num_row_groups):
        yield from f.read_row_group(i).to_batches()


def bench_import(quick: bool, eng: Engine, n: int | None = None) -> list[dict[str, Any]]:
    n = n or (50_000 if quick else 1_000_000)
    src = os.path.join(eng.tmp, "import.parquet")
    _parquet_input(src, n)
    kv = eng.kv()
    sinks = eng.sinks("imp")
    m = SectorStateManager(kv, os.path.join(eng.tmp, "imp"), sinks=sinks, fsync=True)
    rss0 = _rss_mb()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], _rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    written = m.import_arrow(_parquet_batches(src))
    t_kv = time.perf_counter() - t0
    assert m.wait_delivered(1800)
    t_all = time.perf_counter() - t0
    stop.set()
    cnt = _query(sinks["duckdb"], "SELECT count(*) AS n FROM sectors").column(0)[0].as_py()
    assert written == n and cnt == n, (written, cnt)
    # the same through SectorState objects (the JSON-RPC / CLI path), a smaller count
    from vsm.sdk.sectors import arrow_to_states

    n_obj = 20_000 if quick else 100_000
    objs = arrow_to_states(pa.Table.from_batches(list(itertools.islice(_parquet_batches(src), -(-n_obj // 10_000)))).slice(0, n_obj))
    for s in objs:
        s.id = SectorID(2001, s.id.number)
    t0 = time.perf_counter()
    m.import_states(objs)
    assert m.wait_delivered(600)
    t_obj = time.perf_counter() - t0
    m.close()
    kv.close()
    eng.stop()
    return [
        {"workload": f"bulk_import_{n}", "variant": "parquet_kv_committed", "value": round(n / t_kv), "unit": "sectors/s", "ratio_vs": {}},
        {"workload": f"bulk_import_{n}", "variant": "parquet_kv_and_3_sinks_done", "value": round(n / t_all), "unit": "sectors/s",
         "ratio_vs": {"parquet_kv_committed": round(t_kv / t_all, 3)}},
        {"workload": f"bulk_import_{n}", "variant": "manager_peak_rss", "value": round(peak[0], 1), "unit": "MiB",
         "ratio_vs": {"start_rss": round(peak[0] / rss0, 2)}},
        {"workload": f"bulk_import_{n_obj}", "variant": "objects_kv_and_3_sinks_done", "value": round(n_obj / t_obj), "unit": "sectors/s",
         "ratio_vs": {"parquet_kv_and_3_sinks_done": round((n_obj / t_obj) / (n / t_all), 3)}},
    ]


def bench_delay(quick: bool, eng: Engine, secs: int | None = None) -> list[dict[str, Any]]:
    secs = secs or (5 if quick else 30)
    rate = 1000
    kv = eng.kv()
    pools = eng.sinks("lat")
    timed = TimedSink(pools["duckdb"])
    m = SectorStateManager(kv, os.path.join(eng.tmp, "lat"), sinks={"duckdb": timed, "parquet": pools["parquet"], "noop": pools["noop"]}, fsync=True)
    n_sectors = 2000
    m.init([AllocatedSector(SectorID(3000, i), 8) for i in range(n_sectors)])
    assert m.wait_delivered(60)
    first_seq = m.status()["journal"]["head"] + 1
    workers = 16
    total = rate * secs

    def drive(k: int) -> None:
        # worker k owns sectors k, k+workers, ...; paced to rate/workers per second
        per = rate / workers
        start = time.perf_counter()
        for i in range(total // workers):
            d = start + i / per - time.perf_counter()
            if d > 0:
                time.sleep(d)
            m.update(SectorID(3000, (k + workers * i) % n_sectors), {"AbortReason": f"{k}-{i}"})

    ths = [threading.Thread(target=drive, args=(k,)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    achieved = total / (time.perf_counter() - t0)
    assert m.wait_delivered(60)
    ev = _query(pools["duckdb"], f"SELECT seq, epoch_us(time) AS t FROM sector_events WHERE seq >= {first_seq} ORDER BY seq").to_pydict()
    marks = sorted(timed.marks)
    delays = []
    j = 0
    for s, t in zip(ev["seq"], ev["t"]):
        while marks[j][0] < s:
            j += 1
        delays.append(marks[j][1] - t / 1e6)
    delays.sort()
    m.close()
    kv.close()
    eng.stop()

    def pct(p: float) -> float:
        return round(delays[min(len(delays) - 1, int(p * len(delays)))] * 1000, 2)

    w = f"update_{rate}_per_s_{secs}s"
    return [
        {"workload": w, "variant": "event_to_duckdb_row_p50", "value": pct(0.5), "unit": "ms", "ratio_vs": {}},
        {"workload": w, "variant": "event_to_duckdb_row_p99", "value": pct(0.99), "unit": "ms", "ratio_vs": {"p50": round(pct(0.99) / max(pct(0.5), 1e-9), 2)}},
        {"workload": w, "variant": "achieved_rate", "value": round(achieved), "unit": "updates/s", "ratio_vs": {"target": round(achieved / rate, 3)}},
    ]


def bench_recovery(quick: bool, eng: Engine) -> list[dict[str, Any]]:
    """Start-up reconciliation after a kill -9 (issue 20): a journal tail of n events past the
    durable watermark (n imports, then updates of a tenth of the sectors), where the KV holds
    all but the last update of every other updated sector (killed before the KV commit): every
    event is compared with the KV, the uncommitted updates are dropped, the tail renumbered.
    Target: 50k events/s. The KVStore is memdb in its pool."""
    from vsm.sectors._journal import Watermark

    n = 20_000 if quick else 137_000
    kv = eng.kv()
    jdir = os.path.join(eng.tmp, "recovery")
    m = SectorStateManager(kv, jdir, fsync=False, compact_interval=1e9)  # keep the whole tail
    from bench.states import state_batches

    # all online, as the tail's updates need (realistic states are mostly finalized: offline)
    m.import_arrow(pa.Table.from_batches(list(state_batches(3000, n))), worker_state="online")
    meta = m._colls["online"]  # the states collection, with its damocles key prefix
    updated = list(range(0, n, 10))
    before = {k: meta.get(f"m-3000-n-{k}".encode()) for k in updated[::2]}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(32) as ex:  # as many callers: group commit puts tens in a frame
        list(ex.map(lambda k: m.update(SectorID(3000, k), {"AbortReason": f"bench {k}"}), updated))  # a value no state has
    m.close()
    for k, old in before.items():  # the KV as a kill -9 before these commits left it
        meta.put(f"m-3000-n-{k}".encode(), old)
    wm = Watermark(jdir, fsync=False)
    wm.store(0)  # nothing past 0 is known to be committed
    wm.close()
    t0 = time.perf_counter()
    m = SectorStateManager(kv, jdir, fsync=False)
    secs = time.perf_counter() - t0
    rec = m.recovered
    m.close()
    assert rec["tail"] == n + len(updated) and rec["dropped"] == len(before), rec
    rate = rec["tail"] / secs
    return [
        {"workload": "journal_recovery", "variant": f"tail_{rec['tail']}_events_{rec['dropped']}_dropped", "value": round(rate),
         "unit": "events/s", "seconds": round(secs, 2), "ratio_vs": {"target_50k": round(rate / 50_000, 2)}},
    ]


BENCHES = {"fanout": bench_fanout, "delay": bench_delay, "import": bench_import, "recovery": bench_recovery}


def run(quick: bool, only: list[str] | None = None) -> list[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="bench_sectors_")
    eng = Engine(tmp)
    try:
        rows: list[dict[str, Any]] = []
        for name, bench in BENCHES.items():
            if not only or name in only:
                rows += bench(quick, eng)
        return rows
    finally:
        eng.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these (repeatable)")
    args = ap.parse_args()
    for row in run(args.quick, args.only):
        print(json.dumps(row), flush=True)
