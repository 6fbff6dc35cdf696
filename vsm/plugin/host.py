"""Worker side of a plugin pool: import the plugin, run onInit, and serve the pool's calls.

`worker_init` is the PoolSpec.init of every plugin pool; it runs in each worker process (never
in the manager) and returns the host object whose methods the manager's proxies call by name.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import itertools
import os
import resource
import stat
import sys
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from ..sdk import Config, InvalidRequestError, KeyNotFoundError, Kind, Manifest, MemoryLimitExceeded, PluginError, Stat
from .blame import describe
from .isolation import explain_denial, format_size

__all__ = ["KVHost", "ObjHost", "RpcHost", "StartFailed", "worker_init"]

SCAN_PAGE = 1024


def worker_init(
    code_path: str, manifest: Manifest, plugins_dir: str, loaded: dict[str, Manifest] | None = None, home: str | None = None
) -> Any:
    """Import the plugin's module from code_path, run validate and onInit, return its kind's
    host. `loaded` is every loaded plugin's manifest by name, for validate. The worker runs in
    the `home` folder, so a relative path in its Meta or its store's Path is relative to the
    home, as the README says (issue 13: they landed in the daemon's working directory)."""
    if home and os.path.isdir(home):
        os.chdir(home)
    if code_path not in sys.path:
        sys.path.insert(0, code_path)
    with _stage("import", code_path):
        module = importlib.import_module(manifest.module)
    if manifest.validate:
        with _stage("validate", code_path):
            getattr(module, manifest.validate)(manifest, dict(loaded or {}))
    if manifest.on_init:
        with _stage("onInit", code_path):
            getattr(module, manifest.on_init)(plugins_dir, manifest)
    impls = {point: getattr(module, impl) for point, impl in manifest.exports.items()}
    on_shutdown = getattr(module, manifest.on_shutdown) if manifest.on_shutdown else None
    on_flush = getattr(module, manifest.on_flush) if manifest.on_flush else None
    if manifest.kind is Kind.KVStore:
        host: _Host = KVHost(manifest, impls["Constructor"], on_shutdown)
    elif manifest.kind is Kind.ObjStore:
        host = ObjHost(manifest, impls["Constructor"], on_shutdown)
    elif manifest.kind is Kind.RegisterJsonRpc:
        with _stage("Handler", code_path):
            host = RpcHost(manifest, impls["Handler"], on_shutdown)
    else:
        from ..sectors.sink_host import SinkHost  # only sink workers need the sector schema

        host = _SinkWorker(manifest, impls, on_shutdown, SinkHost)
    host._on_flush = on_flush
    return host


class StartFailed(Exception):
    """A stage of a worker's start raised in the plugin's code. The message is one line,
    `<stage>: <Type>: <message> (at file.py:line in fn)`, read back by the loader from the
    worker's report (vsm/plugin/loader.py, _start_failure)."""


@contextlib.contextmanager
def _stage(stage: str, code_path: str) -> Iterator[None]:
    try:
        yield
    except BaseException as e:  # SystemExit at import time is the plugin's failure too
        # the sandbox's refusal named as a call's is (issue 26: onInit's makedirs was a bare Errno 13)
        raise StartFailed(f"{stage}: {describe(e, code_path, explain_denial(e))}") from e


class _Host:
    def __init__(self, manifest: Manifest, on_shutdown: Callable[[Manifest], None] | None) -> None:
        self.manifest = manifest
        self._on_shutdown = on_shutdown
        self._on_flush: Callable[[Manifest], None] | None = None

    def flush(self) -> bool:
        """The plugin's onFlush (re-read its own settings); False when it has none."""
        if self._on_flush is None:
            return False
        self._on_flush(self.manifest)
        return True

    def map_error(self, exc: BaseException) -> BaseException:
        """executors' boundary hook: what the plugin raised -> what the caller gets."""
        denied = explain_denial(exc)
        if denied is not None:
            return denied
        if isinstance(exc, MemoryError) and not isinstance(exc, PluginError):
            limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
            if limit != resource.RLIM_INFINITY:
                name = self.manifest.name
                return MemoryLimitExceeded(
                    f"plugin '{self.manifest.kind.value}/{name}' ran out of memory: its workers may use "
                    f"{format_size(limit)} each (MemoryLimit in [Common.Plugins.{name}])"
                )
        return exc

    def ping(self) -> int:
        import os

        return os.getpid()

    def shutdown(self) -> None:
        """Pool shutdown_method: close what the plugin opened, then its onShutdown hook."""
        try:
            self._close()
        finally:
            if self._on_shutdown is not None:
                self._on_shutdown(self.manifest)

    def _close(self) -> None:
        pass


class KVHost(_Host):
    """Serves a KVStore plugin: one DB per worker, collections opened on first use."""

    def __init__(self, manifest: Manifest, constructor: Callable[[dict[str, str]], Any], on_shutdown: Any) -> None:
        super().__init__(manifest, on_shutdown)
        self._constructor = constructor
        self._db: Any = None
        self._collections: dict[str, Any] = {}
        self._cursors: dict[int, Any] = {}
        self._cursor_ids = itertools.count(1)

    def open_db(self, meta: dict[str, str]) -> None:
        if self._db is None:
            self._db = self._constructor(dict(meta))
            self._db.run()

    def close_db(self) -> None:
        self._close()

    def _close(self) -> None:
        for it in self._cursors.values():
            it.close()
        self._cursors.clear()
        self._collections.clear()
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def _coll(self, name: str) -> Any:
        coll = self._collections.get(name)
        if coll is None:
            if self._db is None:
                raise RuntimeError(f"{self.manifest.name}: no database is open in this worker")
            coll = self._collections[name] = self._db.open_collection(name)
        return coll

    def get(self, coll: str, key: bytes) -> bytes:
        return bytes(self._coll(coll).get(key))

    def put(self, coll: str, key: bytes, val: bytes) -> None:
        self._coll(coll).put(key, val)

    def put_many(self, coll: str, items: list[tuple[bytes, bytes]]) -> int:
        """Bulk write in one transaction (the manager's import and migrate path): the
        collection's own put_many if it has one (sqlitekv: one executemany), else puts in update."""
        c = self._coll(coll)
        own = getattr(c, "put_many", None)
        if own is not None:
            return int(own(items))

        def write(txn: Any) -> int:
            for k, v in items:
                txn.put(k, v)
            return len(items)

        return c.update(write)

    def existing(self, coll: str, keys: Sequence[bytes]) -> list[bytes]:
        """Which of keys the collection holds, in one read transaction: the collection's own
        `existing` if it has one (sqlitekv: one query), else a get each (the bulk import's
        check; keys come as KVKeys, an Arrow array that pickles as its buffers)."""
        c = self._coll(coll)
        own = getattr(c, "existing", None)
        if own is not None:
            return list(own(keys))

        def present(txn: Any) -> list[bytes]:
            out = []
            for k in keys:
                try:
                    txn.get(k)
                except KeyNotFoundError:
                    continue
                out.append(k)
            return out

        return c.view(present)

    def delete(self, coll: str, key: bytes) -> None:
        self._coll(coll).delete(key)

    def peek(self, coll: str, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return self._coll(coll).peek(key, fn)

    def view(self, coll: str, fn: Callable[[Any], Any]) -> Any:
        return self._coll(coll).view(fn)

    def update(self, coll: str, fn: Callable[[Any], Any]) -> Any:
        return self._coll(coll).update(fn)

    def snapshot_scans(self) -> bool:
        """False if the DB says its scans are not snapshots (an optional attribute)."""
        return bool(getattr(self._db, "snapshot_scans", True))

    def collections(self) -> list[str] | None:
        """The DB's collections holding keys, if it can say (an optional DB method)."""
        if self._db is None:
            raise RuntimeError(f"{self.manifest.name}: no database is open in this worker")
        names = getattr(self._db, "collections", None)
        return None if names is None else [str(n) for n in names()]

    def need_retry_transactions(self, coll: str) -> bool:
        return bool(self._coll(coll).need_retry_transactions())

    def backup(self) -> str:
        """The DB's own `backup(dest)` (vsm.sdk.kvstore) into a new file of the worker's temp
        folder, the one place a sandboxed plugin may always write; returns its path, which the
        manager moves to the backup's folder. Raises with the DB's reason when it has none."""
        import tempfile

        db = self._open()
        own = getattr(db, "backup", None)
        if own is None:
            why = getattr(db, "cannot_backup", "") or "its DB has no backup(dest) method (vsm.sdk.kvstore.DB)"
            raise InvalidRequestError(f"the KVStore plugin '{self.manifest.name}' cannot back up: {why}")
        fd, dest = tempfile.mkstemp(prefix="kv-backup-", suffix=".tmp")
        os.close(fd)
        os.unlink(dest)  # a new file: the DB's backup makes it
        try:
            own(dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            raise
        return dest

    def check(self) -> list[str] | None:
        """The damage the DB's own `check()` finds ([] none); None if it has no check."""
        own = getattr(self._open(), "check", None)
        return None if own is None else [str(line) for line in own()]

    def damage(self) -> str | None:
        """The damage the DB met while serving (an optional DB attribute), for status."""
        return getattr(self._db, "damage", None) if self._db is not None else None

    def _open(self) -> Any:
        if self._db is None:
            raise RuntimeError(f"{self.manifest.name}: no database is open in this worker")
        return self._db

    def scan_open(self, coll: str, prefix: bytes) -> tuple[int, list[tuple[bytes, bytes]], bool]:
        """Start a scan; returns (cursor, first page, done). Later pages come from scan_next on
        the same worker, since the cursor lives here."""
        it = iter(self._coll(coll).scan(prefix))
        cursor = next(self._cursor_ids)
        self._cursors[cursor] = it
        page, done = self.scan_next(cursor)
        return cursor, page, done

    def scan_next(self, cursor: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        it = self._cursors[cursor]
        page = [(bytes(k), bytes(v)) for k, v in itertools.islice(it, SCAN_PAGE)]
        done = len(page) < SCAN_PAGE
        if done:
            self.scan_close(cursor)
        return page, done

    def scan_close(self, cursor: int) -> None:
        it = self._cursors.pop(cursor, None)
        if it is not None and hasattr(it, "close"):
            it.close()


class ObjHost(_Host):
    """Serves an ObjStore plugin: the configured store instances, by instance name."""

    def __init__(self, manifest: Manifest, constructor: Callable[[Config], Any], on_shutdown: Any) -> None:
        super().__init__(manifest, on_shutdown)
        self._constructor = constructor
        self._stores: dict[str, Any] = {}
        self._writers: dict[int, Any] = {}  # open_write token -> the store's ObjectWriter
        self._tokens = itertools.count(1)

    def open_store(self, instance: str, cfg: Config) -> None:
        if instance not in self._stores:
            self._stores[instance] = self._constructor(cfg)

    def _store(self, instance: str) -> Any:
        try:
            return self._stores[instance]
        except KeyError:
            raise RuntimeError(f"{self.manifest.name}: store {instance!r} is not open in this worker") from None

    def _close(self) -> None:
        for token in list(self._writers):
            self.abort_write(token)
        for store in self._stores.values():
            close = getattr(store, "close", None)
            if close is not None:
                close()
        self._stores.clear()

    def put(self, instance: str, path: str, reader: BinaryIO) -> int:
        return int(self._store(instance).put(path, reader))

    def get(self, instance: str, path: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """The object's bytes, or [offset, offset + length) of them (vsm.sdk.objstore: ranges)."""
        store = self._store(instance)
        if length is None:
            return store.get(path)
        ranged = getattr(store, "get_range", None)
        if ranged is not None:
            return ranged(path, offset, length)
        return _Window(store.get(path), offset, length)

    # -- the FileStore fast path (vsm.sdk.objstore): the daemon gets fds, moves the bytes --
    def open_read(self, instance: str, path: str) -> Any:
        """WithFds(size, (fd,)) of the object's file; None when the store has no open_for_read."""
        from executors import WithFds

        opener = getattr(self._store(instance), "open_for_read", None)
        if opener is None:
            return None
        f = opener(path)
        fd = f if isinstance(f, int) else os.dup(f.fileno())
        if not isinstance(f, int):
            f.close()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise TypeError(f"{self.manifest.name}: open_for_read({path!r}) did not give a regular file")
        return WithFds(Stat.of_file(st), (fd,))

    def open_write(self, instance: str, path: str) -> Any:
        """WithFds(token, (fd,)) of a new object's file (commit_write/abort_write on this same
        worker with the token); None when the store has no open_for_write."""
        from executors import WithFds

        opener = getattr(self._store(instance), "open_for_write", None)
        if opener is None:
            return None
        writer = opener(path)
        token = next(self._tokens)
        self._writers[token] = writer
        return WithFds(token, (os.dup(writer.fileno()),))

    def commit_write(self, token: int) -> int:
        return int(self._writers.pop(token).commit())

    def abort_write(self, token: int) -> None:
        writer = self._writers.pop(token, None)
        if writer is not None:
            writer.abort()

    def call(self, instance: str, method: str, *args: Any) -> Any:
        """The store's small methods: type, version, instance, instance_config,
        instance_info, stat, delete, full_path."""
        if method not in _OBJ_SMALL_CALLS:
            raise AttributeError(f"ObjStore has no method {method!r}")
        return getattr(self._store(instance), method)(*args)


class _Window(io.RawIOBase):
    """[offset, offset + length) of a store's reader, for a store without get_range: a seek
    where the reader can, else the bytes before offset read and dropped here, in the worker."""

    def __init__(self, reader: Any, offset: int, length: int) -> None:
        super().__init__()
        self._reader, self._left = reader, length
        try:
            seekable = bool(reader.seekable())
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            reader.seek(offset)
            return
        skip = bytearray(min(offset, 1 << 20))
        while offset > 0:
            n = self._read_into(memoryview(skip)[: min(offset, len(skip))])
            if not n:  # the object ends before offset: an empty window
                break
            offset -= n

    def _read_into(self, view: memoryview) -> int:
        readinto = getattr(self._reader, "readinto", None)
        if readinto is not None:
            return readinto(view) or 0
        data = self._reader.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf).cast("B")
        n = self._read_into(view[: min(len(view), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


_OBJ_SMALL_CALLS = frozenset(
    {"type", "version", "instance", "instance_config", "instance_info", "stat", "delete", "full_path"}
)


class RpcHost(_Host):
    """Serves a RegisterJsonRpc plugin: its namespace's methods, by name."""

    def __init__(self, manifest: Manifest, handler: Callable[[], tuple[str, Any]], on_shutdown: Any) -> None:
        super().__init__(manifest, on_shutdown)
        self.namespace, self._handler = handler()

    def describe(self) -> tuple[str, list[str]]:
        methods = [m for m in dir(self._handler) if not m.startswith("_") and callable(getattr(self._handler, m))]
        return self.namespace, methods

    def signatures(self) -> dict[str, list[tuple[str, str, bool, str]]]:
        """Per method, its parameters: (name, kind, has a default, annotation as text)."""
        import inspect

        out: dict[str, list[tuple[str, str, bool, str]]] = {}
        for name in self.describe()[1]:
            try:
                params = inspect.signature(getattr(self._handler, name)).parameters.values()
            except (TypeError, ValueError):  # a builtin without a signature
                out[name] = []
                continue
            out[name] = [
                (p.name, p.kind.name, p.default is not p.empty, "" if p.annotation is p.empty else str(getattr(p.annotation, "__name__", p.annotation)))
                for p in params
            ]
        return out

    def invoke(self, method: str, params: Any) -> Any:
        if method.startswith("_") or not callable(getattr(self._handler, method, None)):
            raise AttributeError(f"{self.namespace}.{method}: no such method")
        fn = getattr(self._handler, method)
        try:  # wrong params are the caller's mistake; a TypeError inside the method is the plugin's
            inspect.signature(fn).bind(**params) if isinstance(params, dict) else inspect.signature(fn).bind(*(params or ()))
        except TypeError as e:
            raise InvalidRequestError(f"invalid params for {self.namespace}.{method}: {e}") from None
        return fn(**params) if isinstance(params, dict) else fn(*(params or ()))


class _SinkWorker(_Host):
    """Serves a SyncSectorState plugin through vsm.sectors' SinkHost."""

    def __init__(self, manifest: Manifest, impls: dict[str, Any], on_shutdown: Any, sink_host_cls: Any) -> None:
        super().__init__(manifest, on_shutdown)
        self._impls = impls
        self._sink_host_cls = sink_host_cls
        self.host: Any = None

    def open_sink(self, meta: dict[str, str]) -> None:
        if self.host is None:
            hooks = {k: v for k, v in self._impls.items() if k != "Constructor"}
            ctor = self._impls.get("Constructor")
            self.host = self._sink_host_cls(hooks, ctor(dict(meta)) if ctor else None)

    def close_sink(self) -> None:
        """Release what the sink holds (a DuckDB file lock) so a new build can open it; the
        sink can be opened again in this worker if the new build fails."""
        host, self.host = self.host, None
        close = getattr(host, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:  # deliver, query, ... go to the SinkHost
        if name.startswith("_") or self.__dict__.get("host") is None:
            raise AttributeError(name)
        return getattr(self.__dict__["host"], name)

    def _close(self) -> None:
        self.close_sink()
