"""__NAME__: a KVStore plugin (keys and values are bytes; a DB holds named collections).

In memory: the data lives in the worker, so manifest.toml says maxWorkers = 1. To use a real
database, keep the shape: update() commits everything fn wrote, or nothing if fn raises; as
damocles' default store (badger): the empty key is refused, view() refuses writes, and a scan
is a snapshot of the collection.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from vsm.sdk import EmptyKeyError, KeyNotFoundError, Manifest, ReadOnlyTransactionError


def on_init(plugins_dir: str, manifest: Manifest) -> None:
    """Runs in every worker before any call; raising disables the plugin."""


def make_db(meta: dict[str, str]) -> DB:
    """The Constructor: meta is the config's [Common.DB.Plugin.Meta]."""
    return DB(meta)


class Iter:
    """(key, value) pairs in key order; close() may come before the end."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items: Iterator[tuple[bytes, bytes]] = iter(items)

    def __iter__(self) -> Iter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._items)

    def close(self) -> None:
        self._items = iter(())


def _key(key: bytes) -> bytes:
    if not key:
        raise EmptyKeyError(EmptyKeyError.go_text)
    return bytes(key)


class Txn:
    """What view and update hand to fn: reads and writes of one collection."""

    def __init__(self, data: dict[bytes, bytes], writable: bool = True) -> None:
        self.data = data
        self.writable = writable

    def get(self, key: bytes) -> bytes:
        try:
            return self.data[_key(key)]
        except KeyError:
            raise KeyNotFoundError(f"__NAME__: key not found: {bytes(key)!r}") from None

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return fn(self.get(key))

    def _writing(self) -> None:
        if not self.writable:
            raise ReadOnlyTransactionError(ReadOnlyTransactionError.go_text)

    def put(self, key: bytes, val: bytes) -> None:
        self._writing()
        self.data[_key(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self._writing()
        self.data.pop(_key(key), None)  # a missing key is not an error, as in Go

    def scan(self, prefix: bytes) -> Iter:
        prefix = bytes(prefix)  # sorted() copies: later writes do not show (a snapshot)
        return Iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))


class Collection(Txn):
    """One named collection: the Txn methods straight on its data, plus view and update."""

    def need_retry_transactions(self) -> bool:
        return False  # update never raises TransactionConflictError here

    def view(self, fn: Callable[[Txn], Any]) -> Any:
        return fn(Txn(self.data, writable=False))

    def update(self, fn: Callable[[Txn], Any]) -> Any:
        work = Txn(dict(self.data))  # fn writes a copy, which becomes the data only if fn returns
        result = fn(work)
        self.data = work.data
        return result


class DB:
    def __init__(self, meta: dict[str, str]) -> None:
        self.collections: dict[str, Collection] = {}

    def run(self) -> None:
        """Start background work, if any: called once, before the first collection."""

    def close(self) -> None:
        self.collections.clear()

    def open_collection(self, name: str) -> Collection:
        return self.collections.setdefault(name, Collection({}))
