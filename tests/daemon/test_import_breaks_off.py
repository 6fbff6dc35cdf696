"""An import that breaks off (issue 24 item 3, issue 26 item 6): the CLI killed mid-upload, a
stalled upload, `vsm-pool stop` during an import. None of them may stop the sinks: an update
after it reaches DuckDB and the journal's watermark passes it, the interrupted CLI says how many
states were committed, and the same command run again continues without duplicated events."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vsm.sdk.sectors import ReportStateReq, SectorID, SectorState, SectorStateChange, WorkerIdentifier
from vsm.sectors import write_import_file

from .harness import ROOT, Daemon, cli_env

pytestmark = pytest.mark.timeout(300)

MINER = 4321
COUNT = 60_000


def _state(number: int) -> SectorState:
    st = SectorState(SectorID(MINER, number), 8)
    st.latest_state = ReportStateReq(WorkerIdentifier("worker-01", "10.0.0.7"), SectorStateChange("C2Done", "Persisted", f"Evt{number}"), None)
    return st


@pytest.fixture(scope="module")
def states_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "states.jsonl"
    assert write_import_file(str(path), (_state(n) for n in range(COUNT))) == COUNT
    return path


def _start_import(d: Daemon, path: Path, *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vsm", "sectors", "import", *flags, "--chunk", "2000", str(path)], cwd=ROOT,
                            env=cli_env(d.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_head(d: Daemon, at_least: int, proc: subprocess.Popen[str] | None = None, timeout: float = 120.0) -> int:
    """The journal head once it reached at_least (the import is under way)."""
    deadline = time.monotonic() + timeout
    while True:
        head = int(d.rpc("sinks.status")["journal"]["head"])
        if head >= at_least:
            return head
        assert proc is None or proc.poll() is None, f"the import ended before seq {at_least}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"the journal head stayed at {head}"
        time.sleep(0.02)


def _events(d: Daemon, kind: str) -> tuple[int, int]:
    """(rows, distinct sectors) of this kind in DuckDB's sector_events for MINER."""
    rows = d.rpc("query", {"sql": f"SELECT count(*), count(DISTINCT number) FROM sector_events WHERE miner = {MINER} AND kind = '{kind}'"})
    return tuple(rows["rows"][0])  # type: ignore[return-value]


def _update_reaches_sink(d: Daemon, number: int, evt: str, timeout: float = 30.0) -> None:
    """An update after the break-off reaches DuckDB and the watermark passes it, within seconds."""
    d.cli("sectors", "update", str(MINER), str(number), f'LatestState={{"StateChange": {{"Prev": "A", "Next": "B", "Event": "{evt}"}}}}')
    head = d.rpc("sinks.status")["journal"]["head"]
    deadline = time.monotonic() + timeout
    while True:
        st = d.rpc("sinks.status")
        seen = d.rpc("query", {"sql": f"SELECT count(*) FROM sector_events WHERE miner = {MINER} AND number = {number} "
                                      f"AND kind = 'update'"})["rows"][0][0]
        if st["journal"]["watermark"] >= head and seen >= 1:
            break
        assert time.monotonic() < deadline, f"the update (seq {head}) did not reach the sinks within {timeout}s: {st['journal']}"
        time.sleep(0.1)
    assert not [p for p in d.rpc("status")["problems"] if p["part"] == "journal"]
    metrics = d.request("GET", "/metrics")[2].decode()
    assert "vsm_journal_watermark_gap_events 0.0" in metrics and "vsm_journal_watermark_age_seconds" in metrics, metrics


def _resume(d: Daemon, path: Path) -> None:
    """The same command again: it finishes, and every sector has exactly one import event."""
    proc = d.cli("sectors", "import", "--chunk", "2000", str(path), timeout=600)
    assert "imported" in proc.stdout and f"of {COUNT} sectors" in proc.stdout, proc.stdout
    d.wait_delivered(timeout=120)
    assert _events(d, "import") == (COUNT, COUNT)
    assert d.rpc("query", {"sql": f"SELECT count(*) FROM sectors WHERE miner = {MINER}"})["rows"] == [[COUNT]]


