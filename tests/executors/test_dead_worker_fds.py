"""A pool that loses workers does not keep their file descriptors (issue 13's soak found 2 pipe
fds kept per killed worker for the pool's life: a daemon losing a worker every half minute
grew by ~4 fds a minute)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

import exec_services as S
from executors import PoolSpec, PoolState, ProcessPool

pytestmark = pytest.mark.timeout(60)


def test_killed_workers_leave_no_fd_in_the_manager() -> None:
    p = ProcessPool(PoolSpec(name="test/fds", init=S.make_kv, workers=2, max_restarts=100))
    p.start()
    try:
        me = psutil.Process()
        before = me.num_fds()
        for _ in range(6):  # back-off doubles from 0.1 s per crash: 6 take ~6 s
            pid = p.call("pid")
            os.kill(pid, 9)
            deadline = time.monotonic() + 15
            while not (p.state is PoolState.READY and all(w["alive"] and w["pid"] != pid for w in p.status()["workers"])):
                assert time.monotonic() < deadline, p.status()
                time.sleep(0.01)
        assert p.call("echo", 1) == (1,)
        assert me.num_fds() - before <= 2, me.num_fds() - before  # was 12: two per dead worker
    finally:
        p.close()
