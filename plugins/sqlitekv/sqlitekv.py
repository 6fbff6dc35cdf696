"""sqlitekv: a persistent KVStore on one SQLite file (stdlib sqlite3, WAL mode).

Meta (``[Common.DB.Plugin.Meta]``):
    Path         database file, required; parent folders are created
    Synchronous  OFF | NORMAL (default) | FULL | EXTRA: SQLite's PRAGMA synchronous
    CheckOnOpen  true (default) | false: PRAGMA quick_check when the file opens

All collections share one table keyed by (collection, key); keys are BLOBs, so SQLite's memcmp
order is byte order and a prefix scan is the key range [prefix, successor(prefix)).
Transactions are pessimistic (update takes the write lock with BEGIN IMMEDIATE), so they never
conflict. Puts inside an update are buffered and written with executemany before the next read
or at commit: bulk imports run in one statement loop inside SQLite. A scan is a snapshot, as
badger's (damocles' default store): outside a transaction it reads its pages in a read
transaction of its own connection, held until the scan ends or is closed; txn.scan reads the
transaction's. The empty key is refused and a write inside view fails as badger reports them.

The bulk import's two calls (vsm/sectors/_manager.py), 10k states of ~1.5 KB a chunk, measured
in-process on a 1M-state file (2 vCPU, shared): which keys exist, as one `k IN (...)` query
(`existing`): ~9 ms, against ~32 ms for 10k gets; the puts (`put_many`, one executemany in one
transaction): ~75 ms with 16 KiB pages, against ~117-137 ms with SQLite's default 4 KiB (a
state is ~1.5 KB: 2 rows a 4 KiB page, 10 a 16 KiB one; the file is 20% smaller). The page size
is set when the file is made; an existing file keeps its own.

A full disk (issue 25): SQLite may roll a transaction back itself on SQLITE_FULL, so ROLLBACK
is sent only while one is open (a second error, "cannot rollback - no transaction is active",
hid the first), and the error is DiskFullError naming the file and its free space.

Damage (issue 25): a file with overwritten pages opened without a word and failed only the
call that met a bad page, with "database disk image is malformed". At open the file gets
SQLite's quick_check (~0.14 s for 300 MB here, page cache warm: every page is read once), so a
damaged file stops the start in one line naming it and the way back (`vsm-pool restore`); a
page damaged later fails each call that meets it with that same line (SQLITE_CORRUPT and
SQLITE_NOTADB only, never a busy or full disk), kept as `damage`, which `vsm-pool status` lists
as a problem. `check()` runs the full integrity_check for
`vsm-pool doctor`; `backup(dest)` is SQLite's online backup API in one step on a connection of
its own: one read transaction, so the copy is one moment of the file, and writers go on
meanwhile (WAL). A backup in several steps would restart at every commit of another
connection, and never end under a steady load.

Durability: WAL with Synchronous = NORMAL makes a commit durable against a crash of the
process (kill -9; what the manager's crash argument covers), not against a power loss, which
may roll back the last commits; FULL also fsyncs the WAL at every commit.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

from vsm.sdk import EmptyKeyError, KeyNotFoundError, ReadOnlyTransactionError
from vsm.sdk.diskspace import disk_full_as_error

__all__ = ["open"]

T = TypeVar("T")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_PAGE = 1024  # rows fetched per scan query: bounded memory whatever the collection's size
_FLUSH_EVERY = 10_000  # buffered puts per executemany: as fast as one call, bounded memory
_PAGE_SIZE = 16384  # for a new file (see the docstring: 1.6-1.8x faster bulk puts than 4 KiB)
_IN_LIST = 30_000  # keys per `k IN (...)` query: below SQLite's 32766 host parameters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    coll TEXT NOT NULL,
    k    BLOB NOT NULL,
    v    BLOB NOT NULL,
    PRIMARY KEY (coll, k)
)
"""


