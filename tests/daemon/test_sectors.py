"""Sector states through the CLI and the daemon: import, get, list, update, finalize, restore,
query in every format; status and /metrics show plugins and sink lag."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from vsm.sdk.sectors import SectorID, SectorState, SectorStateChange, ReportStateReq, WorkerIdentifier
from vsm.sectors import write_import_file

from .harness import Daemon

pytestmark = pytest.mark.timeout(180)

MINER = 1234
COUNT = 300


def _state(number: int) -> SectorState:
    st = SectorState(SectorID(MINER, number), 8)
    st.latest_state = ReportStateReq(WorkerIdentifier("worker-01", "10.0.0.7"), SectorStateChange("C2Done", "Persisted", "Evt"), None)
    return st


def _wait_delivered(d: Daemon, timeout: float = 30.0) -> dict[str, Any]:
    """Sink status once every sink caught up with the journal head."""
    deadline = time.monotonic() + timeout
    while True:
        st = d.rpc("sinks.status")
        head = st["journal"]["head"]
        if all(s["checkpoint"] >= head and s["lag"] == 0 for s in st["sinks"].values()) or time.monotonic() > deadline:
            return st  # type: ignore[no-any-return]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def imported(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    path = tmp_path_factory.mktemp("import") / "states.jsonl"
    assert write_import_file(str(path), (_state(n) for n in range(COUNT))) == COUNT
    proc = daemon.cli("sectors", "import", "--chunk", "100", str(path))
    assert f"imported {COUNT} of {COUNT} sectors" in proc.stdout, proc.stdout
    # again: every one exists already
    proc = daemon.cli("sectors", "import", str(path))
    assert f"imported 0 of {COUNT} sectors" in proc.stdout and "--override" in proc.stdout
    # and with --override (a Parquet file this time)
    pq_path = path.with_suffix(".parquet")
    write_import_file(str(pq_path), (_state(n) for n in range(10)))
    proc = daemon.cli("sectors", "import", "--override", str(pq_path))
    assert "imported 10 of 10 sectors" in proc.stdout
    st = _wait_delivered(daemon)
    assert all(s["lag"] == 0 for s in st["sinks"].values()), st
    return daemon


def test_get_list(imported: Daemon) -> None:
    d = imported
    one = json.loads(d.cli("sectors", "get", "--json", str(MINER), "7").stdout)
    assert one["ID"] == {"Miner": MINER, "Number": 7} and one["WorkerState"] == "online"
    text = d.cli("sectors", "get", str(MINER), "7").stdout
    assert text.startswith(f"m-{MINER}-n-7  online") and "state Persisted" in text
    listed = json.loads(d.cli("sectors", "list", "--json", "--miner", str(MINER), "--limit", "1000").stdout)
    assert len(listed) == COUNT and {s["ID"]["Number"] for s in listed} == set(range(COUNT))
    assert len(d.cli("sectors", "list", "--limit", "5").stdout.strip().splitlines()) == 5
    # raw JSON-RPC agrees
    assert d.rpc("sectors.get", {"miner": MINER, "number": 7})["ID"]["Number"] == 7
    assert len(d.rpc("sectors.list", {"miner": MINER, "limit": 10})) == 10


def test_missing_sector_is_one_line(imported: Daemon) -> None:
    proc = imported.cli("sectors", "get", str(MINER), "999999", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no sector m-1234-n-999999" in proc.stderr.strip().splitlines()[-1], proc.stderr
    err = imported.rpc_error("sectors.get", {"miner": MINER, "number": 999999})
    assert err["code"] == -32602 and "no sector" in err["message"]


def test_update_finalize_restore(imported: Daemon) -> None:
    d = imported
    st = json.loads(d.cli("sectors", "update", "--json", str(MINER), "11", "NeedRebuild=true", "AbortReason=disk gone").stdout)
    assert st["NeedRebuild"] is True and st["AbortReason"] == "disk gone"
    st = json.loads(d.cli("sectors", "finalize", "--json", str(MINER), "11").stdout)
    assert st["WorkerState"] == "offline"
    assert d.rpc("sectors.get", {"miner": MINER, "number": 11})["WorkerState"] == "offline"
    offline = json.loads(d.cli("sectors", "list", "--json", "--offline").stdout)
    assert [s["ID"]["Number"] for s in offline] == [11]
    text = d.cli("sectors", "restore", str(MINER), "11").stdout
    assert text.startswith(f"m-{MINER}-n-11  online") and "NeedRebuild" in text and "abort: disk gone" in text
    proc = d.cli("sectors", "update", str(MINER), "11", "NoSuchField=1", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "NoSuchField" in proc.stderr, proc.stderr
    proc = d.cli("sectors", "restore", str(MINER), "11", check=False)  # it is online already
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    _wait_delivered(d)


def test_query_formats(imported: Daemon, tmp_path: Path) -> None:
    d = imported
    _wait_delivered(d)
    sql = f"SELECT miner, number, worker_state FROM sectors WHERE miner = {MINER} AND number < 5 ORDER BY number"
    table = d.cli("query", sql).stdout.strip().splitlines()
    assert table[0].split() == ["miner", "number", "worker_state"] and table[-1] == "(5 rows)"
    assert table[1].split() == [str(MINER), "0", "online"]
    rows = list(csv.DictReader(io.StringIO(d.cli("query", "--format", "csv", sql).stdout)))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    as_json = json.loads(d.cli("query", "--format", "json", sql).stdout)
    assert as_json[0] == {"miner": MINER, "number": 0, "worker_state": "online"}
    out = tmp_path / "q.parquet"
    d.cli("query", "--format", "parquet", "--out", str(out), sql)
    t = pq.read_table(out)
    assert t.num_rows == 5 and t.column("number").to_pylist() == [0, 1, 2, 3, 4]
    proc = d.cli("query", "--format", "parquet", sql, check=False)
    assert proc.returncode != 0 and "--out" in proc.stderr
    # counts through raw JSON-RPC
    res = d.rpc("query", {"sql": f"SELECT count(*) AS n FROM sectors WHERE miner = {MINER}"})
    assert res == {"columns": ["n"], "rows": [[COUNT]]}
    events = d.rpc("query", {"sql": "SELECT kind, count(*) FROM sector_events GROUP BY kind ORDER BY kind"})["rows"]
    assert dict(events).get("import", 0) >= COUNT, events
    # a bad query: one line from the sink, the daemon goes on
    proc = d.cli("query", "SELECT * FROM no_such_table", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "no_such_table" in proc.stderr, proc.stderr
    err = d.rpc_error("query", {"sql": "SELEC nonsense"})
    assert err["code"] in (-32001, -32602, -32000) and "Traceback" not in err["message"]
    err = d.rpc_error("query", {"sql": "SELECT 1", "sink": "nope"})
    assert "nope" in err["message"]


def test_status_shows_plugins_and_sink_lag(imported: Daemon) -> None:
    d = imported
    _wait_delivered(d)
    text = d.cli("status").stdout
    assert f"daemon: pid {d.pid}, listening on 127.0.0.1:{d.port}" in text
    # workers: sqlitekv and the sinks tolerate one; fsstore gets the ObjStore default of 4
    for label, workers in (("KVStore/sqlitekv", 1), ("ObjStore/fsstore", 4), ("SyncSectorState/duckdb", 1),
                           ("SyncSectorState/parquet", 1), ("RegisterJsonRpc/concurrent-limiter", 1)):
        assert re.search(rf"^{re.escape(label)}\s+ready\s+{workers}\s+0\s+\d+", text, re.M), (label, text)
    sinks = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("duckdb", "parquet"):
            sinks[parts[0]] = parts
    assert set(sinks) == {"duckdb", "parquet"}, text
    for name, parts in sinks.items():
        assert parts[1] == "running" and parts[2].isdigit() and parts[3] == "0", (name, text)  # state, checkpoint, lag
    st = json.loads(d.cli("status", "--json").stdout)
    assert st["sectors"]["sinks"]["duckdb"]["lag"] == 0
    assert {p["name"] for p in st["plugins"]} >= {"sqlitekv", "fsstore", "duckdb", "parquet", "concurrent-limiter"}


def test_metrics(imported: Daemon) -> None:
    d = imported
    _wait_delivered(d)
    status, headers, body = d.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for family in ("vsm_plugin_calls", "vsm_plugin_errors", "vsm_plugin_worker_restarts", "vsm_plugin_workers", "vsm_sink_lag_rows"):
        assert re.search(rf"^# TYPE {family}(_total)? (counter|gauge)$", text, re.M), family
    assert re.search(r"^# TYPE vsm_plugin_call_seconds histogram$", text, re.M)
    # every call of the pool is in the +Inf bucket, and the buckets only grow
    inf = re.search(r'^vsm_plugin_call_seconds_bucket\{kind="KVStore",le="\+Inf",plugin="sqlitekv"\} (\S+)$', text, re.M)
    count = re.search(r'^vsm_plugin_call_seconds_count\{kind="KVStore",plugin="sqlitekv"\} (\S+)$', text, re.M)
    assert inf and count and float(inf.group(1)) == float(count.group(1)) > 0, text
    les = [float(v) for v in re.findall(r'^vsm_plugin_call_seconds_bucket\{kind="KVStore",le="[^"]+",plugin="sqlitekv"\} (\S+)$', text, re.M)]
    assert les == sorted(les) and les[0] < les[-1], les
    calls = re.search(r'^vsm_plugin_calls_total\{kind="KVStore",plugin="sqlitekv"\} (\S+)$', text, re.M)
    assert calls and float(calls.group(1)) >= COUNT / 100, text  # at least a call per import request
    assert re.search(r'^vsm_sink_lag_rows\{sink="duckdb"\} 0\.0$', text, re.M), text
    assert re.search(r'^vsm_plugin_workers\{kind="ObjStore",plugin="fsstore"\} 4\.0$', text, re.M), text


def test_streamed_import_over_raw_http(imported: Daemon) -> None:
    """POST /sectors/import: an Arrow IPC stream of states, behind the token; a body that is
    not one is refused in one line, and nothing of it is stored."""
    import pyarrow as pa

    from vsm.sdk.sectors import states_to_arrow

    batch = states_to_arrow([_state(n) for n in range(5000, 5020)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch.slice(0, 7))
        w.write_batch(batch.slice(7))
    body = sink.getvalue().to_pybytes()
    assert imported.request("POST", "/sectors/import", body, token=None)[0] == 401
    status, _, reply = imported.request("POST", "/sectors/import?worker_state=offline", body)
    assert status == 200 and json.loads(reply) == {"written": 20, "received": 20}, reply
    assert imported.rpc("sectors.get", {"miner": MINER, "number": 5011})["WorkerState"] == "offline"
    status, _, reply = imported.request("POST", "/sectors/import", b"not arrow at all")
    assert status == 400 and "ArrowInvalid" in json.loads(reply)["error"], reply
    status, _, reply = imported.request("POST", "/sectors/import?worker_state=elsewhere", body)
    assert status == 400 and "worker_state" in json.loads(reply)["error"], reply
