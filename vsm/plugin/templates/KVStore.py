"""__NAME__: a KVStore plugin (keys and values are bytes; a DB holds named collections).

In memory: the data lives in the worker, so manifest.toml says maxWorkers = 1. To use a real
database, keep the shape: update() commits everything fn wrote, or nothing if fn raises.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from vsm.sdk import KeyNotFoundError, Manifest


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


class Txn:
    """What view and update hand to fn: reads and writes of one collection."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data

    def get(self, key: bytes) -> bytes:
        try:
            return self.data[bytes(key)]
        except KeyError:
            raise KeyNotFoundError(f"__NAME__: key not found: {bytes(key)!r}") from None

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self.data[bytes(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self.data.pop(bytes(key), None)  # a missing key is not an error, as in Go

    def scan(self, prefix: bytes) -> Iter:
        prefix = bytes(prefix)
        return Iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))


class Collection(Txn):
    """One named collection: the Txn methods straight on its data, plus view and update."""

    def need_retry_transactions(self) -> bool:
        return False  # update never raises TransactionConflictError here

    def view(self, fn: Callable[[Txn], Any]) -> Any:
        return fn(Txn(self.data))

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
