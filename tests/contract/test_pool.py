"""The Pool contract (executors/_api.py), one behaviour per test, on every backend it applies to:
calls and submit, errors, broadcast with replay, byte streams both ways, crashes, timeouts,
crash loops, close, and the small call queued behind a stream. What only one backend has
(ring modes, parent-death, placement, the object store) is in tests/executors and tests/ray.
"""

from __future__ import annotations

import io
import os
import threading
import time

import psutil
import pytest

import exec_services as S
from executors import (
    CallTimeout,
    InlinePool,
    PoolBroken,
    PoolClosed,
    PoolStartError,
    PoolState,
    RemoteError,
    RemoteTraceback,
    PoolError,
    StreamAborted,
    WithFds,
    WorkerCrashed,
)

from .conftest import STREAM_CHUNK as CHUNK
from .conftest import only

REMOTE = ("process", "ray")  # backends whose calls run in other processes


def _wait_ready(p, timeout=10.0):
    end = time.monotonic() + timeout
    while p.state is not PoolState.READY:
        assert time.monotonic() < end, p.status()
        time.sleep(0.01)


def _pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- calls ------------------------------------------------------------------------------------


def test_call_and_submit(new):
    p = new(workers=2)
    assert p.state is PoolState.READY
    assert p.call("put", "k", b"v" * 100) is None
    futs = [p.submit("echo", i) for i in range(500)]
    assert [f.result(timeout=30) for f in futs] == [(i,) for i in range(500)]
    assert all(isinstance(f.worker, int) for f in futs)
    assert all(w["outstanding"] == 0 for w in p.status()["workers"])


@only(*REMOTE)
def test_calls_run_in_other_processes_and_pin(new):
    p = new(workers=2)
    pids = {p.call("pid", worker=i) for i in range(2)}
    assert len(pids) == 2 and os.getpid() not in pids
    assert p.call("pid", worker=1) == p.call("pid", worker=1)
    assert {w["pid"] for w in p.status()["workers"]} == pids
    with pytest.raises(ValueError, match="no worker 7"):
        p.call("echo", worker=7)


def test_many_threads_many_calls(new):
    p = new(workers=2)
    errors = []

    def run(t):
        try:
            for i in range(100):
                assert p.call("echo", t, i) == (t, i)
                assert p.submit("echo", i).result() == (i,)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert all(w["outstanding"] == 0 for w in p.status()["workers"])


def test_error_is_reraised_with_remote_traceback(new, backend):
    p = new()
    with pytest.raises(ValueError, match="nope") as ei:
        p.call("fail", "nope")
    if backend != "inline":
        assert isinstance(ei.value.__cause__, RemoteTraceback)
        assert "in fail" in str(ei.value.__cause__)
    assert p.status()["errors"] == 1


@only(*REMOTE)
def test_unpicklable_exception_becomes_remote_error(new):
    with pytest.raises(RemoteError, match="fail_custom") as ei:
        new().call("fail_custom")
    assert "boom-1" in str(ei.value)


@only(*REMOTE)
def test_unpicklable_result_names_method_and_type_and_worker_lives(new):
    p = new()
    pid = p.call("pid", worker=0)
    with pytest.raises(RemoteError, match="unpicklable_result.*lambda_holder"):
        p.call("unpicklable_result", worker=0)
    assert p.call("pid", worker=0) == pid


@only(*REMOTE)
def test_unpicklable_argument_raises_in_caller(new):
    p = new()
    with pytest.raises(TypeError):
        p.call("echo", threading.Lock())
    assert p.call("echo", 1) == (1,)
    assert all(w["outstanding"] == 0 for w in p.status()["workers"])


def test_function_argument_shipped_by_value(new):
    # a lambda only pickles with cloudpickle: it runs in the worker, next to the data
    p = new()
    p.call("put", "x", 41, worker=0)
    assert p.call("apply", lambda obj, k: obj.d[k] + 1, "x", worker=0) == 42


def test_status_fields(new):
    p = new()
    p.call("echo", 1)
    st = p.status()
    assert st["name"] == "test/contract" and st["state"] == "ready"
    assert {"restarts", "calls", "errors", "last_error", "latency_sum", "started_at"} <= set(st)
    assert st["calls"] >= 1
    assert {"id", "pid", "alive", "outstanding"} <= set(st["workers"][0])