def open(meta: dict[str, str]) -> SqliteDB:  # noqa: A001 - the exported Constructor's name
    """Constructor: open (creating if needed) the database at meta["Path"]."""
    check = meta.get("CheckOnOpen", "true").lower()
    if check not in ("true", "false"):
        raise ValueError(f"sqlitekv: Meta 'CheckOnOpen' = {meta['CheckOnOpen']!r}; use true or false")
    path = meta.get("Path", "")
    if not path:
        raise ValueError("sqlitekv: Meta 'Path' is required: set [Common.DB.Plugin.Meta] Path = \"/path/to/kv.db\"")
    sync = meta.get("Synchronous", "NORMAL").upper()
    if sync not in _SYNCHRONOUS:
        raise ValueError(f"sqlitekv: Meta 'Synchronous' = {meta['Synchronous']!r}; use one of {', '.join(_SYNCHRONOUS)}")
    return SqliteDB(path, sync, check_on_open=check == "true")


_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file, not the moment


def _damage_line(path: str, cause: object) -> str:
    return (
        f"sqlitekv: the database {path} is damaged ({cause}): restore the home from a backup "
        "(`vsm-pool restore BACKUP --home DIR`); `vsm-pool doctor` lists every damaged file"
    )


def _names_damage(method: Callable[..., T]) -> Callable[..., T]:
    """A call that meets a damaged page fails with one line naming the file and the way back,
    not SQLite's bare "database disk image is malformed"."""

    def wrapper(self: Collection, *args: object) -> T:
        try:
            return method(self, *args)
        except sqlite3.DatabaseError as e:
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _DAMAGE_CODES:
                raise
            raise self._db.met_damage(e) from None

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


def _key(key: bytes) -> bytes:
    """As badger: the empty key is refused."""
    if not key:
        raise EmptyKeyError()
    return bytes(key)


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix; None if there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class SqliteIter:
    """Keys in order, fetched a page at a time by key range (keyset pagination)."""

    def __init__(self, fetch: Callable[[bytes | None], list[tuple[bytes, bytes]]], on_close: Callable[[], None] | None = None) -> None:
        self._fetch = fetch
        self._on_close = on_close
        self._rows: Iterator[tuple[bytes, bytes]] = iter(())
        self._last: bytes | None = None
        self._done = False

    def __iter__(self) -> SqliteIter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        row = next(self._rows, None)
        if row is None:
            if self._done:
                raise StopIteration
            page = self._fetch(self._last)
            self._done = len(page) < _PAGE
            if self._done:
                self._release()  # the last page is read: end the snapshot now
            self._rows = iter(page)
            row = next(self._rows, None)
            if row is None:
                raise StopIteration
        self._last = row[0]
        return row

    def close(self) -> None:
        self._done = True
        self._rows = iter(())
        self._release()

    def _release(self) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __del__(self) -> None:  # an abandoned scan must not hold its snapshot (and the WAL) forever
        self._release()


