"""Upgrading: a home written by the previous release (PREVIOUS, its code taken from this
repository's history and run with this session's venv), started unchanged under this one.

The previous release's daemon makes the home as an operator would have: it imports a few
thousand realistic states (DDO pieces, some with a nil embedded deal; legacy deals; pre-2024
states with Pre.Deals), allocates, updates, finalizes and restores some, stores pieces; then
a second run disables the parquet sink, updates more, and dies by kill -9 between a KV commit
and its watermark (previous_daemon.py). This release then starts on that home, config and
all, and must show every sector with the state it had, in damocles' key layout; keep the
parquet sink's backlog of old journal frames and deliver it together with new ones once it is
enabled; keep every sink (DuckDB, Parquet) equal to the KV, each event exactly once, queryable
with `vsm-pool query`; keep the pieces (sha256), the token and the config file; log each
migration step once (a second start migrates nothing) and no traceback.

The previous release built the home's plugin artifacts; this release's first start rebuilds
the bundled ones (same name and version, other content: vsm/home.py, the old files kept as
.vsmp.old), so the daemon runs this release's sinks on the previous release's files. The second
test puts them on the same files directly: the previous schema's columns (Pre.Deals) keep their
values, the Parquet dataset one schema.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from bench.states import make_state
from vsm.sdk.sectors import (
    DealInfoV2,
    DealProposal,
    LegacyDealInfo,
    PieceInfo,
    PieceInfoV2,
    SectorPieceV2,
    SectorState,
    decode_state,
    decode_state_json,
)

from ..daemon.harness import ROOT, Daemon, free_port, kill_tree, shm_entries, start, stop_checked
from ..sectors.helpers import load_plugin

pytestmark = pytest.mark.timeout(300)

PREVIOUS = "9a9c499"  # the previous release: bare KV keys, Pre.Deals in the event schema, data/kv.sqlite
N_STATES = 3000
CID = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"


# ------------------------------------------------------------------ the previous release
@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's source (vsm/, plugins/, bench/) from this repository's history."""
    git = shutil.which("git")
    if git is None:
        pytest.skip(f"git is not installed: the previous release ({PREVIOUS}) is taken from this repository's history")
    if subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], capture_output=True).returncode:
        pytest.skip(f"commit {PREVIOUS} (the previous release) is not in this clone (a shallow clone?)")
    tar = subprocess.run([git, "-C", str(ROOT), "archive", "--format=tar", PREVIOUS, "vsm", "plugins", "bench"], capture_output=True, check=True).stdout
    tree = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # our own archive
    return tree


def _start_previous(tree: Path, home: Path, kill_at_seq: int = 0) -> Daemon:
    """The previous release's daemon on `home` (its own default config on first start)."""
    port = free_port()
    log = home.parent / "previous-daemon.log"
    env = {**os.environ, "VSM_HOME": str(home), "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p), "VSM_UPGRADE_KILL_AT_SEQ": str(kill_at_seq or "")}
    shm_before = shm_entries()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("previous_daemon.py")), str(tree), "start", "--home", str(home), "--listen", f"127.0.0.1:{port}"],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the previous release's daemon exited with {proc.returncode}; log:\n{log.read_text()[-3000:]}")
        if (home / "token").exists() and _answers(port):
            break
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"the previous release's daemon did not start; log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Daemon(home, port, proc, log, shm_before)


def _answers(port: int) -> bool:
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


# ------------------------------------------------------------------ what the operator had
def _go(st: SectorState) -> dict[str, Any]:
    return json.loads(st.to_go_json())


def _realistic_states(n: int) -> list[dict[str, Any]]:
    """Go JSON objects as damocles exports them: every third with a DDO piece (every eleventh's
    embedded deal nil), every fifth with a legacy deal, every seventh in the pre-2024 format."""
    out = []
    for i in range(n):
        st = make_state(1000 + i % 3, i)
        st.finalized = False  # online: the test updates, finalizes and restores sectors of these by number
        if i % 5 == 1:
            proposal = DealProposal(CID, 2048, True, "f01234", f"f0{1000 + i % 3}", f"label-{i}", 100, 200, "1000", "0", "0")
            st.deals = [LegacyDealInfo(7000 + i, 1 << 20, PieceInfo(2048, 0, CID), proposal, False)]
        if i % 11 == 4:
            st.pieces = [SectorPieceV2(PieceInfoV2(2048, CID), DealInfoV2(None, None, None, None, None, None, None, None, None, None, None, None, False, True))]
        d = _go(st)
        if i % 7 == 2 and d.get("Pre") is not None:  # (a state not yet pre-committed has no Pre)
            d["Pre"]["Deals"] = [7000 + i]  # PreCommitInfo.Deals, gone from damocles since 2024-04
        out.append(d)
    return out


