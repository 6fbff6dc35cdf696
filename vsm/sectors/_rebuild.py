"""Rebuild a sink from the KV state: one "rebuild" row per sector, its current state, then the
journal from there on (`vsm-pool sinks rebuild NAME`).

    1. detach the sink (its dispatcher stops delivering)
    2. count the states (a scan of both collections) -> n
    3. reserve n + slack seqs: an empty journal frame R = [a, b] of their own (EventWriter.reserve)
       and wait until the watermark passes b: every event before a is then committed to the KV
    4. pin the journal at b, write the sink's checkpoint b (it is still marked)
    5. scan both collections again; rows of kind "rebuild" take the seqs a, a+1, ... and go to
       the sink directly (deliver_batch), never through the journal (the other sinks never see
       them; for them R is an empty frame)
    6. clear the mark, attach the sink again: it goes on from b, through the journal

Why the rows are right: the scan runs after every event < a is in the KV, so a row holds at
least those; an event > b that the scan saw early comes again from the journal with its full
state, after the rows (a higher seq), so the sink ends at the KV's state either way. Sinks
deduplicate by seq, so the rows must be above what the sink stored: a > the watermark, which
is above every seq the sink was ever given.

Crash argument: the mark is cleared only at step 6, after the last row is delivered; a kill -9
before leaves the sink marked (with checkpoint b or its old one), and the rebuild is run again:
the new block is above the old one, so its rows win. An unused block is an empty frame (if
the tail past the watermark is renumbered at restart, the block goes with it).

What a rebuilt sink has and lacks: everything it stored before the gap, one row per sector
with its current state (kind "rebuild"; a Go-style sink gets OnImport(ws, state, True)), and
every event after; it lacks the history of the events in the gap (an update's row, a
finalize's), and a sector that vanished in the gap (only a "revert" to nothing does that)
keeps its last row.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterator

import pyarrow as pa

from vsm.sdk.sectors import SectorState, states_to_arrow

from ._backlog import clear_mark

__all__ = ["rebuild_sink"]

log = logging.getLogger("vsm.sectors")

ROWS_PER_DELIVERY = 10_000
_ATTEMPTS = 3


class _Grew(Exception):
    """More states than seqs reserved: sectors were added meanwhile; reserve again."""


def rebuild_sink(mgr: Any, name: str, endpoint: Any, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Refill sink `name` (its endpoint: a pool, a PoolSink or a SinkHost) from the KV state
    and attach it again; returns what was done. Raises if the sink or the KV fails (the sink
    stays marked; run it again)."""
    from ._dispatch import as_endpoint
    from ._manager import ONLINE, OFFLINE, _event_batch

    ep = as_endpoint(endpoint)
    started = time.monotonic()
    with mgr._sinks_lock:
        attached = name in mgr._sinks
    if not attached and getattr(endpoint, "deliver_batch", None) is None:
        raise ValueError(f"sink {name!r} is not attached (its plugin is disabled, or its Constructor failed): nothing to rebuild into")
    mgr.remove_sink(name)
    colls = (ONLINE, OFFLINE)
    slack = 1000
    try:
        for _ in range(_ATTEMPTS):
            n = sum(_count(mgr._coll(ws)) for ws in colls)
            block = mgr.writer.reserve(n + slack)
            mgr.writer.wait_durable(block)
            mgr.writer.resolve(block)  # nothing to commit: let the watermark pass the block
            with mgr._sinks_lock:
                mgr._pins[name] = block.last
            while mgr.writer.durable_watermark < block.last:
                mgr._wait_wm(block.last - 1, 0.5)
            _store_checkpoint(mgr.ckpt_dir, name, block.last)
            seq, rows = block.first, 0
            try:
                for ws in colls:
                    for state in _states(mgr._coll(ws)):
                        if seq + state.num_rows - 1 > block.last:
                            raise _Grew()
                        events = _event_batch(state, "rebuild", ws)
                        events = events.set_column(0, events.schema.field("seq"), pa.array(range(seq, seq + state.num_rows), pa.uint64()))
                        _deliver(ep, events, block.first - 1)
                        seq += state.num_rows
                        rows += state.num_rows
                        if progress:
                            progress(state.num_rows)
            except _Grew:
                slack *= 10
                log.info("sink %r rebuild: more states than the %d seqs reserved; again with more", name, block.n)
                continue
            break
        else:
            raise RuntimeError(f"sink {name!r} rebuild: the states kept growing faster than it could reserve seqs; try again")
        clear_mark(mgr.ckpt_dir, name)
    finally:
        with mgr._sinks_lock:
            mgr._pins.pop(name, None)
        if attached:
            mgr.add_sink(name, endpoint)  # marked still if it failed: it waits for another rebuild
    seconds = time.monotonic() - started
    log.info("sink %r rebuilt from the KV state: %d rows (seqs %d-%d) in %.1f s", name, rows, block.first, seq - 1, seconds)
    return {"sink": name, "rows": rows, "first_seq": block.first, "last_seq": block.last, "seconds": round(seconds, 3)}


def _count(coll: Any) -> int:
    it = coll.scan(b"m-")
    try:
        return sum(1 for _ in it)
    finally:
        it.close()


def _states(coll: Any) -> Iterator[pa.RecordBatch]:
    """The collection's states as Arrow, ROWS_PER_DELIVERY at a time."""
    it = coll.scan(b"m-")
    try:
        chunk: list[SectorState] = []
        for _k, v in it:
            chunk.append(SectorState.from_go_json(v))
            if len(chunk) >= ROWS_PER_DELIVERY:
                yield states_to_arrow(chunk)
                chunk = []
        if chunk:
            yield states_to_arrow(chunk)
    finally:
        it.close()


def _deliver(ep: Any, batch: pa.RecordBatch, after_seq: int) -> None:
    rows = getattr(ep, "deliver_rows", None)  # a pool: the rows go to the sink's worker
    if rows is not None:
        rows(batch, after_seq)
    else:  # a SinkHost in this process
        ep.deliver_batch(batch, after_seq)


def _store_checkpoint(ckpt_dir: str, name: str, seq: int) -> None:
    """The sink's checkpoint file, as its dispatcher writes it (the sink is detached now)."""
    path = os.path.join(ckpt_dir, f"{name}.ckpt")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"%020d" % seq, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
