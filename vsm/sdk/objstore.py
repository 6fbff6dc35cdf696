"""ObjStore plugin interfaces (Go `manager-plugin/objstore/objstore.go`).

An ObjStore plugin exports `Constructor(cfg: Config) -> Store`. Objects are streamed: `put`
reads from a binary reader, `get` returns a binary reader. When the store runs in a pool, the
reader handed to `put` is backed by shared memory; `iter_chunks` gives its chunks without a copy.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO, Iterator, Protocol, runtime_checkable

__all__ = ["Config", "InstanceInfo", "Stat", "Store", "iter_chunks"]


@dataclasses.dataclass(frozen=True)
class Config:
    """One configured store ([[Common.PieceStores]] or [[Common.PersistStores]])."""

    name: str  # the store's Name ("" -> its path names it)
    path: str  # the store's Path, as the config gives it (for a plugin store it may only name it)
    meta: dict[str, str] = dataclasses.field(default_factory=dict)  # the store's [Meta] table
    strict: bool = False  # the store's Strict key, as damocles passes it
    read_only: bool = False  # the store's ReadOnly key: put and delete must raise ReadOnlyStoreError
    weight: int = 1  # the store's Weight (choosing among stores), at least 1


@dataclasses.dataclass(frozen=True)
class Stat:
    """What stat() returns."""

    size: int  # bytes


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """What instance_info() returns: the store's config and its disk numbers (bytes)."""

    config: Config  # the store's Config
    type: str  # type()
    total: int  # bytes
    free: int  # bytes, 0 <= free <= total
    used: int  # bytes, 0 <= used <= total
    used_percent: float  # 0..100


@runtime_checkable
class Store(Protocol):
    def type(self) -> str:
        """Display name of the implementation, e.g. "plugin-fs"."""
        ...

    def version(self) -> str:
        """Version of the implementation, a non-empty string."""
        ...

    def instance(self) -> str:
        """Instance name: cfg.name, or cfg.path when empty."""
        ...

    def instance_config(self) -> Config:
        """The Config the Constructor was given."""
        ...

    def instance_info(self) -> InstanceInfo:
        """Config and disk numbers: 0 <= free <= total, 0 <= used <= total, used_percent 0..100."""
        ...

    def get(self, path: str) -> BinaryIO:
        """A binary reader of the object (the caller closes it); raises ObjectNotFoundError, InvalidObjectPathError."""
        ...

    def put(self, path: str, reader: BinaryIO) -> int:
        """Store everything reader yields (until EOF) under path, whole or not at all; returns the byte
        count; raises ReadOnlyStoreError, InvalidObjectPathError, or what reader raised."""
        ...

    def delete(self, path: str) -> None:
        """Remove the object; raises ObjectNotFoundError, ReadOnlyStoreError, InvalidObjectPathError."""
        ...

    def stat(self, path: str) -> Stat:
        """Its size; raises ObjectNotFoundError, InvalidObjectPathError."""
        ...

    def full_path(self, path: str) -> str:
        """Where the object lives: "cache/s-t04040-1001" -> "/store/dir/cache/s-t04040-1001"."""
        ...


def iter_chunks(reader: BinaryIO, size: int = 8 << 20) -> Iterator[memoryview | bytes]:
    """Chunks of reader until EOF. Zero-copy views when the reader is a shared-memory stream
    (a view is valid until the next chunk is asked for); plain reads otherwise."""
    views = getattr(reader, "iter_views", None)
    if views is not None:
        yield from views()
        return
    while True:
        chunk = reader.read(size)
        if not chunk:
            return
        yield chunk
