"""memdb beyond the kit: lifecycle hook, read-only views, snapshot scans."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest

from vsm.sdk import KeyNotFoundError, Kind, Manifest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def coll(constructor: Callable[[str], Callable[..., Any]]) -> Any:
    return constructor("memdb")({}).open_collection("c")


def test_on_init_accepts_the_documented_arguments(load_plugin: Callable[[str], Any]) -> None:
    module = load_plugin("memdb")
    assert module.on_init("/plugins", Manifest(name="memdb", kind=Kind.KVStore)) is None
    # onInit prepares nothing: a DB opened after it starts empty and works
    coll = module.open({}).open_collection("c")
    with pytest.raises(KeyNotFoundError):
        coll.get(b"k")
    coll.put(b"k", b"v")
    assert coll.get(b"k") == b"v"


def test_view_refuses_writes(coll: Any) -> None:
    with pytest.raises(PermissionError):
        coll.view(lambda txn: txn.put(b"k", b"v"))
    with pytest.raises(KeyNotFoundError):
        coll.get(b"k")


def test_scan_is_a_snapshot(coll: Any) -> None:
    for k in (b"a", b"b", b"c"):
        coll.put(k, k)
    it = coll.scan(b"")
    coll.put(b"ab", b"new")
    coll.delete(b"c")
    assert [k for k, _ in it] == [b"a", b"b", b"c"]


def test_random_puts_and_deletes_keep_key_order(coll: Any) -> None:
    """The lazily sorted key list stays right through appends, inserts and deletes."""
    rng = random.Random(5)
    model: dict[bytes, bytes] = {}
    for _ in range(3000):
        k = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.3:
            coll.delete(k)
            model.pop(k, None)
        else:
            coll.put(k, k)
            model[k] = k
        if rng.random() < 0.05:
            prefix = k[:1]
            assert list(coll.scan(prefix)) == sorted((x, y) for x, y in model.items() if x.startswith(prefix))
    assert list(coll.scan(b"")) == sorted(model.items())
