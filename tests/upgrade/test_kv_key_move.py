"""The move of an earlier release's bare KV keys to damocles' layout (vsm/sectors/_keys.py)
killed -9 inside one of its transactions: every state stays under one of its two keys with
its bytes, and the next start finishes the move."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..daemon.harness import ROOT
from ..sectors.helpers import load_plugin

pytestmark = pytest.mark.timeout(120)

N = 5000  # 3 transactions of _ADOPT_BATCH (2000)

# In a child: the move, killed -9 by itself in the middle of its second transaction (after
# half its keys were put and deleted in it).
_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.sectors.helpers import load_plugin
from vsm.sectors import _keys

db = load_plugin("sqlitekv", "sqlitekv").open({"Path": sys.argv[2]})
db.run()
calls = {"n": 0}
adopt = _keys._Adopt.__call__

class _Dying:
    def __init__(self, txn): self.txn, self.n = txn, 0
    def get(self, k): return self.txn.get(k)
    def put(self, k, v): self.txn.put(k, v)
    def delete(self, k):
        self.txn.delete(k)
        self.n += 1
        if calls["n"] == 2 and self.n == 1000:
            os.kill(os.getpid(), signal.SIGKILL)

def call(self, txn):
    calls["n"] += 1
    return adopt(self, _Dying(txn))

_keys._Adopt.__call__ = call
_keys.adopt_bare_keys(db.open_collection("meta"), b"sector-states/")
"""


def _all(db: Any) -> dict[bytes, bytes]:
    it = db.open_collection("meta").scan(b"")
    try:
        return dict(it)
    finally:
        it.close()


def test_a_key_move_killed_mid_transaction_loses_nothing_and_finishes_next_time(tmp_path: Path) -> None:
    from vsm.sectors._keys import adopt_bare_keys

    path = tmp_path / "kv.sqlite"
    db = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(path)})
    db.run()
    meta = db.open_collection("meta")
    states = {b"m-1000-n-%d" % n: b'{"ID":{"Miner":1000,"Number":%d}}' % n for n in range(N)}
    meta.update(lambda txn: [txn.put(k, v) for k, v in states.items()])  # as an earlier release wrote them
    meta.put(b"sector-states/m-1000-n-7", b'{"ID":{"Miner":1000,"Number":7},"Removed":true}')  # a twin that differs: kept
    meta.put(b"sector-number/1000", b"4999")  # not a state
    db.close()

    child = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), str(path)], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr

    db = load_plugin("sqlitekv", "sqlitekv").open({"Path": str(path)})
    db.run()
    try:
        held = _all(db)
        moved = {k for k in states if b"sector-states/" + k in held and k not in held}
        first = set(sorted(states)[:2000]) - {b"m-1000-n-7"}  # the scan's order; n-7's twin differs
        assert moved == first, "the first transaction committed, the second one not at all"
        for k, v in states.items():  # under one key or the other, with its bytes
            assert held.get(k) == v or (k not in held and held.get(b"sector-states/" + k) == v), k

        again, kept = adopt_bare_keys(db.open_collection("meta"), b"sector-states/")
        held = _all(db)
    finally:
        db.close()
    assert (again, kept) == (N - len(moved) - 1, [b"m-1000-n-7"])
    assert held[b"m-1000-n-7"] == states[b"m-1000-n-7"] and held[b"sector-states/m-1000-n-7"].endswith(b'"Removed":true}')
    assert held[b"sector-number/1000"] == b"4999"
    assert {k: v for k, v in held.items() if k.startswith(b"sector-states/") and k != b"sector-states/m-1000-n-7"} == {
        b"sector-states/" + k: v for k, v in states.items() if k != b"m-1000-n-7"
    }
