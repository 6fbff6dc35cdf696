"""Per-sink delivery: one thread per sink reads the journal after its checkpoint and delivers.

    journal (disk) --frames (segment, offset, length)--> endpoint.deliver(...) --> sink worker
          ^                                                                  maps the segment,
          |  checkpoint file <- advanced after each successful delivery      decodes zero-copy
          +- compaction deletes segments every sink has passed

Only references cross the process boundary: the OS page cache is the one shared copy. A sink
in a Ray pool (issue 7) may sit on a node that cannot see the journal, so it gets the frames
themselves, through Ray's object store, put there once for every sink of the manager:

    sink thread --(segment, offset)--> SharedBatches (one per journal) --miss: read frame,
        |                                  pool.share(batch) = one ray.put, keep the ref
        +-- pool.call("deliver_batch", [ref, ...], after_seq) --> every Ray sink actor reads
                                                                  the same object
An entry is dropped once every Ray sink of the journal has taken it, and the newest ones past
a byte/entry bound (a stalled sink costs a later re-put, not memory). A sink that raises is retried with capped exponential back-off; its backlog stays on disk, so a slow
or dead sink never blocks the state manager or another sink. Delivery is at-least-once (a
crash after deliver and before the checkpoint write redelivers); sinks deduplicate by seq.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable, Protocol

from vsm.sdk.diskspace import is_disk_full

from ._backlog import find_gap, gap_cause, read_mark, write_mark
from ._journal import FrameRef, Journal, _fsync_dir

__all__ = ["SharedBatches", "SinkDispatcher", "SinkEndpoint", "SinkState", "PoolSink", "as_endpoint", "shared_batches"]

log = logging.getLogger("vsm.sectors")
_DISK_FULL_RETRY = 1.0  # seconds between deliveries a full disk refused (issue 25: resume within seconds)
_NOTED: set[tuple[str, str]] = set()  # (sink, note) logged by this process: once, not per attach


class SinkState(enum.Enum):
    RUNNING = "running"  # delivering or caught up
    BACKOFF = "backoff"  # the last delivery failed; waiting to retry
    NEEDS_REBUILD = "needs-rebuild"  # events it needs left the journal: `vsm-pool sinks rebuild`
    STOPPED = "stopped"


class SinkEndpoint(Protocol):
    """What the dispatcher calls: a SinkHost in-process, or a pool of them (PoolSink)."""

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int: ...


class PoolSink:
    """A sink running in an executors Pool whose workers hold a SinkHost."""

    def __init__(self, pool: Any, timeout: float | None = 300.0) -> None:
        self.pool = pool
        self.timeout = timeout

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int:
        return int(self.pool.call("deliver", segments_dir, frames, after_seq, timeout=self.timeout))

    def shared_pool(self) -> Any:
        """The pool serving now if it hands batches over through a shared object store (it has
        `share`: a RayPool), else None. A SwappablePool is looked through: a reload may change
        the backend, so this is asked per delivery."""
        pinned = getattr(self.pool, "pinned", None)
        pool = pinned() if pinned is not None else self.pool
        return pool if callable(getattr(pool, "share", None)) else None

    def deliver_batch(self, pool: Any, refs: list[Any], after_seq: int) -> int:
        """Deliver shared frames (refs from `pool.share`) on `pool`, the one shared_pool()
        returned: a swap since then fails this delivery with PoolClosed, and it is retried."""
        return int(pool.call("deliver_batch", refs, after_seq, timeout=self.timeout))

    def deliver_rows(self, batch: Any, after_seq: int) -> int:
        """Rows that are not in the journal (a rebuild from the KV state), sent to a worker."""
        return int(self.pool.call("deliver_batch", batch, after_seq, timeout=self.timeout))

    def delivery_hints(self) -> dict[str, Any]:
        return dict(self.pool.call("delivery_hints", timeout=self.timeout))

    def query(self, sql: str, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
        """The sink's answer to sql (Arrow IPC), bounded by max_bytes and timeout when given."""
        if max_bytes is None and timeout is None:
            return bytes(self.pool.call("query", sql, timeout=self.timeout))
        limits = {k: v for k, v in (("max_bytes", max_bytes), ("timeout", timeout)) if v is not None}
        # the pool's own timeout kills the worker: leave the sink time to interrupt the query
        call_timeout = max(self.timeout or 0.0, (timeout or 0.0) + 10.0)
        return bytes(self.pool.call("query", sql, limits, timeout=call_timeout))


