"""redis: a KVStore on Redis (Go `kvstore.DB` over redis-py).

Layout, per collection ``C`` and ``KeyPrefix`` ``P`` (default "vsm")::

    P:C:<raw key bytes>   a Redis string holding the value
    P:C                   a sorted set, every member a raw key, all scores 0 (the index)

Why an index: Redis keeps no key order. SCAN MATCH walks the whole keyspace of the database
for every prefix scan (all collections, O(N) round trips) and then needs a sort; a sorted set
with equal scores is ordered by memcmp of its members, so ZRANGEBYLEX answers a prefix scan
in O(log N + M), already in byte order, paged by the last key seen. Every write changes the
value and the index in one MULTI/EXEC, so they never disagree (keys written into the
namespace by other tools, bypassing the index, are found by get but not by scan; keys removed
by other tools are skipped by scan). Collection names may not
contain ':' (so no index key can equal a data key). Redis Cluster is not supported (the
multi-key MULTI would need hash tags).

Transactions: ``update`` is optimistic. Every key it reads is WATCHed before the read; a
scan WATCHes the index and the keys it returns; writes are buffered (read-your-writes) and
sent as one MULTI/EXEC. If a watched key changed meanwhile, EXEC fails and update raises
TransactionConflictError (``need_retry_transactions()`` is True: the manager retries).
``view`` reads straight from the server (Redis has no snapshots) and refuses writes.

Meta (``[Common.DB.Plugin.Meta]``)::

    Addr       "127.0.0.1:6379"  host:port
    DB         "0"               database number
    Username   ""                ACL user (Redis 6+); empty: the default user
    Password   ""                empty: no AUTH
    KeyPrefix  "vsm"             namespace of every key this DB writes
    PoolSize   "16"              connections per worker; callers wait when all are busy
    Timeout    "10"              seconds for connect and for each command

Errors name the plugin, the address and the cause, e.g.
``redis: cannot reach 127.0.0.1:6390: Connection refused``. The connection pool reconnects
by itself: once the server is back, the next call works.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, TypeVar

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from vsm.sdk import EmptyKeyError, KeyNotFoundError, PluginError, ReadOnlyTransactionError, TransactionConflictError

__all__ = ["open", "RedisDB", "RedisCollection"]

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION = "0.1.0"
PAGE = 512  # keys per ZRANGEBYLEX/MGET round trip while scanning
_DELETED = None  # marks a key deleted in an update's write buffer

_DEFAULTS = {
    "Addr": "127.0.0.1:6379",
    "DB": "0",
    "Username": "",
    "Password": "",
    "KeyPrefix": "vsm",
    "PoolSize": "16",
    "Timeout": "10",
}


def open(meta: dict[str, str]) -> RedisDB:  # noqa: A001 - the exported Constructor's name
    """Constructor: checks meta and builds the connection pool; connects lazily (run() pings)."""
    unknown = sorted(set(meta) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"redis: unknown Meta key(s) {unknown}; known: {sorted(_DEFAULTS)}")
    m = {**_DEFAULTS, **{k: str(v) for k, v in meta.items()}}
    addr = m["Addr"].strip()
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"redis: Meta 'Addr' = {addr!r}; use host:port, e.g. \"127.0.0.1:6379\"")
    host = host.strip("[]")  # [::1]:6379
    db = _int_meta(m, "DB", lo=0)
    pool_size = _int_meta(m, "PoolSize", lo=1)
    timeout = _float_meta(m, "Timeout")
    prefix = m["KeyPrefix"]
    if not prefix:
        raise ValueError("redis: Meta 'KeyPrefix' is empty; leave it out for the default \"vsm\"")
    pool = redis.BlockingConnectionPool(
        host=host,
        port=int(port_s),
        db=db,
        username=m["Username"] or None,
        password=m["Password"] or None,
        max_connections=pool_size,
        timeout=timeout,  # how long a caller waits for a free connection
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # One immediate retry on a fresh connection: after a server restart the pooled
        # sockets are dead, and the first command on each would otherwise fail. Our commands
        # (GET/SET/DEL/ZADD/ZREM, whole MULTI blocks) are idempotent, so a retry is safe.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[rexc.ConnectionError],
        protocol=2,
    )
    return RedisDB(addr, prefix, pool, has_password=bool(m["Password"]))


def _int_meta(m: dict[str, str], key: str, lo: int) -> int:
    try:
        v = int(m[key])
    except ValueError:
        v = lo - 1
    if v < lo:
        raise ValueError(f"redis: Meta {key!r} = {m[key]!r}; use an integer >= {lo}")
    return v


def _float_meta(m: dict[str, str], key: str) -> float:
    try:
        v = float(m[key])
    except ValueError:
        v = 0.0
    if not v > 0:
        raise ValueError(f"redis: Meta {key!r} = {m[key]!r}; use a number of seconds > 0")
    return v


def _next_prefix(prefix: bytes) -> bytes | None:
    """Smallest byte string greater than every string starting with prefix (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


def _lex_range(prefix: bytes) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds covering exactly the members that start with prefix."""
    lo = b"[" + prefix if prefix else b"-"
    hi = _next_prefix(prefix)
    return lo, (b"(" + hi if hi is not None else b"+")


def _cause(exc: BaseException) -> str:
    """The root cause of a redis-py connection error, without redis-py's wording."""
    ctx = exc.__cause__ or exc.__context__
    if isinstance(ctx, OSError) and ctx.strerror:
        return ctx.strerror
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    # "Error 111 connecting to 127.0.0.1:6390. Connection refused." -> "Connection refused"
    if text.startswith("Error ") and ". " in text:
        text = text.split(". ", 1)[1]
    return text.rstrip(".") or type(exc).__name__


class RedisDB:
    """What the Constructor returns: one connection pool, shared by all collections."""

    # A scan pages the index and is not a snapshot (badger's is): saying so, the kit skips
    # its snapshot rule for this store instead of failing it.
    snapshot_scans = False
    cannot_backup = "the data lives in the Redis server: back it up with Redis' own BGSAVE (its RDB file) or a replica"

    def __init__(self, addr: str, key_prefix: str, pool: redis.ConnectionPool, has_password: bool) -> None:
        self.addr = addr
        self.key_prefix = key_prefix
        self._pool = pool
        self._has_password = has_password
        self.client = redis.Redis(connection_pool=pool)
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisDB {self.addr} prefix={self.key_prefix!r}{' closed' if self._closed else ''}>"

    def run(self) -> None:
        """Checks that the server answers (address, password, DB number), so a bad config
        fails at startup with its cause rather than on the first sector."""
        with self.errors():
            self.client.ping()

    def close(self) -> None:
        """Drops every pooled connection; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._pool.disconnect()

    def collections(self) -> list[str]:
        """Names of the collections holding keys: their index sorted sets (`util migrate`)."""
        start = len(self.key_prefix) + 1
        with self.errors():
            found = {bytes(k)[start:].decode() for k in self.client.scan_iter(match=f"{self.key_prefix}:*", _type="zset")}
        return sorted(n for n in found if n and ":" not in n)

    def open_collection(self, name: str) -> RedisCollection:
        """Nothing to create in Redis: a collection is a key prefix plus its index."""
        if not name or ":" in name:
            raise ValueError(f"redis: collection name {name!r} must be non-empty and contain no ':'")
        return RedisCollection(self, name)

    @contextlib.contextmanager
    def errors(self, collection: str = "") -> Iterator[None]:
        """Translates redis-py errors into one-line PluginErrors naming plugin, address, cause."""
        if self._closed:
            raise PluginError(f"redis: {self.addr}: the DB is closed")
        try:
            yield
        except rexc.WatchError as e:
            # redis-py also raises WatchError when the connection drops while keys are
            # watched: the watch is void, so a retry is right; say which case it was.
            why = str(e) if "occurred while watching" in str(e) else "a key it read changed before commit"
            raise TransactionConflictError(
                f"redis: transaction conflict in collection {collection!r} at {self.addr}: {why}; retry"
            ) from None
        except rexc.AuthenticationError as e:
            hint = "check Meta 'Password'" if self._has_password else "the server needs a password: set Meta 'Password'"
            raise PluginError(f"redis: authentication failed at {self.addr}: {_cause(e)} ({hint})") from None
        except (rexc.ConnectionError, rexc.TimeoutError) as e:
            raise PluginError(f"redis: cannot reach {self.addr}: {_cause(e)}") from None
        except rexc.RedisError as e:
            raise PluginError(f"redis: {self.addr}: {e}") from None


class RedisCollection:
    """One collection (the KVStore protocol)."""

    def __init__(self, db: RedisDB, name: str) -> None:
        self.name = name
        self._db = db
        self._r = db.client
        self._data_prefix = f"{db.key_prefix}:{name}:".encode()
        self._index = f"{db.key_prefix}:{name}".encode()

    def __repr__(self) -> str:
        return f"<RedisCollection {self.name!r} at {self._db.addr}>"

    # -- helpers used by the transactions and the iterator

    def data_key(self, key: bytes) -> bytes:
        return self._data_prefix + key

    @property
    def index_key(self) -> bytes:
        return self._index

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return self._db.errors(self.name)

    def _missing(self, key: bytes) -> KeyNotFoundError:
        return KeyNotFoundError(f"key not found: {key!r} in collection {self.name!r}")

    # -- KVStore

    def get(self, key: bytes) -> bytes:
        key = _key(key)
        with self.errors():
            val = self._r.get(self.data_key(key))
        if val is None:
            raise self._missing(key)
        return val

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        key, val = _key(key), bytes(val)
        with self.errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.set(self.data_key(key), val)
            pipe.zadd(self._index, {key: 0})
            pipe.execute()

    def delete(self, key: bytes) -> None:
        """Deleting a missing key is not an error (Go memdb/badger semantics)."""
        key = _key(key)
        with self.errors():
            pipe = self._r.pipeline(transaction=True)
            pipe.delete(self.data_key(key))
            pipe.zrem(self._index, key)
            pipe.execute()

    def scan(self, prefix: bytes) -> RedisIter:
        """Keys starting with prefix, in byte order, fetched PAGE keys at a time."""
        return RedisIter(self, bytes(prefix))

    def view(self, fn: Callable[[ViewTxn], T]) -> T:
        return fn(ViewTxn(self))

    def update(self, fn: Callable[[UpdateTxn], T]) -> T:
        with self.errors():
            with self._r.pipeline(transaction=True) as pipe:  # exit: UNWATCH, connection back
                txn = UpdateTxn(self, pipe)
                result = fn(txn)
                txn.commit()
                return result

    def need_retry_transactions(self) -> bool:
        return True


class RedisIter:
    """Lazy prefix scan: pages of ZRANGEBYLEX on the index, values by MGET.

    Not a snapshot: keys deleted while the scan runs are skipped; keys added after the page
    that would hold them was read are not seen."""

    def __init__(self, coll: RedisCollection, prefix: bytes) -> None:
        self._coll = coll
        self._lo, self._hi = _lex_range(prefix)
        self._buf: list[tuple[bytes, bytes]] = []
        self._pos = 0
        self._done = False

    def __iter__(self) -> RedisIter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        while self._pos >= len(self._buf):
            if self._done:
                raise StopIteration
            self._fill()
        item = self._buf[self._pos]
        self._pos += 1
        return item

    def _fill(self) -> None:
        coll = self._coll
        with coll.errors():
            keys = coll._r.zrangebylex(coll.index_key, self._lo, self._hi, start=0, num=PAGE)
            vals = coll._r.mget([coll.data_key(k) for k in keys]) if keys else []
        if len(keys) < PAGE:
            self._done = True
        else:
            self._lo = b"(" + keys[-1]
        self._buf = [(k, v) for k, v in zip(keys, vals) if v is not None]
        self._pos = 0

    def close(self) -> None:
        self._buf, self._pos, self._done = [], 0, True


class ListIter:
    """Iterator over materialised (key, value) pairs (scans inside update)."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._it = iter(items)

    def __iter__(self) -> ListIter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())


