"""SectorStateManager: sector states in the KVStore, every change an event in the journal.

One operation (import chunk, init, update, finalize, restore)::

    hold the sector stripes -> read KV -> compute new states -> submit event rows (seqs)
    -> wait until the frame is fsynced (write-ahead, group commit) -> commit to KV
    -> resolve the ticket (watermark may advance) -> release the stripes

Crash argument (kill -9 anywhere):
- before the frame is durable: neither journal nor KV has the change; the op never returned.
- frame durable, KV not committed: the event sits past the durable watermark. At restart
  `_recover` compares every tail event with the KV: per sector, events up to the last one
  whose state the KV holds are kept, later ones dropped. The frames before the first dropped
  event stay as they are; from its frame on the kept events are rewritten, renumbered on from
  the seq before them (crash-safe rewrite, see Journal.replace_tail). Sinks never saw the tail
  (they read only up to the durable watermark), so renumbering loses and duplicates nothing.
  The comparison is column-wise (each sector's last event first, its earlier ones only if
  that one does not match) and reads each sector's KV value once. Until the rewrite the KV
  (but for the idempotent deletes below) and the journal are only read, so a kill -9 during
  recovery leaves them as they were and the next start reconciles the same tail again; the
  rewrite itself is redone from its intent file.
- KV committed, watermark not advanced: same reconciliation keeps the event.
- A finalize/restore killed between its two KV writes (put in one collection, delete in the
  other) is completed by `_recover` when the event is kept (an idempotent delete: a kill
  during it is completed the same way at the next start).
If a KV commit fails while running (after conflict retries and a few idempotent retries),
the manager journals a "revert" event carrying what the KV really holds, so sinks converge;
if the KV holds the change after all, the op answers success (an answer is never an error
over a stored change).

A full disk (issue 25): an op is refused before it takes a seq while the journal's or the KV's
filesystem is under MinFreeSpace (DiskFullError, nothing journaled, nothing stored), so the
frames, commits, rollbacks and reverts already under way always find room; a sink waits the
same way while its files' filesystem is under it. All resume as soon as space is back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.diskspace import DiskFullError, FreeSpaceFloor
from vsm.sdk.errors import KeyNotFoundError, TransactionConflictError
from vsm.sdk.sectors import (
    SECTOR_EVENT_SCHEMA,
    SECTOR_STATE_SCHEMA,
    STATE_FIELDS,
    AllocatedSector,
    SectorID,
    SectorState,
    arrow_to_go_json,
    arrow_to_states,
    decode_field,
    decode_state_json,
    sector_key,
    states_to_arrow,
)

from ._backlog import clear_mark, find_gap, gap_cause, read_mark, stored_checkpoints, write_mark
from ._dispatch import SinkDispatcher
from ._events import EventWriter, Ticket, op_client
from ._journal import Journal, Watermark, read_frame
from ._keys import STATE_PREFIXES, PrefixedKVStore, adopt_bare_keys
from ._kvpairs import KVPairs
from ._locks import StripedLocks
from .sink_host import OVERRIDE_FIELDS

__all__ = ["SectorStateManager", "SectorNotFoundError", "ONLINE", "OFFLINE"]

log = logging.getLogger("vsm.sectors")

ONLINE = "online"
OFFLINE = "offline"
_PY_FIELDS = {v: k for k, v in STATE_FIELDS.items()}  # python attr -> Go name
_LEGACY_KEYS = {"PreCommitInfo.Deals"}  # keys of damocles' pre-2024 states, which Go ignores
# How long an import window waits for the source's next chunk, holding a journaled chunk and
# every stripe: longer, and the window ends (the chunk is written; the wait goes on outside).
# Short enough for other ops; long enough that a steady source keeps the pipeline full.
_SOURCE_WAIT = 0.5
# A ticket the watermark has waited for this long, with committed events behind it, is a
# problem in status, /metrics and the dashboard (issue 24: a stuck watermark looked healthy).
STALLED_AFTER = 10.0


class SectorNotFoundError(KeyError):
    """No state for that sector in the collection asked for."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class _Change:
    __slots__ = ("sid", "kind", "ws", "state", "fields", "writes", "value")

    def __init__(
        self,
        sid: SectorID,
        kind: str,
        ws: str,
        state: SectorState | None,
        fields: list[str] | None,
        writes: list[tuple[str, bytes | None]],
        value: bytes | None = None,
    ) -> None:
        self.sid = sid
        self.kind = kind
        self.ws = ws
        self.state = state
        self.fields = fields
        self.writes = writes  # (worker_state of collection, value or None = delete), in order
        self.value = value


_op_clock = threading.Lock()
_last_op_us = 0


def _op_time() -> int:
    """The `time` of one operation's event rows: all its rows share it and no two operations
    of this process do, so a sink tells operations apart (two inits delivered together are
    two OnInit calls, as damocles makes them)."""
    global _last_op_us
    with _op_clock:
        _last_op_us = max(_now_us(), _last_op_us + 1)
        return _last_op_us


def _now_us() -> int:
    return time.time_ns() // 1000


