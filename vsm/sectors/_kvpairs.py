"""KVPairs: the (key, value) pairs of one bulk put, carried as two Arrow binary arrays; KVKeys:
the keys of one bulk existence check, as one.

A KVStore pool's put_many iterates its items; sent as a list of (bytes, bytes) tuples, 10k Go
JSON states cost the manager ~50 ms of pickling under the GIL (one object and memo entry per
key and value), as two arrays they pickle as their buffers (~3 ms). The worker gets a sequence
of the same tuples: iteration, len() and indexing.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence, overload

import pyarrow as pa

__all__ = ["KVKeys", "KVPairs"]


class KVPairs(Sequence[tuple[bytes, bytes]]):
    __slots__ = ("keys", "values")

    def __init__(self, keys: pa.Array, values: pa.Array) -> None:
        if len(keys) != len(values):
            raise ValueError(f"KVPairs: {len(keys)} keys but {len(values)} values")
        self.keys = keys
        self.values = values

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return zip(self.keys.to_pylist(), self.values.to_pylist())

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, bytes]]: ...
    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(zip(self.keys[i].to_pylist(), self.values[i].to_pylist()))
        return (self.keys[i].as_py(), self.values[i].as_py())

    def __reduce__(self) -> tuple[Any, ...]:
        return (KVPairs, (self.keys, self.values))

    def __repr__(self) -> str:
        return f"KVPairs({len(self)} pairs)"


class KVKeys(Sequence[bytes]):
    """Keys as a Sequence[bytes] over an Arrow binary array: pickled as its buffers, iterated
    (and sliced) as bytes, what a KVStore plugin's `existing(keys)` is given."""

    __slots__ = ("keys",)

    def __init__(self, keys: pa.Array) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys.to_pylist())

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.keys[i].to_pylist()
        return self.keys[i].as_py()

    def __reduce__(self) -> tuple[Any, ...]:
        return (KVKeys, (self.keys,))

    def __repr__(self) -> str:
        return f"KVKeys({len(self)} keys)"
