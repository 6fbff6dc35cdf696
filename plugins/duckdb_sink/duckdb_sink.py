"""duckdb: a SyncSectorState sink writing sector events into a DuckDB file, without row loops.

Meta: `Path` (database file; ":memory:" for tests). Tables:

- `sector_events`: every event, columns of vsm.sdk.sectors.SECTOR_EVENT_SCHEMA, nested kept.
- `sectors`: the latest state per (miner, number), with the seq/kind/time/worker_state of the
  event that produced it; a "revert" to a sector that no longer exists deletes its row. It is a
  view: `sector_heads` (miner, number, seq; primary key miner, number) points at the event row,
  so each state is stored once. Writing the nested state a second time into a `sectors` table
  halved bulk ingest and an upsert of it cost ~20 ms a batch. (A file made when `sectors` was a
  table keeps that table, maintained as before.)
- `sink_meta`: key `max_seq`, the highest seq stored. Delivery is at-least-once: rows with
  seq <= max_seq are skipped, all in one transaction with the inserts, so a redelivered batch
  changes nothing.

Each batch: drop rows at or below max_seq, keep the last event per sector (in Arrow), then in
one transaction INSERT ... SELECT the batch into `sector_events`, its latest rows as
(miner, number, seq) into `sector_heads` (a plain INSERT when every row is an import/init,
retried as INSERT OR REPLACE if a sector exists; INSERT OR REPLACE otherwise: index lookups,
no scan), and set max_seq. The batch reaches SQL through `con.register` (~1 ms a batch):
DuckDB's replacement scan of a Python variable was cheaper but counts as external access,
which client queries must not have.

A file made by an earlier release keeps its tables as they are: if that release's event
schema had fields this one dropped (`pre.deals`, before fe4bd3b), the columns stay, with their
values, and new rows are stored with null there (the batch is reshaped to the table by field
name in Arrow, `shaped_like` + `cast_by_name`: DuckDB before 1.2 refuses to insert a struct
with fewer fields). Nothing is rewritten; the sink says so once per start (`notes`).

DuckDB's own memory_limit (default: 80% of the machine's RAM) is set to half of what the
worker's MemoryLimit (RLIMIT_DATA) leaves when the database opens, so a query or an ingest that
needs more spills to `<Path>.tmp` (beside the file: a sandboxed sink may write there) instead of
failing with DuckDB's OutOfMemoryException once its allocations hit the limit. Half, because
DuckDB allocates beyond its buffer pool too (a 150 MB memory_limit peaked at ~300 MB of
RLIMIT_DATA in a 12M-group aggregation) and Python and Arrow need the rest. With no
MemoryLimit (0) DuckDB's default stays.

`query(sql)` is a client's SQL (issue 20): it runs confined (vsm.sdk.sectorsync.run_query):
one SELECT in a read-only transaction on its own cursor, the database locked down at open
(no file access, no extensions, no SET: confine_duckdb), result bytes and time bounded.
It returns a pyarrow.Table (the host sends it as IPC).

Meta `Threads` (default 1): DuckDB threads, ingest and queries alike (the configuration is
locked after open). Per batch DuckDB's fixed cost is CPU (~7 ms for a few rows of these ~80
nested columns with one thread, ~10 ms with two), and a second thread gained nothing for
100k-row batches on 2 cores where the manager and the other sinks want the other core. `0`:
DuckDB's default.
"""

from __future__ import annotations

import builtins
import resource
import threading
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.diskspace import disk_full_as_error
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, cast_by_name, fields_beyond, shaped_like
from vsm.sdk.sectorsync import QUERY_MAX_BYTES, QUERY_TIMEOUT, confine_duckdb, run_query

__all__ = ["DuckDBSink", "open"]


def open(meta: dict[str, str]) -> DuckDBSink:  # noqa: A001 - the exported Constructor's name
    """Constructor: meta["Path"] is the database file (created if missing)."""
    path = meta.get("Path") or meta.get("path")
    if not path:
        raise ValueError("duckdb sink: meta key 'Path' (the database file) is required")
    try:
        threads = int(meta.get("Threads", 1))
    except ValueError:
        raise ValueError(f"duckdb sink: meta key 'Threads' must be an integer, got {meta['Threads']!r}") from None
    try:
        return DuckDBSink(path, threads=threads)
    except duckdb.Error as e:
        if not any(sign in str(e) for sign in _DAMAGED):
            raise
        # issue 25: the generic "fix what it names" left an operator with a damaged file and no way back
        raise RuntimeError(
            f"duckdb sink: the database {path} is damaged ({' '.join(str(e).split())}): stop the daemon and run "
            "`vsm-pool doctor --repair`, which sets the file aside (kept) and rebuilds this sink from the sector states"
        ) from None


# What DuckDB says of a file that is damaged, never of one that is busy or on a full disk.
_DAMAGED = ("Corrupt database file", "Could not read enough bytes", "not a valid DuckDB database file")


