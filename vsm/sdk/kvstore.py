"""KVStore plugin interfaces (Go `manager-plugin/kvstore/kv.go`).

A KVStore plugin exports `Constructor(meta: dict[str, str]) -> DB`. Keys and values are bytes.
Functions given to `view`, `update` and `peek` run inside the plugin's worker, next to the
transaction: they travel by value (cloudpickle), so they must not capture open resources.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol, TypeVar, runtime_checkable

__all__ = ["DB", "Iter", "KVStore", "Key", "Prefix", "Txn", "Val"]

Key = bytes
Val = bytes
Prefix = bytes
T = TypeVar("T")


@runtime_checkable
class Iter(Protocol):
    """Iterator of (key, value) pairs in key order; close() releases it early."""

    def __iter__(self) -> Iterator[tuple[Key, Val]]:
        """Itself: an Iter is iterated once."""
        ...

    def __next__(self) -> tuple[Key, Val]:
        """The next (key, value) in byte order of the keys; StopIteration at the end."""
        ...

    def close(self) -> None:
        """Release the iterator (it may be closed before its end); safe twice."""
        ...


@runtime_checkable
class Txn(Protocol):
    """A transaction handle, valid only inside the view/update function."""

    def get(self, key: Key) -> Val:
        """Value of key; raises KeyNotFoundError."""
        ...

    def peek(self, key: Key, fn: Callable[[Val], T]) -> T:
        """fn(value) without copying it out; raises KeyNotFoundError."""
        ...

    def put(self, key: Key, val: Val) -> None:
        """Set key to val, seen by this transaction's later reads; in view it raises
        ReadOnlyTransactionError (badger's "No sets or deletes are allowed in a read-only transaction")."""
        ...

    def delete(self, key: Key) -> None:
        """Remove key; a missing key is not an error (as Go's stores); in view it raises ReadOnlyTransactionError."""
        ...

    def scan(self, prefix: Prefix) -> Iter:
        """The keys starting with prefix (b"": all), in byte order, with this transaction's own writes."""
        ...


@runtime_checkable
class KVStore(Protocol):
    """One named collection of a DB."""

    def view(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in a read-only transaction; returns what fn returns, raises what fn raises."""
        ...

    def update(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in a read-write transaction, committed if fn returns, rolled back if it raises
        (the exception propagates); may raise TransactionConflictError (optimistic stores)."""
        ...

    def need_retry_transactions(self) -> bool:
        """True if update may raise TransactionConflictError (optimistic DBs)."""
        ...

    def get(self, key: Key) -> Val:
        """Value of key, as bytes; raises KeyNotFoundError."""
        ...

    def peek(self, key: Key, fn: Callable[[Val], T]) -> T:
        """fn(value), what fn returns; raises KeyNotFoundError without calling fn."""
        ...

    def put(self, key: Key, val: Val) -> None:
        """Set key to val (one committed write)."""
        ...

    def delete(self, key: Key) -> None:
        """Remove key; a missing key is not an error."""
        ...

    def scan(self, prefix: Prefix) -> Iter:
        """The committed keys starting with prefix (b"": all), in byte order, with their values: a
        snapshot, as badger's scan (writes made while it runs do not show)."""
        ...


@runtime_checkable
class DB(Protocol):
    """What Constructor returns."""

    def run(self) -> None:
        """Start background work, if any; called once before the first collection."""
        ...

    def close(self) -> None:
        """Release everything (the pool stops, or a reload hands over); safe twice."""
        ...

    def open_collection(self, name: str) -> KVStore:
        """The collection called name, created if needed."""
        ...

    # Optional (not in Go's interface): `collections() -> list[str]`, the names of the
    # collections that hold keys, so `vsm-pool util migrate` copies each one present; and
    # `snapshot_scans = False` for a store whose scans are not snapshots (the kit skips that rule).
    #
    # Optional, for `vsm-pool backup` and `vsm-pool doctor` (issue 25):
    #   backup(dest: str) -> None   write a consistent copy of the whole DB (one moment of it,
    #                               every commit before that moment) to the new file `dest`, while
    #                               the DB serves; the file is what `vsm-pool restore` puts back at
    #                               the Meta path of the DB (pathMeta), so an embedded store only.
    #   cannot_backup: str          why this DB has no backup (a server's store: "use the server's
    #                               own backup: redis BGSAVE"); shown to the operator.
    #   check() -> list[str]        the damage the DB finds in its own files ([] when none), e.g.
    #                               SQLite's integrity_check; each item one line.
    #   damage: str | None          the damage a call met while the DB served (one line, naming
    #                               the file and the way back), or None; `vsm-pool status` lists it.