def _sid(d: dict[str, Any]) -> tuple[int, int]:
    return d["ID"]["Miner"], d["ID"]["Number"]


def _listed(d: Daemon) -> dict[tuple[int, int], tuple[str, SectorState]]:
    """Every sector as the daemon shows it: (worker state, state read the way this release reads)."""
    out = {}
    for ws in ("online", "offline"):
        for s in d.rpc("sectors.list", {"worker_state": ws, "limit": 10_000}):
            s.pop("WorkerState", None)
            out[_sid(s)] = (ws, decode_state(s))
    return out


def _put_piece(d: Daemon, path: str, data: bytes) -> str:
    status, _, body = d.request("PUT", f"/pieces/pieces/{path}", data, {"Content-Type": "application/octet-stream"})
    assert status in (200, 201), (status, body)
    return hashlib.sha256(data).hexdigest()


def _old_home(tree: Path, home: Path) -> dict[str, Any]:
    """Make `home` with the previous release; returns what it holds (sectors, pieces, seqs)."""
    d = _start_previous(tree, home)
    states = _realistic_states(N_STATES)
    try:
        for off in range(0, len(states), 1000):
            assert d.rpc("sectors.import", {"states": states[off : off + 1000]}) == len(states[off : off + 1000])
        d.rpc("sectors.init", {"sectors": [{"miner": 1000, "number": 9000 + k, "proof_type": 8} for k in range(2)]})
        for n in (5, 6, 7):
            d.rpc("sectors.update", {"miner": 1000 + n % 3, "number": n, "fields": {"AbortReason": f"before-{n}"}})
        for n in (8, 9):
            d.rpc("sectors.finalize", {"miner": 1000 + n % 3, "number": n})
        d.rpc("sectors.restore", {"miner": 1000, "number": 9})
        pieces = {"p/one.car": _put_piece(d, "p/one.car", os.urandom(300_000))}
        _caught_up(d, attached=lambda s: True)  # its stop does not wait for the sinks
    finally:
        stop_checked(d)
    watermark = int.from_bytes((home / "data" / "journal" / "watermark").read_bytes()[:8], "little")

    # a second run: parquet disabled (its backlog stays in the journal), more updates, then a
    # kill -9 after the last update's KV commit and before its watermark
    d = _start_previous(tree, home, kill_at_seq=watermark + 6)
    try:
        d.rpc("plugin.disable", {"name": "parquet"})
        for n in range(10, 15):
            d.rpc("sectors.update", {"miner": 1000 + n % 3, "number": n, "fields": {"AbortReason": f"second-run-{n}"}})
        pieces["p/two.car"] = _put_piece(d, "p/two.car", os.urandom(70_000))
        sectors = _listed(d)
        try:  # the daemon dies under the call, or just after its answer (the watermark is stored by another thread)
            d.rpc("sectors.update", {"miner": 1000, "number": 15, "fields": {"AbortReason": "killed-after-commit"}})
        except (OSError, AssertionError):
            pass
        assert d.proc.wait(30) == -signal.SIGKILL, d.log_text()[-3000:]
    finally:
        if d.proc.poll() is None:
            kill_tree(d.proc)
    deadline = time.monotonic() + 10  # its workers follow it (parent-death signal)
    while any(_running(p) for p in d.workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(p) for p in d.workers), "the previous release's workers outlived its kill -9"
    ws, st = sectors[(1000, 15)]
    st.abort_reason = "killed-after-commit"
    assert (home / "data" / "kv.sqlite").is_file() and (home / "data" / "sectors.duckdb").is_file()
    return {"sectors": sectors, "pieces": pieces, "killed_at": watermark + 6}


def _running(p: Any) -> bool:
    try:
        return bool(p.is_running() and p.status() != "zombie")
    except Exception:  # noqa: BLE001 - gone
        return False


