"""ProcessPool's own failure modes (the shared ones are in tests/contract): each way a worker
process dies named in the error, workers that outlive a killed manager, and no call left
pending when workers are killed under load. No process or segment is left (no_leaks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

import exec_services as S
from executors import (
    PoolState,
    ProcessPool,
    PoolSpec,
    WorkerCrashed,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _pool(**kw):
    kw.setdefault("name", "test/crash")
    kw.setdefault("init", S.make_kv)
    p = ProcessPool(PoolSpec(**kw))
    p.start()
    return p


def _wait_ready(p, timeout=10.0):
    end = time.monotonic() + timeout
    while p.state is not PoolState.READY:
        assert time.monotonic() < end, p.status()
        time.sleep(0.01)


# how the worker dies -> how the error names it
CRASH_CASES = [
    ("sigkill", "SIGKILL(-9)"),
    ("exit", "exit code 3"),
    ("segfault", "SIGSEGV(-11)"),
]


@pytest.mark.parametrize("via", ["call", "submit"])
@pytest.mark.parametrize("how,reason", CRASH_CASES, ids=[c[0] for c in CRASH_CASES])
def test_worker_death_fails_its_calls_and_is_replaced(how, reason, via):
    p = _pool(workers=1)
    try:
        p.broadcast("remember", "setup", replay=True)
        pid = p.call("pid")
        t0 = time.monotonic()
        if via == "call":
            with pytest.raises(WorkerCrashed) as ei:
                p.call("die", how)
            err = ei.value
        else:
            dying = p.submit("die", how, 0.2)
            queued = p.submit("echo", 1)  # behind it on the same worker
            with pytest.raises(WorkerCrashed) as ei:
                dying.result()
            err = ei.value
            with pytest.raises(WorkerCrashed, match="echo"):
                queued.result()
        assert time.monotonic() - t0 < 5  # noticed via the sentinel, not a timeout
        msg = str(err)
        assert "test/crash" in msg and "die" in msg and str(pid) in msg and reason in msg, msg
        # replaced: init and the replayed broadcast ran again, the pool goes on
        assert p.call("remembered") == ["setup"]
        assert p.call("pid") != pid
        _wait_ready(p)
        st = p.status()
        assert st["restarts"] == 1 and reason in st["last_error"]
        assert all(w["outstanding"] == 0 for w in st["workers"])
    finally:
        p.close()


_MANAGER = """
import json, sys, time
sys.path[:0] = [{root!r}, {here!r}]
import exec_services as S
from executors import ProcessPool, PoolSpec
p = ProcessPool(PoolSpec(name="test/orphans", init=S.make_kv, workers=2))
p.start()
p.submit("sleep", 60, worker=1)  # one worker busy: it cannot see socket EOF
import multiprocess.forkserver as fs
print(json.dumps({{"workers": [w["pid"] for w in p.status()["workers"]],
                  "forkserver": fs._forkserver._forkserver_pid}}), flush=True)
time.sleep(120)
"""


def test_workers_exit_when_the_manager_is_killed():
    code = _MANAGER.format(root=ROOT, here=HERE)
    mgr = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(mgr.stdout.readline())
        pids = info["workers"] + [info["forkserver"]]
        assert all(psutil.pid_exists(pid) for pid in pids)
        time.sleep(0.2)  # the busy worker is inside sleep(60)
        mgr.send_signal(signal.SIGKILL)
        mgr.wait(5)
        end = time.monotonic() + 10
        left = pids
        while left and time.monotonic() < end:
            left = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        assert not left, f"still running after the manager died: {left}"
    finally:
        if mgr.poll() is None:
            mgr.kill()
            mgr.wait()
        mgr.stdout.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_no_call_stays_pending_when_workers_are_killed_under_load():
    p = _pool(workers=2, max_restarts=50)
    try:
        futs = []
        killed = 0
        for i in range(4000):
            futs.append(p.submit("echo", i))
            if i in (1000, 2500):
                pid = p.status()["workers"][i % 2]["pid"]
                if pid <= 1:  # replacement not launched yet; kill(0)/kill(-1) hit a group/everything
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass  # already dead, its replacement not started yet
        assert killed
        ok = crashed = 0
        for f in futs:
            try:
                f.result(timeout=20)
                ok += 1
            except WorkerCrashed:
                crashed += 1
        assert ok + crashed == len(futs) and ok > 0
        _wait_ready(p)
        assert all(w["outstanding"] == 0 for w in p.status()["workers"])
    finally:
        p.close()


