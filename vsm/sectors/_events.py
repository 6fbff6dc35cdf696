"""Event writer: sequence numbers, group commit into the journal, the committed watermark.

    op thread                         flusher thread                     dispatcher threads
    ---------                         --------------                     ------------------
    submit(rows) -> Ticket(seqs) ---> pending rows --(flush_rows |
    ticket.wait()  <---- durable ---- flush_age)--> Journal.append+fsync
    KV commit
    resolve(ticket) ----------------> watermark (contiguous resolved
                                      prefix) -> Watermark.store+fsync -> durable_watermark
                                                                          (sinks read <= it)

Sequence numbers are assigned under one lock in submit order, so a frame holds consecutive
seqs and the journal has no holes. A ticket is resolved after its KV commit (or after its
compensating "revert" rows are durable); the watermark is the highest seq below which every
ticket is resolved. Sinks never see past the durable watermark, which is what makes the
restart reconciliation (vsm/sectors/_manager.py `_recover`) free to renumber the tail.

Seqs that carry no event are journaled as an empty frame (0 rows, first..last), so the seq
space stays without holes and a sink's gap check (a missing seq = lost events) stays exact:

- a ticket whose rows cannot be encoded (a value of the wrong type that got past the op's own
  checks) fails alone, its op is told (EventRejected, before anything reaches the KV), and its
  seqs become an empty frame; the frame's other ops go on (issue 13: one bad update wedged
  every write until a restart);
- a journal write that fails (disk full, I/O error) fails every op waiting for it (none of
  them reaches the KV), refuses new ones with JournalBroken (DiskFullError naming the journal
  folder and its free space when the disk is full: issue 25 answered "cannot rollback" and then
  an internal error), and retries writing their seqs as an empty frame every `retry_interval`
  seconds: once the disk takes it again, the writer serves again, without a restart;
- `reserve(n)`: a block of n seqs written as an empty frame of its own, which a sink rebuilt
  from the KV state fills with its rows (vsm/sectors/_rebuild.py).
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any, Callable

import pyarrow as pa

from vsm.sdk.diskspace import DiskFullError, free_bytes, is_disk_full
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

from ._journal import Journal, Watermark

__all__ = ["EventRejected", "EventWriter", "JournalBroken", "Ticket", "op_client"]

# Who asked for the op this thread runs ("JSON-RPC from 10.0.0.7"), set by the daemon per
# request: a ticket's owner names it, so a stalled watermark says which client holds it.
op_client: contextvars.ContextVar[str] = contextvars.ContextVar("vsm_op_client", default="")

_ROOM_TO_RETRY = 1 << 20  # free bytes on a full journal's disk that make its writer retry at once


class JournalBroken(RuntimeError):
    """The journal could not be written (disk full, I/O error); the manager refuses changes
    until a retry writes again."""


class EventRejected(ValueError):
    """This op's event rows could not be encoded into the journal (nothing was committed)."""


class Ticket:
    """Seqs first..last; rows are dicts (one op) or `batch`, an event batch built column-wise
    (bulk import) whose seq column the flusher fills in."""

    __slots__ = ("first", "last", "rows", "batch", "n", "done", "error", "reserved", "owner", "since")

    def __init__(
        self, first: int, last: int, rows: list[dict[str, Any]], batch: pa.RecordBatch | None = None, reserved: bool = False,
        owner: str = "",
    ) -> None:
        self.first = first
        self.last = last
        self.rows = rows
        self.batch = batch
        self.n = last - first + 1
        # set by the flusher once the frame is durable (or the journal broke): only this op's
        # thread wakes, not every op waiting on the writer's condition
        self.done = threading.Event()
        self.error: BaseException | None = None  # its rows were not journaled: never commit them
        self.reserved = reserved  # seqs without rows (reserve()): an empty frame of its own
        self.owner = owner  # what holds it ("update m-1-n-2", "import from 10.0.0.7"): status names it
        self.since = time.time()


