"""sqlsink: a SyncSectorState sink into PostgreSQL or MySQL/MariaDB.

Meta::

    DSN          "postgresql://postgres@127.0.0.1:5432/test" | "mysql://root@127.0.0.1:3306/test"
                 (also postgres://, mariadb://; a password in the DSN is never logged)
    TablePrefix  ""   [A-Za-z0-9_]*, e.g. "vsm_" -> vsm_sector_events, vsm_sectors
    StateFormat  "arrow" | "go": the state column holds the row's state columns as JSON with
                 their Arrow (snake_case) names, bytes as base64 ("arrow"); or the Go JSON of
                 damocles' KV value, `{"ID":{"Miner":..},...}` ("go", slower: one object a row)

Tables, created on first use (CREATE ... IF NOT EXISTS, so several workers or restarts are fine)::

    <prefix>sector_events   seq PK, kind, time, worker_state, miner, number,
                            changed_fields JSON, state JSON      -- append-only history
    <prefix>sectors         (miner, number) PK, seq, kind, time, worker_state, state JSON
                                                                 -- current state, newest seq wins

Delivery is at-least-once, so every write is idempotent by seq: an event already stored is
skipped (ON CONFLICT DO NOTHING / ON DUPLICATE KEY no-op) and a sector row is replaced only by
a newer seq. Each batch is one transaction: all of it lands or none. PostgreSQL: COPY into a
temp table, then two INSERT ... SELECT. MySQL: multi-row INSERTs (pymysql executemany).
miner, number and seq are BIGINT (signed in PostgreSQL: values up to 2^63-1).
Raising from on_batch makes the manager retry the batch; a broken connection is reopened on
the next batch.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import logging
import re
import urllib.parse
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk import PluginError

__all__ = ["open", "SqlSink", "EVENT_COLUMNS"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"
# Columns of SECTOR_EVENT_SCHEMA that describe the event; every other column is sector state.
EVENT_COLUMNS = ("seq", "kind", "time", "worker_state", "changed_fields")
_REQUIRED = ("seq", "kind", "time", "miner", "number")
_KNOWN = {"DSN", "TablePrefix", "StateFormat"}


def open(meta: dict[str, str]) -> SqlSink:  # noqa: A001 - the exported Constructor's name
    """Constructor: checks Meta; connects on the first batch."""
    unknown = sorted(set(meta) - _KNOWN)
    if unknown:
        raise ValueError(f"sqlsink: unknown Meta key(s) {unknown}; known: {sorted(_KNOWN)}")
    dsn = meta.get("DSN", "").strip()
    if not dsn:
        raise ValueError('sqlsink: Meta \'DSN\' is required, e.g. "postgresql://postgres@127.0.0.1:5432/test"')
    prefix = meta.get("TablePrefix", "")
    if not re.fullmatch(r"[A-Za-z0-9_]*", prefix):
        raise ValueError(f"sqlsink: Meta 'TablePrefix' = {prefix!r}; use letters, digits and '_' only")
    fmt = meta.get("StateFormat", "arrow")
    if fmt not in ("arrow", "go"):
        raise ValueError(f"sqlsink: Meta 'StateFormat' = {fmt!r}; use \"arrow\" or \"go\"")
    scheme = urllib.parse.urlsplit(dsn).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        backend: _Backend = _Postgres(dsn, prefix)
    elif scheme in ("mysql", "mariadb"):
        backend = _MySQL(dsn, prefix)
    else:
        raise ValueError(
            f"sqlsink: Meta 'DSN' scheme {scheme!r} is not supported; use postgresql:// or mysql://"
        )
    return SqlSink(backend, fmt)


def _redact(dsn: str) -> str:
    """The DSN without its password."""
    parts = urllib.parse.urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _json_default(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")  # as Go encodes []byte
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    raise TypeError(f"cannot encode {type(v).__name__} as JSON")


def _dumps(v: Any) -> str:
    return json.dumps(v, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class _Rows:
    """The columns of one batch that the tables need, as Python lists (one pass, no row loop
    beyond the JSON encoding of the state)."""

    def __init__(self, batch: pa.RecordBatch, state_format: str) -> None:
        names = batch.schema.names
        missing = [c for c in _REQUIRED if c not in names]
        if missing:
            raise PluginError(f"sqlsink: batch lacks column(s) {missing}; expected SECTOR_EVENT_SCHEMA")
        n = batch.num_rows

        def col(name: str) -> list[Any]:
            return batch.column(name).to_pylist() if name in names else [None] * n

        self.n = n
        self.seq = col("seq")
        self.kind = col("kind")
        self.time = col("time")
        self.worker_state = col("worker_state")
        self.miner = col("miner")
        self.number = col("number")
        self.changed = [None if c is None else _dumps(c) for c in col("changed_fields")]
        state_cols = [c for c in names if c not in EVENT_COLUMNS]
        state_rows = pa.Table.from_batches([batch.select(state_cols)]).to_pylist()
        if state_format == "go":
            from vsm.sdk.sectors import SectorState  # only for this format: one object a row

            self.state = [SectorState.from_arrow_row(r).to_go_json().decode() for r in state_rows]
        else:
            self.state = [_dumps(r) for r in state_rows]
        self.newest = self._newest_per_sector(batch)

    @staticmethod
    def _newest_per_sector(batch: pa.RecordBatch) -> list[int]:
        """Row indices holding each sector's highest seq, ordered by (miner, number): one row
        per sector for the upsert (a multi-row upsert may not touch a row twice), in a fixed
        order so that concurrent writers lock rows alike and do not deadlock."""
        t = pa.table({
            "miner": batch.column("miner"),
            "number": batch.column("number"),
            "seq": batch.column("seq"),
            "i": pa.array(range(batch.num_rows), pa.int64()),
        })
        top = t.group_by(["miner", "number"]).aggregate([("seq", "max")])
        keep = t.filter(pc.is_in(t["seq"], value_set=top["seq_max"]))
        keep = keep.sort_by([("miner", "ascending"), ("number", "ascending")])
        return keep["i"].to_pylist()  # type: ignore[no-any-return]


class _Backend:
    """One database flavour: connection, DDL, and the write of one batch."""

    name = ""

    def __init__(self, dsn: str, prefix: str) -> None:
        self.dsn = dsn
        self.where = f"sqlsink: {_redact(dsn)}"
        self.events = f"{prefix}sector_events"
        self.sectors = f"{prefix}sectors"
        self.conn: Any = None

    def connect(self) -> Any:
        raise NotImplementedError

    def quote(self, table: str) -> str:
        return table

    def create_schema(self, cur: Any) -> None:
        raise NotImplementedError

    def write(self, cur: Any, rows: _Rows) -> None:
        raise NotImplementedError

    def is_disconnect(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError


class _Postgres(_Backend):
    name = "postgresql"

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)

    def errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.Error,)

    def is_disconnect(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or bool(
            self.conn is not None and self.conn.closed
        )

    def create_schema(self, cur: Any) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type: serialise it.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"vsm-sqlsink:{self.events}",))
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS {self.events} (
                seq BIGINT PRIMARY KEY,
                kind TEXT NOT NULL,
                time TIMESTAMPTZ NOT NULL,
                worker_state TEXT,
                miner BIGINT NOT NULL,
                number BIGINT NOT NULL,
                changed_fields JSONB,
                state JSONB NOT NULL)"""
        )
        cur.execute(f"CREATE INDEX IF NOT EXISTS {self.events}_sector ON {self.events} (miner, number, seq)")
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS {self.sectors} (
                miner BIGINT NOT NULL,
                number BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                kind TEXT NOT NULL,
                time TIMESTAMPTZ NOT NULL,
                worker_state TEXT,
                state JSONB NOT NULL,
                PRIMARY KEY (miner, number))"""
        )

    def write(self, cur: Any, rows: _Rows) -> None:
        stage = f"vsm_stage_{self.events}"
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {self.events} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cols = "seq, kind, time, worker_state, miner, number, changed_fields, state"
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
            for r in zip(rows.seq, rows.kind, rows.time, rows.worker_state, rows.miner, rows.number,
                         rows.changed, rows.state):
                copy.write_row(r)
        cur.execute(f"INSERT INTO {self.events} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT (seq) DO NOTHING")
        cur.execute(
            f"""INSERT INTO {self.sectors} AS s (miner, number, seq, kind, time, worker_state, state)
                SELECT DISTINCT ON (miner, number) miner, number, seq, kind, time, worker_state, state
                FROM {stage} ORDER BY miner, number, seq DESC
                ON CONFLICT (miner, number) DO UPDATE SET
                    seq = EXCLUDED.seq, kind = EXCLUDED.kind, time = EXCLUDED.time,
                    worker_state = EXCLUDED.worker_state, state = EXCLUDED.state
                WHERE EXCLUDED.seq > s.seq"""
        )


class _MySQL(_Backend):
    name = "mysql"

    def quote(self, table: str) -> str:
        return f"`{table}`"

    def connect(self) -> Any:
        import pymysql

        p = urllib.parse.urlsplit(self.dsn)
        db = p.path.lstrip("/")
        if not db:
            raise PluginError(f"{self.where}: the DSN names no database (mysql://user@host:3306/DB)")
        return pymysql.connect(
            host=p.hostname or "127.0.0.1",
            port=p.port or 3306,
            user=urllib.parse.unquote(p.username or "root"),
            password=urllib.parse.unquote(p.password or ""),
            database=urllib.parse.unquote(db),
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=10,
        )

    def errors(self) -> tuple[type[BaseException], ...]:
        import pymysql

        return (pymysql.Error,)

    def is_disconnect(self, exc: BaseException) -> bool:
        import pymysql

        return isinstance(exc, (pymysql.OperationalError, pymysql.InterfaceError))

    def create_schema(self, cur: Any) -> None:
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS `{self.events}` (
                seq BIGINT UNSIGNED NOT NULL PRIMARY KEY,
                kind VARCHAR(32) NOT NULL,
                time DATETIME(6) NOT NULL,
                worker_state VARCHAR(16),
                miner BIGINT UNSIGNED NOT NULL,
                number BIGINT UNSIGNED NOT NULL,
                changed_fields JSON,
                state JSON NOT NULL,
                KEY sector (miner, number, seq)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
        )
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS `{self.sectors}` (
                miner BIGINT UNSIGNED NOT NULL,
                number BIGINT UNSIGNED NOT NULL,
                seq BIGINT UNSIGNED NOT NULL,
                kind VARCHAR(32) NOT NULL,
                time DATETIME(6) NOT NULL,
                worker_state VARCHAR(16),
                state JSON NOT NULL,
                PRIMARY KEY (miner, number)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
        )

    def write(self, cur: Any, rows: _Rows) -> None:
        # DATETIME has no zone: store UTC, naive.
        times = [t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t is not None and t.tzinfo else t for t in rows.time]
        cur.executemany(
            f"""INSERT INTO `{self.events}` (seq, kind, time, worker_state, miner, number, changed_fields, state)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE seq = seq""",
            list(zip(rows.seq, rows.kind, times, rows.worker_state, rows.miner, rows.number, rows.changed, rows.state)),
        )
        newer = "VALUES(seq) > seq"
        cur.executemany(
            # seq is assigned last: MySQL evaluates assignments left to right, and the tests
            # before it must still compare against the old seq.
            f"""INSERT INTO `{self.sectors}` (miner, number, seq, kind, time, worker_state, state)
                VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE
                    kind = IF({newer}, VALUES(kind), kind),
                    time = IF({newer}, VALUES(time), time),
                    worker_state = IF({newer}, VALUES(worker_state), worker_state),
                    state = IF({newer}, VALUES(state), state),
                    seq = IF({newer}, VALUES(seq), seq)""",
            [(rows.miner[i], rows.number[i], rows.seq[i], rows.kind[i], times[i], rows.worker_state[i], rows.state[i])
             for i in rows.newest],
        )


class SqlSink:
    """What the Constructor returns: on_batch writes one Arrow batch in one transaction."""

    def __init__(self, backend: _Backend, state_format: str) -> None:
        self._db = backend
        self._state_format = state_format
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"<SqlSink {self._db.where.removeprefix('sqlsink: ')} tables {self._db.events}, {self._db.sectors}>"

    @property
    def tables(self) -> tuple[str, str]:
        """(events table, sectors table)."""
        return self._db.events, self._db.sectors

    def on_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        rows = _Rows(batch, self._state_format)
        self._run(lambda cur: self._db.write(cur, rows))

    def stored_seqs(self) -> list[int]:
        """The seq of every stored event (`vsm-pool plugin test` checks that each seq it
        delivered is there exactly once)."""
        seqs: list[int] = []

        def read(cur: Any) -> None:
            cur.execute(f"SELECT seq FROM {self._db.quote(self._db.events)}")
            seqs.extend(int(row[0]) for row in cur.fetchall())

        self._run(read)
        return seqs

    def drop(self) -> None:
        """Drop this sink's two tables (`vsm-pool plugin test` calls it on the tables of its
        own prefix; the manager never does)."""

        def drop_tables(cur: Any) -> None:
            for table in self.tables:
                cur.execute(f"DROP TABLE IF EXISTS {self._db.quote(table)}")

        self._run(drop_tables)
        self._schema_ready = False
        self.close()  # PostgreSQL's staging table is a TEMP one: it goes with the session

    def ensure_schema(self) -> None:
        """Create the tables now (otherwise the first batch does)."""
        self._run(lambda cur: None)

    def _run(self, work: Callable[[Any], None]) -> None:
        db = self._db
        errors = db.errors()
        try:
            if db.conn is None:
                db.conn = db.connect()
            with db.conn.cursor() as cur:
                if not self._schema_ready:
                    db.create_schema(cur)
                work(cur)
            db.conn.commit()
            self._schema_ready = True
        except errors as e:
            self._recover(e)
            raise PluginError(f"{db.where}: {_first_line(e)}") from None
        except BaseException:
            self._recover(None)
            raise

    def _recover(self, exc: BaseException | None) -> None:
        """Roll back; drop the connection if it is broken so the next batch reconnects."""
        db = self._db
        if db.conn is None:
            return
        try:
            db.conn.rollback()
        except Exception:  # the connection is gone with the transaction
            self.close()
            return
        if exc is not None and db.is_disconnect(exc):
            self.close()

    def close(self) -> None:
        """Closes the connection; safe twice. The next batch would reconnect."""
        conn, self._db.conn = self._db.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already gone
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
