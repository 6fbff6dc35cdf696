"""Manager-side proxies: objects that satisfy the SDK protocols by calling a plugin's pool.

A caller holding a `PooledDB` or a `PooledStore` cannot tell it from the plugin's own object;
functions given to view/update/peek run in the worker, shipped by value (cloudpickle).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TypeVar

from executors import Pool

from ..errors import StoreBusy
from ..sdk import Config, InstanceInfo, InvalidObjectPathError, Stat
from ..sdk.diskspace import human_bytes

__all__ = ["PendingWrite", "PooledDB", "PooledKVStore", "PooledStore", "object_path_refusal", "piece_space_refusal"]

T = TypeVar("T")


class PooledDB:
    """kvstore.DB over a KVStore plugin's pool. The DB is opened in every worker (replayed in
    replacement workers) with the config's Meta."""

    def __init__(self, pool: Pool, meta: dict[str, str]) -> None:
        self.pool = pool
        self._meta = dict(meta)
        self._opened = False

    def run(self) -> None:
        if not self._opened:
            self.pool.broadcast("open_db", self._meta, replay=True)
            self._opened = True

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self.pool.broadcast("close_db")

    def open_collection(self, name: str) -> "PooledKVStore":
        self.run()
        return PooledKVStore(self.pool, name)

    @property
    def snapshot_scans(self) -> bool:
        """The plugin DB's `snapshot_scans` (default True, as badger's scans are snapshots)."""
        self.run()
        return bool(self.pool.call("snapshot_scans"))

    def collections(self) -> list[str] | None:
        """The collections holding keys, or None if the plugin's DB cannot list them."""
        self.run()
        return self.pool.call("collections")


class PooledKVStore:
    """kvstore.KVStore: one collection, every call a pool call."""

    def __init__(self, pool: Pool, collection: str) -> None:
        self.pool = pool
        self.collection = collection

    def __repr__(self) -> str:
        return f"PooledKVStore({self.pool.spec.name!r}, {self.collection!r})"

    def get(self, key: bytes) -> bytes:
        return self.pool.call("get", self.collection, key)

    def put(self, key: bytes, val: bytes) -> None:
        self.pool.call("put", self.collection, key, val)

    def put_many(self, items: list[tuple[bytes, bytes]]) -> int:
        return self.pool.call("put_many", self.collection, items)

    def existing(self, keys: Sequence[bytes]) -> list[bytes]:
        """Which of keys the collection holds, in one call (KVKeys pickle as Arrow buffers)."""
        return self.pool.call("existing", self.collection, keys)

    def delete(self, key: bytes) -> None:
        self.pool.call("delete", self.collection, key)

    def peek(self, key: bytes, fn: Callable[[bytes], T]) -> T:
        return self.pool.call("peek", self.collection, key, fn)

    def view(self, fn: Callable[[Any], T]) -> T:
        return self.pool.call("view", self.collection, fn)

    def update(self, fn: Callable[[Any], T]) -> T:
        return self.pool.call("update", self.collection, fn)

    def need_retry_transactions(self) -> bool:
        return self.pool.call("need_retry_transactions", self.collection)

    def scan(self, prefix: bytes) -> "PooledIter":
        return PooledIter(self.pool, self.collection, prefix)


class PooledIter:
    """kvstore.Iter: pages of (key, value) pulled from a cursor kept in one worker."""

    def __init__(self, pool: Pool, collection: str, prefix: bytes) -> None:
        # The cursor lives in one worker of one pool: keep that pool even across a reload.
        pool = getattr(pool, "pinned", lambda: pool)()
        self._pool = pool
        future = pool.submit("scan_open", collection, prefix)
        self._cursor, page, self._done = future.result()
        self._worker = getattr(future, "worker", None)
        self._page: Iterator[tuple[bytes, bytes]] = iter(page)

    def __iter__(self) -> "PooledIter":
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        while True:
            item = next(self._page, None)
            if item is not None:
                return item
            if self._done:
                raise StopIteration
            page, self._done = self._pool.call("scan_next", self._cursor, worker=self._worker)
            self._page = iter(page)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._pool.call("scan_close", self._cursor, worker=self._worker)

    def __enter__(self) -> "PooledIter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_OBJECT_PATH = 4096  # bytes: Linux's PATH_MAX (S3 keys: 1024); damocles' paths are under 200