def _duckdb_memory_limit() -> int:
    """Bytes for DuckDB's memory_limit under this worker's RLIMIT_DATA (0: none set): half of
    what is left of it now, at least 64 MiB."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if soft == resource.RLIM_INFINITY:
        return 0
    used = 0
    try:
        with builtins.open("/proc/self/status") as f:  # VmData: what RLIMIT_DATA counts
            used = next((int(line.split()[1]) << 10 for line in f if line.startswith("VmData:")), 0)
    except OSError:
        pass
    return max(64 << 20, (soft - used) // 2)


def _arrow(rel: Any) -> pa.Table:
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        f = getattr(rel, name, None)
        if f is not None:
            out = f()
            return out if isinstance(out, pa.Table) else out.read_all()
    raise TypeError(f"cannot fetch Arrow from {type(rel).__name__}")


def _latest_per_sector(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """The batch's last event per (miner, number): the batch itself when no sector repeats."""
    if batch.num_rows < 2:
        return batch
    miner, number = batch.column("miner"), batch.column("number")
    if pc.max(miner).as_py() < 1 << 32 and pc.max(number).as_py() < 1 << 32:
        key = pc.add(pc.shift_left(miner, 32), number)  # one exact uint64 per sector
        if pc.count_distinct(key).as_py() == batch.num_rows:  # ~3x cheaper than group_by
            return batch
    t = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    last = t.select(["miner", "number", "seq"]).group_by(["miner", "number"]).aggregate([("seq", "max")])
    if last.num_rows == batch.num_rows:
        return batch
    return batch.filter(pc.is_in(batch.column("seq"), last.column("seq_max")))