class SectorStateManager:
    """Sector states over a KVStore DB, with events. States are kept as damocles keeps them
    (`_keys.py`): `sector-states/m-<miner>-n-<number>` in `meta` (online) and
    `sector-states-offline/...` in `offline_meta`; states under bare keys are moved there first.

    Args:
        db: a vsm.sdk.kvstore.DB (a KVStore plugin's proxy, or an in-process one).
        journal_dir: where the event journal, watermark and sink checkpoints live.
        sinks: name -> endpoint (SinkHost, PoolSink, or an executors Pool of SinkHosts).
        flush_rows / flush_age: a frame is written when this many rows wait or the oldest
            has waited this long (seconds).
        import_chunk: states per KV transaction in import_states.
        import_window: an import holds every lock stripe for this many chunks at a time.
        fsync: False only for tests/benchmarks; True makes the crash argument hold.
        sink_max_rows: at most this many rows per delivery to a sink.
        sink_bulk_linger: while an import runs, a sink's delivery waits up to this long for
            sink_max_rows rows (DuckDB: ~4 us a row in 100k-row batches, ~9 in 10k ones).
            A sink's own `batch_linger` (see SinkHost.delivery_hints) applies at all times.
            `wait_delivered` makes every sink deliver what there is at once.
        max_backlog: the journal keeps at most this many events for a sink that is behind
            (attached, disabled or failing); past it, compaction may go on without the sink,
            which is then marked as needing a rebuild (_backlog.py). None: no bound.
        recovery_progress: called (done, total) while a journal tail is reconciled at open.
        min_free_space: the free-space floor (bytes) of the journal's, the KV's and each sink's
            filesystem: under it new ops are refused and the sink waits (None/0: no floor).
        space_paths: what else writes files, as {"kv": path, "sink/<name>": path}, or a function
            that says it now (a sink loaded by a rescan, a Meta changed by a config reload): the
            floor is checked there too (the journal folder always).
    """

    def __init__(
        self,
        db: Any,
        journal_dir: str,
        *,
        sinks: Mapping[str, Any] | None = None,
        flush_rows: int = 10_000,
        flush_age: float = 0.002,
        import_chunk: int = 10_000,
        import_window: int = 3,
        lock_stripes: int = 1024,
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
        conflict_retries: int = 20,
        commit_retries: int = 3,
        sink_backoff: tuple[float, float] = (0.05, 5.0),
        sink_max_rows: int = 100_000,
        sink_bulk_linger: float = 1.0,
        compact_interval: float = 5.0,
        max_backlog: int | None = None,
        recovery_progress: Callable[[int, int], None] | None = None,
        min_free_space: int | None = None,
        space_paths: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.db = db
        self.floor = FreeSpaceFloor(min_free_space)
        self._space_paths = space_paths if callable(space_paths) else (lambda: dict(space_paths or {}))
        self.kv_path = self._space_paths().get("kv")  # the KV's file moves only with a restart
        self.journal_dir = journal_dir
        os.makedirs(journal_dir, exist_ok=True)
        self.ckpt_dir = os.path.join(journal_dir, "sinks")
        os.makedirs(self.ckpt_dir, exist_ok=True)
        self._colls = {ws: self._open_states(db, ws) for ws in (ONLINE, OFFLINE)}
        self._retry = {ws: bool(c.need_retry_transactions()) for ws, c in self._colls.items()}
        self.import_chunk = import_chunk
        self.import_window = max(1, import_window)
        self.flush_rows = flush_rows
        self.conflict_retries = conflict_retries
        self.commit_retries = commit_retries
        self.sink_backoff = sink_backoff
        self.sink_max_rows = sink_max_rows
        self.sink_bulk_linger = sink_bulk_linger
        self._locks = StripedLocks(lock_stripes)
        self.journal = Journal(journal_dir, segment_bytes=segment_bytes, fsync=fsync)
        self.journal.redo_intent()
        self._wm = Watermark(journal_dir, fsync=fsync)
        self.recovered = self._recover(recovery_progress)
        self._wm_cv = threading.Condition()
        self._sinks: dict[str, SinkDispatcher] = {}
        self._sinks_lock = threading.Lock()
        self.max_backlog = max_backlog
        self._held: list[list[Any]] = []  # [changes, ticket, cause]: KV commit outcome unknown (_hold)
        self._held_mu = threading.Lock()
        self._held_thread: threading.Thread | None = None
        self._stop_held = threading.Event()
        self._pins: dict[str, int] = {}  # sink -> seq the journal keeps from (a rebuild running)
        self._bulk = 0  # imports running: sinks take bigger batches meanwhile
        self._hurry = 0  # wait_delivered callers: sinks deliver what there is at once
        self._closed = False
        self.writer = EventWriter(
            self.journal,
            self._wm,
            next_seq=max(self.journal.last_seq, self._wm.value) + 1,
            flush_rows=flush_rows,
            flush_age=flush_age,
            on_durable_watermark=self._notify_wm,
            idle_tick=self.compact,
            idle_interval=compact_interval,
        )
        for name, ep in (sinks or {}).items():
            self.add_sink(name, ep)

    # ---------------------------------------------------------------- public operations
    def import_states(
        self,
        states: Iterable[SectorState],
        override: bool = False,
        worker_state: str | None = None,
        progress: Callable[[int], None] | None = None,
        client: str = "import",
    ) -> int:
        """Write states as damocles' Import does (skip existing keys unless override), in
        chunks of import_chunk per KV transaction. worker_state None: each state where
        damocles' JSON import puts it (offline if Finalized, else online); "online" or
        "offline": all of them there. client: who imports, as status names a ticket's owner.
        Returns how many were written; an error raised carries `written`, what was stored
        before it (a re-run skips those states)."""
        if worker_state is not None:
            self._coll(worker_state)
        self._check_space()

        def chunks() -> Iterator[list[SectorState]]:
            chunk: list[SectorState] = []
            for st in states:
                chunk.append(st)
                if len(chunk) >= self.import_chunk:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        return self._import_chunks(_routed(chunks(), worker_state), override, progress, client)

    def import_arrow(
        self,
        data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
        override: bool = False,
        worker_state: str | None = None,
        progress: Callable[[int], None] | None = None,
        client: str = "import",
    ) -> int:
        """import_states for states already in Arrow (SECTOR_STATE_SCHEMA columns, in any
        order, missing ones null; e.g. `pq.ParquetFile(f).iter_batches()`): no SectorState
        objects are built. Returns how many were written."""
        if worker_state is not None:
            self._coll(worker_state)
        self._check_space()
        if isinstance(data, pa.RecordBatch):
            data = [data]
        step = self.import_chunk

        def chunks() -> Iterator[pa.Table]:
            if isinstance(data, pa.Table):
                parts: Iterable[Any] = (data.slice(off, step) for off in range(0, data.num_rows, step))
            else:
                parts = (b.slice(off, step) for b in data for off in range(0, b.num_rows, step))
            for part in parts:
                t = part if isinstance(part, pa.Table) else pa.Table.from_batches([part])
                for f in SECTOR_STATE_SCHEMA:
                    if f.name not in t.column_names:
                        t = t.append_column(f, pa.nulls(t.num_rows, f.type))
                yield t.select(SECTOR_STATE_SCHEMA.names).cast(SECTOR_STATE_SCHEMA)

        return self._import_chunks(_routed(chunks(), worker_state), override, progress, client)

    def _import_chunks(self, chunks: Iterator[tuple[str, Any]], override: bool, progress: Callable[[int], None] | None,
                       client: str) -> int:
        with self._sinks_lock:
            self._bulk += 1
        try:
            return self._import_pipelined(chunks, override, progress, client)
        finally:
            with self._sinks_lock:
                self._bulk -= 1
                if not self._bulk:  # the import's last rows go to every sink now, lingering or not
                    upto = self.writer.next_seq - 1
                    for d in self._sinks.values():
                        d.deliver_upto = max(d.deliver_upto, upto)
            self._notify_wm(0)

    def _import_pipelined(self, chunks: Iterator[tuple[str, Any]], override: bool, progress: Callable[[int], None] | None,
                          client: str) -> int:
        """Chunks move through three stages at once, each chunk in write-ahead order:

            encode thread:  read + encode k+1
            main thread:    journal frame of k (fsync) ...................... resolve k-1
            KV thread:      existing keys of k | put k-1 | existing keys of k+1 | put k

        The KV thread keeps the KVStore calls in that order, so a chunk's existence check
        never waits behind the write of the chunk before it, and that write runs while the
        next frame is written; keys of a chunk journaled but not yet written count as existing.
        A chunk of import_chunk states takes nearly every lock stripe anyway, so the import
        holds all of them, for windows of import_window chunks (no check is carried over a
        window's end): other operations get in between windows. The steps are _ImportPipeline's.

        A window never waits long for the source (the client's upload): a chunk journaled but
        not yet written holds the watermark, so every sink, and the window every other op. A
        source that breaks off (closed, killed, stalled) ends the import after the chunks it
        journaled are written, so no ticket waits on a client that is gone (issue 24: the
        watermark stayed below such a chunk until a restart)."""
        with _ImportPipeline(self, chunks, override, progress, client) as pipeline:
            try:
                while pipeline.take():  # a slow or stalled source is waited for here, holding nothing
                    with self._locks.hold_all():
                        pipeline.run_window(self.import_window)
                    time.sleep(0)  # let waiting operations take their stripes
            except Exception as e:
                # stored before it broke off (a refusal, the source's error): every chunk
                # journaled is in the KV by now, so this is what a re-run skips
                e.written = pipeline.written  # type: ignore[attr-defined]
                raise
            return pipeline.written

    def _import_journal(
        self, p: _Prepared, exists: pa.Array | None, ws: str, inflight: _InFlight | None, override: bool = False,
        client: str = "import",
    ) -> _InFlight | None:
        """Drop the states whose keys exist (exists: a mask, None under override; a key of the
        chunk still being written counts too), journal the rest, wait until it is durable."""
        pairs, state = p.pairs, p.state
        if exists is not None:
            if inflight is not None and inflight.ws == ws:
                exists = pc.or_(exists, pc.is_in(pairs.keys, value_set=inflight.pairs.keys))
            if pc.any(exists).as_py():
                keep = pc.invert(exists)
                pairs = KVPairs(pairs.keys.filter(keep), pairs.values.filter(keep))
                state = state.filter(keep)
        if not len(pairs):
            return None
        self._check_space()  # each chunk: an import that fills the disk stops at the floor
        ticket = self.writer.submit(_event_batch(state, "import", ws, override=override), owner=client)
        self.writer.wait_durable(ticket)
        return _InFlight(ws, pairs, state, ticket, p.n)

    def _import_finish(self, f: _InFlight, progress: Callable[[int], None] | None) -> int:
        """Wait for a chunk's KV write; resolve its ticket (or journal what the KV holds)."""
        assert f.future is not None
        try:
            f.future.result()
        except BaseException as e:
            if not self._compensate(f.changes(), f.ticket, e):
                raise
        else:
            self.writer.resolve(f.ticket)
        if progress:
            progress(f.n)
        return len(f.pairs)

    def init(
        self,
        sectors: Sequence[AllocatedSector],
        worker_state: str = ONLINE,
        fields: Mapping[str, Any] | None = None,
    ) -> list[SectorState]:
        """New states for allocated sectors (Go InitWith): ID, SectorType and optional fields."""
        self._coll(worker_state)
        extra = self._typed_fields(fields or {})
        out: list[SectorState] = []
        changes: list[_Change] = []
        for a in sectors:
            st = SectorState(id=a.id, sector_type=a.proof_type)
            for go, v in extra.items():
                setattr(st, STATE_FIELDS[go], v)
            out.append(st)
            changes.append(_Change(a.id, "init", worker_state, st, None, [(worker_state, st.to_go_json())]))
        with self._locks.hold(a.id for a in sectors):
            self._apply(changes)
        return out

    def update(self, sector_id: SectorID, fields: Mapping[str, Any], worker_state: str | None = None) -> SectorState:
        """Set fields (Go names like "Finalized" or attribute names like "finalized"; typed
        values or their Go JSON form) on a sector's state; returns the new state."""
        typed = self._typed_fields(fields)
        with self._locks.hold([sector_id]):
            ws, st = self._load(sector_id, worker_state)
            for go, v in typed.items():
                setattr(st, STATE_FIELDS[go], v)
            self._apply([_Change(sector_id, "update", ws, st, list(typed), [(ws, st.to_go_json())])])
            return st

    def finalize(self, sector_id: SectorID) -> SectorState:
        """Move a state from online (`meta`) to offline (`offline_meta`), Finalized set (Go
        StateManager.Finalize)."""
        return self._move(sector_id, ONLINE, OFFLINE, "finalize")

    def restore(self, sector_id: SectorID) -> SectorState:
        """Move a state from offline back to online, Finalized cleared (Go Restore)."""
        return self._move(sector_id, OFFLINE, ONLINE, "restore")

    def _move(self, sid: SectorID, src: str, dst: str, kind: str) -> SectorState:
        with self._locks.hold([sid]):
            _, st = self._load(sid, src)
            st.finalized = kind == "finalize"
            self._apply([_Change(sid, kind, dst, st, [], [(dst, st.to_go_json()), (src, None)])])
            return st

    def get(self, sector_id: SectorID, worker_state: str | None = None) -> SectorState:
        """The state (online first, then offline, unless worker_state says which)."""
        return self._load(sector_id, worker_state)[1]

    def locate(self, sector_id: SectorID) -> str | None:
        """"online", "offline" or None."""
        try:
            return self._load(sector_id, None)[0]
        except SectorNotFoundError:
            return None

    def list(self, worker_state: str = ONLINE, miner: int | None = None) -> Iterator[SectorState]:
        """States in one collection (optionally one miner's), in key order."""
        prefix = b"m-" if miner is None else b"m-%d-n-" % miner
        it = self._coll(worker_state).scan(prefix)
        try:
            for _k, v in it:
                yield SectorState.from_go_json(v)
        finally:
            it.close()

    # ---------------------------------------------------------------- sinks and status
    def add_sink(self, name: str, endpoint: Any, start_seq: int = 0) -> None:
        """Attach a sink; it resumes from its checkpoint file, else from start_seq (0: the
        oldest event still in the journal)."""
        with self._sinks_lock:
            if name in self._sinks:
                raise ValueError(f"sink {name!r} is already attached")
            d = SinkDispatcher(
                name,
                endpoint,
                self.journal,
                self.ckpt_dir,
                get_watermark=lambda: self.writer.durable_watermark,
                wait_watermark=self._wait_wm,
                max_rows=self.sink_max_rows,
                backoff=self.sink_backoff,
                start_seq=start_seq,
                bulk=lambda: self._bulk > 0,
                bulk_linger=self.sink_bulk_linger,
            )
            d.max_backlog = self.max_backlog
            path = self._space_paths().get(f"sink/{name}")
            if path is not None and self.floor.min_free:
                d.check_space = lambda: self.floor.check(path, f"sink {name}")
            if self._hurry:
                d.hurry.set()
            self._sinks[name] = d
        d.start()

    def rebuild_sink(self, name: str, endpoint: Any, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Refill a sink from the KV state (one row per sector), then let it go on from the
        journal; clears its needs-rebuild mark (see _rebuild.py)."""
        from ._rebuild import rebuild_sink

        return rebuild_sink(self, name, endpoint, progress)

    def remove_sink(self, name: str, forget: bool = False) -> None:
        """Detach a sink; forget=True also deletes its checkpoint (it stops holding the journal)."""
        with self._sinks_lock:
            d = self._sinks.pop(name, None)
        if d is not None:  # else not attached (its Constructor failed, or a failed pool's reload)
            d.stop()
        if forget:
            try:
                os.unlink(os.path.join(self.ckpt_dir, f"{name}.ckpt"))
            except FileNotFoundError:
                pass
            clear_mark(self.ckpt_dir, name)

    def status(self) -> dict[str, Any]:
        """{"journal": {head, watermark, committed, segments, frames, first_seq}, "sinks": {...}};
        a sink that is not attached (disabled, failed) is listed from its checkpoint file."""
        frames = self.journal.frames
        with self._sinks_lock:
            sinks = {n: d.status() for n, d in self._sinks.items()}
        wm = self.writer.durable_watermark
        for name, ckpt in stored_checkpoints(self.ckpt_dir).items():
            if name not in sinks:
                mark = read_mark(self.ckpt_dir, name)
                sinks[name] = {
                    "state": "needs-rebuild" if mark else "detached",
                    "attached": False,
                    "checkpoint": ckpt,
                    "lag": max(0, wm - ckpt),
                    "needs_rebuild": mark.get("cause") if mark else None,
                    "last_error": f"needs a rebuild: {mark.get('cause')}" if mark else None,
                }
        return {
            "journal": {
                "head": self.writer.next_seq - 1,
                "durable": self.writer.durable_seq,
                "committed": self.writer.committed,
                "watermark": self.writer.durable_watermark,
                "frames": len(frames),
                "segments": len({f.segment for f in frames}),
                "first_seq": frames[0].first_seq if frames else None,
                "broken": None if self.writer.broken is None else repr(self.writer.broken),
                "broken_since": self.writer.broken_since,
                "rejected": self.writer.rejected,
                "max_backlog": self.max_backlog,
                "held": self._held_status(),
                "disk_full": self.disk_full(),
                **self._stall_status(),
            },
            "sinks": sinks,
        }

    def wait_delivered(self, timeout: float = 30.0, seq: int | None = None) -> bool:
        """Block until every sink's checkpoint reaches seq (default: the current head)."""
        target = self.writer.next_seq - 1 if seq is None else seq
        deadline = time.monotonic() + timeout
        self._set_hurry(+1)
        try:
            while time.monotonic() < deadline:
                with self._sinks_lock:
                    ds = list(self._sinks.values())
                if all(d.checkpoint >= target for d in ds) and self.writer.durable_watermark >= target:
                    return True
                time.sleep(0.005)
            return False
        finally:
            self._set_hurry(-1)

    def _set_hurry(self, delta: int) -> None:
        with self._sinks_lock:
            self._hurry += delta
            for d in self._sinks.values():
                if self._hurry:
                    d.hurry.set()
                else:
                    d.hurry.clear()
        self._notify_wm(0)

    def compact(self) -> list[str]:
        """Delete journal segments every sink with a checkpoint (attached or not) has passed,
        except that a sink more than max_backlog events behind holds nothing; a sink whose
        events are then gone is marked as needing a rebuild (_backlog.py)."""
        wm = self.writer.durable_watermark
        with self._sinks_lock:
            attached = dict(self._sinks)
            holds = {n: c for n, c in stored_checkpoints(self.ckpt_dir).items() if n not in attached}
            holds.update({n: d.checkpoint for n, d in attached.items()})
            pins = list(self._pins.values())
        holds = {n: c for n, c in holds.items() if not (attached[n].needs_rebuild if n in attached else read_mark(self.ckpt_dir, n))}
        within = [c for c in holds.values() if self.max_backlog is None or wm - c <= self.max_backlog]
        removed = self.journal.compact(min([*within, *pins, wm]))
        if removed:
            for name, ckpt in holds.items():
                gap = find_gap(self.journal, ckpt, wm)
                if gap is None:
                    continue
                cause = gap_cause(gap, ckpt, wm, self.max_backlog)
                if name in attached:
                    attached[name].mark_rebuild(cause, gap)
                else:
                    write_mark(self.ckpt_dir, name, cause, gap)
        return removed

    def close(self, timeout: float = 10.0) -> None:
        """Finish pending frames, persist the watermark, stop the sink threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_held.set()
        self.writer.close(timeout)
        with self._sinks_lock:
            ds = list(self._sinks.values())
        for d in ds:
            d.stop(timeout)
        self.journal.close()
        self._wm.close()

    def __enter__(self) -> SectorStateManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _open_states(db: Any, ws: str) -> PrefixedKVStore:
        """The worker state's collection behind damocles' prefix, after moving bare keys there
        (before recovery, which compares the journal with what these keys hold)."""
        name, prefix = STATE_PREFIXES[ws]
        raw = db.open_collection(name)
        moved, kept = adopt_bare_keys(raw, prefix)
        if moved:
            log.info("sector states: moved %d bare keys m-<miner>-n-<number> in '%s' to damocles' %sm-<miner>-n-<number>", moved, name, prefix.decode())
        if kept:
            log.warning(
                "sector states: %d bare keys in '%s' were kept because %s<key> holds a different state (e.g. %s): compare and delete one",
                len(kept), name, prefix.decode(), kept[0].decode(),
            )
        return PrefixedKVStore(raw, prefix)

    def _coll(self, ws: str) -> Any:
        try:
            return self._colls[ws]
        except KeyError:
            raise ValueError(f"worker_state must be 'online' or 'offline', not {ws!r}") from None

    def _typed_fields(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in fields.items():
            go = k if k in STATE_FIELDS else _PY_FIELDS.get(k)
            if go is None:
                raise ValueError(f"unknown SectorState field {k!r}; known: {', '.join(STATE_FIELDS)}")
            if go == "ID":
                raise ValueError("field 'ID' cannot be updated")
            unknown: list[str] = []
            out[go] = decode_field(go, v, unknown)
            typos = sorted(set(unknown) - _LEGACY_KEYS)
            if typos:  # Go would ignore them and store zero values: a typo here stores junk (issue 13)
                raise ValueError(f"{go}: unknown key(s) {', '.join(typos)}: an update takes damocles' field names only")
        return out

    def _load(self, sid: SectorID, ws: str | None) -> tuple[str, SectorState]:
        key = sector_key(sid)
        for w in (ws,) if ws is not None else (ONLINE, OFFLINE):
            try:
                data = self._coll(w).get(key)
            except KeyNotFoundError:
                continue
            return w, SectorState.from_go_json(data)
        raise SectorNotFoundError(f"no sector m-{sid.miner}-n-{sid.number} ({ws or 'online or offline'})")

    def _notify_wm(self, _wm: int) -> None:
        with self._wm_cv:
            self._wm_cv.notify_all()

    def _wait_wm(self, above: int, timeout: float) -> int:
        with self._wm_cv:
            if self.writer.durable_watermark <= above:
                self._wm_cv.wait(timeout)
        return self.writer.durable_watermark

    def _row(self, c: _Change, time_us: int) -> dict[str, Any]:
        row = c.state.to_arrow_row() if c.state is not None else {"miner": c.sid.miner, "number": c.sid.number}
        row["kind"] = c.kind
        row["time"] = time_us
        row["worker_state"] = c.ws
        row["changed_fields"] = c.fields
        return row

    def _apply(self, changes: list[_Change]) -> None:
        """Write-ahead: journal (durable) -> KV -> resolve. Caller holds the stripes."""
        if not changes:
            return
        self._check_space()
        t = _op_time()  # one operation: its rows share a time
        first = changes[0]
        owner = f"{first.kind} of m-{first.sid.miner}-n-{first.sid.number}" + (f" and {len(changes) - 1} more" if len(changes) > 1 else "")
        if op_client.get():
            owner += f" by {op_client.get()}"
        ticket = self.writer.submit([self._row(c, t) for c in changes], owner=owner)
        self.writer.wait_durable(ticket)
        try:
            self._commit(changes)
        except BaseException as e:
            if not self._compensate(changes, ticket, e):
                raise
            return
        self.writer.resolve(ticket)

    def _check_space(self) -> None:
        """Refuse a new op (DiskFullError) while the journal's or the KV's filesystem is under
        MinFreeSpace: before it takes a seq, so nothing of it is journaled or stored."""
        self.floor.check(self.journal_dir, "sector event journal")
        if self.kv_path is not None:
            self.floor.check(self.kv_path, "sector KV")

    def disk_full(self) -> list[dict[str, str]]:
        """{"part", "path", "message": "disk full: PATH ..."} for each path of the manager
        (part "journal", "kv", "sink/<name>") under the floor now, and for the journal while a
        write of it is refused by a full disk."""
        out = []
        for part, path in (("journal", self.journal_dir), *sorted(self._space_paths().items())):
            free = self.floor.short(path)
            if free is not None:
                what = {"journal": "sector event journal", "kv": "sector KV"}.get(part, part)
                out.append({"part": part, "path": path, "message": str(DiskFullError(path, free, self.floor.min_free, what))})
        broken = self.writer.broken
        if broken is not None and not any(d["part"] == "journal" for d in out):
            err = self.writer.refusal(broken)
            if isinstance(err, DiskFullError):
                out.append({"part": "journal", "path": err.path, "message": str(err)})
        return out

    def _commit(self, changes: list[_Change]) -> None:
        # One transaction per collection, in first-use order: finalize puts offline, then
        # deletes online (as damocles does). Puts and deletes are idempotent: safe to retry.
        groups: dict[str, list[tuple[bytes, bytes | None]]] = {}
        for c in changes:
            key = sector_key(c.sid)
            for ws, val in c.writes:
                groups.setdefault(ws, []).append((key, val))
        for ws, writes in groups.items():
            if all(v is not None for _, v in writes):  # puts only: no function to pickle
                self._commit_puts(ws, writes)  # type: ignore[arg-type]
                continue
            attempt = 0
            while True:
                try:
                    self._update(ws, _apply_writes(writes))
                    break
                except TransactionConflictError:
                    raise  # _update already retried conflicts
                except Exception:
                    attempt += 1
                    if attempt >= self.commit_retries:
                        raise
                    time.sleep(0.05 * attempt)

    def _commit_puts(self, ws: str, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        """Bulk puts into one collection: one put_many round trip when the KVStore has it
        (the pooled proxy does; pairs may be KVPairs), else one update transaction.
        Idempotent: safe to retry."""
        coll = self._colls[ws]
        put_many = getattr(coll, "put_many", None)
        attempt = 0
        while True:
            try:
                if put_many is not None:
                    n = 0
                    while True:
                        try:
                            put_many(pairs)
                            break
                        except TransactionConflictError:
                            n += 1
                            if not self._retry[ws] or n > self.conflict_retries:
                                raise
                            time.sleep(min(0.001 * (2**n), 0.1))
                else:
                    self._update(ws, _apply_writes(list(pairs)))
                return
            except TransactionConflictError:
                raise
            except Exception:
                attempt += 1
                if attempt >= self.commit_retries:
                    raise
                time.sleep(0.05 * attempt)

    def _update(self, ws: str, fn: Callable[[Any], Any]) -> Any:
        coll = self._colls[ws]
        n = 0
        while True:
            try:
                return coll.update(fn)
            except TransactionConflictError:
                n += 1
                if not self._retry[ws] or n > self.conflict_retries:
                    raise
                time.sleep(min(0.001 * (2**n), 0.1))

    def _compensate(self, changes: list[_Change], ticket: Ticket, err: BaseException) -> bool:
        """The KV commit failed after the events were journaled: journal what the KV holds;
        True if the KV holds every change after all (the op then answers success: issue 25, a
        commit that landed despite its error was stored under an error). If the KV cannot say
        (its pool is down), the ticket stays unresolved and a thread asks again every second
        (issue 13: it stayed so until a restart, and every sink waited)."""
        log.error("sector KV commit failed after journaling seq %d-%d: %r", ticket.first, ticket.last, err)
        try:
            return self._journal_reverts(changes, ticket) == 0
        except Exception as e:  # noqa: BLE001 - the KV (or the journal) cannot answer now
            self._hold(changes, ticket, e)
            return False

    def _journal_reverts(self, changes: list[_Change], ticket: Ticket) -> int:
        """Journal a "revert" row with the KV's state for each change that did not commit,
        then resolve the ticket; returns how many. Raises if the KV cannot be read or the
        journal written."""
        reverts: list[_Change] = []
        for c in changes:
            actual = self._read_both(c.sid)
            if c.writes and actual.get(c.writes[0][0]) == c.writes[0][1] and all(
                actual.get(ws) is None for ws, v in c.writes[1:] if v is None
            ):
                continue  # it did commit after all
            if actual.get(ONLINE) is not None:
                reverts.append(_Change(c.sid, "revert", ONLINE, SectorState.from_go_json(actual[ONLINE]), None, []))
            elif actual.get(OFFLINE) is not None:
                reverts.append(_Change(c.sid, "revert", OFFLINE, SectorState.from_go_json(actual[OFFLINE]), None, []))
            else:
                reverts.append(_Change(c.sid, "revert", "none", None, None, []))
        if reverts:
            t = _op_time()
            rt = self.writer.submit([self._row(c, t) for c in reverts], owner=f"revert of seq {ticket.first}-{ticket.last}")
            self.writer.wait_durable(rt)
            self.writer.resolve(rt)
        self.writer.resolve(ticket)
        return len(reverts)

    def _hold(self, changes: list[_Change], ticket: Ticket, err: BaseException) -> None:
        """Keep the ticket unresolved (the watermark, so every sink, waits at it) and ask the KV
        again every second, holding the sectors' stripes meanwhile each time."""
        log.error("cannot tell whether seq %d-%d reached the KV (%r): sinks wait at it; asking again every second",
                  ticket.first, ticket.last, err)
        with self._held_mu:
            self._held.append([changes, ticket, f"{type(err).__name__}: {err}"])
            if self._held_thread is None or not self._held_thread.is_alive():
                self._held_thread = threading.Thread(target=self._retry_held, name="vsm-sectors-held", daemon=True)
                self._held_thread.start()

    def _retry_held(self) -> None:
        while not self._stop_held.wait(1.0):
            with self._held_mu:
                if not self._held:
                    self._held_thread = None
                    return
                items = list(self._held)
            for item in items:
                changes, ticket = item[0], item[1]
                try:
                    with self._locks.hold(c.sid for c in changes):
                        self._journal_reverts(changes, ticket)
                except Exception as e:  # noqa: BLE001 - still down: keep the cause current
                    item[2] = f"{type(e).__name__}: {e}"
                    continue
                with self._held_mu:
                    self._held.remove(item)
                log.info("seq %d-%d resolved: the KV answered again", ticket.first, ticket.last)

    def _stall_status(self) -> dict[str, Any]:
        """{"watermark_gap": events committed to the KV past the durable watermark, "watermark_age":
        seconds the watermark has waited for the ticket after it, "stalled": the problem when that
        ticket is older than STALLED_AFTER while committed events wait behind it (else None)}.
        A held ticket is its own problem ("held"), not this one."""
        blocking = self.writer.blocking()
        age = 0.0 if blocking is None else max(0.0, time.time() - blocking["since"])
        stalled = None
        if blocking is not None and age >= STALLED_AFTER and blocking["committed_behind"] and self._held_status() is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(blocking["since"]))
            stalled = (f"the watermark waits at seq {self.writer.durable_watermark} for seq {blocking['first']}-{blocking['last']} "
                       f"({blocking['owner'] or 'unnamed'}) since {since} ({age:.0f} s): {blocking['committed_behind']} events "
                       "committed to the KV wait behind it and reach no sink")
        return {"watermark_gap": self.writer.watermark_gap(), "watermark_age": round(age, 3), "stalled": stalled}

    def _held_status(self) -> str | None:
        with self._held_mu:
            if not self._held:
                return None
            first = min(i[1].first for i in self._held)
            last = max(i[1].last for i in self._held)
            cause = self._held[-1][2]
        return (f"the KV did not say whether seq {first}-{last} were committed ({cause}); the watermark and every sink "
                f"wait at seq {self.writer.durable_watermark} until it answers (asked every second)")

    def _read_both(self, sid: SectorID) -> dict[str, bytes | None]:
        key = sector_key(sid)
        out: dict[str, bytes | None] = {}
        for ws, coll in self._colls.items():
            try:
                out[ws] = coll.get(key)
            except KeyNotFoundError:
                out[ws] = None
        return out

    # ---------------------------------------------------------------- recovery
    def _recover(self, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """Reconcile journal frames past the durable watermark with the KV (see module doc).

        Column-wise, so the cost follows the sectors touched, not the events: every tail row's
        Go JSON at once (arrow_to_go_json), each distinct sector's two KV values read once in
        batched transactions (_read_many), the comparisons and "last match per sector" as
        array operations. (Row by row it was one decode and two KV round trips per event:
        ~1k events/s, 184 s for a 137k-event tail.)"""
        w = self._wm.value
        frames = self.journal.frames
        idx = next((i for i, f in enumerate(frames) if f.last_seq > w), len(frames))
        tail = frames[idx:]
        if not tail:
            return {"tail": 0, "kept": 0, "dropped": 0}

        def load(part: Sequence[Any]) -> pa.Table:
            maps: dict[str, Any] = {}  # one map per segment, not one per frame
            batches = [read_frame(self.journal.path(f), f.offset, f.length, maps) for f in part]
            # the schema given: checking each frame's against the first cost ~0.5 ms a frame
            return pa.Table.from_batches(batches, schema=batches[0].schema).combine_chunks()

        # in two halves on two threads: combining the ~1,200 frames of a 150k-event tail into
        # fresh memory is page faults (0.36 s, 0.18 s in halves); the table keeps 2 chunks
        half = len(tail) // 2
        with ThreadPoolExecutor(2) as pool:
            table = pa.concat_tables(list(pool.map(load, [tail[:half], tail[half:]] if half else [tail])))
        seq = np.asarray(table.column("seq").to_numpy(zero_copy_only=False))
        n_before = int(np.count_nonzero(seq <= w))  # seqs ascend: the past is a suffix
        past = table.slice(n_before)
        n = past.num_rows
        keep_past = self._reconcile(past, progress)
        kept = int(keep_past.sum())
        dropped = n - kept
        if dropped:
            # rewrite from the frame of the first dropped row on: the frames before it keep
            # their rows and seqs (a kill drops the last events, so this is the end of the tail)
            first_drop = n_before + int(np.argmin(keep_past))
            ends = np.cumsum([f.rows for f in tail])
            k = int(np.searchsorted(ends, first_drop, side="right"))
            while k > 0 and tail[k - 1].rows == 0:  # an empty frame just before (reserved seqs) goes too
                k -= 1
            start_row = int(ends[k - 1]) if k else 0
            keep = np.concatenate([np.ones(n_before, bool), keep_past])[start_row:]
            kept_table = table.slice(start_row).filter(pa.array(keep))
            kept_seq = seq[start_row:][keep]
            # rows at or below w: sinks may have them, as they are; the rest on from the seq
            # before them, so an empty frame in the tail (reserved or void seqs) leaves no hole
            n_le = int(np.count_nonzero(kept_seq <= w))
            base = w if start_row <= n_before else int(seq[start_row - 1])
            new_seq = pa.array([*kept_seq[:n_le].tolist(), *range(base + 1, base + 1 + len(kept_seq) - n_le)], pa.uint64())
            kept_table = kept_table.set_column(0, table.schema.field("seq"), new_seq)  # keep not-null
            batches = []
            for off in range(0, kept_table.num_rows, self.flush_rows):
                part = kept_table.slice(off, self.flush_rows).combine_chunks().to_batches()
                if not part:
                    continue
                b = part[0]
                col = b.column(0)
                batches.append((b, int(pc.min(col).as_py()), int(pc.max(col).as_py())))
            self.journal.replace_tail(idx + k, batches)
            new_w = base + len(kept_seq) - n_le
        else:
            new_w = tail[-1].last_seq
        self._wm.store(max(new_w, w))
        log.info("sector journal recovery: %d events past watermark %d, %d kept, %d dropped", n, w, kept, dropped)
        return {"tail": n, "kept": kept, "dropped": dropped}

    def _reconcile(self, past: pa.Table, progress: Callable[[int, int], None] | None) -> Any:
        """Which rows of the tail past the watermark to keep (a numpy bool array): per sector,
        every row up to the last one whose state the KV holds. Finishes a finalize/restore
        killed between its two KV writes when its event is the last one kept.

        Work follows the sectors: each sector's last row is checked first, and only the rows
        of a sector whose last one does not match (the few caught by the kill) are checked
        one by one; the offline collection is read only for sectors with an offline, gone or
        restore row."""
        n = past.num_rows
        if n == 0:
            return np.zeros(0, bool)
        keys = _sector_keys(past.column("miner"), past.column("number"))
        uniq = pc.unique(keys)
        sector = np.asarray(pc.index_in(keys, value_set=uniq).to_numpy(zero_copy_only=False))
        ws = np.asarray(past.column("worker_state").to_numpy(zero_copy_only=False), object)
        kind = np.asarray(past.column("kind").to_numpy(zero_copy_only=False), object)
        rows = np.arange(n)
        last_row = np.full(len(uniq), -1)
        np.maximum.at(last_row, sector, rows)
        with ThreadPoolExecutor(3) as pool:  # the KV reads run in the plugin's worker meanwhile
            reading = pool.submit(self._read_many, ONLINE, uniq, progress)
            # a filter, not a take: taking rows of ~80 nested columns cost ~50 ms per 20k rows
            mask = np.zeros(n, bool)
            mask[last_row[ws[last_row] != "none"]] = True
            encoded = np.full(n, -1)  # row -> its place in last_digests, or -1
            encoded[mask] = np.arange(int(mask.sum()))
            last_digests = _digests_in_parts(pool, past if mask.all() else past.filter(pa.array(mask)))
            online = reading.result()
        need_off = np.zeros(len(uniq), bool)
        need_off[sector[(ws != ONLINE) | (kind == "restore")]] = True
        offline = self._read_many(OFFLINE, uniq, progress, only=need_off)
        on, off = online.take(pa.array(sector)), offline.take(pa.array(sector))  # per row

        def same_bytes(rows: Any) -> Any:
            """Whether the KV holds each of these rows' bytes (numpy bool), by digest."""
            out = np.zeros(len(rows), bool)
            none = ws[rows] == "none"  # a revert to a sector gone from both collections
            if none.any():
                gone = pc.and_(pc.is_null(on), pc.is_null(off)).take(pa.array(rows[none]))
                out[none] = np.asarray(gone.to_numpy(zero_copy_only=False), bool)
            rest = rows[~none]
            if len(rest):
                idx = pa.array(rest)
                kv = pc.if_else(pa.array(ws[rest] == ONLINE), on.take(idx), off.take(idx))
                at = encoded[rest]
                if len(at) == len(last_digests) and at[0] == 0 and (np.diff(at) == 1).all():
                    mine = last_digests  # the last rows themselves, in order
                elif at.min() >= 0:
                    mine = last_digests.take(pa.array(at))
                else:  # rows ascend: a mask keeps their order
                    pick = np.zeros(n, bool)
                    pick[rest] = True
                    mine = _digests(arrow_to_go_json(past.filter(pa.array(pick))))
                out[~none] = np.asarray(pc.fill_null(pc.equal(mine, kv), False).to_numpy(zero_copy_only=False), bool)
            return out

        def same_state(rows: Any) -> Any:
            """Whether the KV holds each of these rows' state in other bytes, as an earlier
            release wrote it (_kv_holds): the value read and decoded. For rows whose bytes
            it does not hold."""
            out = np.zeros(len(rows), bool)
            wss = ws[rows]
            idx = pa.array(rows)
            kv = pc.if_else(pa.array(wss == ONLINE), on.take(idx), off.take(idx))
            held = np.asarray(pc.is_valid(kv).to_numpy(zero_copy_only=False), bool)
            check = np.flatnonzero((wss != "none") & held)
            if len(check):
                states = arrow_to_states(past.take(pa.array(rows[check])))
                values = self._values_at(uniq, sector[rows[check]], wss[check])
                for i, st, value in zip(check, states, values):
                    out[i] = value is not None and _same_state(value, st)
            return out

        last = np.where(same_bytes(last_row), last_row, -1)  # per sector: its last matching row
        unsure = rows[(last[sector] < 0) & (rows != last_row[sector])]
        if len(unsure):
            np.maximum.at(last, sector[unsure], np.where(same_bytes(unsure), unsure, -1))
        # Decoding only for sectors none of whose rows has the KV's bytes (an earlier release
        # wrote them, or the KV holds a state from before the tail). Where a row has them, the
        # KV holds exactly its state, and a later row in other bytes is another state: the
        # 6.85k updates a kill left uncommitted in the bench decoded for nothing (1.5 s of 5.9).
        undecided = rows[last[sector] < 0]
        if len(undecided):
            np.maximum.at(last, sector[undecided], np.where(same_state(undecided), undecided, -1))
        keep = rows <= last[sector]
        # finish a finalize/restore killed between its put and its delete
        has = last >= 0
        last_kind = np.full(len(uniq), None, object)
        last_kind[has] = kind[last[has]]
        for coll_ws, held, k in ((ONLINE, online, "finalize"), (OFFLINE, offline, "restore")):
            valid = np.asarray(pc.is_valid(held).to_numpy(zero_copy_only=False), bool)
            for i in np.flatnonzero(has & (last_kind == k) & valid):
                self._update(coll_ws, _apply_writes([(uniq[int(i)].as_py(), None)]))
        return keep

    def _read_many(
        self, ws: str, keys: pa.Array, progress: Callable[[int, int], None] | None, only: Any = None, chunk: int = 20_000
    ) -> pa.Array:
        """A 16-byte digest of the collection's value for each key (null where missing, or not in
        the `only` mask), in read transactions of `chunk` keys: one pool round trip each, and
        digests, not values, cross from the worker (137k states: 200 MB of values, 2 MB of digests)."""
        coll = self._colls[ws]
        wanted = keys if only is None else pc.filter(keys, pa.array(only))
        found: dict[bytes, bytes] = {}
        for off in range(0, len(wanted), chunk):
            found.update(coll.view(_values_of(wanted.slice(off, chunk), digest=True)))
            if progress is not None:
                progress(off + min(chunk, len(wanted) - off), len(wanted))
        return pa.array([found.get(k) for k in keys.to_pylist()], pa.binary())

    def _values_at(self, uniq: pa.Array, sectors: Any, wss: Any) -> list[bytes | None]:
        """The KV values themselves, for a few (sector, worker state) pairs."""
        out: list[bytes | None] = [None] * len(sectors)
        for ws in (ONLINE, OFFLINE):
            at = np.flatnonzero(wss == ws)
            if len(at):
                keys = uniq.take(pa.array(sectors[at]))
                found = self._colls[ws].view(_values_of(keys))
                for i, k in zip(at, keys.to_pylist()):
                    out[int(i)] = found.get(k)
        return out


def _digests_in_parts(pool: ThreadPoolExecutor, table: pa.Table, parts: int = 4) -> pa.Array:
    """_digests(arrow_to_go_json(table)), in parts on the pool's threads: the encoder's Arrow
    kernels release the GIL, so one part's hashing runs beside another's encoding (140k
    states: encoding 0.96 s in one thread, 0.55 s in four parts)."""
    n = table.num_rows
    bounds = [n * i // parts for i in range(parts + 1)] if n >= 20_000 else [0, n]
    chunks = pool.map(lambda part: _digests(arrow_to_go_json(part)), [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    return pa.concat_arrays(list(chunks))


def _sector_keys(miner: Any, number: Any) -> pa.Array:
    """KV keys `m-<miner>-n-<number>` (sector_key) of two columns, as a binary array."""
    key = pc.binary_join_element_wise("m-", pc.cast(miner, pa.string()), "-n-", pc.cast(number, pa.string()), "")
    return key.cast(pa.binary())


def _values_of(key_arr: pa.Array, digest: bool = False) -> Callable[[Any], dict[bytes, bytes]]:
    """A view function: key -> value (digest: its _digest) of the keys present."""

    def fn(txn: Any) -> dict[bytes, bytes]:
        import hashlib

        out = {}
        for k in key_arr.to_pylist():
            try:
                v = txn.get(k)
            except KeyNotFoundError:
                continue
            out[k] = hashlib.sha256(v).digest()[:16] if digest else v  # as _digests
        return out

    return fn


def _digests(values: pa.Array) -> pa.Array:
    """The first 16 bytes of each value's SHA-256, as _values_of(digest=True) makes them in the
    KV's worker (SHA-256 rather than BLAKE2b: ~1.5x faster here, where the CPU has SHA
    instructions)."""
    import hashlib

    return pa.array([None if v is None else hashlib.sha256(v).digest()[:16] for v in values.to_pylist()], pa.binary())


def _same_state(value: bytes, st: SectorState) -> bool:
    """Whether KV bytes that differ from this release's encoding decode to the state `st`."""
    try:
        return decode_state_json(value) == st
    except ValueError:
        return False


def _kv_holds(value: bytes | None, st: SectorState) -> bool:
    """Whether a KV value is the state `st`: the bytes this release writes for it, or bytes an
    earlier one wrote for the same state. A tail left by a killed earlier release holds the
    latter: its encoder wrote e.g. `"Deals":null` in Pre and `""` for an undefined address
    (before fe4bd3b), so comparing bytes alone dropped an event whose KV commit had landed and
    every sink missed it (tests/upgrade)."""
    if value is None:
        return False
    if value == st.to_go_json():
        return True
    try:
        return decode_state_json(value) == st
    except ValueError:
        return False


def _existing(coll: Any, keys: pa.Array, override: bool) -> pa.Array | None:
    """Which keys the collection holds, as a boolean mask (None under override: no check).
    A pooled KVStore answers in one call (its plugin may answer in one query: sqlitekv)."""
    if override or not len(keys):
        return None
    many = getattr(coll, "existing", None)
    found = many(keys) if many is not None else coll.view(_existing_keys(keys))
    return pc.is_in(keys, value_set=pa.array(list(found), pa.binary()))


def _existing_keys(key_arr: pa.Array) -> Callable[[Any], set[bytes]]:
    def fn(txn: Any) -> set[bytes]:
        out = set()
        for k in key_arr.to_pylist():
            try:
                txn.get(k)
            except KeyNotFoundError:
                continue
            out.add(k)
        return out

    return fn


def _apply_writes(writes: list[tuple[bytes, bytes | None]]) -> Callable[[Any], None]:
    def fn(txn: Any) -> None:
        for k, v in writes:
            if v is None:
                try:
                    txn.delete(k)
                except KeyNotFoundError:
                    pass
            else:
                txn.put(k, v)

    return fn


class _ImportPipeline:
    """The stages of one bulk import (see SectorStateManager._import_pipelined), as named steps.

    Write-ahead order, which the crash argument needs, holds in `_step`: a chunk's KV write is
    submitted only after its frame is durable (`_journal`), and a chunk journaled but never
    written is compensated when the write before it fails (`_finish_previous`).
    """

    def __init__(self, mgr: SectorStateManager, chunks: Iterator[tuple[str, Any]], override: bool,
                 progress: Callable[[int], None] | None, client: str = "import") -> None:
        self.mgr, self.chunks, self.override, self.progress, self.client = mgr, chunks, override, progress, client
        self.written = 0
        self._enc = ThreadPoolExecutor(1, thread_name_prefix="vsm-import-encode")
        self._kv = ThreadPoolExecutor(1, thread_name_prefix="vsm-import-kv")
        self._next: Future[_Prepared | None] | None = self._enc.submit(self._produce)
        try:
            self.current: _Prepared | None = self._take_next()
        except BaseException:
            self.__exit__()
            raise
        self._check: Future[pa.Array | None] | None = None  # existence of current's keys
        self._inflight: _InFlight | None = None  # journaled, KV write running

    def __enter__(self) -> _ImportPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._enc.shutdown(wait=True, cancel_futures=True)
        self._kv.shutdown(wait=True)

    def take(self) -> bool:
        """Whether a chunk is left to import: waits for the source if the last window could not
        (outside the stripes); raises the source's error, once every chunk journaled is written."""
        if self.current is None and self._next is not None:
            self.current = self._take_next()
        return self.current is not None

    def run_window(self, window: int) -> None:
        """Up to `window` chunks under the caller's stripes; the last write is waited for. It
        ends early when the source has no next chunk ready within _SOURCE_WAIT (or failed)."""
        try:
            for i in range(window):
                self._step(check_next=i + 1 < window)
                if self.current is None:
                    break
        finally:
            self._check = None  # an existence check never outlives the window's stripes
            if self._inflight is not None:
                prev, self._inflight = self._inflight, None
                self.written += self.mgr._import_finish(prev, self.progress)

    def _step(self, check_next: bool) -> None:
        p = self.current
        assert p is not None
        staged = self._journal(p)
        self.current = self._take_next() if self._next_ready() else None  # else take() waits, outside
        if self.current is not None and check_next:
            self._check = self._kv.submit(_existing, self.mgr._colls[self.current.ws], self.current.pairs.keys, self.override)
        self._finish_previous(staged)
        if staged is not None:
            staged.future = self._kv.submit(self.mgr._commit_puts, staged.ws, staged.pairs)
            self._inflight = staged
        elif self.progress:
            self.progress(p.n)

    def _journal(self, p: _Prepared) -> _InFlight | None:
        """Existing keys out (unless override), the rest journaled and durable."""
        check = self._check or self._kv.submit(_existing, self.mgr._colls[p.ws], p.pairs.keys, self.override)
        self._check = None
        return self.mgr._import_journal(p, check.result(), p.ws, self._inflight, self.override, self.client)

    def _finish_previous(self, staged: _InFlight | None) -> None:
        """Wait for the previous chunk's KV write; if it failed, `staged` (journaled, never
        written) is compensated too, so sinks hear what the KV really holds."""
        if self._inflight is None:
            return
        prev, self._inflight = self._inflight, None
        try:
            self.written += self.mgr._import_finish(prev, self.progress)
        except BaseException as e:
            if staged is not None:
                self.mgr._compensate(staged.changes(), staged.ticket, e)
            raise

    def _produce(self) -> _Prepared | None:
        c = next(self.chunks, None)
        return None if c is None else _prepare_import(*c)

    def _next_ready(self) -> bool:
        """Whether the source gave the next chunk (or its end) within _SOURCE_WAIT: a chunk was
        just journaled and every stripe is held, so a client is never waited for longer. A
        source that failed is not ready: its error is raised by take(), after this window."""
        nxt = self._next
        if nxt is None:
            return True
        done, _ = futures_wait([nxt], _SOURCE_WAIT)
        return bool(done) and nxt.exception() is None

    def _take_next(self) -> _Prepared | None:
        """The chunk the encode thread prepared; it starts on the one after at once."""
        p = self._next.result() if self._next is not None else None
        self._next = self._enc.submit(self._produce) if p is not None else None
        return p


class _InFlight:
    """An import chunk journaled (ticket durable) whose KV write may be running (future)."""

    __slots__ = ("ws", "pairs", "state", "ticket", "n", "future")

    def __init__(self, ws: str, pairs: KVPairs, state: pa.RecordBatch, ticket: Ticket, n: int) -> None:
        self.ws, self.pairs, self.state, self.ticket, self.n = ws, pairs, state, ticket, n
        self.future: Future[None] | None = None

    def changes(self) -> list[_Change]:
        miner, number = self.state.column("miner").to_pylist(), self.state.column("number").to_pylist()
        return [
            _Change(SectorID(m, n), "import", self.ws, None, None, [(self.ws, v)], v)
            for m, n, v in zip(miner, number, self.pairs.values.to_pylist())
        ]


class _Prepared:
    """One import chunk, encoded outside the stripes: state columns, KV keys and Go JSON."""

    __slots__ = ("ws", "state", "pairs", "miner", "number", "n")

    def __init__(self, ws: str, state: pa.RecordBatch) -> None:
        self.ws, self.state = ws, state
        self.n = state.num_rows
        miner, number = state.column("miner"), state.column("number")
        self.miner, self.number = miner, number
        key = pc.binary_join_element_wise("m-", pc.cast(miner, pa.string()), "-n-", pc.cast(number, pa.string()), "")
        self.pairs = KVPairs(key.cast(pa.binary()), arrow_to_go_json(state))


def _prepare_import(ws: str, chunk: pa.Table | pa.RecordBatch | list[SectorState]) -> _Prepared:
    if isinstance(chunk, list):
        chunk = states_to_arrow(chunk)
    if isinstance(chunk, pa.Table):
        chunk = chunk.combine_chunks().to_batches()[0] if chunk.num_rows else pa.RecordBatch.from_pylist([], schema=chunk.schema)
    return _Prepared(ws, chunk)


def _routed(chunks: Iterator[Any], ws: str | None) -> Iterator[tuple[str, Any]]:
    """(worker state, chunk) for each chunk: all in ws, or (ws None) split as damocles' JSON
    import routes a state (`util sealer sectors state import-json`): offline if Finalized."""
    for chunk in chunks:
        if ws is not None:
            yield ws, chunk
            continue
        if isinstance(chunk, list):
            n_final = sum(1 for s in chunk if s.finalized)
        else:
            finalized = pc.fill_null(chunk.column("finalized"), False)
            n_final = pc.sum(finalized).as_py() or 0
        if n_final in (0, len(chunk)):  # the usual case: no copy
            yield (OFFLINE if n_final else ONLINE), chunk
        elif isinstance(chunk, list):
            yield ONLINE, [s for s in chunk if not s.finalized]
            yield OFFLINE, [s for s in chunk if s.finalized]
        else:
            yield ONLINE, chunk.filter(pc.invert(finalized))
            yield OFFLINE, chunk.filter(finalized)


_EVENT_PREFIX = SECTOR_EVENT_SCHEMA.names[: SECTOR_EVENT_SCHEMA.get_field_index("miner")]


def _event_batch(state: pa.RecordBatch, kind: str, ws: str, override: bool = False) -> pa.RecordBatch:
    """Event rows for states of one kind, column-wise (the flusher fills in seq). An import's
    rows are one operation per state, as damocles' Import; they share one time."""
    n = state.num_rows
    f = SECTOR_EVENT_SCHEMA.field
    zeros = pa.nulls(n, pa.int8()).fill_null(0)
    head = [
        pa.nulls(n, pa.uint64()).fill_null(0),
        pa.array([kind], pa.string()).take(zeros),
        pa.array([_op_time()], pa.int64()).take(zeros).cast(f("time").type),
        pa.array([ws], pa.string()).take(zeros),
        pa.array([OVERRIDE_FIELDS], f("changed_fields").type).take(zeros) if override else pa.nulls(n, f("changed_fields").type),
    ]
    assert len(head) == len(_EVENT_PREFIX)
    return pa.RecordBatch.from_arrays(head + [state.column(i) for i in range(state.num_columns)], schema=SECTOR_EVENT_SCHEMA)