MAX_OBJECT_DEPTH = 256  # folders: damocles nests 3; a store's os.makedirs recurses once a level


def object_path_refusal(path: str) -> str | None:
    """Why no store is asked about `path`, or None: the manager's rules before any store's
    own (confinement, name lengths). A hostile path of a few thousand folders made fsstore's
    os.makedirs raise RecursionError, answered 500 (issue 25)."""
    if "\0" in path:  # some stores would fail oddly
        return "the piece path holds a NUL character"
    shown = f"{path[:60]!r}{'...' if len(path) > 60 else ''}"
    if path.endswith("/"):  # a store that drops the '/' would store the piece under another name
        return f"the piece path {shown} ends in '/': that names a folder, not a piece"
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_OBJECT_PATH:
        return f"the piece path {shown} is {size} bytes long; at most {MAX_OBJECT_PATH}"
    depth = path.count("/")
    if depth > MAX_OBJECT_DEPTH:
        return f"the piece path {shown} is {depth} folders deep; at most {MAX_OBJECT_DEPTH}"
    return None


def piece_space_refusal(store: str, path: str, where: str, free: int, floor: int, incoming: int | None) -> str | None:
    """Why a PUT of `incoming` bytes (None: not said, a chunked body) into a store whose disk
    at `where` has `free` bytes must be refused (HTTP 507), or None: it would leave less than
    the store's MinFreeSpace (`floor`). The one free-space rule of piece stores (issue 25)."""
    if free >= floor + (incoming or 0):
        return None
    if free < floor:
        why = f"under the store's MinFreeSpace {human_bytes(floor)}"
    elif floor:
        why = f"this piece's {human_bytes(incoming)} would leave less than the store's MinFreeSpace {human_bytes(floor)}"
    else:
        why = f"too little for this piece's {human_bytes(incoming)}"
    return (f"disk full: PUT {store}/{path} refused: {where} has {human_bytes(free)} free, {why}: free space "
            "there, or lower MinFreeSpace in its [[Common.PieceStores]] entry; PUTs resume by themselves")


def _checked(path: str) -> str:
    refused = object_path_refusal(path)
    if refused:
        raise InvalidObjectPathError(refused)
    return path


class PooledStore:
    """objstore.Store over an ObjStore plugin's pool: one configured store instance.
    Bytes move through the pool's shared-memory ring in both directions."""

    def __init__(self, pool: Pool, cfg: Config, opened: bool = False, min_free_space: int = 0) -> None:
        """`opened`: the pool's workers opened it already (a config reload's swap replayed it);
        `min_free_space`: the store's MinFreeSpace (space_refusal)."""
        self.pool = pool
        self.cfg = cfg
        self.name = cfg.name or cfg.path
        self.min_free_space = min_free_space
        if not opened:
            pool.broadcast("open_store", self.name, cfg, replay=True)

    def __repr__(self) -> str:
        return f"PooledStore({self.pool.spec.name!r}, {self.name!r})"

    def _call(self, method: str, *args: Any) -> Any:
        return self.pool.call("call", self.name, method, *args)

    def type(self) -> str:
        return self._call("type")

    def version(self) -> str:
        return self._call("version")

    def instance(self) -> str:
        return self._call("instance")

    def instance_config(self) -> Config:
        return self._call("instance_config")

    def instance_info(self) -> InstanceInfo:
        return self._call("instance_info")

    def space_refusal(self, path: str, incoming: int | None) -> str | None:
        """Why a PUT of `incoming` bytes must be refused for want of space, asked of the store
        itself (instance_info: its worker's statvfs) on every PUT, so a refusal ends as soon as
        space is back; None where the store reports no disk (s3store: total 0)."""
        info = self.instance_info()
        if not info.total:
            return None
        return piece_space_refusal(self.name, path, info.config.path, info.free, self.min_free_space, incoming)

    def stat(self, path: str) -> Stat:
        return self._call("stat", _checked(path))

    def delete(self, path: str) -> None:
        self._call("delete", _checked(path))

    def full_path(self, path: str) -> str:
        return self._call("full_path", path)

    def put(self, path: str, reader: BinaryIO) -> int:
        with _stream_slot(self.pool, self.name):
            return self.pool.stream_put("put", (self.name, _checked(path)), reader)

    # The FileStore fast path: None when the store (or the pool's backend) has none.
    def open_read(self, path: str) -> tuple[Stat, int] | None:
        """(Stat.of_file, fd) of the object's file, opened by the store's worker under its
        rules; the caller closes fd."""
        if not getattr(self.pool, "passes_fds", False):
            return None
        got = self.pool.call("open_read", self.name, _checked(path))
        return None if got is None else (got.value, got.fds[0])

    def open_write(self, path: str) -> "PendingWrite | None":
        """A new object's file for the caller to write into; commit() or abort() it."""
        if not getattr(self.pool, "passes_fds", False):
            return None
        pool = getattr(self.pool, "pinned", lambda: self.pool)()  # commit on the same worker
        future = pool.submit("open_write", self.name, _checked(path))
        got = future.result()
        if got is None:
            return None
        return PendingWrite(pool, getattr(future, "worker", None), got.value, got.fds[0])

    def get(self, path: str) -> BinaryIO:
        return self._stream_get((self.name, _checked(path)))

    def get_range(self, path: str, offset: int, length: int) -> BinaryIO:
        """The bytes [offset, offset + length): the store's get_range, or its get seeked or
        skipped in the worker (vsm.sdk.objstore: ranges); only the range crosses the ring."""
        return self._stream_get((self.name, _checked(path), offset, length))

    def _stream_get(self, args: tuple[Any, ...]) -> BinaryIO:
        slot = _stream_slot(self.pool, self.name)
        slot.__enter__()
        try:
            stream = self.pool.stream_get("get", args)
        except BaseException:
            slot.__exit__(None, None, None)
            raise
        return _SlotHeld(stream, slot)  # type: ignore[return-value]