# ------------------------------------------------------------------ reading the stopped home
def _kv_states(home: Path) -> tuple[dict[tuple[int, int], tuple[str, SectorState]], list[bytes]]:
    """The KV as stored: every state by sector, and every key that is not in damocles' layout."""
    db = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(home / "data" / "kv.sqlite")})
    db.run()
    out, stray = {}, []
    try:
        for coll, ws, prefix in (("meta", "online", b"sector-states/"), ("offline_meta", "offline", b"sector-states-offline/")):
            it = db.open_collection(coll).scan(b"")
            try:
                for k, v in it:
                    if not k.startswith(prefix):
                        if k.startswith(b"m-") or k.startswith(b"sector-states"):
                            stray.append(k)
                        continue
                    st = decode_state_json(v)
                    out[(st.id.miner, st.id.number)] = (ws, st)
            finally:
                it.close()
    finally:
        db.close()
    return out, stray


def _last_rows(table: pa.Table) -> dict[tuple[int, int], tuple[str, SectorState]]:
    """The last event per sector of a sink's rows: (worker state, state)."""
    last: dict[tuple[int, int], dict[str, Any]] = {}
    for r in table.sort_by("seq").to_pylist():
        last[(r["miner"], r["number"])] = r
    return {sid: (r["worker_state"], SectorState.from_arrow_row(r)) for sid, r in last.items() if r["worker_state"] != "none"}


def _assert_sink_equals_kv(name: str, table: pa.Table, kv: dict[tuple[int, int], tuple[str, SectorState]], head: int) -> None:
    seqs = table.column("seq").to_pylist()
    assert sorted(seqs) == list(range(1, head + 1)), f"{name}: seqs are not 1..{head} exactly once (lost {sorted(set(range(1, head + 1)) - set(seqs))[:10]}, duplicates {len(seqs) - len(set(seqs))})"
    got = _last_rows(table)
    assert got.keys() == kv.keys(), f"{name}: sectors differ from the KV: only in the sink {sorted(got.keys() - kv.keys())[:5]}, only in the KV {sorted(kv.keys() - got.keys())[:5]}"
    wrong = [sid for sid in kv if got[sid] != kv[sid]]
    assert not wrong, f"{name}: {len(wrong)} sectors differ from the KV, e.g. {wrong[0]}: sink {got[wrong[0]]} vs KV {kv[wrong[0]]}"


