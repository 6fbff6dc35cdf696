"""duckdb: a SyncSectorState sink writing sector events into a DuckDB file, without row loops.

Meta: `Path` (database file; ":memory:" for tests). Tables:

- `sector_events`: every event, columns of vsm.sdk.sectors.SECTOR_EVENT_SCHEMA, nested kept.
- `sectors`: the latest state per (miner, number), with the seq/kind/time/worker_state of the
  event that produced it; a "revert" to a sector that no longer exists deletes its row.
- `sink_meta`: key `max_seq`, the highest seq stored. Delivery is at-least-once: rows with
  seq <= max_seq are skipped, all in one transaction with the inserts, so a redelivered batch
  changes nothing.

Each batch: register the Arrow batch, then INSERT ... SELECT into both tables and update
max_seq in one transaction. `query(sql)` returns a pyarrow.Table (the host sends it as IPC).
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb
import pyarrow as pa

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

__all__ = ["DuckDBSink", "open"]


def open(meta: dict[str, str]) -> DuckDBSink:  # noqa: A001 - the exported Constructor's name
    """Constructor: meta["Path"] is the database file (created if missing)."""
    path = meta.get("Path") or meta.get("path")
    if not path:
        raise ValueError("duckdb sink: meta key 'Path' (the database file) is required")
    return DuckDBSink(path)


def _arrow(rel: Any) -> pa.Table:
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        f = getattr(rel, name, None)
        if f is not None:
            out = f()
            return out if isinstance(out, pa.Table) else out.read_all()
    raise TypeError(f"cannot fetch Arrow from {type(rel).__name__}")


class DuckDBSink:
    def __init__(self, path: str) -> None:
        self.path = path
        self.con = duckdb.connect(path)
        self._lock = threading.Lock()
        self._setup()
        self.max_seq = int(self.con.execute("SELECT value FROM sink_meta WHERE key = 'max_seq'").fetchall()[0][0])

    def _setup(self) -> None:
        con = self.con
        empty = pa.Table.from_batches([], schema=SECTOR_EVENT_SCHEMA)
        con.register("_schema_src", empty)
        try:
            con.execute("CREATE TABLE IF NOT EXISTS sector_events AS SELECT * FROM _schema_src LIMIT 0")
            cols = con.execute("DESCRIBE SELECT * FROM _schema_src").fetchall()
        finally:
            con.unregister("_schema_src")
        ddl = ", ".join(f'"{c[0]}" {c[1]}' for c in cols)
        con.execute(f"CREATE TABLE IF NOT EXISTS sectors ({ddl}, PRIMARY KEY (miner, number))")
        con.execute("CREATE TABLE IF NOT EXISTS sink_meta (key VARCHAR PRIMARY KEY, value UBIGINT)")
        con.execute("INSERT INTO sink_meta VALUES ('max_seq', 0) ON CONFLICT DO NOTHING")

    def on_batch(self, batch: pa.RecordBatch) -> None:
        """Store a batch of events (SECTOR_EVENT_SCHEMA); rows already stored are skipped."""
        if batch.num_rows == 0:
            return
        table = pa.Table.from_batches([batch])
        with self._lock:
            con = self.con
            con.register("_batch", table)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    ms = self.max_seq
                    con.execute(f"CREATE OR REPLACE TEMP TABLE _new AS SELECT * FROM _batch WHERE seq > {ms}")
                    con.execute("INSERT INTO sector_events SELECT * FROM _new")
                    # latest event per sector in this batch replaces the current row
                    con.execute(
                        "CREATE OR REPLACE TEMP TABLE _latest AS SELECT * FROM _new "
                        "QUALIFY row_number() OVER (PARTITION BY miner, number ORDER BY seq DESC) = 1"
                    )
                    con.execute("DELETE FROM sectors WHERE (miner, number) IN (SELECT miner, number FROM _latest)")
                    con.execute("INSERT INTO sectors SELECT * FROM _latest WHERE worker_state <> 'none'")
                    con.execute(
                        "UPDATE sink_meta SET value = greatest(value, (SELECT coalesce(max(seq), 0) FROM _new)) "
                        "WHERE key = 'max_seq'"
                    )
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                row = con.execute("SELECT value FROM sink_meta WHERE key = 'max_seq'").fetchall()[0]
                self.max_seq = int(row[0])
            finally:
                con.unregister("_batch")

    def query(self, sql: str) -> pa.Table:
        """Run sql on the database; the result as a pyarrow.Table."""
        with self._lock:
            rel = self.con.sql(sql)
            return pa.table({}) if rel is None else _arrow(rel)

    def close(self) -> None:
        with self._lock:
            if self.con is not None:
                self.con.close()
                self.con = None  # type: ignore[assignment]
