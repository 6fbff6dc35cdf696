"""The ObjStore kit: the rules every ObjStore plugin keeps, as small independent checks.

Each check takes `make_store(read_only: bool) -> Store`: every call must return a store over
the same backing location (a read-only store must see what a writable one wrote). Each check
writes only under its own prefix, `conformance-<random>/<check>/`.
"""

from __future__ import annotations

import contextlib
import io
import random
import uuid
from typing import Callable

from vsm.sdk import Config, InstanceInfo, InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError
from vsm.sdk.objstore import Store

from ._result import CheckFailed, CheckResult, SkipCheck, expect, expect_raises, run_checks

__all__ = ["OBJSTORE_CHECKS", "MakeStore", "run_objstore_kit"]

MakeStore = Callable[[bool], Store]
_MiB = 1 << 20


class _ReaderFailed(Exception):
    """Raised on purpose by a source reader in the middle of a put."""


class _ShortReader(io.RawIOBase):
    """A reader that returns at most `step` bytes per read, as sockets and pipes do."""

    def __init__(self, data: bytes, step: int, fail_at: int | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise _ReaderFailed("source broke in the middle of a put")
        n = min(len(buf), self._step, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _prefix(check: Callable[[MakeStore], None]) -> str:
    return f"conformance-{uuid.uuid4().hex[:12]}/{check.__name__}/"


def _read_all(store: Store, path: str) -> bytes:
    with contextlib.closing(store.get(path)) as r:
        parts = []
        while chunk := r.read(_MiB):
            parts.append(bytes(chunk))
        return b"".join(parts)


def _put_succeeds(store: Store, path: str, reader: io.RawIOBase) -> bool:
    try:
        store.put(path, reader)  # type: ignore[arg-type]
    except Exception:
        return False
    return True


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def put_get_round_trip(make_store: MakeStore) -> None:
    """put returns the byte count; get returns the same bytes and stat the size: 0 B, 1 B, and
    17 MiB + 3 B (crossing 8 MiB chunk boundaries)."""
    store, base = make_store(False), _prefix(put_get_round_trip)
    for n in (0, 1, 17 * _MiB + 3):
        data, path = _data(n, seed=n), f"{base}obj-{n}"
        written = store.put(path, io.BytesIO(data))
        expect(written == n, f"put of {n} bytes returned {written}")
        expect(store.stat(path).size == n, f"stat of a {n}-byte object says {store.stat(path).size}")
        got = _read_all(store, path)
        expect(got == data, f"get of a {n}-byte object returned {len(got)} bytes, not the ones put")


def put_reads_until_eof(make_store: MakeStore) -> None:
    """put keeps reading until EOF when the reader returns short reads."""
    store, path = make_store(False), _prefix(put_reads_until_eof) + "short-reads"
    data = _data(300_007)
    written = store.put(path, io.BufferedReader(_ShortReader(data, step=4093), buffer_size=4093))
    expect(written == len(data), f"put returned {written}, expected {len(data)}")
    expect(_read_all(store, path) == data, "object put from short reads came back changed")


def nested_paths(make_store: MakeStore) -> None:
    """Objects may live in nested folders that do not exist yet."""
    store, path = make_store(False), _prefix(nested_paths) + "cache/s-t04040-1001/p_aux"
    store.put(path, io.BytesIO(b"aux"))
    expect(_read_all(store, path) == b"aux", "nested object came back changed")


def missing_object_not_found(make_store: MakeStore) -> None:
    """get and stat of a missing object raise ObjectNotFoundError."""
    store, path = make_store(False), _prefix(missing_object_not_found) + "missing"
    expect_raises(ObjectNotFoundError, store.get, path)
    expect_raises(ObjectNotFoundError, store.stat, path)


def delete_removes(make_store: MakeStore) -> None:
    """After delete, stat and get raise ObjectNotFoundError; deleting a missing object raises
    ObjectNotFoundError too (Go's filestore returns the os error)."""
    store, base = make_store(False), _prefix(delete_removes)
    store.put(base + "a", io.BytesIO(b"a"))
    store.put(base + "b", io.BytesIO(b"b"))
    store.delete(base + "a")
    expect_raises(ObjectNotFoundError, store.stat, base + "a")
    expect_raises(ObjectNotFoundError, store.get, base + "a")
    expect_raises(ObjectNotFoundError, store.delete, base + "a")
    expect(_read_all(store, base + "b") == b"b", "delete removed another object")


def overwrite_replaces(make_store: MakeStore) -> None:
    """put on an existing object replaces it whole (a shorter object leaves no tail)."""
    store, path = make_store(False), _prefix(overwrite_replaces) + "obj"
    store.put(path, io.BytesIO(b"a long first version of the object"))
    store.put(path, io.BytesIO(b"short"))
    expect(_read_all(store, path) == b"short", "overwrite did not replace the object whole")
    expect(store.stat(path).size == 5, f"stat after overwrite says {store.stat(path).size}, expected 5")


def escaping_paths_rejected(make_store: MakeStore) -> None:
    """Paths that leave the store ("../x", "/abs", "a/../../x") raise InvalidObjectPathError
    on put, get, stat and delete."""
    store = make_store(False)
    for bad in ("../x", "/abs", "a/../../x", "/etc/passwd"):
        expect_raises(InvalidObjectPathError, store.put, bad, io.BytesIO(b"x"))
        expect_raises(InvalidObjectPathError, store.get, bad)
        expect_raises(InvalidObjectPathError, store.stat, bad)
        expect_raises(InvalidObjectPathError, store.delete, bad)


def deep_paths_work_or_are_refused(make_store: MakeStore) -> None:
    """A path of 250 nested folders (the manager passes up to 256) is stored and read back, or
    raises InvalidObjectPathError on put; never another error (issue 25: a RecursionError and
    ENAMETOOLONG reached clients as HTTP 500)."""
    store, base = make_store(False), _prefix(deep_paths_work_or_are_refused)
    deep = base + "d/" * 250 + "obj"
    try:
        store.put(deep, io.BytesIO(b"deep"))
    except InvalidObjectPathError:
        return  # refused as the caller's mistake: fine
    except Exception as e:
        raise CheckFailed(f"put under 250 nested folders raised {type(e).__name__}: {str(e)[:200]}; expected success or InvalidObjectPathError") from None
    expect(_read_all(store, deep) == b"deep", "an object under 250 nested folders came back changed")
    expect(store.stat(deep).size == 4, "stat of an object under 250 nested folders is wrong")
    store.delete(deep)


def ranged_reads(make_store: MakeStore) -> None:
    """get_range(path, offset, length) (vsm.sdk.objstore RangeStore), where the store has it,
    returns the object's bytes [offset, offset + length): across 8 MiB, clipped at the end,
    empty from the end on or for length 0; a missing object is ObjectNotFoundError."""
    store, base = make_store(False), _prefix(ranged_reads)
    if not hasattr(store, "get_range"):
        raise SkipCheck("the store has no get_range: the daemon seeks its get, or skips in the worker")
    n = 9 * _MiB + 5
    data, path = _data(n, seed=7), base + "obj"
    store.put(path, io.BytesIO(data))
    for offset, length in ((0, 10), (8 * _MiB - 3, 7), (n - 5, 100), (1, n - 2), (n, 10), (n + 100, 10), (3, 0)):
        with contextlib.closing(store.get_range(path, offset, length)) as r:
            got = b"".join(iter(lambda: bytes(r.read(_MiB)), b""))
        want = data[offset : offset + length]
        expect(got == want, f"get_range({offset}, {length}) of a {n}-byte object returned {len(got)} bytes, not its {len(want)} bytes there")
    expect_raises(ObjectNotFoundError, store.get_range, base + "missing", 0, 10)


def stat_validators_follow_the_object(make_store: MakeStore) -> None:
    """Where stat() gives an etag, it is the same while the object is and differs once it is
    replaced (a client's If-Range relies on it); modified, if given, is seconds since the epoch."""
    store, path = make_store(False), _prefix(stat_validators_follow_the_object) + "obj"
    store.put(path, io.BytesIO(b"first version"))
    first = store.stat(path)
    if getattr(first, "etag", None) is None and getattr(first, "modified", None) is None:
        raise SkipCheck("stat() gives no etag and no modified time: pieces go without ETag and Last-Modified")
    if first.modified is not None:
        expect(isinstance(first.modified, (int, float)) and first.modified > 1e9, f"stat().modified = {first.modified!r}: not seconds since the epoch")
    if first.etag is not None:
        expect(store.stat(path).etag == first.etag, "stat().etag changed though the object did not")
        store.put(path, io.BytesIO(b"other version"))  # same size, other bytes
        expect(store.stat(path).etag != first.etag, "stat().etag stayed the same after the object was replaced")


def read_only_refuses_writes(make_store: MakeStore) -> None:
    """A read-only store raises ReadOnlyStoreError on put and delete, and still serves reads."""
    path = _prefix(read_only_refuses_writes) + "obj"
    make_store(False).put(path, io.BytesIO(b"kept"))
    ro = make_store(True)
    try:
        ro.stat(path)
    except ObjectNotFoundError:
        raise CheckFailed(
            "make_store(True) does not see what make_store(False) wrote: every store the factory "
            "returns must share one backing location"
        ) from None
    expect(ro.instance_config().read_only is True, "read-only store's config says read_only is False")
    expect_raises(ReadOnlyStoreError, ro.put, path, io.BytesIO(b"new"))
    expect_raises(ReadOnlyStoreError, ro.put, path + "-new", io.BytesIO(b"new"))
    expect_raises(ReadOnlyStoreError, ro.delete, path)
    expect(_read_all(ro, path) == b"kept", "read-only store changed or hid the object")
    expect(ro.stat(path).size == 4, "read-only store reports a wrong size")
    expect_raises(ObjectNotFoundError, ro.stat, path + "-new")


def failed_put_leaves_nothing(make_store: MakeStore) -> None:
    """A put whose reader raises midway raises, and leaves no object under that name."""
    store, path = make_store(False), _prefix(failed_put_leaves_nothing) + "obj"
    reader = _ShortReader(_data(4 * _MiB), step=_MiB, fail_at=2 * _MiB)
    expect(not _put_succeeds(store, path, reader), "put succeeded although its reader raised")
    expect_raises(ObjectNotFoundError, store.stat, path)
    expect_raises(ObjectNotFoundError, store.get, path)


def failed_put_keeps_old_object(make_store: MakeStore) -> None:
    """A put whose reader raises midway leaves an existing object at that name unchanged."""
    store, path = make_store(False), _prefix(failed_put_keeps_old_object) + "obj"
    store.put(path, io.BytesIO(b"old content"))
    reader = _ShortReader(_data(4 * _MiB), step=_MiB, fail_at=2 * _MiB)
    expect(not _put_succeeds(store, path, reader), "put succeeded although its reader raised")
    expect(_read_all(store, path) == b"old content", "a failed put changed the existing object")


def full_path_names_the_object(make_store: MakeStore) -> None:
    """full_path(p) is a string ending with p ("cache/x" -> "<store>/cache/x")."""
    store, path = make_store(False), _prefix(full_path_names_the_object) + "cache/s-t04040-1001"
    got = store.full_path(path)
    expect(isinstance(got, str) and got.endswith(path), f"full_path({path!r}) = {got!r}, expected it to end with the path")


def instance_matches_config(make_store: MakeStore) -> None:
    """instance() is cfg.name (or cfg.path if the name is empty); instance_info() carries the
    same config and sane disk numbers; read_only matches the factory's argument."""
    for read_only in (False, True):
        store = make_store(read_only)
        cfg = store.instance_config()
        expect(isinstance(cfg, Config), f"instance_config() returned {type(cfg).__name__}, expected Config")
        expect(cfg.read_only is read_only, f"make_store({read_only}) gave a config with read_only={cfg.read_only}")
        expect(store.instance() == (cfg.name or cfg.path), f"instance() = {store.instance()!r}, config name {cfg.name!r}")
        info = store.instance_info()
        expect(isinstance(info, InstanceInfo), f"instance_info() returned {type(info).__name__}")
        expect(info.config == cfg, "instance_info().config differs from instance_config()")
        expect(isinstance(info.type, str), "instance_info().type is not a string")
        expect(0 <= info.free <= info.total and 0 <= info.used <= info.total, f"disk numbers do not add up: {info}")
        expect(0.0 <= info.used_percent <= 100.0, f"used_percent {info.used_percent} outside 0..100")


def type_and_version_are_strings(make_store: MakeStore) -> None:
    """type() and version() are non-empty strings."""
    store = make_store(False)
    for name, value in (("type", store.type()), ("version", store.version())):
        expect(isinstance(value, str) and value != "", f"{name}() returned {value!r}, expected a non-empty string")


OBJSTORE_CHECKS: tuple[Callable[[MakeStore], None], ...] = (
    put_get_round_trip,
    put_reads_until_eof,
    nested_paths,
    missing_object_not_found,
    delete_removes,
    overwrite_replaces,
    escaping_paths_rejected,
    deep_paths_work_or_are_refused,
    read_only_refuses_writes,
    failed_put_leaves_nothing,
    failed_put_keeps_old_object,
    full_path_names_the_object,
    instance_matches_config,
    type_and_version_are_strings,
    ranged_reads,
    stat_validators_follow_the_object,
)


def run_objstore_kit(
    make_store: MakeStore, checks: tuple[Callable[[MakeStore], None], ...] = OBJSTORE_CHECKS
) -> list[CheckResult]:
    """Run the ObjStore checks (all by default); make_store(read_only) opens the store under test."""
    return run_checks(checks, make_store)