# ------------------------------------------------------------------ the upgrade
@pytest.fixture(scope="module")
def previous_home(previous_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A home made by the previous release, made once, and a copy of it as it was then."""
    home = tmp_path_factory.mktemp("previous-home") / "home"
    made = _old_home(previous_tree, home)
    shutil.copytree(home, home.with_name("as-made"), symlinks=True)
    return home, made


@pytest.fixture
def old_home(previous_home: tuple[Path, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The previous release's home as it made it, in its own place (its config holds absolute
    paths, as that release's `config init` wrote them)."""
    home, made = previous_home
    shutil.rmtree(home)
    shutil.copytree(home.with_name("as-made"), home, symlinks=True)
    return home, copy.deepcopy(made)


def test_a_home_of_the_previous_release_runs_unchanged(old_home: tuple[Path, dict[str, Any]]) -> None:
    home, before = old_home
    config, token = (home / "config.toml").read_bytes(), (home / "token").read_bytes()

    d = start(home)
    try:
        log = d.log_text()
        moved_online = sum(1 for ws, _ in before["sectors"].values() if ws == "online")
        assert f"moved {moved_online} bare keys m-<miner>-n-<number> in 'meta'" in log, log[-3000:]
        assert "bare keys m-<miner>-n-<number> in 'offline_meta'" in log
        assert f"sector journal recovery: 1 events past watermark {before['killed_at'] - 1}, 1 kept, 0 dropped" in log, log[-3000:]
        for name in ("duckdb", "parquet", "fsstore", "sqlitekv"):  # this release's code, the previous build kept
            assert f"rebuilt bundled plugin plugin-{name}.vsmp" in log and (home / "plugins" / f"plugin-{name}.vsmp.old").is_file(), name

        # every sector as it was (the one updated under the kill included), the old token works
        assert _listed(d) == before["sectors"]
        assert d.rpc("plugin.list") and (home / "token").read_bytes() == token
        assert any(p["name"] == "parquet" and p["state"] == "disabled" for p in d.rpc("plugin.list"))
        assert isinstance(d.rpc("VSM_LIMITER.acquire", ["upgrade"]), str)  # the previous limiter's clients still served

        # new events, in this release's schema, while parquet still holds old frames
        fresh = [_go(make_state(1001, 20_000 + k)) for k in range(20)]
        assert d.rpc("sectors.import", {"states": fresh}) == 20
        d.rpc("sectors.update", {"miner": 1002, "number": 20, "fields": {"AbortReason": "after-upgrade"}})
        d.rpc("sectors.finalize", {"miner": 1000, "number": 21})
        d.rpc("sectors.restore", {"miner": 1002, "number": 8})
        d.rpc("sectors.init", {"sectors": [{"miner": 1001, "number": 9100, "proof_type": 8}]})
        d.cli("plugin", "enable", "parquet")
        head = _caught_up(d)
        assert d.rpc("status")["problems"] == []  # the plain status and the dashboard are green

        n_sectors = len(before["sectors"]) + 20 + 1
        out = d.cli("query", "--format", "json", "select count(*) as n from sectors").stdout
        assert json.loads(out)[0]["n"] == n_sectors, out
        out = d.cli("query", "--sink", "parquet", "--format", "json", "select count(*) as n, count(distinct seq) as d, max(seq) as m from sector_events").stdout
        assert json.loads(out)[0] == {"n": head, "d": head, "m": head}, out
        # what the previous schema had beyond this one (Pre.Deals of pre-2024 states) is still there
        pre_deals = "select count(distinct (miner, number)) as n from sector_events where pre.deals is not null"
        kept = [d.rpc("query", {"sql": pre_deals, "sink": sink})["rows"][0][0] for sink in ("duckdb", "parquet")]
        assert kept[0] == kept[1] == sum(1 for s in _realistic_states(N_STATES) if "Deals" in (s.get("Pre") or {})), kept

        for path, sha in before["pieces"].items():
            status, _, body = d.request("GET", f"/pieces/pieces/{path}")
            assert status == 200 and hashlib.sha256(body).hexdigest() == sha, path
        for sink in ("duckdb", "parquet"):  # each says what it keeps
            assert f"sink '{sink}': {sink} sink {home}" in d.log_text(), sink
    finally:
        stop_checked(d)
    log = d.log_text()
    assert "Traceback" not in log, log[-5000:]
    assert (home / "config.toml").read_bytes() == config, "the operator's config.toml was changed"

    kv, stray = _kv_states(home)
    assert not stray, f"keys outside damocles' layout: {stray[:5]}"
    assert len(kv) == n_sectors
    assert kv[(1000, 15)][1].abort_reason == "killed-after-commit"
    import duckdb

    con = duckdb.connect(str(home / "data" / "sectors.duckdb"), read_only=True)
    try:
        events = _arrow(con.sql("select * from sector_events"))
        assert con.execute("select count(*) from sectors").fetchall() == [(n_sectors,)]
    finally:
        con.close()
    _assert_sink_equals_kv("duckdb", events, kv, head)
    _assert_sink_equals_kv("parquet", _parquet_events(home / "data" / "parquet"), kv, head)
    import pyarrow.parquet as pq

    schemas = {pq.read_schema(f).to_string(show_schema_metadata=False) for f in (home / "data" / "parquet").glob("date=*/*.parquet")}
    assert len(schemas) == 1, f"the parquet dataset holds files of {len(schemas)} schemas"

    # a second start has nothing left to migrate
    d = start(home)
    try:
        tail = d.log_text()[len(log):]
        assert "bare keys" not in tail and "sector journal recovery" not in tail and "rebuilt bundled" not in tail, tail
        assert d.rpc("sectors.get", {"miner": 1002, "number": 20})["AbortReason"] == "after-upgrade"
    finally:
        stop_checked(d)
    assert "Traceback" not in d.log_text()


def _caught_up(d: Daemon, timeout: float = 60.0, attached: Any = lambda s: s["attached"]) -> int:
    """Wait until every sink has every event; the head seq."""
    deadline = time.monotonic() + timeout
    while True:
        st = d.rpc("sinks.status")
        head = st["journal"]["head"]
        sinks = st["sinks"]
        if st["journal"]["watermark"] >= head and sinks and all(attached(s) and s["checkpoint"] >= head for s in sinks.values()):
            return int(head)
        assert time.monotonic() < deadline, f"sinks did not catch up with seq {head}: {json.dumps(sinks, indent=1)}"
        time.sleep(0.1)


def _arrow(rel: Any) -> pa.Table:
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):  # across DuckDB releases
        f = getattr(type(rel), name, None)
        if f is not None:
            out = f(rel)
            return out if isinstance(out, pa.Table) else out.read_all()
    raise TypeError(type(rel))