def as_endpoint(obj: Any) -> Any:
    """A Pool (has `call` and `spec`) becomes a PoolSink; anything with `deliver` is used as is."""
    if hasattr(obj, "deliver"):
        return obj
    if hasattr(obj, "call"):
        return PoolSink(obj)
    raise TypeError(f"not a sink endpoint (needs deliver() or a Pool): {obj!r}")


class _Entry:
    __slots__ = ("ref", "nbytes", "ready", "last_seq")

    def __init__(self, last_seq: int) -> None:
        self.ref: Any = None  # None until the put is done (or after it failed)
        self.nbytes = 0
        self.ready = threading.Event()
        self.last_seq = last_seq


class SharedBatches:
    """Journal frames put into a shared object store once, for every sink of one journal.

    Keyed by (segment, offset). Concurrent askers of one frame wait for the one put. An entry
    goes when every attached sink has taken it or a later frame (sinks read in seq order), or,
    past max_bytes / max_entries, the newest goes first; a sink that needs a dropped frame again
    (late start, retry, a laggard past the bound) puts it again. `puts` and `hits` count what
    happened (tests, status).
    """

    def __init__(
        self, journal: Journal, *, max_bytes: int = 256 << 20, max_entries: int = 4096, put_timeout: float = 60.0
    ) -> None:
        self._journal = weakref.ref(journal)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.put_timeout = put_timeout
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._sinks: set[str] = set()
        self._upto: dict[str, int] = {}  # attached sink -> last seq of the newest frame it took
        self.nbytes = 0
        self.puts = 0
        self.hits = 0

    def attach(self, sink: str) -> None:
        with self._lock:
            self._sinks.add(sink)
            self._upto.setdefault(sink, 0)

    def detach(self, sink: str) -> None:
        """A sink left: entries only it was missing are dropped (all of them when none is left)."""
        with self._lock:
            self._sinks.discard(sink)
            self._upto.pop(sink, None)
            passed = self._passed()
            for key, e in list(self._entries.items()):
                if e.ready.is_set() and e.last_seq <= passed:
                    self._drop(key)

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, sink: str, frames: list[FrameRef], share: Callable[[Any], Any]) -> list[Any]:
        """One shared ref per frame for `sink`, putting (with `share`) the frames not held yet."""
        return [self._take(sink, f, share) for f in frames]

    def _take(self, sink: str, frame: FrameRef, share: Callable[[Any], Any]) -> Any:
        key = (frame.segment, frame.offset)
        while True:
            with self._lock:
                e = self._entries.get(key)
                if e is None:
                    e = self._entries[key] = _Entry(frame.last_seq)
                    mine = True
                else:
                    mine = False
            if not mine:
                if not e.ready.wait(self.put_timeout):
                    raise TimeoutError(f"frame {key} was not put into the object store within {self.put_timeout}s")
                with self._lock:
                    if e.ref is None:  # its put failed: try ours
                        continue
                    self.hits += 1
                    return self._taken(key, e, sink)
            try:
                journal = self._journal()
                if journal is None:
                    raise RuntimeError("the journal is closed")
                batch = journal.read(frame)
                ref = share(batch)
            except BaseException:
                with self._lock:
                    if self._entries.get(key) is e:
                        del self._entries[key]
                e.ready.set()
                raise
            with self._lock:
                e.ref, e.nbytes = ref, batch.nbytes
                self.nbytes += e.nbytes
                self.puts += 1
                e.ready.set()
                ref = self._taken(key, e, sink)
                self._bound()
                return ref

    def _passed(self) -> int:
        """The seq every attached sink has taken frames up to (all of them if none is attached)."""
        return min((self._upto.get(s, 0) for s in self._sinks), default=1 << 64)

    def _taken(self, key: tuple[str, int], e: _Entry, sink: str) -> Any:
        ref = e.ref
        if sink in self._sinks and e.last_seq > self._upto[sink]:
            self._upto[sink] = e.last_seq
        passed = self._passed()
        if e.last_seq <= passed:
            self._drop(key)  # the caller's ref keeps the object alive until its call is done
        while self._entries:  # older ones every sink is past (e.g. put again by a laggard)
            k, old = next(iter(self._entries.items()))
            if not (old.ready.is_set() and old.last_seq <= passed):
                break
            self._drop(k)
        return ref

    def _drop(self, key: tuple[str, int]) -> None:
        e = self._entries.pop(key, None)
        if e is not None:
            self.nbytes -= e.nbytes

    def _bound(self) -> None:
        # Over the bound, drop the newest frame: the sinks behind read in seq order, so it is
        # the one needed last (the leader's fresh put serves the leader alone, then goes).
        while self.nbytes > self.max_bytes or len(self._entries) > self.max_entries:
            ready = [(e.last_seq, k) for k, e in self._entries.items() if e.ready.is_set()]
            if not ready:
                break  # all still being put; the bound is met once they are
            self._drop(max(ready)[1])


