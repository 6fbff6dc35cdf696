"""SectorStateManager: operations, collections, serialisation, seq without gaps, sinks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import pyarrow as pa

from vsm.sdk.sectors import AllocatedSector, PreCommitInfo, SectorID, SectorState, Ticket, arrow_to_states, sector_key
from vsm.sectors import SectorNotFoundError, SectorStateManager, SinkHost

from .helpers import RecordingSink, assert_no_gaps, load_plugin, make_state, sealing_state, wait_until

pytestmark = pytest.mark.timeout(60)


def on_key(sid: SectorID) -> bytes:
    return b"sector-states/" + sector_key(sid)


def off_key(sid: SectorID) -> bytes:
    return b"sector-states-offline/" + sector_key(sid)


def _mgr(db, tmp_path, sinks=None, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("fsync", False)
    return SectorStateManager(db, str(tmp_path / "journal"), sinks=sinks, **kw)


def test_operations_and_collections(dictdb, tmp_path, sample_json) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}) as m:
        st = SectorState.from_go_json(sample_json)
        assert m.import_states([st]) == 1
        assert m.import_states([st]) == 0  # exists, no override
        assert m.import_states([st], override=True) == 1
        online = dictdb.open_collection("meta")
        offline = dictdb.open_collection("offline_meta")
        assert online.data[b"sector-states/m-1001-n-42"] == sample_json  # damocles' layout

        sids = [SectorID(7, n) for n in range(3)]
        m.init([AllocatedSector(s, 8) for s in sids])
        assert m.get(sids[0]).sector_type == 8
        comm_r = "bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb"
        pre = PreCommitInfo(comm_r, "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli", Ticket(b"t", 5))
        new = m.update(sids[0], {"Pre": pre, "abort_reason": "x", "Finalized": True})
        assert new.pre == pre and new.abort_reason == "x" and new.finalized
        # Go JSON form of a value is accepted too
        m.update(sids[1], {"Pre": {"CommR": {"/": comm_r.upper()}, "CommD": None, "Ticket": {"Ticket": None, "Epoch": 1}, "Deals": None}})
        assert m.get(sids[1]).pre == PreCommitInfo(comm_r, None, Ticket(None, 1))
        # ...and held to Go's rules, naming the field
        with pytest.raises(ValueError, match=r"^Pre.CommR: not a CID: "):
            m.update(sids[1], {"Pre": {"CommR": {"/": ""}}})
        with pytest.raises(ValueError, match=r"^SectorType: not an int64: number 1.5$"):
            m.update(sids[1], {"SectorType": 1.5})
        with pytest.raises(ValueError, match="unknown SectorState field 'Nope'"):
            m.update(sids[0], {"Nope": 1})

        m.finalize(sids[0])
        assert on_key(sids[0]) not in online.data and off_key(sids[0]) in offline.data
        assert m.locate(sids[0]) == "offline"
        assert [s.id for s in m.list("offline")] == [sids[0]]
        with pytest.raises(SectorNotFoundError):
            m.finalize(sids[0])
        m.restore(sids[0])
        assert on_key(sids[0]) in online.data and off_key(sids[0]) not in offline.data
        assert [s.id.number for s in m.list("online", miner=7)] == [0, 1, 2]
        with pytest.raises(SectorNotFoundError):
            m.update(SectorID(9, 9), {"Finalized": True})

        assert m.wait_delivered(10)
        import pyarrow as pa

        t = pa.concat_tables(rec.tables)
        assert t.column("kind").to_pylist() == ["import", "import", "init", "init", "init", "update", "update", "finalize", "restore"]
        assert t.column("worker_state").to_pylist()[-2:] == ["offline", "online"]
        assert t.column("changed_fields").to_pylist()[5] == ["Pre", "AbortReason", "Finalized"]
        assert_no_gaps(rec.seqs)


def test_import_arrow_writes_what_import_states_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vsm.sdk.sectors import states_to_arrow

    from .conftest import DictDB

    states = [make_state(13, n) for n in range(250)]
    a, b = DictDB(), DictDB()
    rec = RecordingSink()
    with _mgr(a, tmp_path / "a", import_chunk=64) as m:
        assert m.import_states(states) == 250
    with _mgr(b, tmp_path / "b", {"rec": SinkHost(sink_obj=rec)}, import_chunk=64) as m:
        assert m.import_arrow(states_to_arrow(states[:100])) == 100
        # existing ones are skipped, columns may come in any order or be missing
        table = pa.Table.from_batches([states_to_arrow(states)]).drop_columns(["unsealing"])
        assert m.import_arrow(table.select(list(reversed(table.column_names)))) == 150
        assert m.import_arrow(states_to_arrow(states[:10]), override=True) == 10
        assert m.wait_delivered(10)
    for coll in ("meta", "offline_meta"):  # finalized states go offline, the others online
        assert b.open_collection(coll).data == a.open_collection(coll).data
    assert len(a.open_collection("meta").data) + len(a.open_collection("offline_meta").data) == 250
    assert_no_gaps(rec.seqs)
    assert len(rec.seqs) == 260
    rows = pa.concat_tables(rec.tables)
    assert set(rows.column("kind").to_pylist()) == {"import"}
    first = rows.filter(pa.compute.equal(rows.column("number"), states[0].id.number)).slice(0, 1)
    assert arrow_to_states(first)[0] == states[0]


def test_conflicts_are_retried(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import DictDB

    db = DictDB(retry=True)
    with _mgr(db, tmp_path) as m:
        db.open_collection("meta").conflicts = 3
        m.init([AllocatedSector(SectorID(1, 1), 8)])
        assert m.get(SectorID(1, 1)).sector_type == 8


def test_per_sector_serialisation_and_no_gaps(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Threads update different fields of the same sectors. update() is a read-modify-write
    # under the sector's lock: without it, one thread's write would drop another's field.
    rec = RecordingSink()
    sectors = [SectorID(1, n) for n in range(6)]
    fields = ["AbortReason", "UpgradeMessageID", "UpgradeLandedEpoch"]
    per_thread = 30
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}) as m:
        m.init([AllocatedSector(s, 8) for s in sectors])

        def writer(job: tuple[SectorID, str]) -> None:
            sid, field = job
            for i in range(1, per_thread + 1):
                m.update(sid, {field: i if field == "UpgradeLandedEpoch" else str(i)})

        with ThreadPoolExecutor(12) as ex:
            list(ex.map(writer, [(s, f) for s in sectors for f in fields]))
        assert m.wait_delivered(20)
        import pyarrow as pa

        rows = pa.concat_tables(rec.tables).to_pylist()
        assert_no_gaps(rec.seqs)
        assert len(rows) == len(sectors) * (1 + len(fields) * per_thread)
        cols = {"AbortReason": "abort_reason", "UpgradeMessageID": "upgrade_message_id", "UpgradeLandedEpoch": "upgrade_landed_epoch"}
        for sid in sectors:
            evs = [r for r in rows if r["number"] == sid.number]
            for prev, cur in zip(evs, evs[1:]):
                # each event = previous event's state + only the fields it names
                for go, col in cols.items():
                    if go not in cur["changed_fields"]:
                        assert cur[col] == prev[col], (sid, cur["seq"], go)
            final = m.get(sid)
            assert (final.abort_reason, final.upgrade_message_id, final.upgrade_landed_epoch) == (
                str(per_thread), str(per_thread), per_thread)


def test_different_sectors_run_in_parallel(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a slow KV commit on one sector must not hold another sector's update
    with _mgr(dictdb, tmp_path, flush_age=0.0) as m:
        m.init([AllocatedSector(SectorID(1, 1), 8), AllocatedSector(SectorID(1, 2), 8)])
        orig = m._commit
        gate = threading.Event()

        in_commit = threading.Event()

        def slow_commit(changes):  # type: ignore[no-untyped-def]
            if changes[0].sid.number == 1:
                in_commit.set()
                gate.wait(30)
            return orig(changes)

        m._commit = slow_commit  # type: ignore[method-assign]
        t = threading.Thread(target=m.update, args=(SectorID(1, 1), {"Removed": True}))
        t.start()
        assert in_commit.wait(60)
        m.update(SectorID(1, 2), {"Removed": True})
        assert not gate.is_set() and t.is_alive()  # sector 2 went by while sector 1 was held
        gate.set()
        t.join(5)
        assert m.get(SectorID(1, 1)).removed


def test_failing_sink_catches_up_and_slow_sink_does_not_block(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    flaky = RecordingSink(fail_first=4)
    held = threading.Event()
    slow = RecordingSink(gate=held)  # holds its first delivery until `held` is set
    fast = RecordingSink()
    sinks = {"flaky": SinkHost(sink_obj=flaky), "slow": SinkHost(sink_obj=slow), "fast": SinkHost(sink_obj=fast)}
    with _mgr(dictdb, tmp_path, sinks, sink_backoff=(0.01, 0.05), flush_age=0.0) as m:
        for i in range(50):
            m.init([AllocatedSector(SectorID(2, i), 8)])
        assert slow.seqs == []  # every op returned while the slow sink held its first batch
        wait_until(lambda: fast.seqs[-1:] == [50] and m.status()["sinks"]["flaky"]["errors"] >= 1)
        assert slow.seqs == []  # fast sink is done while slow still lags
        assert "sink down" in (m.status()["sinks"]["flaky"]["last_error"] or "")
        held.set()
        assert m.wait_delivered(20)
        st = m.status()
        for name in ("flaky", "slow", "fast"):
            assert st["sinks"][name]["lag"] == 0 and st["sinks"][name]["checkpoint"] == 50
            assert st["sinks"][name]["state"] == "running"
        assert_no_gaps(flaky.seqs)
        assert_no_gaps(slow.seqs)
        assert slow.batches < 50  # backlog was coalesced into bigger deliveries


def test_kv_failure_journals_revert(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}, commit_retries=1) as m:
        m.init([AllocatedSector(SectorID(3, 1), 8)])
        dictdb.open_collection("meta").fail_next = OSError("disk gone")
        with pytest.raises(OSError):
            m.update(SectorID(3, 1), {"Removed": True})
        assert not m.get(SectorID(3, 1)).removed
        assert m.wait_delivered(10)
        import pyarrow as pa

        t = pa.concat_tables(rec.tables).to_pylist()
        assert [r["kind"] for r in t] == ["init", "update", "revert"]
        assert t[2]["removed"] is False
        assert_no_gaps(rec.seqs)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_import_kv_failure_mid_pipeline_reverts_what_was_journaled(dictdb, tmp_path, fail_at) -> None:  # type: ignore[no-untyped-def]
    """A bulk import whose KV write of chunk `fail_at` fails: the chunks written before stay,
    the failed chunk and the one journaled behind it (never written) get revert events, and
    every sink ends with what the KV holds: nothing journaled is left unexplained."""
    rec = RecordingSink()
    meta = dictdb.open_collection("meta")
    calls = {"n": 0}
    update = meta.update

    def failing_update(fn):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == fail_at:
            meta.fail_next = OSError("disk gone")
        return update(fn)

    meta.update = failing_update  # type: ignore[method-assign]
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}, commit_retries=1, import_chunk=10, import_window=4) as m:
        with pytest.raises(OSError, match="disk gone"):
            m.import_states(sealing_state(5, n) for n in range(80))
        assert len(meta.data) == 10 * (fail_at - 1)
        assert m.wait_delivered(10)
        rows = pa.concat_tables(rec.tables).to_pylist()
        assert_no_gaps(rec.seqs)
        last: dict[int, str] = {}
        for r in rows:
            last[r["number"]] = r["kind"]
        written = {int(k.rsplit(b"-", 1)[1]) for k in meta.data}
        assert {n for n, kind in last.items() if kind == "import"} == written
        reverted = {n for n, kind in last.items() if kind == "revert"}
        # the failed chunk, and the chunk journaled while it was being written
        assert reverted == set(range(10 * (fail_at - 1), 10 * (fail_at + 1)))


def test_restart_resumes_checkpoints_and_compacts(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    m = _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}, segment_bytes=1)
    for i in range(5):
        m.init([AllocatedSector(SectorID(4, i), 8)])
    assert m.wait_delivered(10)
    m.close()
    m.close()  # idempotent
    rec2 = RecordingSink()
    m = _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec2)}, segment_bytes=1)
    m.init([AllocatedSector(SectorID(4, 9), 8)])
    assert m.wait_delivered(10)
    assert rec2.seqs == [6]  # resumed after its checkpoint, nothing redelivered
    removed = m.compact()
    assert removed  # every sink passed the old segments
    assert m.status()["journal"]["first_seq"] == 6
    m.close()


def test_duckdb_tables_match_kv(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    host = SinkHost.from_module(duck, {"Constructor": "open"}, {"Path": str(tmp_path / "s.duckdb")})
    with _mgr(dictdb, tmp_path, {"duckdb": host}) as m:
        m.import_states([sealing_state(10, n) for n in range(300)])
        for n in range(0, 300, 7):
            m.update(SectorID(10, n), {"Removed": True})
        for n in range(0, 300, 11):
            m.finalize(SectorID(10, n))
        assert m.wait_delivered(20)
        # redelivering everything changes nothing (idempotent by seq)
        host.deliver(m.journal.seg_dir, [f.as_tuple() for f in m.journal.frames], 0)
        sink = host.sink
        n_events = sink.query("SELECT count(*) AS n, max(seq) AS s FROM sector_events").to_pylist()[0]
        assert n_events == {"n": m.status()["journal"]["head"], "s": m.status()["journal"]["head"]}
        rows = sink.query("SELECT * FROM sectors ORDER BY miner, number")
        from vsm.sdk.sectors import arrow_to_states

        states = arrow_to_states(rows)
        ws = rows.column("worker_state").to_pylist()
        assert len(states) == 300
        for st, w in zip(states, ws):
            coll = dictdb.open_collection("meta" if w == "online" else "offline_meta")
            assert coll.data[(on_key if w == "online" else off_key)(st.id)] == st.to_go_json()
        assert sum(1 for w in ws if w == "offline") == len(range(0, 300, 11))
        # the IPC path the daemon uses
        from vsm.sectors import ipc_to_table

        t = ipc_to_table(host.query("SELECT count(*) AS n FROM sectors WHERE removed"))
        assert t.to_pylist() == [{"n": len(range(0, 300, 7))}]
    host.close()
    from vsm.sectors import query_duckdb

    assert query_duckdb(str(tmp_path / "s.duckdb"), "SELECT count(*) AS n FROM sectors").to_pylist() == [{"n": 300}]


def test_parquet_sink_partitions_and_is_idempotent(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pqmod = load_plugin("parquet_sink", "parquet_sink")
    host = SinkHost.from_module(pqmod, {"Constructor": "open"}, {"Path": str(tmp_path / "pq")})
    with _mgr(dictdb, tmp_path, {"parquet": host}) as m:
        m.import_states([make_state(11, n) for n in range(100)])
        m.update(SectorID(11, 1), {"Removed": True})
        assert m.wait_delivered(20)
        host.deliver(m.journal.seg_dir, [f.as_tuple() for f in m.journal.frames], 0)  # redelivery
    import glob

    import pyarrow.dataset as ds

    files = glob.glob(str(tmp_path / "pq" / "date=*" / "part-*.parquet"))
    assert files and all("/date=20" in f for f in files)
    t = ds.dataset(str(tmp_path / "pq"), format="parquet", partitioning="hive").to_table()
    assert sorted(t.column("seq").to_pylist()) == list(range(1, 102))
    # it asks its dispatcher to gather rows for FlushInterval seconds (fewer, larger files)
    # issue 20: the default bounds the files at 60 / 10 a minute per day partition
    assert host.delivery_hints() == {"linger": pqmod.DEFAULT_FLUSH_INTERVAL} and pqmod.DEFAULT_FLUSH_INTERVAL == 10.0
    assert SinkHost.from_module(pqmod, {"Constructor": "open"}, {"Path": str(tmp_path / "pq2"), "FlushInterval": "0"}).delivery_hints() == {"linger": 0.0}
    with pytest.raises(ValueError, match="FlushInterval"):
        pqmod.open({"Path": str(tmp_path / "pq3"), "FlushInterval": "soon"})
    with pytest.raises(ValueError, match="from 0 to 3600"):
        pqmod.open({"Path": str(tmp_path / "pq3"), "FlushInterval": "-1"})


def test_per_event_hooks_get_go_arguments(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple] = []
    hooks = {
        "OnImport": lambda ws, st, ov: calls.append(("import", ws, st.id, ov)),
        "OnInit": lambda secs, ws: calls.append(("init", [a.id.number for a in secs], ws)),
        "OnUpdate": lambda sid, ws, f: calls.append(("update", sid, ws, f)),
        "OnFinalize": lambda sid: calls.append(("finalize", sid)),
        "OnRestore": lambda sid: calls.append(("restore", sid)),
    }
    with _mgr(dictdb, tmp_path) as m:
        m.import_states([sealing_state(12, 100)])
        m.import_states([sealing_state(12, 100), sealing_state(12, 101)], override=True)
        m.init([AllocatedSector(SectorID(12, n), 8) for n in range(3)])
        m.init([AllocatedSector(SectorID(12, n), 8) for n in (3, 4)])  # a second operation
        m.update(SectorID(12, 0), {"Finalized": True})
        m.finalize(SectorID(12, 0))
        m.restore(SectorID(12, 0))
        m.add_sink("go", SinkHost(hooks))  # after the fact: every event in one delivery
        assert m.wait_delivered(10)
    assert calls == [
        ("import", "online", SectorID(12, 100), False),
        ("import", "online", SectorID(12, 100), True),  # override as given, once per state
        ("import", "online", SectorID(12, 101), True),
        ("init", [0, 1, 2], "online"),  # one OnInit per init operation, as damocles' InitWith
        ("init", [3, 4], "online"),
        ("update", SectorID(12, 0), "online", {"Finalized": True}),
        ("finalize", SectorID(12, 0)),
        ("restore", SectorID(12, 0)),
    ]


def test_duckdb_sink_keeps_a_legacy_sectors_table(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a file from before `sectors` became a view over sector_heads keeps its table, up to date
    import duckdb

    from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

    path = str(tmp_path / "old.duckdb")
    con = duckdb.connect(path)
    con.register("s", pa.Table.from_batches([], schema=SECTOR_EVENT_SCHEMA))
    con.execute("CREATE TABLE sector_events AS SELECT * FROM s LIMIT 0")
    ddl = ", ".join(f'"{c[0]}" {c[1]}' for c in con.execute("DESCRIBE SELECT * FROM s").fetchall())
    con.execute(f"CREATE TABLE sectors ({ddl}, PRIMARY KEY (miner, number))")
    con.close()
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    host = SinkHost.from_module(duck, {"Constructor": "open"}, {"Path": path})
    with _mgr(dictdb, tmp_path, {"duckdb": host}) as m:
        m.import_states([sealing_state(14, n) for n in range(20)])
        m.update(SectorID(14, 3), {"Removed": True})
        assert m.wait_delivered(10)
    assert host.sink.legacy
    assert host.sink.query("SELECT count(*) AS n, count(*) FILTER (WHERE removed) AS r FROM sectors").to_pylist() == [{"n": 20, "r": 1}]
    host.close()


class _LingeringSink(RecordingSink):
    batch_linger = 30.0  # read through SinkHost.delivery_hints


def test_sink_linger_batches_deliveries_and_wait_delivered_hurries(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    slow_files, prompt = _LingeringSink(), RecordingSink()
    sinks = {"files": SinkHost(sink_obj=slow_files), "prompt": SinkHost(sink_obj=prompt)}
    with _mgr(dictdb, tmp_path, sinks, flush_age=0.0) as m:
        for i in range(20):
            m.init([AllocatedSector(SectorID(11, i), 8)])
        deadline = time.monotonic() + 5
        while prompt.seqs[-1:] != [20] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prompt.seqs[-1:] == [20]  # a sink without linger is not held back
        assert slow_files.batches == 0 and m.status()["sinks"]["files"]["lag"] == 20  # waits for more
        t0 = time.monotonic()
        assert m.wait_delivered(10)  # does not sit out the 30 s linger
        assert time.monotonic() - t0 < 10
        assert slow_files.batches == 1 and slow_files.seqs == list(range(1, 21))


def test_end_of_an_import_is_delivered_without_the_sinks_linger(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # `sectors import` through the daemon returns when the KV has it all; the import's last
    # rows then reach a lingering sink (parquet: 10 s) at once, not a linger later
    slow = _LingeringSink()
    with _mgr(dictdb, tmp_path, {"files": SinkHost(sink_obj=slow)}, import_chunk=50) as m:
        assert m.import_states([make_state(15, n) for n in range(120)]) == 120
        deadline = time.monotonic() + 20  # (the linger is 30 s)
        while slow.seqs[-1:] != [120] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.seqs[-1:] == [120]
        for i in range(3):  # and afterwards the sink lingers again
            m.init([AllocatedSector(SectorID(15, 200 + i), 8)])
        time.sleep(0.3)
        assert slow.seqs[-1:] == [120] and m.status()["sinks"]["files"]["lag"] == 3
    assert_no_gaps(slow.seqs)


def test_import_delivers_big_batches_to_sinks(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}, import_chunk=50, sink_bulk_linger=30.0) as m:
        assert m.import_states([make_state(12, n) for n in range(500)]) == 500
        assert m.wait_delivered(10)
    # 10 journal frames, held back while the import ran: one delivery, or two if the watermark
    # had not yet passed the last frame when the import returned
    assert rec.batches <= 2
    assert_no_gaps(rec.seqs)


def test_checkpoint_file_of_an_older_version_is_read_and_rewritten(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}) as m:
        for i in range(3):
            m.init([AllocatedSector(SectorID(14, i), 8)])
        assert m.wait_delivered(10)
    ckpt = tmp_path / "journal" / "sinks" / "rec.ckpt"
    assert int(ckpt.read_text()) == 3
    ckpt.write_text("2")  # as written before checkpoints were rewritten in place
    rec2 = RecordingSink()
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec2)}) as m:
        assert m.status()["sinks"]["rec"]["checkpoint"] in (2, 3)
        assert m.wait_delivered(10)
        assert rec2.seqs == [3]  # redelivered from the old checkpoint (at least once)
    assert int(ckpt.read_text()) == 3 and os.path.getsize(ckpt) == 20


def test_duckdb_sink_ingests_with_its_thread_setting_and_locks_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    with pytest.raises(ValueError, match="Threads"):
        duck.open({"Path": str(tmp_path / "x.duckdb"), "Threads": "two"})
    sink = duck.open({"Path": str(tmp_path / "t.duckdb")})
    try:
        setting = "SELECT current_setting('threads') AS t"
        assert sink.con.execute(setting).fetchall() == [(1,)]  # ingest
        assert sink.query(setting).num_rows == 1  # queries answer; the configuration is locked:
        with pytest.raises(duck.duckdb.Error, match="lock"):
            sink.con.execute("SET threads = 2")
    finally:
        sink.close()


def test_import_skips_keys_of_the_chunk_still_being_written(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # chunks overlap: the second repeats half of the first, whose KV write may still run
    first = [sealing_state(16, n) for n in range(10)]
    again = [sealing_state(16, n, with_piece=True) for n in range(5, 15)]
    with _mgr(dictdb, tmp_path, import_chunk=10) as m:
        assert m.import_states(first + again) == 15
        online = dictdb.open_collection("meta")
        assert all(online.data[on_key(s.id)] == s.to_go_json() for s in first)
        assert m.status()["journal"]["head"] == 15


def test_kv_failure_mid_import_leaves_no_event_unresolved(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    meta = dictdb.open_collection("meta")
    orig, calls = meta.update, {"n": 0}

    def update(fn):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the third chunk's write
            raise OSError("disk gone (injected)")
        return orig(fn)

    meta.update = update  # type: ignore[method-assign]
    with _mgr(dictdb, tmp_path, {"rec": SinkHost(sink_obj=rec)}, import_chunk=10, commit_retries=1) as m:
        with pytest.raises(OSError, match="disk gone"):
            m.import_states([sealing_state(17, n) for n in range(60)])
        assert m.wait_delivered(10)  # every journaled event resolved: the watermark is past them
        assert len(meta.data) == 20
        # the rows a sink got end, per sector, in what the KV holds
        last: dict[int, dict] = {}
        for r in pa.concat_tables(rec.tables).to_pylist():
            last[r["number"]] = r
        for number, r in last.items():
            held = meta.data.get(on_key(SectorID(17, number)))
            assert (r["worker_state"] == "online") == (held is not None), (number, r["kind"])
        assert m.import_states([sealing_state(17, n) for n in range(60)]) == 40  # the rest, later
        assert m.wait_delivered(10)
    assert_no_gaps(rec.seqs)


def test_parquet_sink_splits_a_batch_by_utc_day(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.dataset as ds

    from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA, states_to_arrow

    pqmod = load_plugin("parquet_sink", "parquet_sink")
    sink = pqmod.open({"Path": str(tmp_path / "pq")})
    st = states_to_arrow([make_state(18, n) for n in range(3)])
    times = pa.array([1764633000_000000, 1764547199_999999, 1764633001_000000], SECTOR_EVENT_SCHEMA.field("time").type)
    head = [pa.array([1, 2, 3], pa.uint64()), pa.array(["import"] * 3), times, pa.array(["online"] * 3), pa.nulls(3, pa.list_(pa.string()))]
    sink.on_batch(pa.RecordBatch.from_arrays(head + st.columns, schema=SECTOR_EVENT_SCHEMA))
    t = ds.dataset(str(tmp_path / "pq"), format="parquet", partitioning="hive").to_table().to_pydict()
    assert sorted(zip(t["seq"], map(str, t["date"]))) == [(1, "2025-12-01"), (2, "2025-11-30"), (3, "2025-12-01")]


def test_duckdb_latest_per_sector_with_repeats_and_large_ids() -> None:
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    for miner in (5, 1 << 40):  # the packed-key shortcut, and the group_by it falls back to
        b = pa.table({"miner": pa.array([miner] * 4, pa.uint64()), "number": pa.array([1, 2, 1, 3], pa.uint64()),
                      "seq": pa.array([10, 11, 12, 13], pa.uint64())})
        assert sorted(duck._latest_per_sector(b).column("seq").to_pylist()) == [11, 12, 13]
        assert duck._latest_per_sector(b.slice(1)).num_rows == 3  # no repeat: the batch as is


def test_journal_write_failure_fails_waiting_ops_instead_of_hanging(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vsm.sdk import DiskFullError

    with _mgr(dictdb, tmp_path) as m:
        m.init([AllocatedSector(SectorID(19, 0), 8)])

        def full(*a, **k):  # type: ignore[no-untyped-def]
            raise OSError(28, "No space left on device (injected)")

        m.journal.append = full  # type: ignore[method-assign]
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(m.init, [AllocatedSector(SectorID(19, n), 8)]) for n in range(1, 5)]
            for f in futs:
                with pytest.raises(DiskFullError, match="disk full: .*journal"):
                    f.result(timeout=10)
        with pytest.raises(DiskFullError):
            m.update(SectorID(19, 0), {"Removed": True})
        assert "No space left" in (m.status()["journal"]["broken"] or "")
        assert not m.get(SectorID(19, 0)).removed and dictdb.open_collection("meta").data.keys() == {on_key(SectorID(19, 0))}


def test_bare_keys_are_adopted_once_and_a_conflict_is_kept(dictdb, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """States under bare keys (vsm-pool before damocles' layout) move under the prefix; a bare
    key whose prefixed twin holds another state stays as it is, and the log says so."""
    meta = dictdb.open_collection("meta")
    a, b = make_state(5, 1).to_go_json(), make_state(5, 2).to_go_json()
    meta.data.update({b"m-5-n-1": a, b"m-5-n-2": b, b"sector-states/m-5-n-2": a, b"m-5-n-3x": b"other"})
    with caplog.at_level("INFO", logger="vsm.sectors"), _mgr(dictdb, tmp_path) as m:
        assert m.get(SectorID(5, 1)).to_go_json() == a
        assert m.get(SectorID(5, 2)).to_go_json() == a  # damocles' key wins the read
    assert meta.data == {b"sector-states/m-5-n-1": a, b"sector-states/m-5-n-2": a, b"m-5-n-2": b, b"m-5-n-3x": b"other"}
    assert "moved 1 bare keys" in caplog.text and "1 bare keys in 'meta' were kept" in caplog.text and "m-5-n-2" in caplog.text