class SqliteTxn:
    """A transaction on one collection; valid only inside the view/update function."""

    def __init__(self, coll: Collection, writable: bool) -> None:
        self._coll = coll
        self._writable = writable
        self._puts: list[tuple[str, bytes, bytes]] = []

    def get(self, key: bytes) -> bytes:
        self.flush()
        return self._coll._get(key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    def existing(self, keys: list[bytes]) -> set[bytes]:
        """Which of keys the collection holds (the import's check): one query, not a get each."""
        self.flush()
        return self._coll._existing(keys)

    def put(self, key: bytes, val: bytes) -> None:
        self._check_writable()
        self._puts.append((self._coll.name, _key(key), bytes(val)))
        if len(self._puts) >= _FLUSH_EVERY:
            self.flush()

    def delete(self, key: bytes) -> None:
        self._check_writable()
        self.flush()
        self._coll._delete(key)

    def scan(self, prefix: bytes) -> SqliteIter:
        self.flush()
        return SqliteIter(self._coll._page_fn(bytes(prefix), self.flush))

    def flush(self) -> None:
        """Write the buffered puts, so reads and deletes see them in order."""
        if self._puts:
            puts, self._puts = self._puts, []
            self._coll._conn.executemany("INSERT OR REPLACE INTO kv (coll, k, v) VALUES (?, ?, ?)", puts)

    def _check_writable(self) -> None:
        if not self._writable:
            raise ReadOnlyTransactionError()  # badger's error, as damocles reports it


class Collection:
    """One named collection (a KVStore) of a SqliteDB."""

    def __init__(self, db: SqliteDB, name: str) -> None:
        self.name = name
        self._db = db

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._db._connection()

    @_names_damage
    def view(self, fn: Callable[[SqliteTxn], T]) -> T:
        with self._db._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                return fn(SqliteTxn(self, writable=False))
            finally:
                conn.execute("COMMIT")  # a read transaction: ending it releases the snapshot

    @_names_damage
    def update(self, fn: Callable[[SqliteTxn], T]) -> T:
        with self._db._lock, disk_full_as_error(self._db.path, "sqlitekv"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                txn = SqliteTxn(self, writable=True)
                result = fn(txn)
                txn.flush()
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return result

    def need_retry_transactions(self) -> bool:
        return False

    def existing(self, keys: list[bytes]) -> set[bytes]:
        """Which of keys the collection holds, read in one transaction."""
        return self.view(lambda txn: txn.existing(keys))

    @_names_damage
    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Puts in one transaction, one executemany (the bulk import's and migrate's write)."""
        n = 0

        def rows() -> Iterator[tuple[str, bytes, bytes]]:
            nonlocal n
            for k, v in items:
                n += 1
                yield self.name, _key(k), bytes(v)

        def write(txn: SqliteTxn) -> None:
            self._conn.executemany("INSERT OR REPLACE INTO kv (coll, k, v) VALUES (?, ?, ?)", rows())

        self.update(write)
        return n

    @_names_damage
    def get(self, key: bytes) -> bytes:
        with self._db._lock:
            return self._get(key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    @_names_damage
    def put(self, key: bytes, val: bytes) -> None:
        with self._db._lock, disk_full_as_error(self._db.path, "sqlitekv"):
            self._conn.execute("INSERT OR REPLACE INTO kv (coll, k, v) VALUES (?, ?, ?)", (self.name, _key(key), bytes(val)))

    @_names_damage
    def delete(self, key: bytes) -> None:
        with self._db._lock, disk_full_as_error(self._db.path, "sqlitekv"):
            self._delete(key)

    @_names_damage
    def scan(self, prefix: bytes) -> SqliteIter:
        """A snapshot: its own connection's read transaction, begun here and ended when the
        scan ends or is closed (WAL: writers go on meanwhile)."""
        with self._db._lock:
            self._conn  # closed DB: fail here, not at the first page
        conn = sqlite3.connect(self._db.path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN")
        conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()  # the first read fixes the snapshot
        return SqliteIter(self._page_fn(bytes(prefix), None, conn), conn.close)

    def _existing(self, keys: list[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for off in range(0, len(keys), _IN_LIST):
            part = [_key(k) for k in keys[off : off + _IN_LIST]]
            sql = f"SELECT k FROM kv WHERE coll = ? AND k IN ({','.join('?' * len(part))})"
            found.update(row[0] for row in self._conn.execute(sql, (self.name, *part)))
        return found

    def _get(self, key: bytes) -> bytes:
        row = self._conn.execute("SELECT v FROM kv WHERE coll = ? AND k = ?", (self.name, _key(key))).fetchone()
        if row is None:
            raise KeyNotFoundError(f"key not found: {bytes(key)!r}")
        return row[0]

    def _delete(self, key: bytes) -> None:
        # Go semantics (badger, mongo): deleting a missing key is not an error.
        self._conn.execute("DELETE FROM kv WHERE coll = ? AND k = ?", (self.name, _key(key)))

    def _page_fn(
        self, prefix: bytes, in_txn_flush: Callable[[], None] | None, snapshot: sqlite3.Connection | None = None
    ) -> Callable[[bytes | None], list[tuple[bytes, bytes]]]:
        """A page fetcher for SqliteIter: inside a txn it runs on the txn (no lock, flushes
        buffered puts first); outside, on the scan's own snapshot connection."""
        upper = _successor(prefix)
        sql = "SELECT k, v FROM kv WHERE coll = ? AND k {} ?" + (" AND k < ?" if upper is not None else "")
        sql += f" ORDER BY k LIMIT {_PAGE}"
        first, after = sql.format(">="), sql.format(">")

        def fetch(last: bytes | None) -> list[tuple[bytes, bytes]]:
            args: tuple[object, ...] = (self.name, prefix if last is None else last)
            if upper is not None:
                args += (upper,)
            query = first if last is None else after
            try:
                if in_txn_flush is not None:
                    in_txn_flush()
                    return self._conn.execute(query, args).fetchall()
                assert snapshot is not None
                return snapshot.execute(query, args).fetchall()
            except sqlite3.DatabaseError as e:  # a page of a scan (_names_damage covers the calls)
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) not in _DAMAGE_CODES:
                    raise
                raise self._db.met_damage(e) from None

        return fetch


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed write transaction, if SQLite has not ended it itself (it may, on SQLITE_FULL
    or an I/O error); a failing ROLLBACK must not replace the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class SqliteDB:
    """What the Constructor returns: one SQLite file holding every collection."""

    def __init__(self, path: str, synchronous: str, check_on_open: bool = True) -> None:
        self.path = os.path.abspath(path)
        # One connection shared by the worker's threads, serialised by this lock.
        self._lock = threading.RLock()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            conn, damage = self._open(synchronous, check_on_open)
        except sqlite3.Error as e:
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES:
                raise RuntimeError(_damage_line(self.path, e)) from None
            raise RuntimeError(f"sqlitekv: cannot open database {self.path!r}: {e}") from e
        if damage:
            conn.close()
            raise RuntimeError(_damage_line(self.path, "; ".join(damage)))
        self._conn: sqlite3.Connection | None = conn
        self.damage: str | None = None  # what a call met while serving (vsm.sdk.kvstore: status shows it)

    def _open(self, synchronous: str, check_on_open: bool) -> tuple[sqlite3.Connection, list[str]]:
        """The connection, set up, and what quick_check found. Two workers opening a new file
        at once can meet SQLITE_BUSY without the busy handler (the switch to WAL takes an
        exclusive lock): the setup is tried again for up to 10 s, as it is idempotent."""
        deadline = time.monotonic() + 10.0
        while True:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a new file only: before WAL and the table
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={synchronous}")
                conn.execute(_SCHEMA)
                return conn, (_problems(conn, "quick_check", 3) if check_on_open else [])
            except sqlite3.OperationalError as e:
                conn.close()
                if (getattr(e, "sqlite_errorcode", 0) & 0xFF) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except BaseException:
                conn.close()
                raise

    def met_damage(self, cause: object) -> RuntimeError:
        """The one-line error for a damaged page a call met, kept as `damage` for status."""
        self.damage = _damage_line(self.path, cause)
        return RuntimeError(self.damage)

    def run(self) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def open_collection(self, name: str) -> Collection:
        return Collection(self, name)

    def check(self) -> list[str]:
        """SQLite's integrity_check of the file, on a connection of its own: [] when sound."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            return _problems(conn, "integrity_check", 20)
        except sqlite3.DatabaseError as e:
            return [str(e)]
        finally:
            conn.close()

    def backup(self, dest: str) -> None:
        """A consistent copy of the file at `dest` while the DB serves (module docstring)."""
        with self._lock:
            self._connection()  # a closed DB: say so, not copy a file another process may own
        src = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        out = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(out, pages=-1)  # one step: one read transaction (see the docstring)
        except sqlite3.DatabaseError as e:
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES:
                raise self.met_damage(e) from None
            raise
        finally:
            out.close()
            src.close()

    def collections(self) -> list[str]:
        """Names of the collections holding keys (`util migrate` copies each)."""
        with self._lock:
            return [r[0] for r in self._connection().execute("SELECT DISTINCT coll FROM kv ORDER BY coll")]

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"sqlitekv: database {self.path!r} is closed")
        return self._conn


def _problems(conn: sqlite3.Connection, pragma: str, most: int) -> list[str]:
    """What PRAGMA quick_check / integrity_check(most) reports, one line each; [] for "ok"."""
    rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}({most})")]
    lines = [line for row in rows for line in row.splitlines() if line.strip() and line != "*** in database main ***"]
    return [] if lines == ["ok"] else lines
