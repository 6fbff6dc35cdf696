"""The bulk import's two KV calls on sqlitekv: `existing` (one query for a chunk's keys) and
`put_many` (one executemany), directly and through the sector manager."""

from __future__ import annotations

import sqlite3

import pytest

from vsm.sdk import EmptyKeyError
from vsm.sdk.sectors import SectorID
from vsm.sectors import SectorStateManager

from .helpers import load_plugin, sealing_state

pytestmark = pytest.mark.timeout(60)


def test_existing_and_put_many(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mod = load_plugin("sqlitekv", "sqlitekv")
    db = mod.open({"Path": str(tmp_path / "kv.db")})
    try:
        meta, other = db.open_collection("meta"), db.open_collection("other")
        keys = [b"k%05d" % i for i in range(mod._IN_LIST + 5)]  # more than one IN query
        assert meta.put_many((k, b"v" + k) for k in keys[::2]) == len(keys[::2])
        other.put_many([(b"k00001", b"x")])
        assert meta.existing(keys) == set(keys[::2])  # not other's k00001
        assert meta.existing([]) == set()
        assert meta.get(b"k00002") == b"vk00002"

        def in_txn(txn):  # type: ignore[no-untyped-def]
            txn.put(b"new", b"1")  # buffered: existing sees it
            return txn.existing([b"new", b"k00001", b"k00000"])

        assert meta.update(in_txn) == {b"new", b"k00000"}
        with pytest.raises(EmptyKeyError):
            meta.existing([b"a", b""])
        with pytest.raises(EmptyKeyError):  # the whole put_many is rolled back
            meta.put_many([(b"fine", b"1"), (b"", b"2")])
        assert meta.existing([b"fine"]) == set()
        page = sqlite3.connect(tmp_path / "kv.db").execute("PRAGMA page_size").fetchone()[0]
        assert page == mod._PAGE_SIZE  # a new file gets the bulk import's page size
    finally:
        db.close()


def test_import_skips_existing_states_through_one_query(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(tmp_path / "kv.db")})
    try:
        with SectorStateManager(db, str(tmp_path / "journal"), fsync=False, import_chunk=7) as m:
            assert m.import_states([sealing_state(30, n) for n in range(0, 40, 2)]) == 20  # all online
            calls = []
            coll = m._colls["online"]
            orig = coll.existing

            def counted(keys):  # type: ignore[no-untyped-def]
                calls.append(len(keys))
                return orig(keys)

            coll.existing = counted
            assert m.import_states([sealing_state(30, n) for n in range(40)]) == 20  # the odd ones
            assert calls and sum(calls) == 40 and max(calls) <= 7  # one call a chunk
            assert m.get(SectorID(30, 3)).id == SectorID(30, 3)
            assert m.import_states([sealing_state(30, n) for n in range(40)], override=True) == 40
    finally:
        db.close()
