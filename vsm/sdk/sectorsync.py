"""SyncSectorState plugin interfaces: sinks of sector-state changes.

A sink exports any of these hooks as module functions (Go style), or `Constructor(meta)`
returning an object with the same hooks as methods (`on_batch`, `on_import`, ...):

- `OnBatch(batch: pyarrow.RecordBatch)`: a batch of full rows (schema: `SECTOR_EVENT_SCHEMA`);
  vectorised sinks use only this. Rows carry a `seq` number: deduplicate by it, since
  delivery is at-least-once.
- `OnImport(worker_state, state, override)`, `OnInit(sectors, worker_state)`,
  `OnUpdate(sector_id, worker_state, fields)`, `OnFinalize(sector_id)`, `OnRestore(sector_id)`:
  the Go original's hooks with typed arguments, called row by row by the executor.

Raising from a hook makes the manager retry the batch with back-off; nothing is dropped.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence

from .sectors import AllocatedSector, SectorID, SectorState

__all__ = ["Sink", "WorkerState", "confine_duckdb", "run_query"]

WorkerState = Literal["online", "offline"]


class Sink(Protocol):
    """What a SyncSectorState Constructor returns; every method and attribute is optional."""

    accepts_tables: bool  # True: a delivery of several journal frames comes to on_batch as one pyarrow.Table
    batch_linger: float  # seconds a delivery may wait for more rows (rows wait in the journal)

    def on_batch(self, batch: Any) -> None:
        """Rows of SECTOR_EVENT_SCHEMA in seq order; a seq may come again: skip what is stored."""
        ...

    def on_import(self, worker_state: WorkerState, state: SectorState, override: bool) -> None:
        """A state imported (override: it replaced one), or reverted/rebuilt to what the KV holds (True)."""
        ...

    def on_init(self, sectors: Sequence[AllocatedSector], worker_state: WorkerState) -> None:
        """Sectors allocated: new states with ID and SectorType."""
        ...

    def on_update(self, sector_id: SectorID, worker_state: WorkerState, fields: dict[str, Any]) -> None:
        """Fields set on a state: {Go field name: typed value}."""
        ...

    def on_finalize(self, sector_id: SectorID) -> None:
        """The state moved offline (finalized)."""
        ...

    def on_restore(self, sector_id: SectorID) -> None:
        """The state moved back online."""
        ...

    def stored_seqs(self) -> Sequence[int]:
        """The seq of every event row the sink holds (`vsm-pool plugin test` reads it back)."""
        ...

    def drop(self) -> None:
        """Remove everything this instance stored (only `vsm-pool plugin test` calls it)."""
        ...

    def query(self, sql: str) -> Any:
        """A pyarrow.Table for sql over what the sink stored (`vsm-pool query`)."""
        ...

    def close(self) -> None:
        """Release what the sink holds (files, connections): it stops or a reload hands it over."""
        ...


# -- queries: what a client's SQL may do in a sink's DuckDB ----------------------------------

QUERY_MAX_BYTES = 64 << 20  # defaults when the manager passes none ([Common.Api] QueryMaxBytes)
QUERY_TIMEOUT = 30.0  # [Common.Api] QueryTimeout


def confine_duckdb(con: Any, allowed_directories: Sequence[str] = ()) -> None:
    """Lock a DuckDB database down for client SQL, for good (DuckDB cannot undo these while it
    runs): no file access outside `allowed_directories` (read_text, read_csv, COPY, ATTACH),
    no extension install or load, no further SET. Python objects reach SQL only through
    `con.register` from then on (replacement scans of Python variables are external access)."""
    if allowed_directories:
        dirs = ", ".join("'" + d.replace("'", "''") + "'" for d in allowed_directories)
        con.execute(f"SET allowed_directories = [{dirs}]")
    for setting in ("autoinstall_known_extensions", "autoload_known_extensions", "allow_community_extensions", "enable_external_access"):
        con.execute(f"SET {setting} = false")
    con.execute("SET lock_configuration = true")


def run_query(con: Any, sql: str, max_bytes: int = QUERY_MAX_BYTES, timeout: float = QUERY_TIMEOUT) -> Any:
    """One client SELECT on a confined DuckDB (see confine_duckdb), in a read-only transaction of
    its own cursor: at most `max_bytes` of Arrow result, interrupted after `timeout` seconds.
    Returns a pyarrow.Table; the caller's mistakes (bad SQL, not a SELECT, a bound hit) raise
    InvalidRequestError, one line."""
    import threading

    import duckdb
    import pyarrow as pa

    from .errors import InvalidRequestError

    def line(e: BaseException) -> str:
        text = str(e).strip()
        return " ".join(text.splitlines()[:1]) if text else type(e).__name__

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise InvalidRequestError(f"SQL: {line(e)}") from None
    kinds = [s.type.name for s in statements]
    if kinds != ["SELECT"]:
        raise InvalidRequestError(f"SQL: one SELECT statement only (read-only queries), got {', '.join(kinds) or 'none'}")
    cur = con.cursor()
    timer = threading.Timer(timeout, cur.interrupt)
    timer.daemon = True
    timer.start()
    try:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        rel = cur.sql(sql)
        reader = rel.to_arrow_reader(8192) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(8192)
        batches, size = [], 0
        for batch in reader:
            size += batch.nbytes
            if size > max_bytes:
                raise InvalidRequestError(f"SQL: the result is over {max_bytes} bytes ([Common.Api] QueryMaxBytes): add a LIMIT or select fewer columns")
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise InvalidRequestError(f"SQL: interrupted after {timeout:g} s ([Common.Api] QueryTimeout)") from None
    except (duckdb.InternalException, duckdb.FatalException, duckdb.IOException):
        raise  # the sink's own trouble, not the caller's
    except duckdb.Error as e:  # parser, binder, catalog, conversion, permission...
        raise InvalidRequestError(f"SQL: {line(e)}") from None
    finally:
        timer.cancel()
        try:
            cur.close()  # ends the read-only transaction
        except duckdb.Error:
            pass
