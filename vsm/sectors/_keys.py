"""Where sector states live in the KVStore: damocles-manager's own layout, so one database
serves both.

damocles opens collections of its DB and wraps some in a key prefix (`dep/sealer_constructor.go`,
`pkg/kvstore/prefix_wrapper.go`: the prefix and a `/` are put before every key, and cut off the
keys a scan returns):

    collection     prefix (wrapper)          what
    common         objstore/                 persist-store bookkeeping
    meta           sector-states/            online sector states   m-<miner>-n-<number>
                   sector-number/            the sector number allocator
    offline_meta   sector-states-offline/    finalized sector states
    sector-index   (none), sector-upgrade/   where sealed files are
    snapup, worker, rebuild, unseal          their managers' records
    prover         wdpost-                   WindowPoSt jobs

vsm-pool writes only sector states, through `PrefixedKVStore` (Go's WrappedKVStore). Versions
of vsm-pool before this layout wrote them under the bare key `m-<miner>-n-<number>`;
`adopt_bare_keys` moves those at start (one update transaction per batch puts the prefixed key
and deletes the bare one, so a kill -9 leaves each state under one key or the other, never
lost, and running it again finishes the job).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.errors import KeyNotFoundError

from ._kvpairs import KVKeys, KVPairs

__all__ = ["PrefixedKVStore", "STATE_PREFIXES", "adopt_bare_keys"]

T = TypeVar("T")

# worker state -> (collection, prefix wrapper), as damocles' BuildLocalSectorStateManager.
STATE_PREFIXES = {"online": ("meta", b"sector-states/"), "offline": ("offline_meta", b"sector-states-offline/")}
_BARE_KEY = re.compile(rb"m-\d+-n-\d+")
_ADOPT_BATCH = 2000


class PrefixedKVStore:
    """A kvstore.KVStore whose keys are `prefix + key` in the collection under it (Go
    `kvstore.NewWrappedKVStore`). Functions given to view/update get a prefixing Txn, in the
    worker: `_InTxn` travels with them."""

    def __init__(self, inner: Any, prefix: bytes) -> None:
        if not prefix:
            raise ValueError("empty prefix is not allowed")  # Go's message
        self.inner = inner
        self.prefix = prefix if prefix.endswith(b"/") else prefix + b"/"
        if getattr(inner, "put_many", None) is None:
            self.put_many = None  # type: ignore[assignment]  # as the collection: callers use update()
        if getattr(inner, "existing", None) is None:
            self.existing = None  # type: ignore[assignment]  # callers use view()

    def __repr__(self) -> str:
        return f"PrefixedKVStore({self.inner!r}, {self.prefix!r})"

    def get(self, key: bytes) -> bytes:
        return self.inner.get(self.prefix + key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return self.inner.peek(self.prefix + key, fn)

    def put(self, key: bytes, val: bytes) -> None:
        self.inner.put(self.prefix + key, val)

    def delete(self, key: bytes) -> None:
        self.inner.delete(self.prefix + key)

    def put_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        """Bulk puts in one transaction (the pooled proxy's put_many)."""
        if isinstance(pairs, KVPairs):  # the import path: prefix the Arrow keys in one kernel
            p = pa.scalar(self.prefix, pa.binary())
            keys = pc.binary_join_element_wise(p, pairs.keys.cast(pa.binary()), pa.scalar(b"", pa.binary()))
            return int(self.inner.put_many(KVPairs(keys, pairs.values)))
        return int(self.inner.put_many([(self.prefix + k, v) for k, v in pairs]))

    def existing(self, keys: pa.Array) -> list[bytes]:
        """Which of keys (binary) the collection holds, in one call (the store's `existing`)."""
        p = pa.scalar(self.prefix, pa.binary())
        full = pc.binary_join_element_wise(p, keys.cast(pa.binary()), pa.scalar(b"", pa.binary()))
        cut = len(self.prefix)
        return [bytes(k)[cut:] for k in self.inner.existing(KVKeys(full))]

    def view(self, fn: Callable[[Any], T]) -> T:
        return self.inner.view(_InTxn(fn, self.prefix))

    def update(self, fn: Callable[[Any], T]) -> T:
        return self.inner.update(_InTxn(fn, self.prefix))

    def need_retry_transactions(self) -> bool:
        return bool(self.inner.need_retry_transactions())

    def scan(self, prefix: bytes) -> "_PrefixedIter":
        return _PrefixedIter(self.inner.scan(self.prefix + prefix), len(self.prefix))


class _PrefixedIter:
    """Keys without the wrapper's prefix (Go WrappedIter.Key)."""

    def __init__(self, inner: Any, cut: int) -> None:
        self._inner, self._it, self._cut = inner, iter(inner), cut

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        k, v = next(self._it)
        return (k[self._cut :] if len(k) > self._cut else k), v

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "_PrefixedIter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _InTxn:
    """fn(txn) with a prefixing txn; picklable, so it runs in the KVStore's worker."""

    def __init__(self, fn: Callable[[Any], Any], prefix: bytes) -> None:
        self.fn, self.prefix = fn, prefix

    def __call__(self, txn: Any) -> Any:
        return self.fn(_PrefixedTxn(txn, self.prefix))


class _PrefixedTxn:
    def __init__(self, txn: Any, prefix: bytes) -> None:
        self._txn, self._prefix = txn, prefix

    def get(self, key: bytes) -> bytes:
        return self._txn.get(self._prefix + key)

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return self._txn.peek(self._prefix + key, fn)

    def put(self, key: bytes, val: bytes) -> None:
        self._txn.put(self._prefix + key, val)

    def delete(self, key: bytes) -> None:
        self._txn.delete(self._prefix + key)

    def scan(self, prefix: bytes) -> _PrefixedIter:
        return _PrefixedIter(self._txn.scan(self._prefix + prefix), len(self._prefix))


def adopt_bare_keys(coll: Any, prefix: bytes) -> tuple[int, list[bytes]]:
    """Move states stored under bare keys `m-<miner>-n-<number>` of `coll` (the raw collection)
    to `prefix + key`. Returns (moved, kept): a bare key whose prefixed key already holds a
    different state is kept as it is, and reported (nothing is overwritten or lost)."""
    it = coll.scan(b"m-")
    try:
        bare = [k for k, _ in it if _BARE_KEY.fullmatch(k)]
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    moved, kept = 0, []
    for off in range(0, len(bare), _ADOPT_BATCH):
        m, k = coll.update(_Adopt(bare[off : off + _ADOPT_BATCH], prefix))
        moved += m
        kept += k
    return moved, kept


class _Adopt:
    """One batch of adopt_bare_keys, in one update transaction (in the KVStore's worker)."""

    def __init__(self, keys: list[bytes], prefix: bytes) -> None:
        self.keys, self.prefix = keys, prefix

    def __call__(self, txn: Any) -> tuple[int, list[bytes]]:
        moved, kept = 0, []
        for key in self.keys:
            try:
                val = bytes(txn.get(key))
            except KeyNotFoundError:
                continue  # gone since the scan
            try:
                there = bytes(txn.get(self.prefix + key))
            except KeyNotFoundError:
                there = None
            if there is not None and there != val:
                kept.append(key)
                continue
            if there is None:
                txn.put(self.prefix + key, val)
            txn.delete(key)
            moved += 1
        return moved, kept
