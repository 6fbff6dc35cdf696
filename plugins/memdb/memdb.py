"""memdb: an in-memory KVStore, the Python twin of damocles' `examples/memdb`.

Each collection is a dict plus a lazily sorted key list (Go uses a btree). Unlike the Go
example it supports transactions: update buffers its writes and applies them only when fn
returns, so a raising fn leaves the collection untouched. Data lives in one worker's memory,
hence maxWorkers = 1.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Callable, Iterable, Iterator, TypeVar

from vsm.sdk import EmptyKeyError, KeyNotFoundError, Manifest, ReadOnlyTransactionError

__all__ = ["on_init", "open"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def on_init(plugins_dir: str, manifest: Manifest) -> None:
    """Nothing to prepare: the store is empty at start."""
    log.debug("memdb %s ready (plugins dir %s)", manifest.version, plugins_dir)


def open(meta: dict[str, str]) -> MemDB:  # noqa: A001 - the exported Constructor's name
    """Constructor: a new, empty DB; meta is ignored."""
    return MemDB()


def _key(key: bytes) -> bytes:
    """As badger: the empty key is refused."""
    if not key:
        raise EmptyKeyError()
    return bytes(key)


class MemIter:
    """Iterator over a snapshot of (key, value) pairs."""

    def __init__(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        self._it: Iterator[tuple[bytes, bytes]] = iter(items)

    def __iter__(self) -> MemIter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())


class _Table:
    """The committed data of one collection. Callers hold the collection's lock."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        # Sorted lazily: bulk loads in random order would make insort O(n) per key.
        self._keys: list[bytes] | None = []

    def get(self, key: bytes) -> bytes:
        try:
            return self.data[key]
        except KeyError:
            raise KeyNotFoundError(f"key not found: {key!r}") from None

    def put(self, key: bytes, val: bytes) -> None:
        if key not in self.data and self._keys is not None:
            if not self._keys or key > self._keys[-1]:
                self._keys.append(key)
            else:
                self._keys = None
        self.data[key] = val

    def delete(self, key: bytes) -> None:
        # Go semantics (memdb's btree, badger): deleting a missing key is not an error.
        if self.data.pop(key, None) is not None and self._keys is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        if self._keys is None:
            self._keys = sorted(self.data)
        keys, data = self._keys, self.data
        out = []
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            k = keys[i]
            if not k.startswith(prefix):
                break
            out.append((k, data[k]))
        return out


class MemTxn:
    """A transaction over one collection; writes are buffered until commit."""

    def __init__(self, table: _Table, writable: bool) -> None:
        self._table = table
        self._writable = writable
        self._writes: dict[bytes, bytes | None] = {}  # None: deleted in this transaction

    def get(self, key: bytes) -> bytes:
        key = _key(key)
        if key in self._writes:
            val = self._writes[key]
            if val is None:
                raise KeyNotFoundError(f"key not found: {key!r}")
            return val
        return self._table.get(key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self._check_writable()
        self._writes[_key(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self._check_writable()
        self._writes[_key(key)] = None

    def scan(self, prefix: bytes) -> MemIter:
        prefix = bytes(prefix)
        items = self._table.scan(prefix)
        mine = {k: v for k, v in self._writes.items() if k.startswith(prefix)}
        if mine:
            merged = dict(items)
            for k, v in mine.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            items = sorted(merged.items())
        return MemIter(items)

    def commit(self) -> None:
        for k, v in self._writes.items():
            if v is None:
                self._table.delete(k)
            else:
                self._table.put(k, v)

    def _check_writable(self) -> None:
        if not self._writable:
            raise ReadOnlyTransactionError()  # badger's error, as damocles reports it


class Collection:
    """One named collection (a KVStore)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._table = _Table()
        # One lock per collection: transactions are serialised, so they never conflict.
        self._lock = threading.RLock()

    def view(self, fn: Callable[[MemTxn], T]) -> T:
        with self._lock:
            return fn(MemTxn(self._table, writable=False))

    def update(self, fn: Callable[[MemTxn], T]) -> T:
        with self._lock:
            txn = MemTxn(self._table, writable=True)
            result = fn(txn)
            txn.commit()
            return result

    def need_retry_transactions(self) -> bool:
        return False

    def get(self, key: bytes) -> bytes:
        with self._lock:
            return self._table.get(_key(key))

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        with self._lock:
            self._table.put(_key(key), bytes(val))

    def delete(self, key: bytes) -> None:
        with self._lock:
            self._table.delete(_key(key))

    def scan(self, prefix: bytes) -> MemIter:
        with self._lock:
            return MemIter(self._table.scan(bytes(prefix)))


class MemDB:
    """What the Constructor returns: a set of collections, created on first open."""

    cannot_backup = "memdb keeps its keys in the worker's memory only: there is no file to back up, and they are gone at every stop"

    def __init__(self) -> None:
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        """Nothing to release; the data goes with the worker."""

    def collections(self) -> list[str]:
        """Names of the collections holding keys (`util migrate` copies each)."""
        with self._lock:
            return sorted(n for n, c in self._collections.items() if c._table.data)

    def open_collection(self, name: str) -> Collection:
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                coll = self._collections[name] = Collection(name)
            return coll
