"""A pool the crash-loop breaker failed comes back without a restart (issue 13, item 3): `plugin
reload` and `plugin enable` start a new pool, the sink catches up from its checkpoint, and no
pool is leaked (the daemon runs as many processes as before)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from vsm.sdk.sectors import SectorID, SectorState
from vsm.sectors import write_import_file

from .harness import Daemon

pytestmark = pytest.mark.timeout(300)


def _pool(d: Daemon, name: str) -> dict[str, Any]:
    row = next(r for r in d.rpc("plugin.list") if r["name"] == name)
    return row


def crash_loop(d: Daemon, name: str) -> None:
    """SIGKILL the plugin's workers until the pool's breaker marks it failed."""
    deadline = time.monotonic() + 60
    while _pool(d, name)["state"] != "failed":
        assert time.monotonic() < deadline, _pool(d, name)
        for w in (_pool(d, name).get("pool") or {}).get("workers", []):
            if w.get("alive") and w.get("pid"):
                try:
                    psutil.Process(w["pid"]).kill()
                except psutil.Error:
                    pass
        time.sleep(0.05)


def _import(d: Daemon, tmp_path: Path, miner: int, n: int) -> int:
    path = tmp_path / f"states-{miner}.jsonl"
    write_import_file(str(path), [SectorState(id=SectorID(miner, i), sector_type=8) for i in range(n)])
    d.cli("sectors", "import", str(path))
    return int(d.rpc("sinks.status")["journal"]["head"])


def _caught_up(d: Daemon, sink: str, head: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (d.rpc("sinks.status")["sinks"].get(sink) or {}).get("checkpoint", 0) < head:
        assert time.monotonic() < deadline, d.rpc("sinks.status")
        time.sleep(0.1)


def _processes(d: Daemon) -> int:
    return len([p for p in d.tree() if p.status() != psutil.STATUS_ZOMBIE])


def _settle(d: Daemon, expected: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while (n := _processes(d)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


@pytest.mark.parametrize("how", ["reload", "enable"])
def test_failed_sink_pool_comes_back(start_daemon: Any, tmp_path: Path, how: str) -> None:
    d: Daemon = start_daemon()
    _caught_up(d, "parquet", _import(d, tmp_path, 501, 200))
    processes = _processes(d)
    crash_loop(d, "parquet")
    status = d.cli("status").stdout
    assert "plugin/parquet: failed: " in status and "fix: `vsm-pool plugin reload parquet`" in status, status
    head = _import(d, tmp_path, 502, 300)  # the failed sink falls behind; the others go on
    _caught_up(d, "duckdb", head)
    for _ in range(2):  # a first attempt that fails must not leak either; here both succeed
        out = d.cli("plugin", how, "parquet").stdout
        assert "parquet" in out, out
    assert _pool(d, "parquet")["state"] == "ready"
    _caught_up(d, "parquet", head)
    assert _settle(d, processes) == processes, [p.cmdline()[:4] for p in d.tree()]
    rows = d.rpc("query", {"sql": "select count(*) as n from sector_events where miner = 502", "sink": "duckdb"})["rows"]
    assert rows == [[300]]


def test_failed_store_pool_comes_back_with_reload(start_daemon: Any) -> None:
    d: Daemon = start_daemon()
    processes = _processes(d)
    crash_loop(d, "fsstore")
    status, _, body = d.request("PUT", "/pieces/pieces/after/broken.bin", b"x" * 100)
    assert status == 503, (status, body)
    d.cli("plugin", "reload", "fsstore")
    status, _, body = d.request("PUT", "/pieces/pieces/after/reload.bin", b"y" * 100)
    assert status == 201, (status, body)
    assert _settle(d, processes) == processes


def test_a_store_that_failed_to_open_is_in_status_and_comes_back_with_reload(start_daemon: Any, tmp_path: Path) -> None:
    """Every broken part is in the plain status with its cause and the command that fixes it;
    a store whose folder was missing at start opens with `plugin reload`, no restart."""
    from .harness import prepare_home

    missing = tmp_path / "not-yet"
    home = prepare_home(tmp_path / "home", append=f'[[Common.PieceStores]]\nName = "late"\nPath = "{missing}"\n')
    d: Daemon = start_daemon(home)
    st = d.cli("status").stdout
    assert "store/late: failed:" in st and "not an existing folder" in st and "vsm-pool plugin reload fsstore" in st, st
    metrics = d.request("GET", "/metrics")[2].decode()
    assert 'part="store/late"' in metrics
    missing.mkdir()
    d.cli("plugin", "reload", "fsstore")
    status, _, body = d.request("PUT", "/pieces/late/x.bin", b"late")
    assert status == 201, body
    assert (missing / "x.bin").read_bytes() == b"late"
    assert "problems: none" in d.cli("status").stdout



def _events_by_miner(d: Daemon) -> list[list[int]]:
    sql = "select miner, count(*) as n, count(distinct seq) as seqs from sector_events group by miner order by miner"
    return d.rpc("query", {"sql": sql, "sink": "duckdb"})["rows"]  # type: ignore[no-any-return]


def test_duckdb_sink_reloaded_after_the_breaker_delivers_again(start_daemon: Any, tmp_path: Path) -> None:
    """Issue 24 item 5: a DuckDB sink whose open failed at start (its file could not be opened)
    is in status with its fix; once the file can be opened, kill -9 its workers until the
    breaker fails the pool and `plugin reload duckdb`: the new build opens the sink, the
    checkpoint moves, every event is in its table exactly once. Then the same on the sink
    that now runs (its open is replayed into the new build)."""
    from .harness import prepare_home

    home = prepare_home(tmp_path / "home")
    blocker = home / "data" / "duckdb" / "sectors.duckdb"
    blocker.mkdir(parents=True)  # a folder where its database file goes: its Constructor fails
    d: Daemon = start_daemon(home)
    st = d.cli("status").stdout
    assert "sink/duckdb: failed:" in st and "Constructor failed" in st and "vsm-pool plugin reload duckdb" in st, st
    first = _import(d, tmp_path, 601, 100)
    blocker.rmdir()
    crash_loop(d, "duckdb")
    head = _import(d, tmp_path, 602, 150)
    out = d.cli("plugin", "reload", "duckdb").stdout
    assert "duckdb" in out, out
    assert _pool(d, "duckdb")["state"] == "ready"
    _caught_up(d, "duckdb", head, timeout=30)
    assert head > first and _events_by_miner(d) == [[601, 100, 100], [602, 150, 150]]
    assert "problems: none" in d.cli("status").stdout

    crash_loop(d, "duckdb")  # the same on a sink that delivers
    head = _import(d, tmp_path, 603, 50)
    d.cli("plugin", "reload", "duckdb")
    _caught_up(d, "duckdb", head, timeout=30)
    assert _events_by_miner(d) == [[601, 100, 100], [602, 150, 150], [603, 50, 50]]
    sink = d.rpc("sinks.status")["sinks"]["duckdb"]
    assert sink["state"] == "running" and not sink["last_error"], sink
    assert "problems: none" in d.cli("status").stdout


def test_a_sink_whose_open_failed_opens_with_enable(start_daemon: Any, tmp_path: Path) -> None:
    """`plugin enable` of a running sink whose Constructor failed opens it (was: `enabled ...:
    ready` while nothing reached it)."""
    from .harness import prepare_home

    home = prepare_home(tmp_path / "home")
    blocker = home / "data" / "duckdb" / "sectors.duckdb"
    blocker.mkdir(parents=True)
    d: Daemon = start_daemon(home)
    head = _import(d, tmp_path, 701, 40)
    assert "sink/duckdb: failed:" in d.cli("status").stdout
    blocker.rmdir()
    d.cli("plugin", "enable", "duckdb")
    _caught_up(d, "duckdb", head, timeout=30)
    assert _events_by_miner(d) == [[701, 40, 40]]
    assert "problems: none" in d.cli("status").stdout