def _key(key: bytes) -> bytes:
    """As badger: the empty key is refused."""
    if not key:
        raise EmptyKeyError()
    return bytes(key)


class ViewTxn:
    """Read-only transaction: reads go straight to the server."""

    def __init__(self, coll: RedisCollection) -> None:
        self._coll = coll

    def get(self, key: bytes) -> bytes:
        return self._coll.get(key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self._coll.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        raise ReadOnlyTransactionError()  # badger's error, as damocles reports it

    def delete(self, key: bytes) -> None:
        raise ReadOnlyTransactionError()  # badger's error, as damocles reports it

    def scan(self, prefix: bytes) -> RedisIter:
        return self._coll.scan(prefix)


class UpdateTxn:
    """Optimistic read-write transaction: WATCH on read, buffered writes, MULTI/EXEC on commit."""

    def __init__(self, coll: RedisCollection, pipe: redis.client.Pipeline) -> None:
        self._coll = coll
        self._pipe = pipe
        self._writes: dict[bytes, bytes | None] = {}
        self._watched: set[bytes] = set()

    def _watch(self, *rkeys: bytes) -> None:
        new = [k for k in rkeys if k not in self._watched]
        if new:
            self._pipe.watch(*new)  # puts the pipeline in immediate mode until multi()
            self._watched.update(new)

    def get(self, key: bytes) -> bytes:
        key = _key(key)
        if key in self._writes:
            val = self._writes[key]
            if val is _DELETED:
                raise self._coll._missing(key)
            return val
        rkey = self._coll.data_key(key)
        self._watch(rkey)
        val = self._pipe.get(rkey)
        if val is None:
            raise self._coll._missing(key)
        return val

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self._writes[_key(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self._writes[_key(key)] = _DELETED

    def scan(self, prefix: bytes) -> ListIter:
        """Materialised; WATCHes the index (keys added or removed) and each key returned."""
        prefix = bytes(prefix)
        coll, pipe = self._coll, self._pipe
        self._watch(coll.index_key)
        lo, hi = _lex_range(prefix)
        merged: dict[bytes, bytes] = {}
        while True:
            keys = pipe.zrangebylex(coll.index_key, lo, hi, start=0, num=PAGE)
            if keys:
                rkeys = [coll.data_key(k) for k in keys]
                self._watch(*rkeys)
                for k, v in zip(keys, pipe.mget(rkeys)):
                    if v is not None:
                        merged[k] = v
            if len(keys) < PAGE:
                break
            lo = b"(" + keys[-1]
        mine = {k: v for k, v in self._writes.items() if k.startswith(prefix)}
        if not mine:
            return ListIter(list(merged.items()))  # already in byte order
        for k, v in mine.items():
            if v is _DELETED:
                merged.pop(k, None)
            else:
                merged[k] = v
        return ListIter(sorted(merged.items()))

    def commit(self) -> None:
        """Sends the buffered writes as one MULTI/EXEC; WatchError if a watched key changed."""
        if not self._writes:
            return
        coll, pipe = self._coll, self._pipe
        puts = {k: v for k, v in self._writes.items() if v is not _DELETED}
        dels = [k for k, v in self._writes.items() if v is _DELETED]
        pipe.multi()
        if puts:
            pipe.mset({coll.data_key(k): v for k, v in puts.items()})
            pipe.zadd(coll.index_key, dict.fromkeys(puts, 0))
        if dels:
            pipe.delete(*[coll.data_key(k) for k in dels])
            pipe.zrem(coll.index_key, *dels)
        pipe.execute()
