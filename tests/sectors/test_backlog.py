"""A sink that is detached, failing or behind keeps its events (issue 13, item 1): the journal
holds what every sink with a checkpoint needs, up to max_backlog events; past it the sink is
marked as needing a rebuild, never resumes past the gap, and `rebuild_sink` refills it from the
KV state."""

from __future__ import annotations

import pyarrow as pa
import pytest

from vsm.sdk.sectors import SectorID
from vsm.sectors import SectorStateManager, SinkHost

from .helpers import RecordingSink, assert_no_gaps, fail_journal_appends, load_plugin, make_state, sealing_state

pytestmark = pytest.mark.timeout(60)


def _mgr(db, tmp_path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("fsync", False)
    kw.setdefault("segment_bytes", 1)  # a segment per frame: compaction can cut anywhere
    kw.setdefault("flush_rows", 50)
    kw.setdefault("import_chunk", 50)
    return SectorStateManager(db, str(tmp_path / "journal"), **kw)


def _import(m: SectorStateManager, miner: int, n: int) -> None:
    m.import_states([sealing_state(miner, i, with_piece=False) for i in range(n)])  # all online: updated after


def test_detached_sink_keeps_its_events_and_catches_up(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec, other = RecordingSink(), RecordingSink()
    with _mgr(dictdb, tmp_path) as m:
        m.add_sink("rec", SinkHost(sink_obj=rec))
        m.add_sink("other", SinkHost(sink_obj=other))
        _import(m, 1, 100)
        assert m.wait_delivered(10)
        m.remove_sink("rec")  # `plugin disable`: the checkpoint file stays
        _import(m, 2, 600)
        assert m.wait_delivered(10)
        m.compact()
        st = m.status()
        assert st["sinks"]["rec"]["attached"] is False and st["sinks"]["rec"]["lag"] == 600, st["sinks"]["rec"]
        assert st["journal"]["first_seq"] <= 101  # what "rec" needs is still there
        m.add_sink("rec", SinkHost(sink_obj=rec))  # `plugin enable`
        assert m.wait_delivered(10)
    assert_no_gaps(rec.seqs)
    assert len(rec.seqs) == 700


def test_past_max_backlog_the_sink_is_marked_and_never_resumes_past_the_gap(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, max_backlog=200) as m:
        m.add_sink("rec", SinkHost(sink_obj=rec))
        _import(m, 1, 100)
        assert m.wait_delivered(10)
        m.remove_sink("rec")
        _import(m, 2, 500)
        m.wait_delivered(10)
        m.compact()
        st = m.status()["sinks"]["rec"]
        assert st["state"] == "needs-rebuild" and "MaxBacklog = 200" in st["needs_rebuild"], st
        m.add_sink("rec", SinkHost(sink_obj=rec))
        _import(m, 3, 10)
        m.wait_delivered(2)
        assert max(rec.seqs) == 100  # nothing past the gap
        assert m.status()["sinks"]["rec"]["state"] == "needs-rebuild"
        # the rebuild: a row per sector from the KV, then the journal from there on
        done = m.rebuild_sink("rec", SinkHost(sink_obj=rec))
        assert done["rows"] == 610
        _import(m, 4, 5)
        assert m.wait_delivered(10)
        assert m.status()["sinks"]["rec"]["state"] == "running"
    rows = pa.concat_tables(rec.tables).to_pylist()
    rebuilt = [r for r in rows if r["kind"] == "rebuild"]
    assert {(r["miner"], r["number"]) for r in rebuilt} == {(mi, n) for mi, k in ((1, 100), (2, 500), (3, 10)) for n in range(k)}
    after = [r for r in rows if r["seq"] > done["last_seq"]]
    assert [r["miner"] for r in after] == [4] * 5
    assert len(rec.seqs) == len(set(rec.seqs))


def test_a_new_sink_on_a_compacted_journal_needs_a_rebuild(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with _mgr(dictdb, tmp_path) as m:
        _import(m, 1, 300)
        m.wait_delivered(5)
        m.compact()  # no sink: everything up to the watermark goes
        rec = RecordingSink()
        m.add_sink("late", SinkHost(sink_obj=rec))
        m.wait_delivered(1)
        st = m.status()["sinks"]["late"]
        assert st["state"] == "needs-rebuild" and "before this sink was first attached" in st["needs_rebuild"], st
        assert rec.seqs == []
        m.rebuild_sink("late", SinkHost(sink_obj=rec))
        assert len(rec.seqs) == 300 and m.status()["sinks"]["late"]["needs_rebuild"] is None


def test_rebuild_of_duckdb_matches_the_kv(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    host = SinkHost.from_module(duck, {"Constructor": "open"}, {"Path": str(tmp_path / "s.duckdb")})
    with _mgr(dictdb, tmp_path, max_backlog=100) as m:
        m.add_sink("duckdb", host)
        _import(m, 7, 50)
        assert m.wait_delivered(10)
        m.remove_sink("duckdb")
        _import(m, 8, 300)
        for n in range(0, 50, 5):
            m.update(SectorID(7, n), {"Removed": True})
        m.finalize(SectorID(7, 1))
        m.wait_delivered(5)
        m.compact()
        m.add_sink("duckdb", host)  # `plugin enable`: it is marked, and waits
        m.rebuild_sink("duckdb", host)
        m.update(SectorID(7, 2), {"AbortReason": "after"})
        assert m.wait_delivered(10)
        rows = host.sink.query("select miner, number, removed, worker_state, abort_reason from sectors order by miner, number").to_pylist()
    assert len(rows) == 350
    by = {(r["miner"], r["number"]): r for r in rows}
    assert all(by[(7, n)]["removed"] for n in range(0, 50, 5))
    assert by[(7, 1)]["worker_state"] == "offline" and by[(7, 2)]["abort_reason"] == "after"


def test_recovery_renumbers_past_an_empty_frame_without_a_hole(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A reserved block (an empty frame) past the watermark at a kill -9, then a dropped and a
    kept event: the kept one is renumbered to watermark+1, so no sink sees a gap."""
    from vsm.sdk.sectors import sector_key, states_to_arrow
    from vsm.sectors._journal import Journal
    from vsm.sectors._manager import _event_batch

    with _mgr(dictdb, tmp_path) as m:
        _import(m, 1, 2)
    journal = Journal(str(tmp_path / "journal"), segment_bytes=1, fsync=False)

    def frame(state, seq):  # type: ignore[no-untyped-def]
        b = _event_batch(states_to_arrow([state]), "import", "online")
        journal.append(b.set_column(0, b.schema.field("seq"), pa.array([seq], pa.uint64())), seq, seq)

    journal.append(pa.RecordBatch.from_pylist([], schema=_event_batch(states_to_arrow([make_state(1, 0)]), "import", "online").schema), 3, 10)
    frame(make_state(2, 0), 11)  # journaled, never committed: dropped
    kept = make_state(2, 1)
    frame(kept, 12)  # committed, the watermark not moved yet: kept
    journal.close()
    dictdb.open_collection("meta").data[b"sector-states/" + sector_key(kept.id)] = kept.to_go_json()
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path) as m:
        assert m.recovered == {"tail": 2, "kept": 1, "dropped": 1}
        m.add_sink("rec", SinkHost(sink_obj=rec))
        assert m.wait_delivered(10)
        assert m.status()["sinks"]["rec"]["needs_rebuild"] is None
    assert rec.seqs == [1, 2, 3]


def test_a_failed_journal_write_comes_back_without_a_restart(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Disk full: the waiting ops fail (nothing reaches the KV), new ones are refused; once the
    disk takes a frame again, the writer serves again and the sinks see no hole."""
    from vsm.sdk.sectors import AllocatedSector
    from vsm.sdk import DiskFullError
    from vsm.sectors import JournalBroken

    rec = RecordingSink()
    with _mgr(dictdb, tmp_path) as m:
        m.writer.retry_interval = 0.05
        m.add_sink("rec", SinkHost(sink_obj=rec))
        m.init([AllocatedSector(SectorID(9, 0), 8)])
        failing = fail_journal_appends(m)
        with pytest.raises(DiskFullError, match="disk full: .*journal.*free"):
            m.init([AllocatedSector(SectorID(9, 1), 8)])
        with pytest.raises(DiskFullError, match="disk full: .*journal.*free"):
            m.init([AllocatedSector(SectorID(9, 2), 8)])
        assert "No space left" in m.status()["journal"]["broken"]
        assert [d["part"] for d in m.status()["journal"]["disk_full"]] == ["journal"]
        with pytest.raises(JournalBroken, match="retrying"):  # another cause: the journal is broken
            m.writer._broken = OSError(5, "Input/output error (injected)")
            try:
                m.init([AllocatedSector(SectorID(9, 2), 8)])
            finally:
                m.writer._broken = OSError(28, "No space left on device (injected)")
        failing[0] = False
        import time

        deadline = time.monotonic() + 5
        while m.status()["journal"]["broken"] and time.monotonic() < deadline:
            time.sleep(0.02)
        m.init([AllocatedSector(SectorID(9, 3), 8)])
        assert m.wait_delivered(10)
        assert m.status()["sinks"]["rec"]["needs_rebuild"] is None
    assert rec.seqs == [1, 3]  # seq 2 is the failed op's: an empty frame, nothing to deliver
    assert set(dictdb.open_collection("meta").data) == {b"sector-states/m-9-n-0", b"sector-states/m-9-n-3"}


def test_rows_that_cannot_be_encoded_fail_their_own_op_only(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A typed value that passes the op's own checks but not the Arrow encoder (issue 13, item 2:
    one bad update wedged every write until a restart): that op fails, nothing of it reaches
    the KV, the frame's other ops and every later one go on, and sinks see no hole."""
    from vsm.sdk.sectors import AllocatedSector, Seed
    from vsm.sectors._events import EventRejected

    rec = RecordingSink()
    with _mgr(dictdb, tmp_path) as m:
        m.add_sink("rec", SinkHost(sink_obj=rec))
        m.init([AllocatedSector(SectorID(9, n), 8) for n in range(2)])
        with pytest.raises(EventRejected, match="could not be encoded"):
            m.update(SectorID(9, 0), {"Seed": Seed(b"\x01" * 32, "not an epoch")})  # type: ignore[arg-type]
        assert m.get(SectorID(9, 0)).seed is None  # not committed
        m.update(SectorID(9, 1), {"Removed": True})
        m.import_states([make_state(10, n) for n in range(3)])
        assert m.wait_delivered(10)
        st = m.status()["journal"]
        assert st["broken"] is None and st["rejected"] == 1
    assert rec.seqs == [1, 2, 4, 5, 6, 7]  # seq 3 was the rejected update's: an empty frame


def test_a_kv_that_breaks_during_a_commit_does_not_freeze_the_sinks(dictdb, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The KV fails a commit and cannot be read back (issue 13, item 4): the op fails, the
    status says the watermark is held and why, and once the KV answers again the held seq is
    resolved (a revert row with what the KV holds) and delivery goes on, without a restart."""
    import time

    from vsm.sdk.sectors import AllocatedSector

    rec = RecordingSink()
    meta = dictdb.open_collection("meta")
    with _mgr(dictdb, tmp_path, commit_retries=1) as m:
        m.add_sink("rec", SinkHost(sink_obj=rec))
        m.init([AllocatedSector(SectorID(6, n), 8) for n in range(2)])
        down = {"update": True, "view": False}  # the read of the op works; its commit breaks the pool
        real_update, real_view = meta.update, meta.view

        def broken(name, real):  # type: ignore[no-untyped-def]
            def call(fn):  # type: ignore[no-untyped-def]
                if down[name]:
                    down["view"] = True
                    raise ConnectionError("KV pool broken (injected)")
                return real(fn)
            return call

        meta.update, meta.view = broken("update", real_update), broken("view", real_view)  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            m.update(SectorID(6, 0), {"Removed": True})
        time.sleep(1.5)
        held = m.status()["journal"]["held"]
        assert held and "seq 3-3" in held and "KV pool broken" in held, held
        assert m.status()["journal"]["watermark"] == 2
        down.update(update=False, view=False)
        m.update(SectorID(6, 1), {"Removed": True})
        assert m.wait_delivered(10)
        assert m.status()["journal"]["held"] is None
    rows = pa.concat_tables(rec.tables).to_pylist()
    assert [(r["seq"], r["kind"], r["number"], r["removed"]) for r in rows[2:]] == [
        (3, "update", 0, True), (4, "update", 1, True), (5, "revert", 0, False)]
