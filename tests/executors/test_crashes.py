"""Failure modes, one test each: nothing hangs, every waiter is told, the pool recovers or
says it is broken, and no process or segment is left (conftest's no_leaks)."""

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
    CallTimeout,
    PoolBroken,
    PoolStartError,
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


@pytest.mark.parametrize("via", ["call", "submit"])
def test_timeout_kills_and_replaces_the_worker(via):
    p = _pool(workers=1, call_timeout=None)
    try:
        pid = p.call("pid")
        if via == "call":
            with pytest.raises(CallTimeout) as ei:
                p.call("sleep", 30, timeout=0.3)
        else:
            slow = p.submit("sleep", 30, timeout=0.3)
            queued = p.submit("echo", 1)
            with pytest.raises(CallTimeout) as ei:
                slow.result()
            with pytest.raises(WorkerCrashed, match="killed after timeout of sleep"):
                queued.result()
        msg = str(ei.value)
        assert "test/crash" in msg and "sleep did not finish within 0.3s" in msg, msg
        assert isinstance(ei.value, TimeoutError)
        assert p.call("pid") != pid
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        p.close()


def test_crash_loop_marks_the_pool_failed():
    p = _pool(workers=1, max_restarts=2, restart_window=30)
    try:
        for _ in range(2):
            with pytest.raises(WorkerCrashed):
                p.call("die", "sigkill")
        # the third crash within the window is one too many: the call pending on it, and
        # every later one, get PoolBroken
        with pytest.raises(PoolBroken, match="3 worker crashes"):
            p.call("die", "sigkill")
        assert p.state is PoolState.FAILED
        with pytest.raises(PoolBroken, match="SIGKILL") as ei:
            p.call("echo", 1)
        assert "test/crash" in str(ei.value)
        st = p.status()
        assert st["state"] == "failed" and "SIGKILL(-9)" in st["last_error"]
    finally:
        p.close()


def test_crash_loop_in_init_fails_waiting_calls_with_pool_broken(tmp_path, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_MARKER", str(tmp_path / "started"))
    p = _pool(workers=1, init=S.make_kv_crashing_after_start, max_restarts=2, restart_window=30)
    try:
        with pytest.raises(WorkerCrashed):
            p.call("die", "sigkill")
        waiting = p.submit("echo", 1)  # queued for a replacement that never comes up
        with pytest.raises(PoolBroken, match="init"):
            waiting.result(timeout=20)
        assert p.state is PoolState.FAILED
        with pytest.raises(PoolBroken):
            p.submit("echo", 2)
    finally:
        p.close()


def test_init_error_at_start_names_the_cause_and_leaves_nothing():
    p = ProcessPool(PoolSpec(name="test/badinit", init=S.make_failing, workers=2))
    with pytest.raises(PoolStartError) as ei:
        p.start()
    msg = str(ei.value)
    assert "test/badinit" in msg and "cannot open the store: bad meta" in msg and "Traceback" in msg
    assert p.state is PoolState.CLOSED
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


def test_close_during_a_stream_fails_it_with_pool_closed():
    import threading

    from executors import PoolClosed

    p = _pool(workers=1, ring_slots=2, slot_bytes=1 << 16)
    errors = []

    def put():
        try:
            p.stream_put("consume", ("x",), S.GenReader(1 << 40))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=put)
    t.start()
    time.sleep(0.3)
    p.close(timeout=0.2)
    t.join(10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], PoolClosed), errors


def test_close_does_not_wait_for_a_hanging_replacement_init(tmp_path, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_MARKER", str(tmp_path / "started"))
    p = _pool(workers=1, init=S.make_kv_hanging_after_start, start_timeout=60)
    with pytest.raises(WorkerCrashed):
        p.call("die", "sigkill")
    time.sleep(0.5)  # the replacement is now stuck in init
    t = time.monotonic()
    p.close(timeout=1)
    assert time.monotonic() - t < 10
    assert p.state is PoolState.CLOSED


def test_call_queued_for_a_replacement_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("EXEC_TEST_MARKER", str(tmp_path / "started"))
    p = _pool(workers=1, init=S.make_kv_hanging_after_start)
    try:
        with pytest.raises(WorkerCrashed):
            p.call("die", "sigkill")
        t = time.monotonic()
        with pytest.raises(CallTimeout, match="echo.*waiting for worker 0 to start"):
            p.call("echo", 1, timeout=0.3)
        assert time.monotonic() - t < 3
    finally:
        p.close(timeout=1)
