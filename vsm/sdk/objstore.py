"""ObjStore plugin interfaces (Go `manager-plugin/objstore/objstore.go`).

An ObjStore plugin exports `Constructor(cfg: Config) -> Store`. Objects are streamed: `put`
reads from a binary reader, `get` returns a binary reader. When the store runs in a pool, the
reader handed to `put` is backed by shared memory; `iter_chunks` gives its chunks without a copy.

A store whose objects are files may also offer two optional methods (`FileStore`); the daemon
then moves a piece's bytes between the HTTP socket and the file itself (sendfile), and the
store's worker only opens, checks and commits:

    open_for_read(path) -> file object (or fd)   the object's bytes, from offset 0 to the end
                                                 of a regular file; same errors as get
    open_for_write(path) -> ObjectWriter         a new object, invisible until commit(); same
                                                 checks as put (ReadOnlyStoreError, paths)

Whoever calls them applies no rule of its own: confinement, ReadOnly and atomicity are the
store's, as for get and put. A store without them keeps the shared-memory ring. On that path
the validators of a piece (ETag, Last-Modified) are the file's own, `Stat.of_file(fstat)`:
a FileStore's stat should return the same.

Ranged reads (HTTP `Range` on a piece GET, issue 26). A store may offer

    get_range(path, offset, length) -> reader    the object's bytes [offset, offset + length),
                                                 fewer where the object ends first; raises
                                                 as get does (`RangeStore`)

A store without it still serves ranges: the worker opens get(path), seeks to offset when the
reader is seekable, else reads and drops the bytes before it (in the worker: they never
cross the ring), and stops after length. So ranges always work; get_range only makes them
cheap where get cannot seek (s3store asks S3 for the range itself).

Object paths: no store is asked about a path ending in '/' (a folder) or longer than 4096
bytes; the daemon refuses them (HTTP 400) before any store sees them. A store refuses what
it cannot hold with InvalidObjectPathError, never another error (RecursionError and
ENAMETOOLONG answered 500: issue 25).
"""

from __future__ import annotations

import dataclasses
import os
from typing import BinaryIO, Iterator, Protocol, runtime_checkable

__all__ = ["Config", "FileStore", "InstanceInfo", "ObjectWriter", "RangeStore", "Stat", "Store", "iter_chunks"]


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
    """What stat() returns. etag and modified are optional: the daemon sends them as a
    piece's ETag and Last-Modified (and checks If-Range against them) where they are set."""

    size: int  # bytes
    etag: str | None = None  # changes whenever the object's bytes may have (no quotes)
    modified: float | None = None  # last change, seconds since the epoch

    @classmethod
    def of_file(cls, st: os.stat_result) -> "Stat":
        """A file's Stat: inode, size and mtime in the etag, as nginx and Apache make theirs
        (a replaced object is a new inode, so a same-size rewrite in the same second differs)."""
        return cls(size=st.st_size, etag=f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}", modified=st.st_mtime)


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


@runtime_checkable
class ObjectWriter(Protocol):
    """An object being written through a file (FileStore.open_for_write)."""

    def fileno(self) -> int:
        """The file the caller writes the object's bytes into, from offset 0 (it may write
        through a duplicate of this fd, in another process)."""
        ...

    def commit(self) -> int:
        """Make the bytes visible under the path, atomically (a reader sees the old object or
        the whole new one), durable as the store promises; returns the size."""
        ...

    def abort(self) -> None:
        """Drop the bytes; nothing becomes visible. Safe after commit (then it does nothing)."""
        ...


@runtime_checkable
class FileStore(Protocol):
    """The optional file methods of a Store (see the module docstring)."""

    def open_for_read(self, path: str) -> BinaryIO | int:
        """A file object (or fd) whose bytes from offset 0 to its end are the object, a regular file, opened under the store's own rules; raises as get does. The daemon sends it with sendfile and closes it."""
        ...

    def open_for_write(self, path: str) -> ObjectWriter:
        """A new object to be written through a file, invisible until ObjectWriter.commit(); checks as put does (ReadOnlyStoreError, InvalidObjectPathError)."""
        ...


@runtime_checkable
class RangeStore(Protocol):
    """The optional ranged read of a Store (see the module docstring)."""

    def get_range(self, path: str, offset: int, length: int) -> BinaryIO:
        """A binary reader of the object's bytes [offset, offset + length), fewer where the object ends first (none past its end); raises as get does."""
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
