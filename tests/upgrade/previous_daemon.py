"""`vsm-pool` of the previous release, run from its own source tree (argv[1]) with this test
session's venv; argv[2:] are the CLI's arguments.

With $VSM_UPGRADE_KILL_AT_SEQ set, the process kills itself -9 the first time it is about to
store a committed watermark at or past that seq: the event is in the journal and its KV commit
landed, but the watermark does not say so (the window `SectorStateManager._recover` exists
for). A kill from outside could not hit that window on purpose."""

from __future__ import annotations

import os
import signal
import sys


def _main() -> None:
    tree = sys.argv.pop(1)
    sys.path[0] = tree  # not this folder: the previous release's `vsm` and nothing of the new one
    kill_at = int(os.environ.get("VSM_UPGRADE_KILL_AT_SEQ") or 0)
    if kill_at:
        from vsm.sectors import _journal

        store = _journal.Watermark.store

        def store_or_die(self: _journal.Watermark, seq: int) -> None:
            if seq >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            store(self, seq)

        _journal.Watermark.store = store_or_die  # type: ignore[method-assign]
    from vsm.cli import main

    main(prog_name="vsm-pool")


if __name__ == "__main__":  # workers started by spawn/forkserver import this module too
    _main()
