"""An in-memory KVStore: a transaction reads through an overlay of its own writes."""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable

from vsm.sdk import EmptyKeyError, KeyNotFoundError, ReadOnlyTransactionError

_GONE = object()


def _key(key: bytes) -> bytes:
    if not key:
        raise EmptyKeyError()
    return bytes(key)


class Cursor:
    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self.pairs, self.i = pairs, 0

    def __iter__(self) -> "Cursor":
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        if self.i >= len(self.pairs):
            raise StopIteration
        self.i += 1
        return self.pairs[self.i - 1]

    def close(self) -> None:
        self.i = len(self.pairs)


class Overlay:
    def __init__(self, base: dict[bytes, bytes], writable: bool) -> None:
        self.base, self.writes, self.writable = base, {}, writable

    def get(self, key: bytes) -> bytes:
        key = _key(key)
        value = self.writes.get(key, self.base.get(key, _GONE))
        if value is _GONE:
            raise KeyNotFoundError(f"docdb: no key {key!r}")
        return value

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        if not self.writable:
            raise ReadOnlyTransactionError()
        self.writes[_key(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        if not self.writable:
            raise ReadOnlyTransactionError()
        self.writes[_key(key)] = _GONE

    def scan(self, prefix: bytes) -> Cursor:
        prefix = bytes(prefix)
        merged = {k: v for k, v in self.base.items() if k.startswith(prefix)}
        for k, v in self.writes.items():
            if k.startswith(prefix):
                if v is _GONE:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        keys = sorted(merged)
        return Cursor([(k, merged[k]) for k in keys[bisect.bisect_left(keys, prefix):]])


class Collection:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()

    def need_retry_transactions(self) -> bool:
        return False

    def view(self, fn: Callable[[Overlay], Any]) -> Any:
        return fn(Overlay(self.data, writable=False))

    def update(self, fn: Callable[[Overlay], Any]) -> Any:
        with self.lock:
            txn = Overlay(self.data, writable=True)
            result = fn(txn)
            for k, v in txn.writes.items():
                if v is _GONE:
                    self.data.pop(k, None)
                else:
                    self.data[k] = v
            return result

    def get(self, key: bytes) -> bytes:
        return self.view(lambda t: t.get(key))

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return self.view(lambda t: t.peek(key, fn))

    def put(self, key: bytes, val: bytes) -> None:
        self.update(lambda t: t.put(key, val))

    def delete(self, key: bytes) -> None:
        self.update(lambda t: t.delete(key))

    def scan(self, prefix: bytes) -> Cursor:
        return Overlay(self.data, writable=False).scan(prefix)


class Database:
    def __init__(self) -> None:
        self.collections: dict[str, Collection] = {}

    def run(self) -> None:
        pass

    def close(self) -> None:
        self.collections.clear()

    def open_collection(self, name: str) -> Collection:
        return self.collections.setdefault(name, Collection())


def connect(meta: dict[str, str]) -> Database:
    return Database()