def _parquet_events(root: Path) -> pa.Table:
    """Every row of the parquet sink's files, whatever schema each file was written in."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(f, partitioning=None) for f in sorted(root.glob("date=*/*.parquet"))]
    return pa.concat_tables(tables, promote_options="permissive")


def test_this_release_sinks_keep_the_previous_release_data(old_home: tuple[Path, dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    """This release's duckdb and parquet sinks (what `plugin build --bundled` makes) on the
    previous release's files, fed the previous release's undelivered journal frames and new
    ones together, then rebuilt from the KV (`vsm-pool sinks rebuild`): the columns the previous
    schema had beyond this one (Pre.Deals) keep their values, new rows have null there, the
    Parquet dataset keeps one schema, each sink says so once, and each equals the KV."""
    from vsm.sdk.sectors import SectorID
    from vsm.sectors import SectorStateManager, SinkHost

    home, _ = old_home
    data = home / "data"
    caplog.set_level("INFO", logger="vsm.sectors")
    hosts = {
        "duckdb": SinkHost.from_module(load_plugin("duckdb_sink", "duckdb_sink"), {"Constructor": "open"}, {"Path": str(data / "sectors.duckdb")}),
        "parquet": SinkHost.from_module(load_plugin("parquet_sink", "parquet_sink"), {"Constructor": "open"}, {"Path": str(data / "parquet"), "FlushInterval": "0"}),
    }
    with_pre_deals = sum(1 for s in _realistic_states(N_STATES) if "Deals" in (s.get("Pre") or {}))

    def check(head: int, exactly_once: bool) -> None:
        kv_states, _ = _kv_states(home)
        duck = hosts["duckdb"].sink
        assert duck.query("select count(distinct (miner, number)) as n from sector_events where pre.deals is not null").column("n")[0].as_py() == with_pre_deals
        parquet = _parquet_events(data / "parquet")
        schemas = {pq.read_schema(f).to_string(show_schema_metadata=False) for f in (data / "parquet").glob("date=*/*.parquet")}
        assert len(schemas) == 1, f"the parquet dataset holds files of {len(schemas)} schemas"
        assert len({(r["miner"], r["number"]) for r in parquet.select(["miner", "number", "pre"]).to_pylist() if r["pre"] and r["pre"]["deals"] is not None}) == with_pre_deals
        for name, table in (("duckdb", duck.query("select * from sector_events")), ("parquet", parquet)):
            if exactly_once:
                _assert_sink_equals_kv(name, table, kv_states, head)
            else:  # a rebuild's rows take a block of reserved seqs: compare the states only
                assert _last_rows(table) == kv_states, name

    import pyarrow.parquet as pq

    kv = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(data / "kv.sqlite")})
    kv.run()
    try:
        m = SectorStateManager(kv, str(data / "journal"), sinks=hosts)  # parquet: behind since the kill
        try:
            m.import_states([make_state(1001, 20_000 + k) for k in range(20)])
            m.update(SectorID(1002, 20), {"AbortReason": "after-upgrade"})
            m.finalize(SectorID(1000, 21))
            assert m.wait_delivered(60), m.status()["sinks"]
            check(m.status()["journal"]["head"], exactly_once=True)
            for name, host in hosts.items():
                m.rebuild_sink(name, host)
            m.update(SectorID(1002, 20), {"AbortReason": "after-rebuild"})
            assert m.wait_delivered(60), m.status()["sinks"]
            check(m.status()["journal"]["head"], exactly_once=False)
        finally:
            m.close()
    finally:
        for h in hosts.values():
            h.close()
        kv.close()
    for sink in ("duckdb", "parquet"):  # said once each, at start
        said = [r.message for r in caplog.records if f"sink '{sink}': {sink} sink " in r.message]
        assert len(said) == 1 and "pre.deals, beyond this release's event schema" in said[0], (sink, said)
