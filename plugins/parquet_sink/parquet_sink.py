"""parquet: a SyncSectorState sink writing events to Parquet, one directory per UTC day.

Meta: `Path` (root directory), `Compression` (default zstd), `FlushInterval` (seconds, default
10: a delivery waits that long for more rows, up to the dispatcher's 100k; the rows wait in the
manager's durable journal meanwhile). It bounds the files: at most 60 / FlushInterval a minute
per day partition, plus one per 100k rows (issue 20: steady updates at ~70/s made 84 files a
minute with 0.5 s, 4 with 10 s). Files: `<Path>/date=YYYY-MM-DD/part-<firstseq>-<lastseq>.parquet`
(hive partitioning; the `date` column lives in the directory name). Each file is written to a
temp name and renamed, so a reader never sees half a file.

Idempotent by seq: `<Path>/_max_seq` holds the highest seq of the last fully written batch;
rows at or below it are skipped. At open, files of a batch killed half-way (first seq above
`_max_seq`) are deleted: that batch is redelivered whole.

One schema for the whole dataset: rows are written in the schema of the newest file (fields
matched by name; what the rows lack is null), widened by what the rows have beyond it. So a
dataset begun by an earlier release, whose event schema had fields this one dropped
(`pre.deals`), keeps them in every new file too: no file is rewritten, nothing stored is
lost, and a reader (DuckDB, pyarrow, Spark) that takes one file's schema reads every file.
`query` reads by name (`union_by_name`) when the oldest and newest files differ (_mixed).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vsm.sdk.diskspace import disk_full_as_error
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, cast_by_name, fields_beyond, union_schema
from vsm.sdk.sectorsync import QUERY_MAX_BYTES, QUERY_TIMEOUT, confine_duckdb, run_query

__all__ = ["ParquetSink", "open"]

DEFAULT_FLUSH_INTERVAL = 10.0
_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def open(meta: dict[str, str]) -> ParquetSink:  # noqa: A001 - the exported Constructor's name
    """Constructor: meta["Path"] is the root directory (created if missing)."""
    path = meta.get("Path") or meta.get("path")
    if not path:
        raise ValueError("parquet sink: meta key 'Path' (the root directory) is required")
    try:
        linger = float(meta.get("FlushInterval", DEFAULT_FLUSH_INTERVAL))
        if not 0 <= linger <= 3600:
            raise ValueError
    except ValueError:
        raise ValueError(f"parquet sink: meta key 'FlushInterval' must be seconds from 0 to 3600, got {meta['FlushInterval']!r}") from None
    return ParquetSink(path, compression=meta.get("Compression", "zstd"), batch_linger=linger)


class ParquetSink:
    accepts_tables = True  # a delivery of several journal frames comes as one pa.Table

    def __init__(self, root: str, compression: str = "zstd", batch_linger: float = 0.0) -> None:
        self.root = root
        self.compression = compression
        self.batch_linger = batch_linger  # read by the manager's dispatcher (delivery_hints)
        os.makedirs(root, exist_ok=True)
        self._ms_path = os.path.join(root, "_max_seq")
        try:
            with _open(self._ms_path) as f:
                self.max_seq = int(f.read().strip() or 0)
        except FileNotFoundError:
            self.max_seq = 0
        newest = self._drop_partial()
        # the dataset's schema: the newest file's (None: no file yet, the rows' own)
        self.schema: pa.Schema | None = pq.read_schema(newest) if newest else None
        beyond = fields_beyond(self.schema, SECTOR_EVENT_SCHEMA) if self.schema is not None else []
        # read once by the manager, which logs them (SinkHost.delivery_hints)
        self.notes = [
            f"parquet sink {root}: its files hold {', '.join(beyond)}, beyond this release's event schema (an "
            "earlier one wrote them): new files keep them too (null), so the dataset keeps one schema; nothing is rewritten"
        ] if beyond else []

    def _drop_partial(self) -> str | None:
        """Delete the files of a batch killed half-way; the newest file left (None: none)."""
        newest: tuple[int, str] | None = None
        for d in os.listdir(self.root):
            dpath = os.path.join(self.root, d)
            if not (d.startswith("date=") and os.path.isdir(dpath)):
                continue
            for name in os.listdir(dpath):
                m = _PART.match(name)
                if name.endswith(".tmp") or (m and int(m.group(1)) > self.max_seq):
                    os.unlink(os.path.join(dpath, name))
                elif m and (newest is None or int(m.group(2)) > newest[0]):
                    newest = (int(m.group(2)), os.path.join(dpath, name))
        return newest[1] if newest else None

    def _in_dataset_schema(self, table: pa.Table) -> pa.Table:
        """The rows in the dataset's schema, widened by any field they have beyond it."""
        if self.schema is None or table.schema.equals(self.schema):
            self.schema = table.schema
            return table
        if fields_beyond(table.schema, self.schema):
            self.schema = union_schema([self.schema, table.schema])
        return cast_by_name(table, self.schema)

    def on_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Write the rows with seq > max_seq, one file per day they fall on. A write that fails
        (a full disk: DiskFullError naming the folder) leaves nothing of the batch: its temp
        file and the files of its other days go, and it comes again whole (issue 25)."""
        try:
            with disk_full_as_error(self.root, "parquet sink"):
                self._write_batch(batch)
        except BaseException:
            try:
                self._drop_partial()
                os.unlink(self._ms_path + ".tmp")
            except OSError:
                pass
            raise

    def _write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        seq = batch.column("seq")
        if batch.num_rows and pc.min(seq).as_py() <= self.max_seq:
            batch = batch.filter(pc.greater(seq, pa.scalar(self.max_seq, pa.uint64())))
        if batch.num_rows == 0:
            return
        day = pc.cast(batch.column("time"), pa.date32())  # `time` is UTC (strftime: 30x slower)
        days = pc.unique(day).to_pylist()
        table = self._in_dataset_schema(pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch)
        for d in sorted(days):
            part = table if len(days) == 1 else table.filter(pc.equal(day, pa.scalar(d, pa.date32())))
            s = part.column("seq")
            first, last = pc.min(s).as_py(), pc.max(s).as_py()
            ddir = os.path.join(self.root, f"date={d.isoformat()}")
            os.makedirs(ddir, exist_ok=True)
            final = os.path.join(ddir, f"part-{first:020d}-{last:020d}.parquet")
            tmp = final + ".tmp"
            pq.write_table(part, tmp, compression=self.compression)
            _fsync_file(tmp)
            os.replace(tmp, final)
        last_seq = int(pc.max(batch.column("seq")).as_py())
        tmp = self._ms_path + ".tmp"
        with _open(tmp, "w") as f:
            f.write(str(last_seq))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._ms_path)
        self.max_seq = last_seq

    def query(self, sql: str, max_bytes: int = QUERY_MAX_BYTES, timeout: float = QUERY_TIMEOUT) -> Any:
        """A client's SELECT over the files with DuckDB (if installed); the view `sector_events`
        is the data. Confined like the duckdb sink's: no file outside this sink's folder."""
        import duckdb

        con = duckdb.connect()
        try:
            glob = os.path.join(self.root, "date=*", "*.parquet").replace("'", "''")
            by_name = int(self._mixed())
            con.execute(f"CREATE VIEW sector_events AS SELECT * FROM read_parquet('{glob}', hive_partitioning = 1, union_by_name = {by_name})")
            confine_duckdb(con, allowed_directories=[self.root])
            return run_query(con, sql, max_bytes, timeout)
        finally:
            con.close()

    def _mixed(self) -> bool:
        """Whether the oldest and the newest file differ in schema: a dataset that took a new
        field (the schema only grows, see the module doc) or got mixed before. DuckDB then
        reads by name (`union_by_name`: 2x the time over 2,000 small files, so not always);
        otherwise it takes the first file's schema, and would miss a field it lacks."""
        parts = sorted(
            (int(m.group(1)), os.path.join(self.root, d, name))
            for d in os.listdir(self.root) if d.startswith("date=") and os.path.isdir(os.path.join(self.root, d))
            for name in os.listdir(os.path.join(self.root, d)) if (m := _PART.match(name))
        )
        return len(parts) > 1 and not pq.read_schema(parts[0][1]).equals(pq.read_schema(parts[-1][1]))

    def stored_seqs(self) -> list[int]:
        """The seq of every stored event, from the files (`vsm-pool plugin test` checks that
        each seq it delivered is there exactly once)."""
        seqs: list[int] = []
        for d in sorted(os.listdir(self.root)):
            dpath = os.path.join(self.root, d)
            if not (d.startswith("date=") and os.path.isdir(dpath)):
                continue
            for name in sorted(os.listdir(dpath)):
                if _PART.match(name):
                    seqs += pq.read_table(os.path.join(dpath, name), columns=["seq"]).column("seq").to_pylist()
        return seqs

    def close(self) -> None:
        pass


def _open(path: str, mode: str = "r") -> Any:
    import builtins

    return builtins.open(path, mode)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
