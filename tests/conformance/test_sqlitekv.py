"""sqlitekv beyond the kit: persistence, Meta handling, SQLite settings."""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def open_db(constructor: Callable[[str], Callable[..., Any]]) -> Callable[..., Any]:
    """open_db(path, **meta): a running sqlitekv DB."""

    def open_db(path: pathlib.Path, **meta: str) -> Any:
        db = constructor("sqlitekv")({"Path": str(path), **meta})
        db.run()
        return db

    return open_db


def test_data_survives_reopen(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    path = tmp_path / "kv.db"
    db = open_db(path)
    db.open_collection("meta").put(b"k", b"v")
    db.open_collection("common").update(lambda txn: txn.put(b"k", b"other"))
    with pytest.raises(ZeroDivisionError):
        db.open_collection("meta").update(lambda txn: (txn.put(b"lost", b"x"), 1 / 0))
    db.close()

    db = open_db(path)
    assert db.open_collection("meta").get(b"k") == b"v"
    assert db.open_collection("common").get(b"k") == b"other"
    assert [k for k, _ in db.open_collection("meta").scan(b"")] == [b"k"]
    db.close()


def test_creates_parent_folders(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    path = tmp_path / "a" / "b" / "kv.db"
    open_db(path).close()
    assert path.is_file()


def test_wal_and_synchronous(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    path = tmp_path / "kv.db"
    db = open_db(path, Synchronous="full")
    conn = db._conn  # the plugin's own connection: synchronous is per connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_missing_path_is_a_clear_error(constructor: Callable[[str], Any]) -> None:
    with pytest.raises(ValueError, match="'Path' is required"):
        constructor("sqlitekv")({})


def test_bad_synchronous_is_a_clear_error(tmp_path: pathlib.Path, constructor: Callable[[str], Any]) -> None:
    with pytest.raises(ValueError, match="Synchronous.*NORMAL"):
        constructor("sqlitekv")({"Path": str(tmp_path / "kv.db"), "Synchronous": "sometimes"})


def test_unopenable_path_names_the_file(tmp_path: pathlib.Path, constructor: Callable[[str], Any]) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(RuntimeError, match="adir"):
        constructor("sqlitekv")({"Path": str(tmp_path / "adir")})


def test_close_is_idempotent_and_final(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    db = open_db(tmp_path / "kv.db")
    coll = db.open_collection("meta")
    db.close()
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        coll.get(b"k")


def test_view_refuses_writes(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    db = open_db(tmp_path / "kv.db")
    coll = db.open_collection("meta")
    with pytest.raises(PermissionError):
        coll.view(lambda txn: txn.put(b"k", b"v"))
    db.close()


def test_txn_scan_pages_see_puts_made_while_scanning(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    """Buffered puts are flushed before each scan page, in key order."""
    db = open_db(tmp_path / "kv.db")
    coll = db.open_collection("meta")

    def fn(txn):  # type: ignore[no-untyped-def]
        for i in range(3000):
            txn.put(b"a/%05d" % i, b"")
        seen = []
        for k, _ in txn.scan(b"a/"):
            seen.append(k)
            if k == b"a/00000":
                txn.put(b"a/99999", b"late")  # after the current page: must still be seen
        return seen

    seen = coll.update(fn)
    assert len(seen) == 3001 and seen[-1] == b"a/99999" and seen == sorted(seen)
    db.close()


def test_scan_outside_txn_streams_in_pages(tmp_path: pathlib.Path, open_db: Callable[..., Any]) -> None:
    """A scan holds no lock between pages: writes from the same thread go on meanwhile, and the
    scan does not see them (a snapshot, as badger's)."""
    db = open_db(tmp_path / "kv.db")
    coll = db.open_collection("meta")
    for i in range(2500):
        coll.put(b"k%05d" % i, b"")
    it = coll.scan(b"k")
    first = next(it)
    coll.put(b"k99999", b"")
    rest = list(it)
    assert first[0] == b"k00000" and len(rest) == 2499 and rest[-1][0] == b"k02499"
    assert coll.get(b"k99999") == b""
    db.close()


_OPEN_AT_ONCE = """
import sys
sys.path.insert(0, sys.argv[1])
import sqlitekv
try:
    sqlitekv.SqliteDB(sys.argv[2], "NORMAL").close()
except Exception as e:
    print(e)
"""


def test_workers_opening_a_new_file_at_once_all_open(tmp_path: pathlib.Path) -> None:
    """Several worker processes open the same new file together (a pool's start): the switch to
    WAL takes an exclusive lock and SQLite can answer SQLITE_BUSY without waiting; the open
    tries again instead of failing ('database is locked' in about 1 of 120 opens here, a
    watermark test's two-worker KV failed CI's start with it)."""
    import subprocess
    import sys

    src = str(pathlib.Path(__file__).resolve().parents[2] / "plugins" / "sqlitekv")
    failures = []
    for round_ in range(25):
        path = tmp_path / f"kv{round_}.db"
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, src, str(path)], stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
        failures += [out for p in procs if (out := p.communicate(timeout=30)[0].strip())]
    assert failures == [], failures[:3]