# A byte stream holds a worker of the store's pool for as long as its client sends or takes
# bytes (a stalled one up to the transfer idle timeout). Streams may take all workers but
# one, so stat, delete and the other small calls always find a worker (issue 20: four stalled
# uploads blocked every call of a 4-worker store for 120 s). A pool of one worker runs one
# stream, and its small calls wait behind it.
_GATES: "weakref.WeakKeyDictionary[Any, threading.BoundedSemaphore]" = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def stream_cap(pool: Pool) -> int:
    return max(1, int(pool.spec.workers) - 1)


@contextlib.contextmanager
def _stream_slot(pool: Pool, store: str) -> Iterator[None]:
    with _GATES_LOCK:
        gate = _GATES.get(pool)
        if gate is None:
            gate = _GATES[pool] = threading.BoundedSemaphore(stream_cap(pool))
    if not gate.acquire(blocking=False):
        raise StoreBusy(
            f"store {store!r}: {stream_cap(pool)} byte streams already run on its pool of {pool.spec.workers} workers "
            "(one is kept for small calls): retry shortly, or raise the plugin's Workers"
        )
    try:
        yield
    finally:
        gate.release()


class _SlotHeld:
    """A download's stream that gives its stream slot back when closed (once)."""

    def __init__(self, stream: Any, slot: Any) -> None:
        self._stream, self._slot = stream, slot

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def read(self, *a: Any) -> Any:
        return self._stream.read(*a)

    def readinto(self, buf: Any) -> Any:
        return self._stream.readinto(buf)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            slot, self._slot = self._slot, None
            if slot is not None:
                slot.__exit__(None, None, None)

    def __enter__(self) -> "_SlotHeld":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PendingWrite:
    """A new object's file in the store's worker: `fd` (ours) takes the bytes, commit() makes
    the object visible (the worker fsyncs and links it), abort() drops it. fd is closed by
    either."""

    def __init__(self, pool: Pool, worker: int | None, token: int, fd: int) -> None:
        self.pool, self.worker, self.token, self.fd = pool, worker, token, fd

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def commit(self) -> int:
        self._close_fd()
        return int(self.pool.call("commit_write", self.token, worker=self.worker))

    def abort(self) -> None:
        self._close_fd()
        try:
            self.pool.call("abort_write", self.token, worker=self.worker)
        except Exception:
            pass  # a dead worker took its file with it
