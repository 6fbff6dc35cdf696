"""Import files (Go JSON lines or Parquet) and offline DuckDB queries, for the CLI."""

from __future__ import annotations

import json
from typing import Iterable, Iterator

import pyarrow as pa

from vsm.sdk.sectors import SECTOR_STATE_SCHEMA, SectorState, arrow_to_states, states_to_arrow

__all__ = ["duckdb_arrow", "duckdb_query", "query_duckdb", "read_import_file", "write_import_file"]


def read_import_file(path: str, chunk: int = 10_000) -> Iterator[list[SectorState]]:
    """Sector states from `path` in lists of up to `chunk`, for a progress bar.

    Formats: Parquet (SECTOR_STATE_SCHEMA columns, extra columns ignored; by suffix
    `.parquet`/`.pq` or magic), JSON lines of Go JSON states, or one JSON array of them.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if path.endswith((".parquet", ".pq")) or head == b"PAR1":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = [n for n in SECTOR_STATE_SCHEMA.names if n in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=chunk, columns=names):
            yield arrow_to_states(batch)
        return
    with open(path, "rb") as f:
        first = f.read(1024).lstrip()
        f.seek(0)
        if first.startswith(b"["):
            items = json.load(f)
            for i in range(0, len(items), chunk):
                yield [SectorState.from_go_dict(d) for d in items[i : i + chunk]]
            return
        out: list[SectorState] = []
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(SectorState.from_go_json(line))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a Go JSON sector state: {e}") from None
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out


def write_import_file(path: str, states: Iterable[SectorState]) -> int:
    """Write states as JSON lines (Go encoding) or, for `.parquet`, as SECTOR_STATE_SCHEMA."""
    n = 0
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, SECTOR_STATE_SCHEMA) as w:
            buf: list[SectorState] = []
            for s in states:
                buf.append(s)
                if len(buf) >= 10_000:
                    w.write_batch(states_to_arrow(buf))
                    n += len(buf)
                    buf = []
            if buf:
                w.write_batch(states_to_arrow(buf))
                n += len(buf)
        return n
    with open(path, "wb") as f:
        for s in states:
            f.write(s.to_go_json() + b"\n")
            n += 1
    return n


def query_duckdb(path: str, sql: str) -> pa.Table:
    """Run sql on the DuckDB sink's file with a read-only connection (no daemon running:
    DuckDB lets one process hold a file read-write; with the daemon up, ask its sink instead)."""
    import duckdb

    con = duckdb.connect(path, read_only=True)
    try:
        return duckdb_query(con, sql)
    finally:
        con.close()


def duckdb_query(con: object, sql: str) -> pa.Table:
    """Run sql on a DuckDB connection; the result as a pa.Table (empty for statements)."""
    rel = con.sql(sql)  # type: ignore[attr-defined]
    if rel is None:
        return pa.table({})
    return duckdb_arrow(rel)


def duckdb_arrow(res: object) -> pa.Table:
    """A DuckDB relation or result as a pa.Table, across DuckDB versions."""
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        f = getattr(res, name, None)
        if f is not None:
            out = f()
            return out if isinstance(out, pa.Table) else out.read_all()
    raise TypeError(f"cannot fetch Arrow from {type(res).__name__}")
