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

    name: str
    path: str
    meta: dict[str, str] = dataclasses.field(default_factory=dict)
    strict: bool = False
    read_only: bool = False
    weight: int = 1


@dataclasses.dataclass(frozen=True)
class Stat:
    size: int


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    config: Config
    type: str
    total: int
    free: int
    used: int
    used_percent: float


@runtime_checkable
class Store(Protocol):
    def type(self) -> str:
        """Display name of the implementation, e.g. "plugin-fs"."""
        ...

    def version(self) -> str: ...

    def instance(self) -> str:
        """Instance name: cfg.name, or cfg.path when empty."""
        ...

    def instance_config(self) -> Config: ...
    def instance_info(self) -> InstanceInfo: ...

    def get(self, path: str) -> BinaryIO:
        """A reader of the object; raises ObjectNotFoundError."""
        ...

    def put(self, path: str, reader: BinaryIO) -> int:
        """Store everything reader yields under path; returns the byte count."""
        ...

    def delete(self, path: str) -> None: ...

    def stat(self, path: str) -> Stat: ...

    def full_path(self, path: str) -> str:
        """ "cache/s-t04040-1001" -> "/store/dir/cache/s-t04040-1001"."""
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
