"""The kits must fail broken stores: each mutant breaks one rule, and that check must fail."""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Callable

import pytest

from vsm.plugin.conformance import CheckResult, format_results, run_kvstore_kit, run_objstore_kit
from vsm.sdk import Config, KeyNotFoundError

pytestmark = pytest.mark.timeout(60)


class _Wrapped:
    """Forwards everything to a real object except what a subclass overrides."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class NoRollback(_Wrapped):
    def update(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self._inner)  # writes go straight to the collection


class _ListIter:
    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._it = iter(items)

    def __iter__(self) -> _ListIter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._it)

    def close(self) -> None:
        pass


class UnsortedScan(_Wrapped):
    def scan(self, prefix: bytes) -> Any:
        return _ListIter(sorted(self._inner.scan(prefix), key=lambda kv: kv[0][::-1]))


class GetMissingReturnsEmpty(_Wrapped):
    def get(self, key: bytes) -> bytes:
        try:
            return self._inner.get(key)
        except KeyNotFoundError:
            return b""


class DeleteMissingRaises(_Wrapped):
    def delete(self, key: bytes) -> None:
        self._inner.get(key)
        self._inner.delete(key)


class AcceptsEmptyKey(_Wrapped):
    def put(self, key: bytes, val: bytes) -> None:
        self._inner.put(key or b"\x00", val)  # stores something under another key


class LiveScan(_Wrapped):
    """Reads each key at the time it is reached, as a paged scan without a snapshot does."""

    def scan(self, prefix: bytes) -> Any:
        keys = [k for k, _ in self._inner.scan(prefix)]
        inner = self._inner

        def live() -> Any:
            for k in keys:
                try:
                    yield k, inner.get(k)
                except KeyNotFoundError:
                    continue

        return _ListIter(live())  # type: ignore[arg-type]


class MutantDB(_Wrapped):
    def __init__(self, inner: Any, mutant: type[_Wrapped]) -> None:
        super().__init__(inner)
        self._mutant = mutant

    def open_collection(self, name: str) -> Any:
        return self._mutant(self._inner.open_collection(name))


@pytest.mark.parametrize(
    ("mutant", "failing"),
    [
        (NoRollback, "update_rolls_back_on_error"),
        (UnsortedScan, "scan_prefix_in_byte_order"),
        (GetMissingReturnsEmpty, "get_missing_raises"),
        (DeleteMissingRaises, "delete_removes"),
        (AcceptsEmptyKey, "empty_key_refused"),
        (LiveScan, "scan_is_a_snapshot"),
    ],
)
def test_kvstore_kit_fails_a_broken_store(
    mutant: type[_Wrapped], failing: str, constructor: Callable[[str], Any]
) -> None:
    results = {r.name: r for r in run_kvstore_kit(MutantDB(constructor("memdb")({}), mutant))}
    assert not results[failing].passed, format_results(list(results.values()))


class NonAtomicPut(_Wrapped):
    def put(self, path: str, reader: Any) -> int:
        full = self._inner.full_path(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            n = 0
            while chunk := reader.read(1 << 20):
                n += f.write(chunk)
        return n


class NoPathCheck(_Wrapped):
    def stat(self, path: str) -> Any:
        return self._inner.stat(path.lstrip("/").replace("../", ""))


class IgnoresReadOnly(_Wrapped):
    def __init__(self, inner: Any, writable: Any) -> None:
        super().__init__(inner)
        self._writable = writable

    def put(self, path: str, reader: Any) -> int:
        return self._writable.put(path, reader)

    def delete(self, path: str) -> None:
        self._writable.delete(path)


class RangeFromStart(_Wrapped):
    def get_range(self, path: str, offset: int, length: int) -> Any:
        return io.BytesIO(self._inner.get(path).read(length))  # forgets the offset


class EtagNeverChanges(_Wrapped):
    def stat(self, path: str) -> Any:
        return dataclasses.replace(self._inner.stat(path), etag="v1")


class RecursiveFolders(_Wrapped):
    def put(self, path: str, reader: Any) -> int:
        if path.count("/") > 200:  # as os.makedirs did past Python's recursion limit
            raise RecursionError("maximum recursion depth exceeded")
        return self._inner.put(path, reader)


@pytest.mark.parametrize(
    ("mutant", "failing"),
    [
        (NonAtomicPut, "failed_put_leaves_nothing"),
        (NoPathCheck, "escaping_paths_rejected"),
        (IgnoresReadOnly, "read_only_refuses_writes"),
        (RangeFromStart, "ranged_reads"),
        (EtagNeverChanges, "stat_validators_follow_the_object"),
        (RecursiveFolders, "deep_paths_work_or_are_refused"),
    ],
)
def test_objstore_kit_fails_a_broken_store(
    mutant: type[_Wrapped], failing: str, tmp_path: Any, constructor: Callable[[str], Any]
) -> None:
    def real(read_only: bool) -> Any:
        return constructor("fsstore")(Config(name="", path=str(tmp_path), read_only=read_only))

    def make(read_only: bool) -> Any:
        return IgnoresReadOnly(real(read_only), real(False)) if mutant is IgnoresReadOnly else mutant(real(read_only))

    results = {r.name: r for r in run_objstore_kit(make)}
    assert not results[failing].passed, format_results(list(results.values()))


def test_a_crashing_check_is_a_failure_not_a_crash() -> None:
    class Broken:
        def open_collection(self, name: str) -> Any:
            raise RuntimeError("backend down")

    results = run_kvstore_kit(Broken())  # type: ignore[arg-type]
    assert results and not any(r.passed for r in results)
    assert "unexpected RuntimeError: backend down" in results[0].error


def test_format_results() -> None:
    text = format_results(
        [CheckResult("a", True, "", "rule a"), CheckResult("b", False, "went wrong", "rule b"), CheckResult("c", True, "", "rule c", "no hooks")]
    )
    assert text.splitlines() == [
        "PASS  a: rule a",
        "FAIL  b: rule b",
        "      -> went wrong",
        "SKIP  c: rule c",
        "      -> skipped: no hooks",
        "1 passed, 1 skipped, 1 failed",
    ]


def test_every_check_states_its_rule(constructor: Callable[[str], Any], tmp_path: Any) -> None:
    kv = run_kvstore_kit(constructor("memdb")({}))
    obj = run_objstore_kit(lambda ro: constructor("fsstore")(Config(name="", path=str(tmp_path), read_only=ro)))
    assert all(r.rule for r in kv + obj)
    assert len({r.name for r in kv}) == len(kv) and len({r.name for r in obj}) == len(obj)


def test_objstore_factory_contract_is_explained(tmp_path: Any, constructor: Callable[[str], Any]) -> None:
    """A factory giving each store its own folder breaks the kit's contract, and is told so."""
    count = iter(range(100))

    def make(read_only: bool) -> Any:
        root = tmp_path / f"store-{next(count)}"
        root.mkdir()
        return constructor("fsstore")(Config(name="", path=str(root), read_only=read_only))

    results = {r.name: r for r in run_objstore_kit(make)}
    assert "share one backing location" in results["read_only_refuses_writes"].error