def test_cli_killed_mid_upload(start_daemon: Any, states_file: Path) -> None:
    d = start_daemon()
    proc = _start_import(d, states_file)
    try:
        _wait_head(d, 4000, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    _update_reaches_sink(d, 1, "after-kill")
    _resume(d, states_file)


def test_stalled_upload(start_daemon: Any, states_file: Path) -> None:
    """A client that sends part of the stream and then nothing: the daemon gives up after
    VSM_TRANSFER_IDLE_TIMEOUT, answers how many states it committed, and delivery goes on."""
    from vsm.sectors import read_import_batches

    d = start_daemon(env={"VSM_TRANSFER_IDLE_TIMEOUT": "3"})
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    conn.putrequest("POST", "/sectors/import")
    for k, v in {**d.auth(), "Transfer-Encoding": "chunked", "Content-Type": "application/vnd.apache.arrow.stream"}.items():
        conn.putheader(k, v)
    conn.endheaders()
    sent = 0
    for batch in read_import_batches(str(states_file), chunk=2000):
        data = (batch.schema.serialize().to_pybytes() if not sent else b"") + batch.serialize().to_pybytes()
        conn.send(b"%x\r\n%s\r\n" % (len(data), data))
        sent += batch.num_rows
        if sent >= 10_000:
            break
    resp = conn.getresponse()  # the daemon's answer after the stall, the connection still open
    reply = json.loads(resp.read())
    conn.close()
    assert resp.status == 400 and "stalled" in reply["error"], reply
    _update_reaches_sink(d, 2, "after-stall")
    assert 0 < reply["written"] <= sent, reply
    assert _events(d, "import")[0] == reply["written"]
    _resume(d, states_file)


def _stop_during_import(d: Daemon, states_file: Path, *flags: str) -> tuple[subprocess.Popen[str], str, str]:
    """`vsm-pool stop` once the import has journaled 4000 events: (the CLI's process, its
    stdout, its stderr), the daemon stopped."""
    proc = _start_import(d, states_file, *flags)
    try:
        _wait_head(d, 4000, proc)
        d.cli("stop")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    d.stop(None)
    return proc, out, err


def test_stop_during_import_says_what_was_committed(start_daemon: Any, states_file: Path) -> None:
    """`vsm-pool stop` during an import: the CLI says how many states were committed and how to
    go on; after a restart the same command finishes the import."""
    d = start_daemon()
    home, port = d.home, d.port
    proc, out, err = _stop_during_import(d, states_file)
    assert proc.returncode != 0, out
    assert "Traceback" not in err, err
    assert "committed" in err and "run the same command again" in err, err
    committed = int(err.split(" states were committed")[0].split()[-1])
    assert 0 < committed < COUNT, err
    d2 = start_daemon(home, port)
    d2.wait_delivered(timeout=120)
    assert _events(d2, "import")[0] == committed
    _update_reaches_sink(d2, 3, "after-stop")
    _resume(d2, states_file)


def test_unreadable_file_ends_the_upload_and_says_so(start_daemon: Any, tmp_path: Path) -> None:
    """A Parquet file whose fifth row group is corrupt: the CLI ends the stream there, the daemon
    commits the 20,000 states before it, and the one line names the file, the cause and the count
    (it waited out the daemon's idle timeout and blamed a stall, or printed a trace offline)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vsm.sdk.sectors import states_to_arrow

    good, bad = tmp_path / "good.parquet", tmp_path / "states.parquet"
    pq.write_table(pa.Table.from_batches([states_to_arrow([_state(n) for n in range(30_000)])]), good, row_group_size=5000)
    data = bytearray(good.read_bytes())
    at = pq.ParquetFile(good).metadata.row_group(4).column(0).data_page_offset
    data[at:at + 200] = b"\xab" * 200
    bad.write_bytes(bytes(data))
    d = start_daemon(env={"VSM_TRANSFER_IDLE_TIMEOUT": "5"})
    proc = d.cli("sectors", "import", str(bad), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith(f"vsm-pool: error: {bad}: cannot be read past its first 20000 states (OSError: "), lines
    assert "; 20000 states were committed; fix the file and run the same command again" in lines[-1], lines
    d.wait_delivered()
    assert _events(d, "import") == (20_000, 20_000)


def test_override_import_stopped_continues_with_skip(start_daemon: Any, states_file: Path) -> None:
    """With --override the same command would write the committed states again (each a new
    import event, as damocles' override import does): the line gives the command that goes on
    after them, and it leaves no duplicate."""
    import shlex

    d = start_daemon()
    home, port = d.home, d.port
    _, _, err = _stop_during_import(d, states_file, "--override")
    committed = int(err.split(" states were committed")[0].split()[-1])
    assert f"continue with `vsm-pool sectors import --override --chunk 2000 --skip {committed} {states_file}`" in err, err
    command = err.split("continue with `")[1].split("`")[0]
    d2 = start_daemon(home, port)
    proc2 = d2.cli(*shlex.split(command)[1:], timeout=600)
    assert f"imported {COUNT - committed} of {COUNT} sectors from {states_file} ({committed} left out with --skip)" in proc2.stdout, proc2.stdout
    d2.wait_delivered(timeout=120)
    assert _events(d2, "import") == (COUNT, COUNT)
