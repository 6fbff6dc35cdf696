"""Worker side of a SyncSectorState plugin: turn journal frames into the plugin's hook calls.

A local pool's worker is sent only frame references (segment file, offset, length) and maps the
segment (`pa.memory_map`), decoding zero-copy (`deliver`). A Ray sink actor, maybe on another
node, is handed the frames themselves as refs to one shared object-store copy (`deliver_batch`,
vsm/sectors/_dispatch.py). A vectorised sink gets one RecordBatch per
delivery (`on_batch`; a sink object with `accepts_tables = True` gets a pa.Table of the
delivery's journal frames instead, without copying them together); a Go-style sink gets its
per-event hooks, once per operation and with the arguments of damocles' state manager
(`modules/impl/sectors/state_mgr.go`), in its order:

    import   -> OnImport(worker_state, state, override)      one per state, as Go's Import; override
                                                             as given (rows of an override import
                                                             carry changed_fields ["*"])
    init     -> OnInit(sectors: list[AllocatedSector], worker_state)   one per init operation
                                                             (Go InitWith: the rows that share
                                                             their time, which no two operations do)
    update   -> OnUpdate(sector_id, worker_state, fields: {GoName: typed value})   (Go: []any)
    finalize -> OnFinalize(sector_id)
    restore  -> OnRestore(sector_id)
    revert   -> OnImport(worker_state, state, True)           (no Go hook; skipped if the
                                                               sector no longer exists)
    rebuild  -> OnImport(worker_state, state, True)           (a sink refilled from the KV)
"""

from __future__ import annotations

import importlib
import mmap
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.sectors import STATE_FIELDS, AllocatedSector, SectorID, SectorState, cast_by_name, union_schema

from ._journal import read_frame

__all__ = ["SinkHost", "make_sink_host", "HOOKS", "OVERRIDE_FIELDS"]

# changed_fields of the rows of an import made with override (damocles' Import(..., true)):
# every field may have been replaced. A plain import, like an init, has null.
OVERRIDE_FIELDS = ["*"]

# extPoint -> method name on a Constructor's object
HOOKS = {
    "OnBatch": "on_batch",
    "OnImport": "on_import",
    "OnInit": "on_init",
    "OnUpdate": "on_update",
    "OnFinalize": "on_finalize",
    "OnRestore": "on_restore",
}