@only(*REMOTE)
def test_broadcast_with_replay(new):
    p = new(workers=2)
    assert p.broadcast("remember", "a", replay=True) == [None, None]
    assert p.broadcast("remembered") == [["a"], ["a"]]


def test_broadcast_in_process(new):
    p = new()
    assert p.broadcast("remember", "a", replay=True) == [None]
    assert p.broadcast("remembered") == [["a"]]


# -- lifecycle --------------------------------------------------------------------------------


def test_closed_pool_refuses_calls_and_close_is_idempotent(new):
    p = new()
    p.close()
    p.close()
    assert p.state is PoolState.CLOSED
    with pytest.raises(PoolClosed):
        p.call("echo", 1)
    with pytest.raises(PoolClosed):
        p.submit("echo", 1)


def test_init_error_names_the_cause_and_leaves_nothing(new, backend):
    p = new(name="test/badinit", init=S.make_failing, workers=2, start=False)
    with pytest.raises(PoolStartError) as ei:
        p.start()
    msg = str(ei.value)
    assert "test/badinit" in msg and "cannot open the store: bad meta" in msg
    if backend != "inline":
        assert "Traceback" in msg
    assert p.state is PoolState.CLOSED


@only(*REMOTE)
def test_close_waits_for_in_flight_and_runs_shutdown(new, tmp_path):
    marker = tmp_path / "shutdown"
    p = new(env={"EXEC_TEST_SHUTDOWN_FILE": str(marker)}, workers=2, shutdown_method="shutdown")
    pids = {p.call("pid", worker=i) for i in range(2)}
    f = p.submit("sleep", 0.3)
    p.close(timeout=5)
    assert f.result() == 0.3
    assert {int(x) for x in marker.read_text().split()} == pids
    end = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < end, "a worker outlived close()"
        time.sleep(0.02)
    with pytest.raises(PoolClosed):
        p.submit("echo", 1)


@only(*REMOTE)
def test_close_fails_calls_past_its_timeout(new):
    p = new(shutdown_method="shutdown_fails")
    f = p.submit("sleep", 20)
    time.sleep(0.1)
    p.close(timeout=0.3)
    with pytest.raises(PoolClosed, match="sleep"):
        f.result()
    assert p.state is PoolState.CLOSED


def test_shutdown_error_does_not_stop_close(new):
    p = new(shutdown_method="shutdown_fails")
    p.call("echo", 1)
    p.close()
    assert p.state is PoolState.CLOSED


# -- failures ---------------------------------------------------------------------------------


@only(*REMOTE)
@pytest.mark.parametrize("via", ["call", "submit"])
def test_worker_killed_fails_its_calls_and_is_replaced(new, via):
    p = new()
    p.broadcast("remember", "setup", replay=True)
    pid = p.call("pid")
    t0 = time.monotonic()
    if via == "call":
        with pytest.raises(WorkerCrashed) as ei:
            p.call("die", "sigkill")
    else:
        dying = p.submit("die", "sigkill", 0.2)
        queued = p.submit("echo", 1)  # behind it on the same worker: never retried
        with pytest.raises(WorkerCrashed) as ei:
            dying.result()
        with pytest.raises(WorkerCrashed, match="echo"):
            queued.result()
    assert time.monotonic() - t0 < 5  # noticed as it happened, not by a timeout
    msg = str(ei.value)
    assert "test/contract" in msg and "die" in msg and str(pid) in msg, msg
    # replaced: init and the replayed broadcast ran again, the pool goes on
    assert p.call("remembered") == ["setup"]
    assert p.call("pid") != pid
    _wait_ready(p)
    st = p.status()
    assert st["restarts"] == 1 and str(pid) in st["last_error"]
    assert all(w["outstanding"] == 0 for w in st["workers"])


@only(*REMOTE)
@pytest.mark.parametrize("via", ["call", "submit"])
def test_timeout_kills_and_replaces_the_worker(new, via):
    p = new(call_timeout=None)
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
    assert "test/contract" in msg and "sleep did not finish within 0.3s" in msg, msg
    assert isinstance(ei.value, TimeoutError)
    assert p.call("pid") != pid
    end = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < end, "the timed-out worker's process is still running"
        time.sleep(0.02)