class DuckDBSink:
    accepts_tables = True  # a delivery of several journal frames comes as one pa.Table

    def __init__(self, path: str, threads: int = 1) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.threads = max(0, threads)
        self._connect()
        beyond = fields_beyond(self.table_schema, SECTOR_EVENT_SCHEMA)
        lacks = fields_beyond(SECTOR_EVENT_SCHEMA, self.table_schema)
        self.notes = []  # read once by the manager, which logs them (SinkHost.delivery_hints)
        if beyond:
            self.notes.append(
                f"duckdb sink {path}: sector_events holds {', '.join(beyond)}, beyond this release's event schema (an "
                "earlier one wrote them): kept with their values; new rows have null there; nothing is rewritten"
            )
        if lacks:
            self.notes.append(
                f"duckdb sink {path}: sector_events has no column for {', '.join(lacks)} (made by an earlier release): "
                "new rows are stored without them; to have them, move the file aside and run `vsm-pool sinks rebuild duckdb`"
            )

    def _connect(self) -> None:
        """Open the file (again, after DuckDB invalidated it: _recover), set it up, lock it down."""
        self.con = duckdb.connect(self.path)
        self._ingest_threads()
        limit = _duckdb_memory_limit()
        if limit:
            self.con.execute(f"SET memory_limit = '{limit >> 20}MiB'")
        self._setup()
        self.max_seq = int(self.con.execute("SELECT value FROM sink_meta WHERE key = 'max_seq'").fetchall()[0][0])
        # sector_events as DuckDB holds it; rows of another shape are reshaped to it (_stored)
        self.table_schema = _arrow(self.con.sql("SELECT * FROM sector_events LIMIT 0")).schema
        self._shape: tuple[pa.Schema, pa.Schema | None] | None = None  # (a batch's schema, its reshape)
        confine_duckdb(self.con)

    def _recover(self) -> None:
        """(lock held) After a failed write: if DuckDB invalidated the database (a commit that met
        a full disk is FATAL for it: every later statement fails until it is opened again;
        issue 25's sink stayed behind until a restart), open it again, so the next delivery
        (the same rows: at least once) can go through once space is back. An open that fails
        leaves `con` None: the next delivery tries again."""
        if self.con is not None:
            try:
                self.con.execute("SELECT 1").fetchall()
                return
            except duckdb.Error:
                try:
                    self.con.close()
                except duckdb.Error:
                    pass
                self.con = None  # type: ignore[assignment]
        try:
            self._connect()
        except duckdb.Error:
            self.con = None  # type: ignore[assignment]
            raise

    def _setup(self) -> None:
        con = self.con
        empty = pa.Table.from_batches([], schema=SECTOR_EVENT_SCHEMA)
        con.register("_schema_src", empty)
        try:
            con.execute("CREATE TABLE IF NOT EXISTS sector_events AS SELECT * FROM _schema_src LIMIT 0")
            cols = con.execute("DESCRIBE SELECT * FROM _schema_src").fetchall()
        finally:
            con.unregister("_schema_src")
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables WHERE table_name = 'sectors'").fetchall())
        # A file made by an earlier version has `sectors` as a table: keep maintaining it.
        self.legacy = kinds.get("sectors") == "BASE TABLE"
        if not self.legacy:
            con.execute(
                "CREATE TABLE IF NOT EXISTS sector_heads "
                "(miner UBIGINT, number UBIGINT, seq UBIGINT NOT NULL, PRIMARY KEY (miner, number))"
            )
            con.execute(
                "CREATE VIEW IF NOT EXISTS sectors AS "
                "SELECT e.* FROM sector_heads h JOIN sector_events e ON e.seq = h.seq"
            )
        con.execute("CREATE TABLE IF NOT EXISTS sink_meta (key VARCHAR PRIMARY KEY, value UBIGINT)")
        con.execute("INSERT INTO sink_meta VALUES ('max_seq', 0) ON CONFLICT DO NOTHING")

    def _stored(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """The batch in the shape of sector_events (field names and order at every level);
        itself when it has that shape already (one schema comparison per batch)."""
        if self._shape is None or not batch.schema.equals(self._shape[0]):
            shape = shaped_like(batch.schema, self.table_schema)
            self._shape = (batch.schema, None if shape.equals(batch.schema) else shape)
        return batch if self._shape[1] is None else cast_by_name(batch, self._shape[1])

    def on_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Store a batch of events (SECTOR_EVENT_SCHEMA); rows already stored are skipped."""
        if self.con is None:  # invalidated by a failed write, not opened again yet (_recover)
            with self._lock, disk_full_as_error(self.path, "duckdb sink"):
                self._recover()
        seq = batch.column("seq")
        if batch.num_rows and pc.min(seq).as_py() <= self.max_seq:
            batch = batch.filter(pc.greater(seq, pa.scalar(self.max_seq, pa.uint64())))
        if batch.num_rows == 0:
            return
        batch = self._stored(batch)
        last = int(pc.max(batch.column("seq")).as_py())
        latest = _latest_per_sector(batch)  # what `sectors` gets: one row per sector
        gone = pc.any(pc.equal(latest.column("worker_state"), "none")).as_py()
        # New sectors only (a bulk import, allocations): a plain INSERT, which the primary key
        # checks anyway. Anything else, or an INSERT that meets an existing row: upsert.
        fresh = not gone and pc.all(pc.is_in(latest.column("kind"), pa.array(["import", "init"]))).as_py()
        with self._lock, disk_full_as_error(self.path, "duckdb sink"):
            try:
                table, cols = ("sectors", "*") if self.legacy else ("sector_heads", "miner, number, seq")
                if not (fresh and self._store(batch, latest, last, f"INSERT INTO {table} SELECT {cols} FROM _vsm_latest", quiet=True)):
                    self._store(batch, latest, last, f"INSERT OR REPLACE INTO {table} SELECT {cols} FROM _vsm_latest WHERE worker_state <> 'none'", gone)
            except Exception:
                try:
                    self._recover()
                except duckdb.Error:  # still cannot open: the next delivery tries again
                    pass
                raise
            self.max_seq = last

    def _store(
        self, _vsm_batch: pa.RecordBatch | pa.Table, _vsm_latest: pa.RecordBatch | pa.Table, last: int, into_sectors: str, gone: bool = False, quiet: bool = False
    ) -> bool:
        """One transaction: the events, the current states, max_seq. quiet: False instead of
        raising if `sectors` already has one of the rows. The SQL reads the two arguments by
        their names, registered for the transaction."""
        con = self.con
        con.register("_vsm_batch", _vsm_batch)
        con.register("_vsm_latest", _vsm_latest)
        try:
            return self._store_registered(last, into_sectors, gone, quiet)
        finally:
            con.unregister("_vsm_batch")
            con.unregister("_vsm_latest")

    def _store_registered(self, last: int, into_sectors: str, gone: bool, quiet: bool) -> bool:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("INSERT INTO sector_events SELECT * FROM _vsm_batch")
            if gone:  # a revert to a sector that no longer exists: drop its row
                con.execute(
                    f"DELETE FROM {'sectors' if self.legacy else 'sector_heads'} WHERE (miner, number) IN "
                    "(SELECT miner, number FROM _vsm_latest WHERE worker_state = 'none')"
                )
            con.execute(into_sectors)
            con.execute(f"UPDATE sink_meta SET value = {last} WHERE key = 'max_seq'")
            con.execute("COMMIT")
            return True
        except duckdb.ConstraintException:
            con.execute("ROLLBACK")
            if quiet:
                return False
            raise
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:  # already ended, or the database invalidated: keep the cause
                pass
            raise

    def _ingest_threads(self) -> None:
        if self.threads:
            self.con.execute(f"SET threads = {self.threads}")

    def query(self, sql: str, max_bytes: int = QUERY_MAX_BYTES, timeout: float = QUERY_TIMEOUT) -> pa.Table:
        """A client's SELECT, confined and bounded (module doc); a pyarrow.Table."""
        if self.con is None:
            raise OSError(f"duckdb sink {self.path}: the database is being opened again after a failed write; ask again shortly")
        return run_query(self.con, sql, max_bytes, timeout)

    def stored_seqs(self) -> pa.ChunkedArray:
        """The seq of every stored event (`vsm-pool plugin test` checks that each seq it
        delivered is there exactly once)."""
        with self._lock:
            return _arrow(self.con.sql("SELECT seq FROM sector_events")).column("seq")

    def close(self) -> None:
        with self._lock:
            if self.con is not None:
                self.con.close()
                self.con = None  # type: ignore[assignment]
