"""The shared-memory ring in both of its modes (counters, messages), the lazily made ring and
flat memory at 2 GiB. The stream contract of every backend (cancel, failures, the small call
behind a stream) is in tests/contract."""

from __future__ import annotations

import io
import os
import threading

import psutil
import pytest

import exec_services as S
from executors import _ring
from executors import PoolSpec, ProcessPool

SLOT = 64 << 10


def _pool(**kw):
    kw.setdefault("name", "test/objstore")
    kw.setdefault("init", S.make_kv)
    kw.setdefault("ring_slots", 3)
    kw.setdefault("slot_bytes", SLOT)
    p = ProcessPool(PoolSpec(**kw))
    p.start()
    return p


@pytest.fixture(params=["counters", "messages"])
def pool(request, monkeypatch):
    """Both ways a ring runs: slots published by counters in shared memory (x86-64), and
    by messages (other CPUs); the creator of a ring picks its mode, the worker follows."""
    monkeypatch.setattr(_ring, "COUNTERS_OK", request.param == "counters")
    p = _pool(workers=2)
    yield p
    p.close()


def _pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.mark.parametrize("size", [0, 1, SLOT - 1, SLOT, 5 * SLOT + 17])
def test_put_roundtrip(pool, size):
    data = os.urandom(size)
    assert pool.stream_put("consume_bytes", ("obj",), io.BytesIO(data)) == data


def test_put_zero_copy_views(pool):
    assert pool.stream_put("consume", ("obj:views",), S.GenReader(3 * SLOT + 5)) == 3 * SLOT + 5


def test_put_reader_stopping_early_returns_its_result(pool):
    assert pool.stream_put("consume_some", ("obj",), S.GenReader(20 * SLOT)) == 10
    assert pool.call("echo", 1) == (1,)


@pytest.mark.parametrize("size", [0, 100, 7 * SLOT + 3])
def test_get_roundtrip(pool, size):
    with pool.stream_get("produce", (size, 4096)) as r:
        data = r.read()
    assert data == _pattern(size)


def test_get_from_a_slow_reader_wakes_the_caller(pool):
    """The caller runs out of filled slots again and again: each time it sleeps and the
    worker must wake it; every byte arrives in order."""
    data = os.urandom(400_000)
    with pool.stream_get("produce_slowly", (data, 0.002)) as r:
        assert r.read() == data


def test_put_into_a_slow_consumer_wakes_the_caller(pool):
    """The ring fills up again and again: the caller sleeps until the worker frees a slot."""
    data = os.urandom(20 * SLOT + 11)
    assert pool.stream_put("consume_slowly", (0.0005,), io.BytesIO(data)) == data


def test_get_iter_views(pool):
    r = pool.stream_get("produce", (10 * SLOT,))
    total = sum(len(v) for v in r.iter_views())
    r.close()
    assert total == 10 * SLOT


def test_lazily_created_ring():
    p = _pool(workers=1, ring_slots=0)
    try:
        assert p.stream_put("consume", ("x",), S.GenReader(3 << 20)) == 3 << 20
    finally:
        p.close()


class _PeakRSS:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "_PeakRSS":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("direction", ["put", "get"])
def test_memory_stays_flat_for_2gib(direction):
    slots, slot_bytes = 4, 8 << 20
    ring = slots * slot_bytes
    size = 2 << 30
    p = _pool(workers=1, ring_slots=slots, slot_bytes=slot_bytes)
    try:
        wpid = p.status()["workers"][0]["pid"]
        w_before = psutil.Process(wpid).memory_info().rss
        with _PeakRSS() as m:
            base = m.peak
            if direction == "put":
                n = p.stream_put("consume", ("big",), S.GenReader(size, slot_bytes))
            else:
                n = 0
                with p.stream_get("produce", (size, slot_bytes)) as r:
                    buf = bytearray(1 << 20)
                    while True:
                        k = r.readinto(buf)
                        if not k:
                            break
                        n += k
        assert n == size
        limit = ring + (100 << 20)
        assert m.peak - base < limit, f"manager RSS grew by {(m.peak - base) >> 20} MiB"
        assert _hwm(wpid) - w_before < limit, f"worker RSS grew by {(_hwm(wpid) - w_before) >> 20} MiB"
    finally:
        p.close()


def test_a_get_whose_worker_dies_mid_slot_fails_with_worker_crashed():
    """A reader holding a slot when its worker is killed: the rest of that slot still reads
    (it was published whole), then the stream fails with WorkerCrashed (was: ValueError, the
    ring unmapped under the reader by the manager thread)."""
    import signal
    import time

    from executors import WorkerCrashed

    p = _pool(workers=1)
    try:
        r = p.stream_get("produce", (20 * SLOT,))
        try:
            first = r.read(10)
            pid = p.status()["workers"][0]["pid"]
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while p._workers[0].pid == pid or p.status()["state"] != "ready":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(WorkerCrashed, match="SIGKILL"):
                rest = r.read(SLOT - 10)
                assert first + rest == _pattern(SLOT)  # the slot published before the kill
                while r.read(SLOT):
                    pass
        finally:
            r.close()
        assert p.call("echo", 1) == (1,)
    finally:
        p.close()