_shared: weakref.WeakKeyDictionary[Journal, SharedBatches] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_batches(journal: Journal) -> SharedBatches:
    """The SharedBatches of a journal: every sink thread of one manager uses the same one."""
    with _shared_lock:
        sb = _shared.get(journal)
        if sb is None:
            sb = _shared[journal] = SharedBatches(journal)
        return sb


class SinkDispatcher:
    def __init__(
        self,
        name: str,
        endpoint: Any,
        journal: Journal,
        ckpt_dir: str,
        *,
        get_watermark: Callable[[], int],
        wait_watermark: Callable[[int, float], int],
        max_rows: int = 100_000,
        backoff: tuple[float, float] = (0.05, 5.0),
        start_seq: int = 0,
        bulk: Callable[[], bool] | None = None,
        bulk_linger: float = 1.0,
    ) -> None:
        self.name = name
        self.endpoint = as_endpoint(endpoint)
        self.journal = journal
        self.ckpt_path = os.path.join(ckpt_dir, f"{name}.ckpt")
        self._get_wm = get_watermark
        self._wait_wm = wait_watermark
        self.max_rows = max_rows
        self.backoff = backoff
        self._bulk = bulk
        self.bulk_linger = bulk_linger
        self.linger: float | None = None  # the sink's own (delivery_hints), asked before delivering
        self._backlog_since: float | None = None
        self.hurry = threading.Event()  # set: deliver what there is now (wait_delivered, close)
        self.deliver_upto = 0  # deliver without lingering until the checkpoint reaches it
        self._ckpt_fd = -1
        self.state = SinkState.RUNNING
        self.last_error: str | None = None
        self.errors = 0
        self.delivered_rows = 0
        self.deliveries = 0
        self.last_delivery: float | None = None
        # when the sink last had every durable event: a lag's age is at most now minus this
        self._caught_up_at = time.time()
        self._stop = threading.Event()
        self.checkpoint = self._load_ckpt(start_seq)
        self.ckpt_dir = ckpt_dir
        self.max_backlog: int | None = None  # for the cause of a gap (set by the manager)
        # raises DiskFullError while the sink's files' filesystem is under MinFreeSpace (set by
        # the manager): the sink waits, backing off, instead of filling the disk (issue 25)
        self.check_space: Callable[[], None] | None = None
        self.disk_full: str | None = None  # the last delivery's "disk full: PATH ..." if so
        self.rebuild: dict[str, Any] | None = read_mark(ckpt_dir, name)  # set: deliver nothing
        if self.rebuild is not None:
            self.state = SinkState.NEEDS_REBUILD
        self._thread = threading.Thread(target=self._run, name=f"vsm-sink-{name}", daemon=True)
        self._shared: SharedBatches | None = None  # set while this sink is served by a Ray pool
        self._shared_mu = threading.Lock()
        self._shared_pool()  # attach at once: sinks made together share from their first frame

    def start(self) -> None:
        self._thread.start()

    def _shared_pool(self) -> Any:
        """The endpoint's pool if it takes shared batches (Ray), attaching this sink to the
        journal's SharedBatches; None (and detached) for a local pool or a plain endpoint."""
        get = getattr(self.endpoint, "shared_pool", None)
        pool = get() if get is not None else None
        with self._shared_mu:
            if pool is not None and self._shared is None and not self._stop.is_set():
                self._shared = shared_batches(self.journal)
                self._shared.attach(self.name)
            elif pool is None:
                self._detach()
        return pool

    def _detach(self) -> None:
        """(_shared_mu held) Stop holding shared frames for this sink."""
        if self._shared is not None:
            self._shared.detach(self.name)
            self._shared = None

    def _deliver(self, frames: list[FrameRef]) -> None:
        pool = self._shared_pool()
        if pool is None:  # local: frame references only, the worker maps the journal
            self.endpoint.deliver(self.journal.seg_dir, [f.as_tuple() for f in frames], self.checkpoint)
            return
        shared = self._shared
        if shared is None:  # stop() detached it meanwhile
            raise RuntimeError(f"sink {self.name!r} is stopping")
        refs = shared.take(self.name, frames, pool.share)
        self.endpoint.deliver_batch(pool, refs, self.checkpoint)

    def _load_ckpt(self, default: int) -> int:
        try:
            with open(self.ckpt_path) as f:
                return int(f.read().strip() or default)
        except FileNotFoundError:
            return default

    def _store_ckpt(self, seq: int) -> None:
        """20 decimal digits rewritten in place and fdatasync'd (one sector: old or new after a
        crash, as the watermark); an older file holds fewer digits and is overwritten whole."""
        if self._ckpt_fd < 0:
            self._ckpt_fd = os.open(self.ckpt_path, os.O_RDWR | os.O_CREAT, 0o644)
            if self.journal.fsync:
                _fsync_dir(os.path.dirname(self.ckpt_path))
        os.pwrite(self._ckpt_fd, b"%020d" % seq, 0)
        if self.journal.fsync:
            os.fdatasync(self._ckpt_fd)
        self.checkpoint = seq

    def _close_ckpt(self) -> None:
        fd, self._ckpt_fd = self._ckpt_fd, -1
        if fd >= 0:
            os.close(fd)

    def _ask_linger(self) -> float:
        """The sink's own linger (SinkHost.delivery_hints); 0 when it has none or cannot say.
        The notes it gives (what it found when it opened) are logged, each once a process."""
        if self.linger is None:
            try:
                get = getattr(self.endpoint, "delivery_hints", None)
                hints = get() if get is not None else {}
                self.linger = max(0.0, float(hints.get("linger", 0.0)))
                for note in hints.get("notes") or ():
                    if (self.name, note) not in _NOTED:
                        _NOTED.add((self.name, note))
                        log.info("sink '%s': %s", self.name, note)
            except Exception:  # noqa: BLE001 - a sink that cannot answer delivers at once
                self.linger = 0.0
        return self.linger

    def _wait_more(self, backlog: int, wm: int) -> bool:
        """True (after waiting a while) if this delivery should wait for more rows: during a
        bulk import (bigger batches cost a sink far less per row) or while the sink's linger
        runs, until max_rows are ready, the wait is over or someone hurries it. The end of a
        bulk import (deliver_upto) goes at once: its last rows would otherwise wait out the
        sink's own linger (parquet: 10 s) after the import returned."""
        bulk = self._bulk is not None and self._bulk()
        linger = max(self._ask_linger(), self.bulk_linger if bulk else 0.0)
        if linger <= 0 or backlog >= self.max_rows or self.hurry.is_set() or self.checkpoint < self.deliver_upto:
            return False
        now = time.monotonic()
        if self._backlog_since is None:
            self._backlog_since = now
        left = self._backlog_since + linger - now
        if left <= 0:
            return False
        self._wait_wm(wm, min(left, 0.05))  # woken by new rows; the end of a bulk import too
        return True

    @property
    def needs_rebuild(self) -> bool:
        return self.rebuild is not None

    def mark_rebuild(self, cause: str, gap: tuple[int, int] | None = None) -> None:
        """Events this sink needs are gone: stop delivering (never resume past the gap) until
        the sink is rebuilt from the KV state."""
        if self.rebuild is None:
            self.rebuild = write_mark(self.ckpt_dir, self.name, cause, gap)
        self.state = SinkState.NEEDS_REBUILD
        self.last_error = f"needs a rebuild: {cause}"

    def _run(self) -> None:
        delay = self.backoff[0]
        if self.rebuild is None:
            self._ask_linger()  # now, not at the first delivery: its notes belong at start
        while not self._stop.is_set():
            if self.rebuild is not None:
                self.state = SinkState.NEEDS_REBUILD
                self._stop.wait(0.5)
                continue
            wm = self._get_wm()
            if wm <= self.checkpoint:
                self._caught_up_at = time.time()
                self._wait_wm(self.checkpoint, 0.5)
                continue
            if self._wait_more(wm - self.checkpoint, wm):
                continue
            frames = self.journal.frames_between(self.checkpoint, wm, self.max_rows)
            gap = find_gap(self.journal, self.checkpoint, wm) if not frames or frames[0].first_seq > self.checkpoint + 1 else None
            if gap is not None:
                self.mark_rebuild(gap_cause(gap, self.checkpoint, wm, self.max_backlog), gap)
                continue
            if not frames:
                self._wait_wm(wm, 0.5)
                continue
            try:
                if self.check_space is not None:
                    self.check_space()
                self._deliver(frames)
            except Exception as e:  # noqa: BLE001 - any sink failure: record, back off, retry
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.disk_full = str(e) if is_disk_full(e) else None
                self.state = SinkState.BACKOFF
                self.linger = None  # ask again: the sink may have been reloaded
                if self._stop.wait(delay):
                    break
                # a full disk is asked again every second at most: the sink is back within a
                # second of space coming back, not up to the back-off's cap later
                delay = min(delay * 2, _DISK_FULL_RETRY if self.disk_full else self.backoff[1])
                continue
            self._backlog_since = None
            self.disk_full = None
            self._store_ckpt(frames[-1].last_seq)
            self.delivered_rows += sum(f.rows for f in frames)
            self.deliveries += 1
            self.last_delivery = time.time()
            self.state = SinkState.RUNNING
            delay = self.backoff[0]
        with self._shared_mu:  # frames only this sink was still missing go now
            self._detach()
        self._close_ckpt()
        if self.rebuild is None:
            self.state = SinkState.STOPPED

    def status(self) -> dict[str, Any]:
        wm = self._get_wm()
        lag = max(0, wm - self.checkpoint)
        return {
            "state": self.state.value,
            "attached": True,
            "checkpoint": self.checkpoint,
            "lag": lag,
            "lag_seconds": round(time.time() - self._caught_up_at, 3) if lag else 0.0,
            "needs_rebuild": None if self.rebuild is None else self.rebuild.get("cause"),
            "last_error": self.last_error,
            "disk_full": self.disk_full,
            "errors": self.errors,
            "delivered_rows": self.delivered_rows,
            "deliveries": self.deliveries,
            "last_delivery": self.last_delivery,
        }

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._shared_mu:  # also when it never started
            self._detach()
        if not self._thread.is_alive():
            self._close_ckpt()
        if self.rebuild is None:
            self.state = SinkState.STOPPED
