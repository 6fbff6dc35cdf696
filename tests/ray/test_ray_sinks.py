"""Sector-state fan-out to sinks in Ray pools (issue 7, item 3): each journal frame is put into
the object store once and every Ray sink actor reads that copy (`SharedBatches`,
vsm/sectors/_dispatch.py); `SinkHost.deliver_batch` keeps `deliver`'s dedupe and return value;
at-least-once and the checkpoints hold when a sink actor is killed mid-stream."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pyarrow as pa
import pytest

from executors._ray import RayPool
from vsm.config import load_config
from vsm.home import ensure_home
from vsm.manager import Manager
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, SectorID, SectorState
from vsm.sectors import ipc_to_table
from vsm.sectors._dispatch import SharedBatches, shared_batches
from vsm.sectors._journal import Journal
from vsm.sectors.sink_host import SinkHost

pytestmark = pytest.mark.timeout(180)


def _events(first: int, n: int) -> pa.RecordBatch:
    """n import events with seqs first..first+n-1 (state columns null but miner/number)."""
    cols: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in SECTOR_EVENT_SCHEMA}
    cols["seq"] = pa.array(range(first, first + n), pa.uint64())
    cols["kind"] = pa.array(["import"] * n)
    cols["worker_state"] = pa.array(["online"] * n)
    cols["miner"] = pa.array([7] * n, SECTOR_EVENT_SCHEMA.field("miner").type)
    cols["number"] = pa.array(range(first, first + n), SECTOR_EVENT_SCHEMA.field("number").type)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in SECTOR_EVENT_SCHEMA], schema=SECTOR_EVENT_SCHEMA)


def _journal(path: Any, sizes: list[int]) -> Journal:
    j = Journal(str(path), fsync=False)
    seq = 1
    for n in sizes:
        j.append(_events(seq, n), seq, seq + n - 1)
        seq += n
    return j


class _Seen:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def on_batch(self, batch: pa.RecordBatch) -> None:
        self.seqs += batch.column("seq").to_pylist()


# -- SinkHost.deliver_batch ------------------------------------------------------------------


def test_deliver_batch_dedupes_and_returns_like_deliver(ray_cluster, tmp_path):
    import ray

    j = _journal(tmp_path / "j", [3, 4, 2])
    frames = [f.as_tuple() for f in j.frames]
    batches = [j.read(f) for f in j.frames]
    by_file, by_batch = _Seen(), _Seen()
    a, b = SinkHost(sink_obj=by_file), SinkHost(sink_obj=by_batch)
    for after in (0, 2, 5, 8, 9, 20):
        assert b.deliver_batch(batches, after) == a.deliver(j.seg_dir, frames, after)
    assert by_batch.seqs == by_file.seqs
    # refs from the object store (what the dispatcher hands a Ray actor), one batch alone, mixed
    assert b.deliver_batch([ray.put(batches[0]), batches[1], ray.put(batches[2])], 4) == 9
    assert b.deliver_batch(batches[2], 7) == 9
    assert b.deliver_batch([], 3) == 3
    assert by_batch.seqs[-7:] == [5, 6, 7, 8, 9, 8, 9]
    j.close()


# -- SharedBatches (no Ray needed: `share` is any function) -------------------------------------


class _CountingShare:
    def __init__(self, delay: float = 0.0, fail: int = 0) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, batch: pa.RecordBatch) -> tuple[str, int]:
        time.sleep(self.delay)
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise OSError("object store unavailable")
            self.calls.append(batch.column(0)[0].as_py())
        return ("ref", batch.column(0)[0].as_py())


def test_shared_batches_put_once_for_every_sink_then_dropped(ray_cluster, tmp_path):
    j = _journal(tmp_path / "j", [5, 5, 5])
    sb = SharedBatches(j)
    for s in ("a", "b", "c"):
        sb.attach(s)
    share = _CountingShare(delay=0.05)
    got: dict[str, list[Any]] = {}
    ths = [threading.Thread(target=lambda s=s: got.__setitem__(s, sb.take(s, j.frames, share))) for s in ("a", "b", "c")]
    for t in ths:
        t.start()
    for t in ths:
        t.join(10)
    assert sorted(share.calls) == [1, 6, 11]  # three sinks at once: one put per frame
    assert got["a"] == got["b"] == got["c"] == [("ref", 1), ("ref", 6), ("ref", 11)]
    assert (sb.puts, sb.hits, len(sb), sb.nbytes) == (3, 6, 0, 0)  # all taken by all: dropped
    # a sink that takes a frame again (a retry) after everyone had it: put again
    assert sb.take("a", j.frames[:1], share) == [("ref", 1)]
    assert share.calls[-1] == 1 and sb.puts == 4
    j.close()


def test_shared_batches_bounded_laggards_put_again_then_nothing_is_held(ray_cluster, tmp_path):
    j = _journal(tmp_path / "j", [10] * 6)
    one = j.read(j.frames[0]).nbytes
    sb = SharedBatches(j, max_bytes=int(one * 2.5))
    for s in ("fast", "mid", "slow"):
        sb.attach(s)
    share = _CountingShare()
    sb.take("fast", j.frames, share)
    # over the bound the newest goes: the two oldest stay for the sinks behind
    assert (sb.puts, len(sb)) == (6, 2) and sb.nbytes <= sb.max_bytes
    assert sb.take("mid", j.frames, share) == [("ref", 1 + 10 * i) for i in range(6)]
    assert (sb.puts, sb.hits, len(sb)) == (10, 2, 2)  # frames 2-5 put again, 0-1 still held
    sb.take("slow", j.frames, share)
    assert (sb.puts, sb.hits, len(sb), sb.nbytes) == (14, 4, 0, 0)  # every sink is past all


def test_shared_batches_a_leaving_sink_releases_what_it_held(ray_cluster, tmp_path):
    j = _journal(tmp_path / "j", [10] * 4)
    sb = SharedBatches(j)
    sb.attach("x")
    sb.attach("y")
    share = _CountingShare()
    sb.take("x", j.frames, share)
    sb.take("y", j.frames[:1], share)
    assert (sb.puts, sb.hits, len(sb)) == (4, 1, 3)  # held for y
    sb.detach("y")
    assert len(sb) == 0 and sb.nbytes == 0
    sb.take("x", j.frames[:1], share)  # x alone: put and gone at once
    assert (sb.puts, len(sb)) == (5, 0)


def test_shared_batches_failed_put_is_retried_by_the_waiter(ray_cluster, tmp_path):
    j = _journal(tmp_path / "j", [4])
    sb = SharedBatches(j)
    sb.attach("a")
    sb.attach("b")
    share = _CountingShare(delay=0.1, fail=1)
    errors: list[BaseException] = []
    got: list[Any] = []

    def take(s: str) -> None:
        try:
            got.append(sb.take(s, j.frames, share))
        except OSError as e:
            errors.append(e)

    ths = [threading.Thread(target=take, args=(s,)) for s in ("a", "b")]
    for t in ths:
        t.start()
        time.sleep(0.02)
    for t in ths:
        t.join(10)
    assert len(errors) == 1 and got == [[("ref", 1)]]  # the failing putter raised; the other put
    assert sb.puts == 1 and len(sb) == 1  # held for the sink whose delivery failed
    j.close()


def test_shared_batches_one_per_journal(ray_cluster, tmp_path):
    j1, j2 = _journal(tmp_path / "a", [1]), _journal(tmp_path / "b", [1])
    assert shared_batches(j1) is shared_batches(j1)
    assert shared_batches(j1) is not shared_batches(j2)
    j1.close()
    j2.close()


# -- the manager, sinks on Ray -------------------------------------------------------------------


def _manager(ray_cluster: Any, tmp_path: Any, *, parquet_node: str | None = None) -> Manager:
    """duckdb and parquet sinks in Ray pools (parquet on the second node if given); the DB and
    the stores local."""
    home = tmp_path / "home"
    ensure_home(home)
    config = home / "config.toml"
    text = config.read_text().replace("[Common.Plugins]\n", f'[Common.Plugins]\nRayAddress = "{ray_cluster.address}"\n', 1)
    text += '\n[Common.Plugins.duckdb]\nBackend = "ray"\n[Common.Plugins.parquet]\nBackend = "ray"\n'
    if parquet_node:
        text += f'RayNode = "{parquet_node}"\n'
    config.write_text(text)
    cfg, _ = load_config(None, home)
    return Manager(cfg).start()


def _count(pool: Any) -> dict[str, Any]:
    return ipc_to_table(pool.call("query", "select count(*) n, count(distinct seq) d, max(seq) m from sector_events")).to_pylist()[0]


def _backends(manager: Manager) -> dict[str, str]:
    assert manager.registry is not None
    return {p.manifest.name: p.pool.status().get("backend", "process") for p in manager.registry.plugins if p.pool is not None}


def test_ray_sinks_get_every_event_from_one_put_per_frame(ray_cluster, tmp_path, monkeypatch):
    shares: list[int] = []
    real_share = RayPool.share

    def counting_share(self: RayPool, obj: Any) -> Any:
        shares.append(obj.num_rows)
        return real_share(self, obj)

    monkeypatch.setattr(RayPool, "share", counting_share)
    manager = _manager(ray_cluster, tmp_path, parquet_node=ray_cluster.other)
    try:
        b = _backends(manager)
        assert {n for n, v in b.items() if v == "ray"} == {"duckdb", "parquet"}, b
        sectors = manager.sectors
        total = 0
        for k in range(4):  # several frames, some delivered together, some alone
            sectors.import_states([SectorState(id=SectorID(9, k * 1000 + n), sector_type=8) for n in range(150)])
            sectors.update(SectorID(9, k * 1000), {"Finalized": True})
            total += 151
            time.sleep(0.05)
        assert sectors.wait_delivered(timeout=90)
        frames = sectors.journal.frames
        assert sum(f.rows for f in frames) == total
        for name in ("duckdb", "parquet"):
            assert _count(manager.sink_pool(name)) == {"n": total, "d": total, "m": total}, name
            st = sectors.status()["sinks"][name]
            assert (st["checkpoint"], st["errors"]) == (total, 0), st
        # each frame went into the object store once, for both sinks; nothing is held after
        assert len(shares) == len(frames) and sum(shares) == total, (shares, [f.rows for f in frames])
        cache = shared_batches(sectors.journal)
        assert (cache.puts, cache.hits, len(cache), cache.nbytes) == (len(frames), len(frames), 0, 0)
    finally:
        manager.close()


def test_killed_ray_sink_actor_gets_every_event_again(ray_cluster, tmp_path):
    """At-least-once through the Ray path: the duckdb actor is killed while events flow; the
    pool replaces it (open_sink replayed), the dispatcher backs off and redelivers from its
    checkpoint, the sink deduplicates by seq; the parquet sink is not held up."""
    manager = _manager(ray_cluster, tmp_path)
    try:
        sectors = manager.sectors
        duck = manager.sink_pool("duckdb")
        sectors.import_states([SectorState(id=SectorID(11, n), sector_type=8) for n in range(100)])
        assert sectors.wait_delivered(timeout=60)
        pid = duck.status()["workers"][0]["pid"]
        stop = threading.Event()
        fed = [100]

        def feed() -> None:
            k = 1
            while not stop.is_set() and k < 40:
                sectors.import_states([SectorState(id=SectorID(11, k * 1000 + n), sector_type=8) for n in range(25)])
                fed[0] += 25
                k += 1
                time.sleep(0.01)

        t = threading.Thread(target=feed)
        t.start()
        time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        t.join(60)
        stop.set()
        assert sectors.wait_delivered(timeout=90)
        total = fed[0]
        assert _count(duck) == {"n": total, "d": total, "m": total}
        assert _count(manager.sink_pool("parquet")) == {"n": total, "d": total, "m": total}
        st = duck.status()
        assert st["restarts"] >= 1 and st["workers"][0]["pid"] != pid, st
        assert sectors.status()["sinks"]["parquet"]["errors"] == 0
    finally:
        manager.close()
