"""The bundled sinks when the event schema changes under data they hold: rows are stored in
the schema of what is there (fields matched by name), a field only the old data has keeps its
values, a field only the new rows have is added (Parquet) or named in a note (DuckDB), and
queries see both."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, cast_by_name, union_schema

from ..sectors.helpers import load_plugin

pytestmark = pytest.mark.timeout(60)

# the previous release's event schema: Pre had Deals
_PRE = SECTOR_EVENT_SCHEMA.field("pre")
OLD_SCHEMA = SECTOR_EVENT_SCHEMA.set(
    SECTOR_EVENT_SCHEMA.get_field_index("pre"), _PRE.with_type(pa.struct([*_PRE.type, pa.field("deals", pa.list_(pa.uint64()))]))
)
# a later release's, with a field this one lacks
NEXT_SCHEMA = SECTOR_EVENT_SCHEMA.append(pa.field("extra", pa.string()))


def _events(seqs: range, schema: pa.Schema, **values: Any) -> pa.RecordBatch:
    rows = [
        {"seq": s, "kind": "import", "time": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc), "worker_state": "online",
         "miner": 1000, "number": s, "sector_type": 8, **values}
        for s in seqs
    ]
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _schemas(root: Path) -> list[pa.Schema]:
    return [pq.read_schema(f) for f in sorted(root.glob("date=*/*.parquet"))]


def test_parquet_keeps_one_schema_over_older_files_and_widens_for_newer_rows(tmp_path: Path) -> None:
    mod = load_plugin("parquet_sink", "parquet_sink")
    root = tmp_path / "pq"
    (root / "date=2026-12-01").mkdir(parents=True)
    old = _events(range(1, 3), OLD_SCHEMA, pre={"comm_r": None, "comm_d": None, "ticket": None, "deals": [7]})
    pq.write_table(pa.Table.from_batches([old]), root / "date=2026-12-01" / f"part-{1:020d}-{2:020d}.parquet")
    (root / "_max_seq").write_text("2")

    sink = mod.open({"Path": str(root), "FlushInterval": "0"})
    assert sink.notes and "pre.deals" in sink.notes[0]
    sink.on_batch(_events(range(3, 5), SECTOR_EVENT_SCHEMA))  # this release's rows
    assert len({s.to_string(show_schema_metadata=False) for s in _schemas(root)}) == 1
    assert not sink._mixed()
    got = sink.query("select seq, pre.deals as deals from sector_events order by seq").to_pylist()
    assert got == [{"seq": 1, "deals": [7]}, {"seq": 2, "deals": [7]}, {"seq": 3, "deals": None}, {"seq": 4, "deals": None}]

    # a row with a field the dataset lacks: new files take it, and queries read it by name
    sink.on_batch(cast_by_name(_events(range(5, 6), NEXT_SCHEMA, extra="x"), union_schema([OLD_SCHEMA, NEXT_SCHEMA])))
    assert "extra" in _schemas(root)[-1].names and sink._mixed()
    got = sink.query("select seq, extra, pre.deals as deals from sector_events where seq in (1, 5) order by seq").to_pylist()
    assert got == [{"seq": 1, "extra": None, "deals": [7]}, {"seq": 5, "extra": "x", "deals": None}]
    sink.close()

    again = mod.open({"Path": str(root), "FlushInterval": "0"})  # the newest file's schema, widened
    again.on_batch(_events(range(6, 7), SECTOR_EVENT_SCHEMA))
    assert _schemas(root)[-1].equals(_schemas(root)[-2])
    again.close()


def test_duckdb_stores_new_rows_in_an_older_table_and_names_what_it_lacks(tmp_path: Path) -> None:
    mod = load_plugin("duckdb_sink", "duckdb_sink")
    path = tmp_path / "s.duckdb"
    import duckdb

    con = duckdb.connect(str(path))  # a table made from the previous release's schema
    old = pa.Table.from_batches([_events(range(1, 3), OLD_SCHEMA, pre={"comm_r": "c", "comm_d": None, "ticket": None, "deals": [7]})])
    con.execute("CREATE TABLE sector_events AS SELECT * FROM old")
    con.close()

    sink = mod.open({"Path": str(path)})
    try:
        assert len(sink.notes) == 1 and "sector_events holds pre.deals" in sink.notes[0]
        sink.on_batch(_events(range(3, 4), SECTOR_EVENT_SCHEMA, pre={"comm_r": "d", "comm_d": None, "ticket": None}))
        sink.on_batch(_events(range(4, 5), NEXT_SCHEMA, extra="x"))  # a field it has no column for
        got = sink.query("select seq, pre.comm_r as r, pre.deals as deals from sector_events order by seq").to_pylist()
        assert got == [{"seq": 1, "r": "c", "deals": [7]}, {"seq": 2, "r": "c", "deals": [7]}, {"seq": 3, "r": "d", "deals": None}, {"seq": 4, "r": None, "deals": None}]
    finally:
        sink.close()

    path.unlink()  # a table of this release, and rows of the previous one (old journal frames)
    sink = mod.open({"Path": str(path)})
    try:
        assert sink.notes == []
        sink.on_batch(_events(range(1, 2), OLD_SCHEMA, pre={"comm_r": "c", "comm_d": None, "ticket": None, "deals": [7]}))
        assert sink.query("select seq, pre.comm_r as r from sector_events").to_pylist() == [{"seq": 1, "r": "c"}]
    finally:
        sink.close()
