"""Import files (Go JSON lines or Parquet) and offline DuckDB queries, for the CLI."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from vsm.sdk._gojson import loads as gojson_loads
from ._jsonlines import read_go_json_lines
from vsm.sdk.sectors import (
    SECTOR_STATE_SCHEMA,
    GoJSONError,
    SectorState,
    arrow_to_states,
    check_arrow_states,
    decode_state,
    decode_state_json,
    states_to_arrow,
)

__all__ = [
    "ImportReport",
    "RefusedLine",
    "duckdb_arrow",
    "duckdb_query",
    "query_duckdb",
    "read_ahead",
    "read_import_batches",
    "read_import_file",
    "write_import_file",
]


class RefusedLine(ValueError):
    """One input state refused as Go's json.Unmarshal refuses it: `where` is `file:line`
    (`file:[i]` in a JSON array), `path` the Go field path, `reason` the cause."""

    def __init__(self, where: str, err: GoJSONError) -> None:
        self.where, self.path, self.reason = where, err.path, err.reason
        super().__init__(f"{where}: {err}")


@dataclasses.dataclass
class ImportReport:
    """What reading an import file refused and ignored. Without a report, read_import_file
    raises the first RefusedLine instead."""

    refused: list[RefusedLine] = dataclasses.field(default_factory=list)
    unknown: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # "Struct.Key" -> count

    def summary(self) -> str:
        """`N refused; unknown fields ignored as Go ignores them: PreCommitInfo.Deals x3`."""
        parts = []
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        if self.unknown:
            names = ", ".join(f"{k} x{n}" for k, n in self.unknown.most_common())
            parts.append(f"unknown fields ignored as Go ignores them: {names}")
        return "; ".join(parts)


def read_import_file(path: str, chunk: int = 10_000, report: ImportReport | None = None) -> Iterator[list[SectorState]]:
    """Sector states from `path` in lists of up to `chunk`, for a progress bar.

    Formats: Parquet (SECTOR_STATE_SCHEMA columns, extra columns ignored; by suffix
    `.parquet`/`.pq` or magic), JSON lines of Go JSON states, or one JSON array of them.
    Go JSON is decoded as strictly as Go does (decode_state_json): a refused state is left
    out and goes to `report` (or, without one, raises RefusedLine), the others are read.
    """
    if _file_kind(path) == "parquet":
        for batch in _checked_parquet(path, chunk, report):
            yield arrow_to_states(batch)
        return
    decode = _Strict(path, report)

    name = path
    with open(path, "rb") as f:
        first = f.read(1024).lstrip()
        f.seek(0)
        if first.startswith(b"["):
            try:
                items = gojson_loads(f.read())
            except GoJSONError as e:
                raise RefusedLine(name, e) from None
            if type(items) is not list:
                raise RefusedLine(name, GoJSONError("not a JSON array of sector states"))
            for i in range(0, len(items), chunk):
                got = [decode(d, lambda j=j: f"{name}:[{j}]") for j, d in enumerate(items[i : i + chunk], i)]
                yield [st for st in got if st is not None]
            return
        out: list[SectorState] = []
        for lineno, line in enumerate(f, 1):
            st = decode.line(line, lineno)
            if st is not None:
                out.append(st)
            if len(out) >= chunk:
                yield out
                out = []
        if out:
            yield out


def read_import_batches(path: str, chunk: int = 10_000, report: ImportReport | None = None) -> Iterator[pa.RecordBatch]:
    """read_import_file as Arrow batches of SECTOR_STATE_SCHEMA columns, for the streamed
    import: Parquet batches as they are (no SectorState objects; rows no Go state could hold
    are left out and reported, see _checked_parquet); Go JSON lines parsed column-wise, each
    line that is not byte for byte Go's encoding of what was parsed decided by the same strict
    decoder (_jsonlines.py; refused lines go to `report`, as read_import_file does); a JSON
    array through read_import_file."""
    kind = _file_kind(path)
    if kind == "parquet":
        yield from _checked_parquet(path, chunk, report)
        return
    if kind == "lines":
        with open(path, "rb") as f:
            yield from read_go_json_lines(f, chunk, _Strict(path, report).line)
        return
    for states in read_import_file(path, chunk, report):
        if states:
            yield states_to_arrow(states)


def _file_kind(path: str) -> str:
    """"parquet" (by suffix or magic), "array" (a JSON array of states) or "lines"."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if path.endswith((".parquet", ".pq")) or head[:4] == b"PAR1":
        return "parquet"
    return "array" if head.lstrip().startswith(b"[") else "lines"


class _Strict:
    """The strict decoder of one file's states (decode_state_json), each refusal named
    `file:line` (or `file:[i]`) and put in `report` (or raised without one); unknown keys of the
    states it accepts are counted there."""

    def __init__(self, path: str, report: ImportReport | None) -> None:
        self.path, self.report = path, report
        self._unknown: list[str] = []

    def __call__(self, value: Any, where: Callable[[], str]) -> SectorState | None:
        unknown = self._unknown
        try:
            st = decode_state(value, unknown) if not isinstance(value, (bytes, str)) else decode_state_json(value, unknown)
        except GoJSONError as e:
            refused = RefusedLine(where(), e)
            if self.report is None:
                raise refused from None
            self.report.refused.append(refused)
            unknown.clear()
            return None
        if unknown:
            if self.report is not None:
                self.report.unknown.update(unknown)
            unknown.clear()
        return st

    def line(self, line: bytes, lineno: int) -> SectorState | None:
        """One line of a JSON lines file (None: refused, or blank)."""
        line = line.strip(b" \t\r\n")
        if not line:
            return None
        return self(line, lambda: f"{self.path}:{lineno}")


def _checked_parquet(path: str, chunk: int, report: ImportReport | None) -> Iterator[pa.RecordBatch]:
    """A Parquet file's batches without the rows no Go SectorState could hold (a CID, an
    address or a token amount not in Go's form: check_arrow_states), each reported as
    `file:row N` (1-based) or, without a report, raised."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = [n for n in SECTOR_STATE_SCHEMA.names if n in pf.schema_arrow.names]
    first = 0
    for batch in _row_group_batches(pf, chunk, names):
        problems = check_arrow_states(batch)
        for row, err in problems:
            refused = RefusedLine(f"{path}:row {first + row + 1}", err)
            if report is None:
                raise refused
            report.refused.append(refused)
        if problems:
            keep = np.ones(batch.num_rows, bool)
            keep[[row for row, _ in problems]] = False
            batch = batch.filter(pa.array(keep))
        first += batch.num_rows + len(problems)
        yield batch


def _row_group_batches(pf: Any, chunk: int, names: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches of at most `chunk`, one row group read at a time: memory
    stays that of a row group. (ParquetFile.iter_batches kept about the whole file allocated
    until it finished: 377 MiB of Arrow memory for a 314 MiB, 500k-state file, against
    one row group's worth this way.)"""
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group, columns=names)
        yield from table.to_batches(max_chunksize=chunk)
        del table


def read_ahead(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """items, produced by a thread up to `depth` ahead of the consumer: reading (a file, a
    socket) overlaps with the work on what was read, in bounded memory. An error of the
    producer is raised at the item where it happened; closing the generator stops it."""
    import queue
    import threading

    q: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    t = threading.Thread(target=produce, name="vsm-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()


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
