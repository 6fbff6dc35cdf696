"""The sqlsink SyncSectorState plugin against PostgreSQL and MariaDB/MySQL: schema on first
use, idempotency by seq, newest-wins upserts, and errors that name the sink and the DSN."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from typing import Any, Iterator

import pyarrow as pa
import pytest

from vsm.sdk import PluginError
from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, SectorID, SectorState, Ticket

from .conftest import free_port, sql_connect, constructor

pytestmark = pytest.mark.timeout(60)

open_sink = constructor("sqlsink")
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def batch(*events: tuple[int, int, int], kind: str = "update", finalized: bool = False) -> pa.RecordBatch:
    """A batch of full rows; each event is (seq, miner, number)."""
    rows = []
    for seq, miner, number in events:
        state = SectorState(id=SectorID(miner, number), sector_type=8,
                            ticket=Ticket(ticket=b"\x00\xff", epoch=seq), finalized=finalized)
        row = state.to_arrow_row()
        row.update(seq=seq, kind=kind, time=T0 + dt.timedelta(seconds=seq), worker_state="online",
                   changed_fields=["Ticket", "Finalized"])
        rows.append(row)
    return pa.RecordBatch.from_pylist(rows, schema=SECTOR_EVENT_SCHEMA)


@pytest.fixture
def sink(sql_dsn: str, table_prefix: str) -> Iterator[Any]:
    s = open_sink({"DSN": sql_dsn, "TablePrefix": table_prefix})
    yield s
    s.close()


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sql_connect(dsn)
    try:
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, (str, bytes)) else v


def events(dsn: str, prefix: str) -> list[tuple[Any, ...]]:
    return [(seq, kind, miner, number, _json(ch), _json(st)["ticket"]["epoch"])
            for seq, kind, miner, number, ch, st in query(
                dsn, f"SELECT seq, kind, miner, number, changed_fields, state FROM {prefix}sector_events ORDER BY seq")]


def sectors(dsn: str, prefix: str) -> list[tuple[Any, ...]]:
    return [(miner, number, seq, _json(st)["ticket"]["epoch"], bool(_json(st)["finalized"]))
            for miner, number, seq, st in query(
                dsn, f"SELECT miner, number, seq, state FROM {prefix}sectors ORDER BY miner, number")]


def test_first_batch_creates_tables_and_rows(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    sink.on_batch(batch((1, 1000, 1), (2, 1000, 2), (3, 1001, 1)))
    assert events(sql_dsn, table_prefix) == [
        (1, "update", 1000, 1, ["Ticket", "Finalized"], 1),
        (2, "update", 1000, 2, ["Ticket", "Finalized"], 2),
        (3, "update", 1001, 1, ["Ticket", "Finalized"], 3),
    ]
    assert sectors(sql_dsn, table_prefix) == [(1000, 1, 1, 1, False), (1000, 2, 2, 2, False), (1001, 1, 3, 3, False)]
    (t,) = query(sql_dsn, f"SELECT time FROM {table_prefix}sector_events WHERE seq = 2")[0]
    assert t.replace(tzinfo=dt.timezone.utc) == T0 + dt.timedelta(seconds=2)


def test_state_json_holds_every_state_column(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    sink.on_batch(batch((1, 1000, 7)))
    (state,) = query(sql_dsn, f"SELECT state FROM {table_prefix}sectors")[0]
    state = _json(state)
    want = [f for f in SECTOR_EVENT_SCHEMA.names if f not in ("seq", "kind", "time", "worker_state", "changed_fields")]
    assert sorted(state) == sorted(want)
    assert state["ticket"] == {"ticket": "AP8=", "epoch": 1}  # bytes as base64, as Go does
    assert (state["miner"], state["number"]) == (1000, 7)


def test_same_batch_twice_is_idempotent(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    b = batch((1, 1000, 1), (2, 1000, 1), (3, 1000, 2))
    sink.on_batch(b)
    first = (events(sql_dsn, table_prefix), sectors(sql_dsn, table_prefix))
    sink.on_batch(b)
    sink.on_batch(b.slice(1, 1))  # a partial replay too
    assert (events(sql_dsn, table_prefix), sectors(sql_dsn, table_prefix)) == first
    assert len(first[0]) == 3 and len(first[1]) == 2


def test_upsert_keeps_newest(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    """A sector row is replaced only by a higher seq, whatever order batches arrive in;
    within one batch the highest seq of each sector wins."""
    sink.on_batch(batch((10, 1000, 1), (5, 1000, 1), (7, 1000, 1)))
    assert sectors(sql_dsn, table_prefix) == [(1000, 1, 10, 10, False)]
    sink.on_batch(batch((8, 1000, 1), finalized=True))  # older: history only
    assert sectors(sql_dsn, table_prefix) == [(1000, 1, 10, 10, False)]
    sink.on_batch(batch((11, 1000, 1), finalized=True))
    assert sectors(sql_dsn, table_prefix) == [(1000, 1, 11, 11, True)]
    sink.on_batch(batch((10, 1000, 1)))  # replay of an equal-or-older seq: no change
    assert sectors(sql_dsn, table_prefix) == [(1000, 1, 11, 11, True)]
    assert [e[0] for e in events(sql_dsn, table_prefix)] == [5, 7, 8, 10, 11]


def test_go_state_format(sql_dsn: str, table_prefix: str) -> None:
    sink = open_sink({"DSN": sql_dsn, "TablePrefix": table_prefix, "StateFormat": "go"})
    sink.on_batch(batch((1, 1000, 3)))
    sink.close()
    (state,) = query(sql_dsn, f"SELECT state FROM {table_prefix}sectors")[0]
    state = _json(state)
    assert state["ID"] == {"Miner": 1000, "Number": 3}
    assert state["Ticket"] == {"Ticket": "AP8=", "Epoch": 1}


def test_empty_batch_is_a_no_op(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    sink.on_batch(batch())
    # nothing written, not even a table (they are made with the first rows)
    names = f"('{table_prefix}sector_events', '{table_prefix}sectors')"
    assert query(sql_dsn, f"SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN {names}") == [(0,)]
    sink.on_batch(batch((1, 1000, 3)))  # and the sink still takes the next one
    assert query(sql_dsn, f"SELECT COUNT(*) FROM {table_prefix}sector_events") == [(1,)]


def test_big_batch(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    sink.on_batch(batch(*[(i, 1000 + i % 7, i // 7) for i in range(1, 5001)]))
    assert query(sql_dsn, f"SELECT COUNT(*) FROM {table_prefix}sector_events") == [(5000,)]
    assert query(sql_dsn, f"SELECT COUNT(*), MAX(seq) FROM {table_prefix}sectors") == [(5000, 5000)]


def test_concurrent_sinks_share_tables(sql_dsn: str, table_prefix: str) -> None:
    """Several workers (sinks) start at once on fresh tables and write overlapping batches:
    schema creation does not collide and the result is the same as one sink's."""
    sinks = [open_sink({"DSN": sql_dsn, "TablePrefix": table_prefix}) for _ in range(4)]
    errors: list[BaseException] = []

    def run(s: Any, k: int) -> None:
        try:
            for start in range(1, 200, 20):
                s.on_batch(batch(*[(seq, 1000, seq % 13) for seq in range(start + k, start + 20)]))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate(sinks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    for s in sinks:
        s.close()
    assert not errors, errors
    assert query(sql_dsn, f"SELECT COUNT(*) FROM {table_prefix}sector_events") == [(200,)]
    newest = {n: max(seq for seq in range(1, 201) if seq % 13 == n) for n in range(13)}
    assert [(n, seq) for _, n, seq, _, _ in sectors(sql_dsn, table_prefix)] == sorted(newest.items())


def test_connection_lost_then_next_batch_reconnects(sink: Any, sql_dsn: str, table_prefix: str) -> None:
    sink.on_batch(batch((1, 1000, 1)))
    conn = sink._db.conn  # kill the sink's session from the server side
    if sql_dsn.startswith("postgres"):
        query(sql_dsn, f"SELECT pg_terminate_backend({conn.info.backend_pid})")
    else:
        query(sql_dsn, f"KILL {conn.thread_id()}")
    try:
        sink.on_batch(batch((2, 1000, 1)))
    except PluginError as e:  # the dead connection is noticed on this batch, and dropped
        assert str(e).startswith("sqlsink: ")
        sink.on_batch(batch((2, 1000, 1)))  # the manager's retry
    assert [e[0] for e in events(sql_dsn, table_prefix)] == [1, 2]


def test_unreachable_server_names_sink_and_dsn(sql_dsn: str) -> None:
    scheme = sql_dsn.split("://")[0]
    dsn = f"{scheme}://user:hunter2@127.0.0.1:{free_port()}/test"
    sink = open_sink({"DSN": dsn})
    with pytest.raises(PluginError) as ei:
        sink.on_batch(batch((1, 1000, 1)))
    msg = str(ei.value)
    assert msg.startswith(f"sqlsink: {scheme}://user:***@127.0.0.1:")
    assert "hunter2" not in msg
    assert "refused" in msg.lower() or "can't connect" in msg.lower()
    sink.close()


def test_missing_columns_are_named(sink: Any) -> None:
    bad = pa.RecordBatch.from_pylist([{"seq": 1, "kind": "update"}])
    with pytest.raises(PluginError, match="time"):
        sink.on_batch(bad)


@pytest.mark.parametrize(
    "meta, key",
    [
        ({}, "DSN"),
        ({"DSN": "sqlite:///x.db"}, "DSN"),
        ({"DSN": "mysql://root@h/test", "TablePrefix": "x; DROP"}, "TablePrefix"),
        ({"DSN": "mysql://root@h/test", "StateFormat": "xml"}, "StateFormat"),
        ({"DSN": "mysql://root@h/test", "Table": "x"}, "Table"),
    ],
)
def test_bad_meta_names_the_key(meta: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        open_sink(meta)