class EventWriter:
    def __init__(
        self,
        journal: Journal,
        watermark: Watermark,
        *,
        next_seq: int,
        flush_rows: int = 10_000,
        flush_age: float = 0.002,
        on_durable_watermark: Callable[[int], None] | None = None,
        idle_tick: Callable[[], None] | None = None,
        idle_interval: float = 1.0,
        retry_interval: float = 5.0,
    ) -> None:
        self.journal = journal
        self.wm = watermark
        self.flush_rows = flush_rows
        self.flush_age = flush_age
        self._next = next_seq
        self._cv = threading.Condition()
        self._pending: list[Ticket] = []
        self._pending_since = 0.0
        self.durable_seq = next_seq - 1  # highest seq fsynced into the journal
        self.committed = watermark.value  # in-memory watermark
        self.durable_watermark = watermark.value
        self._resolved: dict[int, int] = {}  # first -> last of resolved, not yet contiguous
        self._open: dict[int, Ticket] = {}  # first -> ticket submitted, not resolved yet
        self._broken: BaseException | None = None
        self.broken_since: float | None = None  # time.time() of the write failure being retried
        self.retry_interval = retry_interval
        self.rejected = 0  # tickets whose rows could not be encoded (EventRejected)
        self._closing = False
        self._on_wm = on_durable_watermark
        self._idle_tick = idle_tick
        self._idle_interval = idle_interval
        self._thread = threading.Thread(target=self._run, name="vsm-sectors-flusher", daemon=True)
        self._thread.start()

    # -- op side -------------------------------------------------------------------------
    def submit(self, rows: list[dict[str, Any]] | pa.RecordBatch, owner: str = "") -> Ticket:
        """Assign seqs to rows (mutating their "seq"; for a RecordBatch of SECTOR_EVENT_SCHEMA
        the flusher writes them into its seq column) and queue them for the next frame. owner
        names what will resolve it (see `blocking`)."""
        with self._cv:
            self._check_open()
            first = self._next
            if isinstance(rows, pa.RecordBatch):
                self._next = first + rows.num_rows
                t = Ticket(first, self._next - 1, [], rows, owner=owner)
            else:
                for i, r in enumerate(rows):
                    r["seq"] = first + i
                self._next = first + len(rows)
                t = Ticket(first, self._next - 1, rows, owner=owner)
            self._open[first] = t
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(t)
            self._cv.notify_all()
            return t

    def reserve(self, n: int, owner: str = "reserved seqs") -> Ticket:
        """n seqs without rows, journaled as an empty frame of their own: wait_durable, then
        resolve it (nothing to commit); a rebuilt sink's rows take these seqs."""
        if n < 1:
            raise ValueError(f"reserve needs n >= 1, got {n}")
        with self._cv:
            self._check_open()
            first = self._next
            self._next = first + n
            t = Ticket(first, self._next - 1, [], reserved=True, owner=owner)
            self._open[first] = t
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(t)
            self._cv.notify_all()
            return t

    def _check_open(self) -> None:
        """(holding _cv) Refuse new seqs while a write failure is being retried, or once closed."""
        if self._broken is not None:
            if is_disk_full(self._broken):
                raise self.refusal(self._broken) from self._broken
            raise JournalBroken(
                f"sector event journal cannot be written: {self._broken!r} (retrying every {self.retry_interval:g} s; "
                "free the disk under the journal folder)"
            ) from self._broken
        if self._closing:
            raise JournalBroken("sector state manager is closed")

    def wait_durable(self, t: Ticket) -> None:
        t.done.wait()
        if t.error is not None:
            raise t.error
        if self.durable_seq < t.last:
            broken = self._broken
            raise self.refusal(broken) from broken

    def refusal(self, err: BaseException | None) -> Exception:
        """What a refused op is told: the disk is full (path, free space), or the journal broke."""
        if is_disk_full(err):
            return DiskFullError(self.journal.dir, free_bytes(self.journal.dir), None, "sector event journal")
        return JournalBroken(f"sector event journal is broken: {err!r}")

    def resolve(self, t: Ticket) -> None:
        """The ticket's KV change is committed (or compensated): let the watermark pass it."""
        with self._cv:
            self._open.pop(t.first, None)
            if t.first == self.committed + 1:
                self.committed = t.last
                while self.committed + 1 in self._resolved:
                    self.committed = self._resolved.pop(self.committed + 1)
            else:
                self._resolved[t.first] = t.last
            self._cv.notify_all()

    @property
    def next_seq(self) -> int:
        return self._next

    def blocking(self) -> dict[str, Any] | None:
        """The ticket the watermark waits for (the unresolved one right after it), if any:
        {"first", "last", "owner", "since", "committed_behind"}, the last being how many events
        are committed to the KV past the watermark and wait for it (no sink can get them)."""
        with self._cv:
            t = self._open.get(self.committed + 1)
            if t is None:
                return None
            behind = sum(last - first + 1 for first, last in self._resolved.items())
            return {"first": t.first, "last": t.last, "owner": t.owner, "since": t.since, "committed_behind": behind}

    def watermark_gap(self) -> int:
        """Events committed to the KV that the durable watermark has not passed yet."""
        with self._cv:
            return self.committed - self.durable_watermark + sum(last - first + 1 for first, last in self._resolved.items())

    # -- flusher -------------------------------------------------------------------------
    def _run(self) -> None:
        last_tick = time.monotonic()
        while True:
            with self._cv:
                while True:
                    now = time.monotonic()
                    rows = sum(t.n for t in self._pending)
                    if self._pending and (
                        rows >= self.flush_rows or now - self._pending_since >= self.flush_age or self._closing
                    ):
                        break
                    if self.committed > self.durable_watermark:
                        break
                    if self._closing and not self._pending:
                        return
                    if self._idle_tick is not None and now - last_tick >= self._idle_interval:
                        break
                    timeout = self._idle_interval
                    if self._pending:
                        timeout = max(0.0, self.flush_age - (now - self._pending_since))
                    self._cv.wait(timeout)
                take: list[Ticket] = []
                n = 0
                # a reserved block is an empty frame of its own; other tickets share frames
                while self._pending and (not take or (n + self._pending[0].n <= self.flush_rows and not take[0].reserved
                                                      and not self._pending[0].reserved)):
                    t = self._pending.pop(0)
                    take.append(t)
                    n += t.n
                if self._pending:
                    self._pending_since = time.monotonic()
            try:
                if take:
                    self._write(take)
                with self._cv:
                    wm = self.committed  # as late as possible: it moved during the append
                if wm > self.durable_watermark:
                    self.wm.store(wm)
            except BaseException as e:  # noqa: BLE001 - every waiter must hear of it
                if not self._write_failed([t for t in take if not t.done.is_set()], e):
                    return  # closed while retrying
                continue
            with self._cv:
                if wm > self.durable_watermark:
                    self.durable_watermark = wm
                self._cv.notify_all()
            if wm >= self.durable_watermark and self._on_wm is not None:
                self._on_wm(self.durable_watermark)
            now = time.monotonic()
            if self._idle_tick is not None and now - last_tick >= self._idle_interval:
                last_tick = now
                try:
                    self._idle_tick()
                except Exception:  # noqa: BLE001 - maintenance must not stop the flusher
                    pass

    def _write(self, take: list[Ticket]) -> None:
        """Append the tickets' frames in seq order; each ticket's op is woken once its frame
        is durable. A ticket whose rows cannot be encoded is rejected alone (an empty frame
        holds its seqs)."""
        for batch, group in _frames(take):
            self.journal.append(batch, group[0].first, group[-1].last)
            for t in group:
                t.rows, t.batch = [], None  # the journal has them now
            with self._cv:
                self.durable_seq = group[-1].last
            for t in group:  # the ops may commit to the KV now, while the watermark syncs
                if t.error is not None:
                    self.rejected += 1
                    self.resolve(t)  # nothing to commit: the watermark may pass its seqs
                t.done.set()

    def _write_failed(self, unwritten: list[Ticket], err: BaseException) -> bool:
        """The journal refused a write: fail every op waiting for one (none commits), refuse new
        ones, and retry writing their seqs as an empty frame (then the watermark) until the disk
        takes it. False if the writer closed meanwhile."""
        with self._cv:
            self._broken, self.broken_since = err, time.time()
            waiting, self._pending = unwritten + self._pending, []
            self._cv.notify_all()
        for t in waiting:
            t.error = self.refusal(err)
            t.error.__cause__ = err
            t.rows, t.batch = [], None
            t.done.set()
        while True:
            if not self._wait_retry():
                return False
            try:
                if waiting:
                    self.journal.append(_empty_batch(), waiting[0].first, waiting[-1].last)
                    with self._cv:
                        self.durable_seq = waiting[-1].last
                    for t in waiting:
                        self.resolve(t)
                    waiting = []
                with self._cv:
                    wm = self.committed
                if wm > self.durable_watermark:
                    self.wm.store(wm)
            except BaseException as e:  # noqa: BLE001 - still failing: keep the first cause's time
                with self._cv:
                    self._broken = e
                continue
            with self._cv:
                self._broken, self.broken_since = None, None
                self._cv.notify_all()
            return True

    def _wait_retry(self) -> bool:
        """Until the next retry of a refused write: retry_interval, or as soon as the journal's
        disk has room again when a full disk refused it (polled twice a second: writes resume
        within a second of space coming back, not up to retry_interval). False once closed."""
        deadline = time.monotonic() + self.retry_interval
        full = is_disk_full(self._broken)
        with self._cv:
            while not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._cv.wait(min(left, 0.5) if full else left)
                if full and (free_bytes(self.journal.dir) or 0) >= _ROOM_TO_RETRY:
                    return True
            return False

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)

    @property
    def broken(self) -> BaseException | None:
        return self._broken


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=SECTOR_EVENT_SCHEMA)


