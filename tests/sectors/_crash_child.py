"""Child process for test_crash: bulk import + updates into sqlitekv, killed by the parent or itself."""

from __future__ import annotations

import os
import signal
import sys
import threading

sys.path.insert(0, sys.argv[1])

from tests.sectors.helpers import load_plugin, make_state  # noqa: E402
from vsm.sdk.sectors import SectorID  # noqa: E402
from vsm.sectors import SectorStateManager  # noqa: E402

root, mode = sys.argv[2], sys.argv[3]
kv = load_plugin("sqlitekv", "sqlitekv").open({"Path": os.path.join(root, "kv.db")})
kv.run()
m = SectorStateManager(kv, os.path.join(root, "journal"), import_chunk=500, flush_rows=500, flush_age=0.001)

if mode == "after_journal":
    # die exactly in the window: chunk 6's frame is fsynced, its KV commit never happens
    # (an import chunk's KV write is _commit_puts; other ops go through _commit)
    orig = m._commit_puts
    n = {"chunks": 0}

    def commit(ws, pairs):  # type: ignore[no-untyped-def]
        n["chunks"] += 1
        if n["chunks"] == 6:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(ws, pairs)

    m._commit_puts = commit  # type: ignore[method-assign]
elif mode == "mid_finalize":
    # the offline put lands (put_many where the store has it, else an update), then the
    # process dies: the online delete never will
    orig_update, orig_puts = m._update, m._commit_puts

    def upd(ws, fn):  # type: ignore[no-untyped-def]
        out = orig_update(ws, fn)
        if ws == "offline":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def puts(ws, pairs):  # type: ignore[no-untyped-def]
        out = orig_puts(ws, pairs)
        if ws == "offline":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

m.import_states([make_state(20, n) for n in range(1000)])
if mode == "mid_finalize":
    m._update = upd  # type: ignore[method-assign]
    m._commit_puts = puts  # type: ignore[method-assign]
    m.finalize(SectorID(20, 5))


def updates() -> None:
    i = 0
    while True:
        m.update(SectorID(20, i % 1000), {"AbortReason": "u%d" % i})
        i += 1


threading.Thread(target=updates, daemon=True).start()
print("ready", flush=True)
m.import_states(make_state(21, n) for n in range(1_000_000))
