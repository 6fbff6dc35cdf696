"""The KVStore kit: the rules every KVStore plugin keeps, as small independent checks.

Each check takes a running DB (Constructor's result, run() already called) and works in a
collection of its own, named `conformance-<check>-<random>`, so checks never see each other's
keys and a persistent store can be checked again without cleanup.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Callable

from vsm.sdk import EmptyKeyError, KeyNotFoundError, ReadOnlyTransactionError
from vsm.sdk.kvstore import DB, KVStore, Txn

from ._result import CheckFailed, CheckResult, SkipCheck, expect, expect_raises, run_checks

__all__ = ["KVSTORE_CHECKS", "KitError", "run_kvstore_kit"]


class KitError(Exception):
    """Raised on purpose inside a transaction function; it must come back as itself."""


def _collection(db: DB, check: Callable[[DB], None]) -> KVStore:
    return db.open_collection(f"conformance-{check.__name__}-{uuid.uuid4().hex[:12]}")


def _items(it: object) -> list[tuple[bytes, bytes]]:
    """Drain an Iter into a list of (key, value) and close it."""
    try:
        return [(bytes(k), bytes(v)) for k, v in it]  # type: ignore[attr-defined]
    finally:
        it.close()  # type: ignore[attr-defined]


def get_missing_raises(db: DB) -> None:
    """get, peek and txn.get of a missing key raise KeyNotFoundError; peek never calls fn."""
    coll = _collection(db, get_missing_raises)
    expect_raises(KeyNotFoundError, coll.get, b"missing")
    called = []
    expect_raises(KeyNotFoundError, coll.peek, b"missing", called.append)
    expect(not called, "peek called fn for a missing key")

    def in_view(txn: Txn) -> str:
        try:
            txn.get(b"missing")
        except KeyNotFoundError:
            return "raised"
        return "returned"

    expect(coll.view(in_view) == "raised", "txn.get of a missing key did not raise KeyNotFoundError")


def put_get_round_trip(db: DB) -> None:
    """put then get returns the same bytes, as bytes: empty values and binary keys included."""
    coll = _collection(db, put_get_round_trip)
    pairs = {
        b"plain": b"value",
        b"empty-value": b"",
        b"\x00": b"nul key",
        b"\x00\x01\xfe\xff": bytes(range(256)),
        b"\xff\xff\xff": b"\xff",
        "sector/ünïcode".encode(): "值".encode(),
    }
    for k, v in pairs.items():
        coll.put(k, v)
    for k, v in pairs.items():
        got = coll.get(k)
        expect(isinstance(got, bytes), f"get returned {type(got).__name__}, expected bytes")
        expect(got == v, f"get({k!r}) = {got!r:.80}, expected {v!r:.80}")


def large_value_round_trip(db: DB) -> None:
    """A value of more than 1 MiB round-trips unchanged."""
    coll = _collection(db, large_value_round_trip)
    val = random.Random(7).randbytes((1 << 20) + 13)
    coll.put(b"big", val)
    expect(coll.get(b"big") == val, "a 1 MiB value came back changed")


def overwrite_replaces(db: DB) -> None:
    """put on an existing key replaces its value (longer and shorter)."""
    coll = _collection(db, overwrite_replaces)
    for v in (b"first", b"a much longer second value", b"3"):
        coll.put(b"k", v)
        got = coll.get(b"k")
        expect(got == v, f"after overwrite get = {got!r}, expected {v!r}")
    expect(_items(coll.scan(b"")) == [(b"k", b"3")], "overwrite left more than one entry")


def delete_removes(db: DB) -> None:
    """delete removes the key (get then raises); deleting a missing key is a no-op, as in Go
    (badger, mongo and the memdb example all return nil)."""
    coll = _collection(db, delete_removes)
    coll.put(b"k", b"v")
    coll.put(b"other", b"v")
    coll.delete(b"k")
    expect_raises(KeyNotFoundError, coll.get, b"k")
    for key in (b"k", b"never-existed"):
        try:
            coll.delete(key)
        except KeyNotFoundError:
            raise CheckFailed(f"delete({key!r}) of a missing key raised KeyNotFoundError; it must be a no-op") from None
    expect(coll.get(b"other") == b"v", "delete removed another key")


def peek_returns_fn_result(db: DB) -> None:
    """peek passes the value to fn and returns what fn returns."""
    coll = _collection(db, peek_returns_fn_result)
    coll.put(b"k", b"hello")
    got = coll.peek(b"k", lambda v: (len(v), bytes(v).upper()))
    expect(got == (5, b"HELLO"), f"peek returned {got!r}, expected (5, b'HELLO')")


def scan_prefix_in_byte_order(db: DB) -> None:
    """scan(prefix) yields exactly the keys starting with prefix, in byte order, with values."""
    coll = _collection(db, scan_prefix_in_byte_order)
    inside = [b"p/", b"p/\x00", b"p/a", b"p/a\x00", b"p/ab", b"p/b", b"p/\x7f", b"p/\x80", b"p/\xff"]
    outside = [b"p", b"p.", b"p0", b"o/z", b"q", b"P/a", b"\xff"]
    keys = inside + outside
    random.Random(3).shuffle(keys)
    for k in keys:
        coll.put(k, b"v:" + k)
    got = _items(coll.scan(b"p/"))
    want = [(k, b"v:" + k) for k in sorted(inside)]
    expect(got == want, f"scan(b'p/') = {[k for k, _ in got]}, expected {[k for k, _ in want]}")


def scan_prefix_with_ff_bytes(db: DB) -> None:
    """Prefixes ending in 0xff bytes (no simple successor) scan correctly."""
    coll = _collection(db, scan_prefix_with_ff_bytes)
    keys = [b"a\xfe", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\xff", b"b", b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff"]
    for k in keys:
        coll.put(k, k)
    cases = {
        b"a\xff": [b"a\xff", b"a\xff\x00", b"a\xff\xff", b"a\xff\xff\xff"],
        b"a\xff\xff": [b"a\xff\xff", b"a\xff\xff\xff"],
        b"\xff": [b"\xff", b"\xff\x00", b"\xff\xff"],
        b"\xff\xff": [b"\xff\xff"],
    }
    for prefix, want in cases.items():
        got = [k for k, _ in _items(coll.scan(prefix))]
        expect(got == want, f"scan({prefix!r}) = {got}, expected {want}")


def scan_empty_prefix_is_everything(db: DB) -> None:
    """scan(b"") yields every key of the collection in byte order; an empty collection yields none."""
    coll = _collection(db, scan_empty_prefix_is_everything)
    expect(_items(coll.scan(b"")) == [], "scan of an empty collection yielded items")
    keys = [b"\xff", b"b", b"a", b"\x00", b"a\x00"]
    for k in keys:
        coll.put(k, k + k)
    got = _items(coll.scan(b""))
    expect(got == [(k, k + k) for k in sorted(keys)], f"scan(b'') = {got}")


def scan_many_keys(db: DB) -> None:
    """A scan over more keys than any page or batch size returns all of them, in order, once."""
    coll = _collection(db, scan_many_keys)
    keys = [b"n/%06d" % i for i in range(5000)]

    def load(txn: Txn) -> None:
        for k in keys:
            txn.put(k, k)

    coll.update(load)
    coll.put(b"o", b"after the prefix")
    got = [k for k, _ in _items(coll.scan(b"n/"))]
    expect(len(got) == len(keys), f"scan returned {len(got)} keys, expected {len(keys)}")
    expect(got == keys, "scan returned the right number of keys but not in byte order, or not each once")


def scan_iter_close_early(db: DB) -> None:
    """An Iter can be closed before it is exhausted; the store stays usable."""
    coll = _collection(db, scan_iter_close_early)
    for i in range(10):
        coll.put(b"k%d" % i, b"v")
    it = coll.scan(b"k")
    first = next(iter(it))
    expect(bytes(first[0]) == b"k0", f"first item {first!r}, expected key b'k0'")
    it.close()
    coll.put(b"k9", b"w")
    expect(coll.get(b"k9") == b"w", "store unusable after closing an Iter early")


def scan_is_a_snapshot(db: DB) -> None:
    """A scan sees the collection as it was when the scan began, as a scan of badger
    (damocles' default store) does: keys put or deleted while it runs do not show."""
    if not getattr(db, "snapshot_scans", True):
        raise SkipCheck("the store says its scans are not snapshots (its DB's snapshot_scans = False)")
    coll = _collection(db, scan_is_a_snapshot)
    keys = [b"s/%05d" % i for i in range(3000)]  # more than a page, so later pages come after the writes

    def load(txn: Txn) -> None:
        for k in keys:
            txn.put(k, b"old")

    coll.update(load)
    it = coll.scan(b"s/")
    try:
        first = next(iter(it))
        coll.delete(keys[2500])
        coll.put(b"s/02999+", b"new")
        coll.put(keys[2800], b"new")
        rest = [(bytes(k), bytes(v)) for k, v in it]
    finally:
        it.close()
    got = [(bytes(first[0]), bytes(first[1])), *rest]
    expect(got == [(k, b"old") for k in keys], f"a scan saw writes made after it began ({len(got)} items, expected {len(keys)} as they were)")


def backup_and_check(db: DB) -> None:
    """The optional backup (vsm.sdk.kvstore, `vsm-pool backup`): a DB that can back up writes a
    non-empty copy while it serves, and its optional check() finds a sound DB sound ([]); one
    that cannot says why (cannot_backup) and is skipped."""
    coll = _collection(db, backup_and_check)
    coll.put(b"before-backup", b"kept")
    backup, check = getattr(db, "backup_file", None), getattr(db, "check", None)
    if backup is None or check is None:
        raise SkipCheck("the DB is not served by a plugin pool here")
    try:
        path = backup()
    except Exception as e:  # noqa: BLE001 - "cannot back up: <why>" is the store's answer
        if "cannot back up" in str(e):
            raise SkipCheck(str(e).split("cannot back up: ", 1)[-1]) from None
        raise
    try:
        expect(os.path.getsize(path) > 0, f"backup() wrote an empty file ({path})")
    finally:
        os.unlink(path)
    found = check()
    expect(found is None or found == [], f"check() found damage in a sound DB: {found}")


def empty_key_refused(db: DB) -> None:
    """get, put and delete of the empty key raise EmptyKeyError ("Key cannot be empty", as
    badger, damocles' default store), outside and inside transactions; nothing is stored."""
    coll = _collection(db, empty_key_refused)
    for call in (lambda: coll.put(b"", b"v"), lambda: coll.get(b""), lambda: coll.delete(b"")):
        e = expect_raises(EmptyKeyError, call)
        expect(str(e) == "Key cannot be empty", f"the empty key was refused with {str(e)!r}, expected badger's 'Key cannot be empty'")

    def in_update(txn: Txn) -> None:
        txn.put(b"", b"v")

    expect_raises(EmptyKeyError, coll.update, in_update)
    expect(_items(coll.scan(b"")) == [], "a value was stored under the empty key")


def write_in_view_refused(db: DB) -> None:
    """put and delete inside view raise ReadOnlyTransactionError ("No sets or deletes are
    allowed in a read-only transaction", as badger reports it) and change nothing."""
    coll = _collection(db, write_in_view_refused)
    coll.put(b"k", b"v")
    for write in (lambda txn: txn.put(b"k", b"w"), lambda txn: txn.delete(b"k")):
        e = expect_raises(ReadOnlyTransactionError, coll.view, write)
        expect(str(e) == ReadOnlyTransactionError.go_text, f"write in view refused with {str(e)!r}, expected badger's text")
    expect(coll.get(b"k") == b"v", "a write inside view changed the collection")


def collections_are_isolated(db: DB) -> None:
    """Collections do not share keys: puts, deletes and scans stay in their own collection."""
    a = _collection(db, collections_are_isolated)
    b = _collection(db, collections_are_isolated)
    a.put(b"k", b"in a")
    b.put(b"k", b"in b")
    a.put(b"only-a", b"1")
    expect(a.get(b"k") == b"in a" and b.get(b"k") == b"in b", "same key in two collections clashed")
    expect_raises(KeyNotFoundError, b.get, b"only-a")
    b.delete(b"k")
    expect(a.get(b"k") == b"in a", "delete in one collection removed the key from another")
    expect([k for k, _ in _items(b.scan(b""))] == [], "scan saw another collection's keys")


def view_sees_committed_data(db: DB) -> None:
    """view sees data written by put and by earlier updates."""
    coll = _collection(db, view_sees_committed_data)
    coll.put(b"by-put", b"1")
    coll.update(lambda txn: txn.put(b"by-update", b"2"))
    got = coll.view(lambda txn: (txn.get(b"by-put"), txn.get(b"by-update")))
    expect(tuple(got) == (b"1", b"2"), f"view read {got!r}, expected (b'1', b'2')")


def update_commits_on_return(db: DB) -> None:
    """When fn returns, every write of the update is visible: puts, overwrites and deletes."""
    coll = _collection(db, update_commits_on_return)
    coll.put(b"old", b"x")
    coll.put(b"gone", b"x")

    def fn(txn: Txn) -> None:
        txn.put(b"new1", b"1")
        txn.put(b"new2", b"2")
        txn.put(b"old", b"y")
        txn.delete(b"gone")

    coll.update(fn)
    got = _items(coll.scan(b""))
    want = [(b"new1", b"1"), (b"new2", b"2"), (b"old", b"y")]
    expect(got == want, f"after update the collection holds {got}, expected {want}")


def update_rolls_back_on_error(db: DB) -> None:
    """If fn raises, no write of the update is visible and the exception propagates as itself."""
    coll = _collection(db, update_rolls_back_on_error)
    coll.put(b"kept", b"old")
    coll.put(b"not-deleted", b"x")

    def fn(txn: Txn) -> None:
        txn.put(b"kept", b"new")
        txn.put(b"added", b"1")
        txn.delete(b"not-deleted")
        raise KitError("abort-7f3a")

    err = expect_raises(KitError, coll.update, fn)
    expect(type(err) is KitError and str(err) == "abort-7f3a", f"update raised {type(err).__name__}({err}), expected KitError(abort-7f3a)")
    got = _items(coll.scan(b""))
    want = [(b"kept", b"old"), (b"not-deleted", b"x")]
    expect(got == want, f"after a failed update the collection holds {got}, expected {want}")
    coll.update(lambda txn: txn.put(b"after", b"ok"))
    expect(coll.get(b"after") == b"ok", "an update after a failed one did not commit")


def update_reads_own_writes(db: DB) -> None:
    """Inside an update, get, peek and scan see that transaction's own puts and deletes."""
    coll = _collection(db, update_reads_own_writes)
    coll.put(b"t/committed", b"c")
    coll.put(b"t/doomed", b"d")

    def fn(txn: Txn) -> tuple[object, ...]:
        txn.put(b"t/mine", b"m")
        txn.put(b"t/committed", b"c2")
        txn.delete(b"t/doomed")
        try:
            txn.get(b"t/doomed")
            doomed = "visible"
        except KeyNotFoundError:
            doomed = "gone"
        return (
            txn.get(b"t/mine"),
            txn.peek(b"t/committed", bytes),
            doomed,
            [bytes(k) for k, _ in txn.scan(b"t/")],
        )

    got = coll.update(fn)
    want = (b"m", b"c2", "gone", [b"t/committed", b"t/mine"])
    expect(tuple(got) == want, f"reads inside update saw {got!r}, expected {want!r}")


def txn_scan_in_view(db: DB) -> None:
    """txn.scan inside a view yields the prefix's committed keys in byte order."""
    coll = _collection(db, txn_scan_in_view)
    for k in (b"s/b", b"s/a", b"s/\xff", b"t/a"):
        coll.put(k, k)
    got = coll.view(lambda txn: [(bytes(k), bytes(v)) for k, v in txn.scan(b"s/")])
    want = [(b"s/a", b"s/a"), (b"s/b", b"s/b"), (b"s/\xff", b"s/\xff")]
    expect(got == want, f"txn.scan = {got}, expected {want}")


def view_and_update_return_fn_result(db: DB) -> None:
    """view and update return exactly what fn returns (None included)."""
    coll = _collection(db, view_and_update_return_fn_result)
    coll.put(b"k", b"v")
    expect(coll.view(lambda txn: {"n": 1, "v": txn.get(b"k")}) == {"n": 1, "v": b"v"}, "view did not return fn's value")
    expect(coll.update(lambda txn: [1, "two", b"3"]) == [1, "two", b"3"], "update did not return fn's value")
    expect(coll.update(lambda txn: None) is None, "update of a fn returning None did not return None")


def closures_work(db: DB) -> None:
    """Functions that close over local values work in view and update (pooled: cloudpickled)."""
    coll = _collection(db, closures_work)
    rows = {b"c/%d" % i: b"value-%d" % i for i in range(20)}
    factor = 3

    def load(txn: Txn) -> int:
        for k, v in rows.items():
            txn.put(k, v * factor)
        return len(rows)

    expect(coll.update(load) == 20, "update with a closure did not return its count")
    total = coll.view(lambda txn: sum(len(txn.get(k)) for k in rows))
    expect(total == sum(len(v) * factor for v in rows.values()), f"view with a closure summed {total}")


def bulk_update_commits_all(db: DB) -> None:
    """One update with 20,000 puts commits them all (the bulk-import path)."""
    coll = _collection(db, bulk_update_commits_all)
    n = 20_000

    def load(txn: Txn) -> None:
        for i in range(n):
            txn.put(b"sector-%08d" % i, b"{\"state\": %d}" % i)

    coll.update(load)
    got = _items(coll.scan(b"sector-"))
    expect(len(got) == n, f"scan after a bulk update found {len(got)} keys, expected {n}")
    expect(coll.get(b"sector-%08d" % (n - 1)) == b"{\"state\": %d}" % (n - 1), "last bulk key has a wrong value")


def need_retry_transactions_is_bool(db: DB) -> None:
    """need_retry_transactions() returns a bool."""
    coll = _collection(db, need_retry_transactions_is_bool)
    got = coll.need_retry_transactions()
    expect(isinstance(got, bool), f"need_retry_transactions() returned {got!r}, expected a bool")


def open_collection_twice_is_same_data(db: DB) -> None:
    """Opening the same collection name again gives the same data."""
    name = f"conformance-reopen-{uuid.uuid4().hex[:12]}"
    db.open_collection(name).put(b"k", b"v")
    expect(db.open_collection(name).get(b"k") == b"v", "a collection opened again did not hold its data")


KVSTORE_CHECKS: tuple[Callable[[DB], None], ...] = (
    get_missing_raises,
    put_get_round_trip,
    large_value_round_trip,
    overwrite_replaces,
    delete_removes,
    peek_returns_fn_result,
    scan_prefix_in_byte_order,
    scan_prefix_with_ff_bytes,
    scan_empty_prefix_is_everything,
    scan_many_keys,
    scan_iter_close_early,
    scan_is_a_snapshot,
    empty_key_refused,
    write_in_view_refused,
    collections_are_isolated,
    open_collection_twice_is_same_data,
    view_sees_committed_data,
    update_commits_on_return,
    update_rolls_back_on_error,
    update_reads_own_writes,
    txn_scan_in_view,
    view_and_update_return_fn_result,
    closures_work,
    bulk_update_commits_all,
    need_retry_transactions_is_bool,
    backup_and_check,
)


def run_kvstore_kit(db: DB, checks: tuple[Callable[[DB], None], ...] = KVSTORE_CHECKS) -> list[CheckResult]:
    """Run the KVStore checks (all by default) against db, a running KVStore DB."""
    return run_checks(checks, db)