@only(*REMOTE)
def test_crash_loop_marks_the_pool_failed(new):
    p = new(max_restarts=2, restart_window=30)
    for _ in range(2):
        with pytest.raises(WorkerCrashed):
            p.call("die", "sigkill")
    # the third crash within the window is one too many: the call pending on it, and every
    # later one, get PoolBroken
    with pytest.raises(PoolBroken, match="3 worker crashes"):
        p.call("die", "sigkill")
    assert p.state is PoolState.FAILED
    with pytest.raises(PoolBroken) as ei:
        p.call("echo", 1)
    assert "test/contract" in str(ei.value)
    assert p.status()["state"] == "failed"


@only(*REMOTE)
def test_crash_loop_in_init_fails_waiting_calls_with_pool_broken(new, tmp_path):
    env = {"EXEC_TEST_MARKER": str(tmp_path / "started")}
    p = new(env=env, init=S.make_kv_crashing_after_start, max_restarts=2, restart_window=30)
    with pytest.raises(WorkerCrashed):
        p.call("die", "sigkill")
    waiting = p.submit("echo", 1)  # queued for a replacement that never comes up
    with pytest.raises(PoolBroken, match="init"):
        waiting.result(timeout=30)
    assert p.state is PoolState.FAILED
    with pytest.raises(PoolBroken):
        p.submit("echo", 2)


@only(*REMOTE)
def test_call_queued_for_a_replacement_times_out_and_close_does_not_wait(new, tmp_path):
    env = {"EXEC_TEST_MARKER": str(tmp_path / "started")}
    p = new(env=env, init=S.make_kv_hanging_after_start, start_timeout=60)
    with pytest.raises(WorkerCrashed):
        p.call("die", "sigkill")
    t = time.monotonic()
    with pytest.raises(CallTimeout, match="echo.*waiting for worker 0 to start"):
        p.call("echo", 1, timeout=0.5)
    assert time.monotonic() - t < 30  # its own 0.5 s, not the replacement's start_timeout (60 s)
    t = time.monotonic()
    p.close(timeout=1)
    assert time.monotonic() - t < 30  # does not wait for the hanging init (start_timeout 60 s)
    assert p.state is PoolState.CLOSED


# -- byte streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 5 * CHUNK + 17])
def test_put_roundtrip(new, size):
    data = os.urandom(size)
    assert new(streams=True).stream_put("consume_bytes", ("obj",), io.BytesIO(data)) == data


def test_put_zero_copy_views_and_early_stop(new):
    p = new(streams=True)
    assert p.stream_put("consume", ("obj:views",), S.GenReader(3 * CHUNK + 5)) == 3 * CHUNK + 5
    assert p.stream_put("consume_some", ("obj",), S.GenReader(50 * CHUNK)) == 10
    assert p.call("echo", 1, timeout=5) == (1,)


@pytest.mark.parametrize("size", [0, 100, 7 * CHUNK + 3])
def test_get_roundtrip(new, size):
    with new(streams=True).stream_get("produce", (size, 4096)) as r:
        assert r.read() == _pattern(size)


def test_get_iter_views(new):
    r = new(streams=True).stream_get("produce", (10 * CHUNK,))
    assert sum(len(v) for v in r.iter_views()) == 10 * CHUNK
    r.close()


@only(*REMOTE)
def test_get_close_early_cancels_and_frees_the_worker(new):
    p = new(streams=True)
    r = p.stream_get("produce", (1 << 30,))
    assert len(r.read(1000)) == 1000
    r.close()  # the worker stops producing
    assert p.call("echo", 1, timeout=5) == (1,)
    assert all(w["outstanding"] == 0 for w in p.status()["workers"])


def test_get_error_at_open_raises_at_the_call(new):
    p = new(streams=True)
    with pytest.raises(TypeError):
        p.stream_get("produce", ("not a size",))
    assert p.call("echo", 2, timeout=5) == (2,)


