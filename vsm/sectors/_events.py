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
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pyarrow as pa

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

from ._journal import Journal, Watermark

__all__ = ["EventWriter", "JournalBroken", "Ticket"]


class JournalBroken(RuntimeError):
    """The journal could not be written (disk full, I/O error); the manager refuses changes."""


class Ticket:
    """Seqs first..last; rows are dicts (one op) or `batch`, an event batch built column-wise
    (bulk import) whose seq column the flusher fills in."""

    __slots__ = ("first", "last", "rows", "batch", "n", "done")

    def __init__(self, first: int, last: int, rows: list[dict[str, Any]], batch: pa.RecordBatch | None = None) -> None:
        self.first = first
        self.last = last
        self.rows = rows
        self.batch = batch
        self.n = last - first + 1
        # set by the flusher once the frame is durable (or the journal broke): only this op's
        # thread wakes, not every op waiting on the writer's condition
        self.done = threading.Event()


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
        self._broken: BaseException | None = None
        self._closing = False
        self._on_wm = on_durable_watermark
        self._idle_tick = idle_tick
        self._idle_interval = idle_interval
        self._thread = threading.Thread(target=self._run, name="vsm-sectors-flusher", daemon=True)
        self._thread.start()

    # -- op side -------------------------------------------------------------------------
    def submit(self, rows: list[dict[str, Any]] | pa.RecordBatch) -> Ticket:
        """Assign seqs to rows (mutating their "seq"; for a RecordBatch of SECTOR_EVENT_SCHEMA
        the flusher writes them into its seq column) and queue them for the next frame."""
        with self._cv:
            if self._broken is not None:
                raise JournalBroken(f"sector event journal is broken: {self._broken!r}") from self._broken
            if self._closing:
                raise JournalBroken("sector state manager is closed")
            first = self._next
            if isinstance(rows, pa.RecordBatch):
                self._next = first + rows.num_rows
                t = Ticket(first, self._next - 1, [], rows)
            else:
                for i, r in enumerate(rows):
                    r["seq"] = first + i
                self._next = first + len(rows)
                t = Ticket(first, self._next - 1, rows)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(t)
            self._cv.notify_all()
            return t

    def wait_durable(self, t: Ticket) -> None:
        t.done.wait()
        if self.durable_seq < t.last:
            broken = self._broken
            raise JournalBroken(f"sector event journal is broken: {broken!r}") from broken

    def resolve(self, t: Ticket) -> None:
        """The ticket's KV change is committed (or compensated): let the watermark pass it."""
        with self._cv:
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
                while self._pending and (not take or n + self._pending[0].n <= self.flush_rows):
                    t = self._pending.pop(0)
                    take.append(t)
                    n += t.n
                if self._pending:
                    self._pending_since = time.monotonic()
            try:
                if take:
                    batch = _frame_batch(take)
                    self.journal.append(batch, take[0].first, take[-1].last)
                    for t in take:
                        t.rows, t.batch = [], None  # the journal has them now
                    with self._cv:
                        self.durable_seq = take[-1].last
                    for t in take:  # the ops may commit to the KV now, while the watermark syncs
                        t.done.set()
                with self._cv:
                    wm = self.committed  # as late as possible: it moved during the append
                if wm > self.durable_watermark:
                    self.wm.store(wm)
            except BaseException as e:  # noqa: BLE001 - every waiter must hear of it
                with self._cv:
                    self._broken = e
                    waiting, self._pending = take + self._pending, []
                    self._cv.notify_all()
                for t in waiting:
                    t.done.set()
                return
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

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)

    @property
    def broken(self) -> BaseException | None:
        return self._broken


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
