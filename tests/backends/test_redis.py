"""The redis KVStore plugin: the conformance kit on the machine's Redis, then its own rules
(optimistic transactions, error messages, reconnecting) against throwaway servers."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest

from vsm.plugin.conformance import KVSTORE_CHECKS, format_results, run_kvstore_kit
from vsm.sdk import KeyNotFoundError, PluginError, TransactionConflictError

from .conftest import ServerProcess, constructor, free_port

pytestmark = pytest.mark.timeout(60)

open_redis = constructor("redis")


@pytest.fixture
def db(redis_meta: dict[str, str]) -> Iterator[Any]:
    db = open_redis(redis_meta)
    db.run()
    yield db
    db.close()


@pytest.mark.parametrize("check", KVSTORE_CHECKS, ids=lambda c: c.__name__)
def test_kvstore_check(db: Any, check: Callable[[Any], None]) -> None:
    results = run_kvstore_kit(db, (check,))
    assert results[0].passed, format_results(results)
    if check.__name__ == "scan_is_a_snapshot":  # redis says its scans are not snapshots
        assert results[0].skipped, format_results(results)


def test_keys_live_under_prefix_and_collection(db: Any, redis_meta: dict[str, str]) -> None:
    """Layout as documented: <KeyPrefix>:<collection>:<raw key>, plus the index sorted set."""
    coll = db.open_collection("meta")
    coll.put(b"m-1000-n-\xff", b"v")
    prefix = redis_meta["KeyPrefix"]
    assert db.client.get(f"{prefix}:meta:".encode() + b"m-1000-n-\xff") == b"v"
    assert db.client.zrange(f"{prefix}:meta", 0, -1) == [b"m-1000-n-\xff"]
    coll.delete(b"m-1000-n-\xff")
    assert db.client.exists(f"{prefix}:meta") == 0  # an emptied index goes away


def test_view_refuses_writes(db: Any) -> None:
    coll = db.open_collection("meta")
    with pytest.raises(PermissionError, match="read-only transaction"):  # badger's ErrReadOnlyTxn
        coll.view(lambda txn: txn.put(b"k", b"v"))
    with pytest.raises(KeyNotFoundError):
        coll.get(b"k")


def test_collection_name_with_colon_refused(db: Any) -> None:
    with pytest.raises(ValueError, match="collection name"):
        db.open_collection("a:b")


def test_concurrent_updates_conflict(db: Any) -> None:
    """Two updates read the same key; the one committing second raises TransactionConflictError
    and changes nothing; the store says transactions need retrying."""
    coll = db.open_collection("meta")
    coll.put(b"counter", b"0")
    assert coll.need_retry_transactions() is True
    first_read, second_done = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def slow(txn: Any) -> None:
        v = int(txn.get(b"counter"))
        txn.put(b"slow-was-here", b"1")
        first_read.set()
        second_done.wait(10)
        txn.put(b"counter", b"%d" % (v + 1))

    def run_slow() -> None:
        try:
            coll.update(slow)
            outcome["slow"] = "committed"
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcome["slow"] = e

    t = threading.Thread(target=run_slow)
    t.start()
    assert first_read.wait(10)
    coll.update(lambda txn: txn.put(b"counter", b"%d" % (int(txn.get(b"counter")) + 10)))
    second_done.set()
    t.join(10)
    err = outcome["slow"]
    assert isinstance(err, TransactionConflictError), err
    assert "redis" in str(err) and "meta" in str(err)
    assert coll.get(b"counter") == b"10"
    with pytest.raises(KeyNotFoundError):
        coll.get(b"slow-was-here")  # the loser's other write did not land either


def test_conflict_on_scanned_range(db: Any) -> None:
    """A key added under a prefix that an update scanned is a conflict (phantom)."""
    coll = db.open_collection("meta")
    coll.put(b"s/1", b"x")
    scanned, added = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def fn(txn: Any) -> None:
        n = len(list(txn.scan(b"s/")))
        scanned.set()
        added.wait(10)
        txn.put(b"count", b"%d" % n)

    def run() -> None:
        try:
            coll.update(fn)
            outcome["r"] = "committed"
        except Exception as e:  # noqa: BLE001
            outcome["r"] = e

    t = threading.Thread(target=run)
    t.start()
    assert scanned.wait(10)
    coll.put(b"s/2", b"y")
    added.set()
    t.join(10)
    assert isinstance(outcome["r"], TransactionConflictError), outcome["r"]


def test_retried_increments_add_up(redis_meta: dict[str, str]) -> None:
    """Four DB objects (as four workers) increment one key; retrying on conflict, as the
    manager's MustNoConflict does, loses no increment."""
    dbs = [open_redis(redis_meta) for _ in range(4)]
    dbs[0].open_collection("c").put(b"n", b"0")
    conflicts = []

    def worker(d: Any) -> None:
        coll = d.open_collection("c")
        for _ in range(25):
            while True:
                try:
                    coll.update(lambda txn: txn.put(b"n", b"%d" % (int(txn.get(b"n")) + 1)))
                    break
                except TransactionConflictError:
                    conflicts.append(1)

    threads = [threading.Thread(target=worker, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert dbs[0].open_collection("c").get(b"n") == b"100"
    for d in dbs:
        d.close()


def test_wrong_address_names_plugin_address_and_cause() -> None:
    port = free_port()  # nothing listens there
    db = open_redis({"Addr": f"127.0.0.1:{port}", "Timeout": "2"})
    with pytest.raises(PluginError) as ei:
        db.run()
    assert str(ei.value) == f"redis: cannot reach 127.0.0.1:{port}: Connection refused"
    with pytest.raises(PluginError, match=f"redis: cannot reach 127.0.0.1:{port}"):
        db.open_collection("meta").get(b"k")
    db.close()


def test_wrong_password(make_redis_server: Callable[..., ServerProcess]) -> None:
    server = make_redis_server("--requirepass", "sekret")
    wrong = open_redis({"Addr": server.addr, "Password": "nope"})
    with pytest.raises(PluginError) as ei:
        wrong.run()
    msg = str(ei.value)
    assert msg.startswith(f"redis: authentication failed at {server.addr}: ") and "Password" in msg
    missing = open_redis({"Addr": server.addr})
    with pytest.raises(PluginError, match="the server needs a password"):
        missing.run()
    right = open_redis({"Addr": server.addr, "Password": "sekret"})
    right.run()
    right.open_collection("c").put(b"k", b"v")
    assert right.open_collection("c").get(b"k") == b"v"
    for d in (wrong, missing, right):
        d.close()


def test_server_gone_then_back(redis_server: ServerProcess) -> None:
    """Kill the server: calls fail naming address and cause. Restart it on the same port:
    the next call works on fresh connections, with no reopen."""
    db = open_redis({"Addr": redis_server.addr, "Timeout": "2", "PoolSize": "4"})
    db.run()
    coll = db.open_collection("meta")
    coll.put(b"k", b"before")
    assert coll.get(b"k") == b"before"

    redis_server.kill()
    for call in (lambda: coll.get(b"k"), lambda: coll.put(b"k", b"x"), lambda: list(coll.scan(b"")),
                 lambda: coll.update(lambda txn: txn.get(b"k"))):
        with pytest.raises(PluginError) as ei:
            call()
        assert f"redis: cannot reach {redis_server.addr}: Connection refused" == str(ei.value)

    redis_server.start()  # empty: the throwaway server keeps nothing
    with pytest.raises(KeyNotFoundError):
        coll.get(b"k")
    coll.put(b"k", b"after")
    assert coll.update(lambda txn: txn.get(b"k")) == b"after"
    db.close()


def test_server_killed_inside_update(redis_server: ServerProcess) -> None:
    """The connection dies while an update holds WATCHes: that transaction fails as a conflict
    (retryable); once the server is back a retry commits."""
    db = open_redis({"Addr": redis_server.addr, "Timeout": "2"})
    coll = db.open_collection("meta")
    coll.put(b"k", b"1")

    def fn(txn: Any) -> None:
        txn.get(b"k")
        redis_server.kill()
        txn.get(b"other")

    with pytest.raises((TransactionConflictError, PluginError)) as ei:
        coll.update(fn)
    assert redis_server.addr in str(ei.value)
    redis_server.start()
    coll.update(lambda txn: txn.put(b"k", b"2"))
    assert coll.get(b"k") == b"2"
    db.close()


def test_closed_db_says_so(redis_meta: dict[str, str]) -> None:
    db = open_redis(redis_meta)
    coll = db.open_collection("c")
    db.close()
    db.close()  # safe twice
    with pytest.raises(PluginError, match="closed"):
        coll.get(b"k")


@pytest.mark.parametrize(
    "meta, key",
    [
        ({"Addr": "localhost"}, "Addr"),
        ({"DB": "x"}, "DB"),
        ({"PoolSize": "0"}, "PoolSize"),
        ({"Timeout": "-1"}, "Timeout"),
        ({"KeyPrefix": ""}, "KeyPrefix"),
        ({"Adress": "127.0.0.1:6379"}, "Adress"),
    ],
)
def test_bad_meta_names_the_key(meta: dict[str, str], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        open_redis(meta)


def test_db_number_isolates(redis_meta: dict[str, str]) -> None:
    a = open_redis({**redis_meta, "DB": "0"})
    b = open_redis({**redis_meta, "DB": "1"})
    a.open_collection("c").put(b"k", b"in 0")
    with pytest.raises(KeyNotFoundError):
        b.open_collection("c").get(b"k")
    a.close()
    b.close()
