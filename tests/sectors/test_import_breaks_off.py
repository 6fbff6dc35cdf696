"""An import whose source breaks off or stalls never holds the watermark (issue 24 item 3), and a
watermark that waits for one ticket while committed events pile up behind it is a problem in
status, /metrics and the problems list (what the dashboard shows)."""

from __future__ import annotations

import contextvars
import threading
from types import SimpleNamespace
from typing import Any, Iterator

import pyarrow as pa
import pytest

from vsm.sdk.sectors import AllocatedSector, SectorID, states_to_arrow
from vsm.sectors import SectorStateManager, SinkHost, op_client
from vsm.server.metrics import Metrics
from vsm.server.problems import problems

from .helpers import RecordingSink, make_state, wait_until

pytestmark = pytest.mark.timeout(120)


def _mgr(db: Any, tmp_path: Any, **kw: Any) -> SectorStateManager:
    kw.setdefault("fsync", False)
    return SectorStateManager(db, str(tmp_path / "journal"), flush_age=0.0, import_chunk=100, **kw)


def _chunks(first: int, n: int, size: int = 100) -> Iterator[pa.RecordBatch]:
    for i in range(n):
        yield states_to_arrow([make_state(9, first + i * size + k) for k in range(size)])


def test_source_error_leaves_no_ticket_open(dictdb: Any, tmp_path: Any) -> None:
    """The client is gone after three chunks: every chunk journaled is written, the error says
    how many states that was, and the watermark passes everything at once."""
    rec = RecordingSink()
    with _mgr(dictdb, tmp_path, sinks={"rec": SinkHost(sink_obj=rec)}) as m:

        def source() -> Iterator[pa.RecordBatch]:
            yield from _chunks(0, 3)
            raise ConnectionError("import stalled: no byte for 120s after 7133560 bytes")

        with pytest.raises(ConnectionError) as err:
            m.import_arrow(source())
        journal = m.status()["journal"]
        assert journal["head"] == journal["committed"] == 300, journal  # nothing journaled is left unwritten
        written = err.value.written  # type: ignore[attr-defined]
        assert written == 300
        m.update(SectorID(9, 1), {"AbortReason": "after the break-off"})
        assert m.wait_delivered(30)
        assert sorted(rec.seqs) == list(range(1, written + 2))
        # the same import again: the states stored are skipped, none journaled twice
        assert m.import_arrow(_chunks(0, 5)) == 200
        assert m.wait_delivered(30)
        assert len(rec.seqs) == 501


def test_stalled_source_holds_no_stripe(dictdb: Any, tmp_path: Any) -> None:
    """While the source waits for its client, other sectors' updates go on and reach the sink."""
    rec = RecordingSink()
    gate = threading.Event()
    with _mgr(dictdb, tmp_path, sinks={"rec": SinkHost(sink_obj=rec)}) as m:
        m.init([AllocatedSector(SectorID(1, 1), 8)])

        def source() -> Iterator[pa.RecordBatch]:
            yield from _chunks(0, 2)
            gate.wait(60)  # the client stalls
            yield from _chunks(200, 1)

        importing = threading.Thread(target=m.import_arrow, args=(source(),))
        importing.start()
        try:
            wait_until(lambda: m.status()["journal"]["head"] >= 201)
            updated = threading.Thread(target=m.update, args=(SectorID(1, 1), {"AbortReason": "meanwhile"}))
            updated.start()
            updated.join(30)
            assert not updated.is_alive(), "an update waited for a stalled import's client"
            assert m.wait_delivered(30)  # the watermark passed the update and the chunks before it
        finally:
            gate.set()
            importing.join(30)
        assert m.wait_delivered(30) and len(rec.seqs) == 302


def test_stuck_ticket_is_a_problem(dictdb: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KV commit that does not end while later ones do: status names the ticket, its owner and
    since when; /metrics has the gap and the age; the problems list has it. All clear once it ends."""
    import vsm.sectors._manager as manager_module

    monkeypatch.setattr(manager_module, "STALLED_AFTER", 0.2)
    rec = RecordingSink()
    gate = threading.Event()
    with _mgr(dictdb, tmp_path, sinks={"rec": SinkHost(sink_obj=rec)}) as m:
        m.init([AllocatedSector(SectorID(1, n), 8) for n in (1, 2, 3)])
        orig = m._commit

        def slow_commit(changes: Any) -> None:
            if changes[0].sid.number == 1:
                gate.wait(60)
            orig(changes)

        m._commit = slow_commit  # type: ignore[method-assign]
        request = contextvars.copy_context()  # as the daemon runs each JSON-RPC request's method
        request.run(op_client.set, "JSON-RPC from 10.0.0.9")
        stuck = threading.Thread(target=request.run, args=(m.update, SectorID(1, 1), {"AbortReason": "slow"}))
        stuck.start()
        try:
            wait_until(lambda: m.writer.blocking() is not None)
            m.update(SectorID(1, 2), {"AbortReason": "behind"})
            m.update(SectorID(1, 3), {"AbortReason": "behind"})
            wait_until(lambda: m.status()["journal"]["stalled"] is not None)
            status = m.status()
            journal = status["journal"]
            assert "(update of m-1-n-1 by JSON-RPC from 10.0.0.9)" in journal["stalled"] and "2 events committed to the KV wait behind it" in journal["stalled"]
            assert journal["watermark_gap"] == 2 and journal["watermark_age"] >= 0.2, journal
            daemon = SimpleNamespace(sectors=m, registry=None, config=None)
            rows = [p for p in problems(daemon, status) if p["part"] == "journal"]
            assert [r["state"] for r in rows] == ["stalled"] and "restart" in rows[0]["fix"], rows
            text = Metrics(daemon).render().decode()
            assert "vsm_journal_watermark_gap_events 2.0" in text, text
            assert 'vsm_problem{cause="the watermark waits at seq' in text and 'state="stalled"' in text, text
            assert "vsm_journal_watermark_age_seconds 0.0" not in text
            # `vsm-pool sinks status`: every sink's lag is 0 (it counts up to the watermark), the line says why
            from click.testing import CliRunner

            from vsm.cli import sinks as sinks_cli

            monkeypatch.setattr(sinks_cli, "daemon_or_fail", lambda *_: SimpleNamespace(call=lambda method: m.status()))
            out = CliRunner().invoke(sinks_cli.sinks, ["status"]).output
            assert "journal: stalled: the watermark waits at seq" in out, out
        finally:
            gate.set()
            stuck.join(30)
        assert m.wait_delivered(30)
        journal = m.status()["journal"]
        assert journal["stalled"] is None and journal["watermark_gap"] == 0 and journal["watermark_age"] == 0.0, journal
        assert "vsm_journal_watermark_age_seconds 0.0" in Metrics(SimpleNamespace(sectors=m, registry=None, config=None)).render().decode()