def _frames(take: list[Ticket]) -> list[tuple[pa.RecordBatch, list[Ticket]]]:
    """(batch, tickets) per frame to append, in seq order: all of `take` in one frame when its
    rows encode (the usual case); else each ticket alone, a rejected one as an empty frame."""
    if take[0].reserved:
        return [(_empty_batch(), take)]
    try:
        return [(_frame_batch(take), take)]
    except Exception as e:  # noqa: BLE001 - find the ticket at fault; the others go on
        if len(take) > 1:
            return [f for t in take for f in _frames([t])]
        take[0].error = EventRejected(f"sector event rows could not be encoded, nothing was written: {type(e).__name__}: {e}")
        return [(_empty_batch(), take)]


def _frame_batch(take: list[Ticket]) -> pa.RecordBatch:
    """One RecordBatch of the tickets' rows in seq order (runs of dict rows converted at once)."""
    parts: list[pa.RecordBatch] = []
    rows: list[dict[str, Any]] = []
    for t in take:
        if t.batch is None:
            rows.extend(t.rows)
            continue
        if rows:
            parts.append(pa.RecordBatch.from_pylist(rows, schema=SECTOR_EVENT_SCHEMA))
            rows = []
        seq = pa.array(range(t.first, t.last + 1), pa.uint64())
        parts.append(t.batch.set_column(0, SECTOR_EVENT_SCHEMA.field("seq"), seq))
    if rows:
        parts.append(pa.RecordBatch.from_pylist(rows, schema=SECTOR_EVENT_SCHEMA))
    if len(parts) == 1:
        return parts[0]
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