class SinkHost:
    """Holds one sink (module hooks and/or a Constructor's object) inside a worker."""

    def __init__(self, hooks: Mapping[str, Callable[..., Any]] | None = None, sink_obj: Any = None) -> None:
        self.sink = sink_obj
        self._fn: dict[str, Callable[..., Any]] = {}
        for ext, meth in HOOKS.items():
            f = (hooks or {}).get(ext)
            if f is None and sink_obj is not None:
                f = getattr(sink_obj, meth, None)
            if f is not None:
                self._fn[ext] = f
        if not self._fn:
            raise ValueError("sink exports no hook: need OnBatch or one of OnImport/OnInit/OnUpdate/OnFinalize/OnRestore")
        self._maps: dict[str, mmap.mmap] = {}  # journal segment -> its map (read_frame)
        # A sink object with `accepts_tables = True` gets a delivery of several journal frames
        # as one pa.Table of them (no copy); others get one RecordBatch, the frames copied
        # together (for 100k rows ~70 ms of page faults and copying, even for a sink that
        # reads nothing).
        self._tables = bool(getattr(sink_obj, "accepts_tables", False)) and "OnBatch" not in (hooks or {})
        self.last_seq = 0

    @classmethod
    def from_module(cls, module: Any, exports: Mapping[str, str], meta: Mapping[str, str] | None = None) -> SinkHost:
        """From an imported plugin module and its manifest exports {extPoint: impl}."""
        hooks = {ext: getattr(module, impl) for ext, impl in exports.items() if ext in HOOKS}
        obj = None
        if "Constructor" in exports:
            obj = getattr(module, exports["Constructor"])(dict(meta or {}))
        return cls(hooks, obj)

    # -- delivery ------------------------------------------------------------------------
    def read(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int = 0) -> pa.RecordBatch | None:
        """The rows of frames with seq > after_seq as one RecordBatch (zero-copy for one frame)."""
        paths = [os.path.join(segments_dir, seg) for seg, _, _ in frames]
        batches = [read_frame(path, off, n, self._maps) for path, (_, off, n) in zip(paths, frames)]
        for path in set(self._maps) - set(paths):  # passed: compaction may delete the file
            del self._maps[path]
        return _after(batches, after_seq, self._tables)

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int = 0) -> int:
        """Deliver frames to the sink; returns the last seq delivered (after_seq if none)."""
        return self._deliver(self.read(segments_dir, frames, after_seq), after_seq)

    def deliver_batch(self, batch: pa.RecordBatch | Sequence[Any], after_seq: int = 0) -> int:
        """Deliver journal batches handed over in memory (a sink on another Ray node cannot map
        the journal); same dedupe by seq and return value as `deliver`.

        batch: a RecordBatch, or a list of RecordBatches and/or Ray ObjectRefs of them (the
        dispatcher's shared frames, issue 7: one object-store copy read by every sink actor;
        fetched here with one ray.get).
        """
        parts = [batch] if isinstance(batch, pa.RecordBatch) else list(batch)
        refs = [i for i, p in enumerate(parts) if not isinstance(p, pa.RecordBatch)]
        if refs:
            ray = sys.modules.get("ray")  # only a Ray actor is handed refs, and it has Ray loaded
            if ray is None:
                raise TypeError(f"deliver_batch: got {type(parts[refs[0]]).__name__}, not a RecordBatch, outside Ray")
            for i, got in zip(refs, ray.get([parts[i] for i in refs])):
                parts[i] = got
        return self._deliver(_after(parts, after_seq, self._tables), after_seq)

    def _deliver(self, batch: pa.RecordBatch | pa.Table | None, after_seq: int) -> int:
        if batch is None:
            return after_seq
        if "OnBatch" in self._fn:
            self._fn["OnBatch"](batch)
        else:
            self._per_event(batch)
        self.last_seq = int(batch.column(0)[-1].as_py())
        return self.last_seq

    def _per_event(self, batch: pa.RecordBatch) -> None:
        fn = self._fn
        rows = batch.to_pylist()
        i = 0
        while i < len(rows):
            r = rows[i]
            kind, ws = r["kind"], r["worker_state"]
            sid = SectorID(r["miner"], r["number"])
            if kind == "init":
                j = i
                group = []
                while j < len(rows) and rows[j]["kind"] == "init" and rows[j]["worker_state"] == ws and rows[j]["time"] == r["time"]:
                    group.append(AllocatedSector(SectorID(rows[j]["miner"], rows[j]["number"]), rows[j]["sector_type"]))
                    j += 1
                if "OnInit" in fn:
                    fn["OnInit"](group, ws)
                i = j
                continue
            if kind == "import" and "OnImport" in fn:
                fn["OnImport"](ws, SectorState.from_arrow_row(r), r["changed_fields"] == OVERRIDE_FIELDS)
            elif kind in ("revert", "rebuild") and ws != "none" and "OnImport" in fn:
                fn["OnImport"](ws, SectorState.from_arrow_row(r), True)
            elif kind == "update" and "OnUpdate" in fn:
                st = SectorState.from_arrow_row(r)
                fields = {go: getattr(st, STATE_FIELDS[go]) for go in (r["changed_fields"] or [])}
                fn["OnUpdate"](sid, ws, fields)
            elif kind == "finalize" and "OnFinalize" in fn:
                fn["OnFinalize"](sid)
            elif kind == "restore" and "OnRestore" in fn:
                fn["OnRestore"](sid)
            i += 1

    @property
    def hooks(self) -> list[str]:
        """The extension points this sink is served by (OnBatch, OnImport, ...)."""
        return list(self._fn)

    def wrap_hooks(self, wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace every bound hook by wrap(extPoint, hook): the conformance kit records what
        the sink is given this way (vsm/plugin/conformance/_sink_probe.py)."""
        self._fn = {ext: wrap(ext, f) for ext, f in self._fn.items()}

    def delivery_hints(self) -> dict[str, Any]:
        """What the sink asks of its dispatcher: {"linger": seconds}, how long a delivery may
        wait for more rows (the sink object's `batch_linger`; 0, the default: at once). A sink
        that writes a file per delivery uses it to write fewer, larger files. "notes": the sink
        object's `notes`, lines for the operator about what it found when it opened (data of an
        earlier release, kept as it is); the manager logs them."""
        hints: dict[str, Any] = {"linger": float(getattr(self.sink, "batch_linger", 0.0) or 0.0)}
        notes = getattr(self.sink, "notes", None)
        if notes:
            hints["notes"] = [str(n) for n in notes]
        return hints

    # -- queries and lifecycle ---------------------------------------------------------------
    def query(self, sql: str, limits: Mapping[str, Any] | None = None) -> bytes:
        """Run sql on the sink (if it has `query`); the result as Arrow IPC stream bytes.
        limits: {"max_bytes", "timeout"} for a sink whose query takes them (the bundled ones)."""
        q = getattr(self.sink, "query", None)
        if q is None:
            from vsm.sdk import InvalidRequestError

            raise InvalidRequestError("this sink does not answer queries")
        res = q(sql, **limits) if limits and _takes(q, limits) else q(sql)
        if isinstance(res, (bytes, bytearray, memoryview)):
            return bytes(res)
        table = res if isinstance(res, pa.Table) else pa.table(res)
        out = pa.BufferOutputStream()
        with pa.ipc.new_stream(out, table.schema) as w:
            w.write_table(table)
        return out.getvalue().to_pybytes()

    def drop(self) -> bool:
        """The sink's drop() (remove what it stored), if it has one: `vsm-pool plugin test` and
        `plugin bench` call it on the instance they made; the manager never does."""
        fn = getattr(self.sink, "drop", None)
        if fn is None:
            return False
        fn()
        return True

    def close(self) -> None:
        c = getattr(self.sink, "close", None)
        if c is not None:
            c()
        self._maps.clear()  # each map is unmapped once the last batch read from it is gone


def _takes(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind("", **kwargs)
    except TypeError:
        return False
    return True


def _after(batches: list[pa.RecordBatch], after_seq: int, table: bool = False) -> pa.RecordBatch | pa.Table | None:
    """The rows with seq > after_seq of consecutive batches, as one RecordBatch, or (table)
    a pa.Table of them when there are several (None if no row)."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return None
    batch: pa.RecordBatch | pa.Table
    if len(batches) == 1:
        batch = batches[0]
    else:
        try:
            whole = pa.Table.from_batches(batches)
        except pa.ArrowInvalid:  # frames of an earlier release's schema beside this one's
            whole = _one_schema(batches)
        batch = whole if table else whole.combine_chunks().to_batches()[0]
    seq = batch.column(0)
    if pc.min(seq).as_py() <= after_seq:
        batch = batch.filter(pc.greater(seq, pa.scalar(after_seq, pa.uint64())))
    return batch if batch.num_rows else None


def _one_schema(batches: list[pa.RecordBatch]) -> pa.Table:
    """Frames written in different event schemas (a release changed it, and a sink that was
    behind at the upgrade gets old frames and new ones together) as one table in the union of
    their schemas, fields matched by name: nothing an old frame carries is dropped, and what
    it lacks is null. The sink stores them in the schema it keeps (see its own docstring)."""
    schema = union_schema([b.schema for b in batches])
    return pa.Table.from_batches([cast_by_name(b, schema) for b in batches], schema=schema)


def make_sink_host(module: str, exports: Mapping[str, str], meta: Mapping[str, str] | None = None, path: str | None = None) -> SinkHost:
    """PoolSpec.init for a sink pool: import `module` (from `path` if given) and build its host."""
    if path and path not in sys.path:
        sys.path.insert(0, path)
    return SinkHost.from_module(importlib.import_module(module), exports, meta)


def ipc_to_table(data: bytes) -> pa.Table:
    """Decode what SinkHost.query returns."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
