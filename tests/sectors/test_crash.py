"""kill -9 the manager mid bulk import; restart; every change in the KV reaches every sink."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from vsm.sdk.sectors import arrow_to_states, sector_key
from vsm.sectors import SectorStateManager, SinkHost

from .helpers import ROOT, RecordingSink, assert_no_gaps, load_plugin

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["random", "after_journal", "mid_finalize"])
def test_restart_after_kill9(tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("sqlite3")
    if not os.path.exists(os.path.join(ROOT, "plugins", "sqlitekv", "sqlitekv.py")):
        pytest.skip("plugins/sqlitekv not present")
    child = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "sectors", "_crash_child.py"), ROOT, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if mode == "random":
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(1.0)  # mid bulk import, updates running
            child.send_signal(signal.SIGKILL)
        rc = child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert rc == -signal.SIGKILL, child.stderr.read() if child.stderr else rc

    kv = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(tmp_path / "kv.db")})
    kv.run()
    duck = load_plugin("duckdb_sink", "duckdb_sink")
    host = SinkHost.from_module(duck, {"Constructor": "open"}, {"Path": str(tmp_path / "s.duckdb")})
    rec = RecordingSink()
    m = SectorStateManager(kv, str(tmp_path / "journal"), sinks={"duckdb": host, "rec": SinkHost(sink_obj=rec)})
    try:
        if mode == "after_journal":
            assert m.recovered["dropped"] >= 1  # the journaled, uncommitted chunk was cut
        assert m.wait_delivered(60), (m.status()["sinks"], m.recovered)
        assert_no_gaps(rec.seqs)
        head = m.status()["journal"]["head"]
        assert rec.seqs[-1] == head
        # every state the KV holds is the state of the last event for that sector
        last: dict[tuple[int, int], dict] = {}
        for r in pa.concat_tables(rec.tables).to_pylist():
            last[(r["miner"], r["number"])] = r
        for ws, cname, prefix in (("online", "meta", b"sector-states/"), ("offline", "offline_meta", b"sector-states-offline/")):
            coll = kv.open_collection(cname)
            it = coll.scan(prefix + b"m-")
            n = 0
            for k, v in it:
                r = last[tuple(int(x) for x in k[len(prefix) :].decode().split("-")[1::2])]  # type: ignore[index]
                assert r["worker_state"] == ws
                from vsm.sdk.sectors import SectorState

                assert SectorState.from_arrow_row(r).to_go_json() == v
                n += 1
        online = sum(1 for r in last.values() if r["worker_state"] == "online")
        assert sum(1 for _ in kv.open_collection("meta").scan(b"sector-states/m-")) == online
        if mode == "mid_finalize":
            with pytest.raises(KeyError):
                kv.open_collection("meta").get(b"sector-states/" + sector_key(__import__("vsm.sdk.sectors", fromlist=["SectorID"]).SectorID(20, 5)))
        # DuckDB holds the same
        cnt = host.sink.query("SELECT count(*) AS n, max(seq) AS s FROM sector_events").to_pylist()[0]
        assert cnt == {"n": head, "s": head}
        ducks = host.sink.query("SELECT * FROM sectors")
        assert ducks.num_rows == len(last)
        for st in arrow_to_states(ducks)[:200]:
            assert st.to_go_json() == SectorState.from_arrow_row(last[(st.id.miner, st.id.number)]).to_go_json()
        # the manager keeps working after recovery
        from vsm.sdk.sectors import AllocatedSector, SectorID

        m.init([AllocatedSector(SectorID(99, 1), 8)])
        assert m.wait_delivered(10)
        assert_no_gaps(rec.seqs)
    finally:
        m.close()
        host.close()
        kv.close()