@only(*REMOTE)
def test_source_error_fails_the_put_and_frees_the_worker(new):
    p = new(streams=True)
    with pytest.raises(OSError, match="disk read error"):
        p.stream_put("consume", ("x",), S.FailingSource(100 * CHUNK, after=3 * CHUNK))
    assert p.call("echo", 2, timeout=5) == (2,)
    assert p.stream_put("consume", ("x",), S.GenReader(5 * CHUNK)) == 5 * CHUNK


@only(*REMOTE)
def test_worker_death_mid_put_is_reported_not_hung(new):
    p = new(streams=True)
    with pytest.raises(WorkerCrashed, match="consume_and_die"):
        p.stream_put("consume_and_die", ("x",), S.GenReader(100 * CHUNK))
    _wait_ready(p)
    assert p.stream_put("consume", ("x",), S.GenReader(5 * CHUNK)) == 5 * CHUNK


@only(*REMOTE)
def test_worker_death_mid_get_is_reported_not_hung(new):
    p = new(streams=True)
    # The death reaches the caller at the call (if it came before the first chunk) or at the
    # read: either way as an error, never a hang.
    with pytest.raises((WorkerCrashed, StreamAborted)):
        r = p.stream_get("produce_and_die", (100 * CHUNK,))
        try:
            r.read()
        finally:
            r.close()
    _wait_ready(p)
    with p.stream_get("produce", (CHUNK,)) as r2:
        assert len(r2.read()) == CHUNK


@only(*REMOTE)
def test_small_call_behind_a_stream_times_out_without_cutting_it(new):
    """A call queued behind a held stream fails alone; the worker (and so the stream) lives."""
    p = new(streams=True)
    pid = p.call("pid")
    r = p.stream_get("produce", (20 * CHUNK,))
    assert len(r.read(100)) == 100
    with pytest.raises(CallTimeout, match="busy with a byte stream"):
        p.call("echo", 1, timeout=0.5)
    rest = r.read()
    r.close()
    assert len(rest) == 20 * CHUNK - 100
    assert p.call("pid", timeout=5) == pid


@only(*REMOTE)
def test_close_during_a_stream_fails_it_with_pool_closed(new):
    p = new(streams=True)
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


@only("inline")
def test_inline_runs_in_the_caller(new):
    p = new()
    assert isinstance(p, InlinePool) and p.call("pid") == os.getpid()


def test_latency_buckets_count_every_finished_call(new):
    from executors import LATENCY_BOUNDS, quantile

    p = new()
    for i in range(50):
        p.call("echo", i)
    with pytest.raises(ValueError):
        p.call("fail", "x")
    p.call("sleep", 0.05)
    st = p.status()
    buckets = st["latency_buckets"]
    assert len(buckets) == len(LATENCY_BOUNDS) + 1 and sum(buckets) == st["calls"] == 52
    # the 50 ms call sits in a bucket whose bound is at least 50 ms; the median is far below
    assert quantile(buckets, 1.0) >= 0.05 > quantile(buckets, 0.5)


def test_a_value_may_carry_open_fds(new, backend, tmp_path):
    """WithFds: the caller gets the fds (its own, once per reply, in order), the worker keeps
    no copy; a value that does not unpickle fails the call and its fds are closed; Ray
    refuses it."""
    obj = tmp_path / "obj"
    obj.write_bytes(b"opened by the worker")
    p = new()
    if backend == "ray":
        assert not p.passes_fds
        with pytest.raises(PoolError, match="file descriptors"):
            p.call("open_file", str(obj), "v")
        return
    assert p.passes_fds
    mine = len(os.listdir("/proc/self/fd"))
    theirs = p.call("fd_count")
    futs = [p.submit("open_file", str(obj), i, 1 + i % 3) for i in range(30)]
    for i, fut in enumerate(futs):
        got = fut.result(10)
        assert isinstance(got, WithFds) and got.value == i and len(got.fds) == 1 + i % 3
        for fd in got.fds:
            assert os.pread(fd, 100, 0) == b"opened by the worker"
            os.close(fd)
    if backend == "process":  # the value does not pickle in the worker: an error, fds closed
        with pytest.raises(Exception, match="open_file"):
            p.call("open_file", str(obj), "unpicklable", 2)
    assert p.call("fd_count") == theirs  # the worker closed its copies
    assert len(os.listdir("/proc/self/fd")) == mine  # and the refused reply's fds are closed
