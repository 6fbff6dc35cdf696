"""`query` is read-only and confined whatever the SQL (issue 20 item 2): each escape a client
could try through the real daemon, on both bundled sinks that answer queries."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .harness import Daemon, finish, prepare_home, start

pytestmark = pytest.mark.timeout(180)

ROWS = 50


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    home = prepare_home(tmp_path_factory.mktemp("query") / "home", api="QueryMaxBytes = 1048576\nQueryTimeout = 1")
    d = start(home)
    try:
        states = [{"ID": {"Miner": 1, "Number": n}, "SectorType": 8} for n in range(ROWS)]
        d.rpc("sectors.import", {"states": states})
        d.wait_delivered()
        yield d
    finally:
        finish(d)


def _count(d: Daemon, sink: str = "duckdb") -> int:
    return int(d.rpc("query", {"sql": "SELECT count(*) FROM sector_events", "sink": sink})["rows"][0][0])


OUTSIDE = "/tmp/vsm-query-escape"

ESCAPES = [
    # (sql, words in the error)
    ("SELECT * FROM read_text('/etc/passwd')", "Permission"),
    ("SELECT * FROM read_csv('/etc/hosts')", "Permission"),
    ("SELECT * FROM '/etc/passwd'", "Permission|does not exist"),
    ("SELECT * FROM glob('/etc/*')", "Permission"),
    ("SELECT * FROM read_parquet('{home}/data/parquet/*/*.parquet')", "Permission"),
    (f"COPY (SELECT 1) TO '{OUTSIDE}.csv'", "one SELECT statement only"),
    (f"ATTACH '{OUTSIDE}.db' AS x", "one SELECT statement only"),
    ("INSTALL httpfs", "one SELECT statement only"),
    ("LOAD httpfs", "one SELECT statement only"),
    ("SET enable_external_access = true", "one SELECT statement only"),
    ("PRAGMA threads = 8", "one SELECT statement only"),
    ("DELETE FROM sector_events", "one SELECT statement only"),
    ("DROP TABLE sector_events", "one SELECT statement only"),
    ("SELECT 1; DELETE FROM sector_events", "one SELECT statement only"),
    ("SELECT * FROM range(100000000)", "QueryMaxBytes"),
    ("SELECT count(*) FROM range(1000000) a, range(1000000) b", "QueryTimeout"),
    ("SELEC nonsense", "syntax error"),
    ("SELECT * FROM no_such_table", "no_such_table"),
]


@pytest.mark.parametrize("sink", ["duckdb", "parquet"])
@pytest.mark.parametrize("sql,words", ESCAPES, ids=[s[:40] for s, _ in ESCAPES])
def test_escape_is_refused(daemon: Daemon, sink: str, sql: str, words: str) -> None:
    if sink == "parquet" and "data/parquet" in sql:
        pytest.skip("the parquet sink's own files are what it queries")
    before = _count(daemon, sink)
    sql = sql.format(home=daemon.home)
    for method in ("query", "query.arrow"):
        err = daemon.rpc_error(method, {"sql": sql, "sink": sink})
        assert err["code"] == -32602, err
        assert any(w.lower() in err["message"].lower() for w in words.split("|")), err
        assert "\n" not in err["message"] and "Traceback" not in err["message"]
    assert not Path(f"{OUTSIDE}.csv").exists() and not Path(f"{OUTSIDE}.db").exists()
    assert _count(daemon, sink) == before


def test_reads_still_work_and_the_sink_still_ingests(daemon: Daemon) -> None:
    res = daemon.rpc("query", {"sql": "SELECT number FROM sectors WHERE miner = 1 ORDER BY number LIMIT 3"})
    assert res == {"columns": ["number"], "rows": [[0], [1], [2]]}
    assert _count(daemon, "parquet") >= ROWS
    daemon.rpc("sectors.update", {"miner": 1, "number": 0, "fields": {"Finalized": True}})
    daemon.wait_delivered()
    rows = daemon.rpc("query", {"sql": "SELECT kind FROM sector_events WHERE miner = 1 AND number = 0 ORDER BY seq"})["rows"]
    assert rows[-1] == ["update"]
    assert daemon.healthy()
