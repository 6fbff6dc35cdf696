"""The Pool contract on RayPool: the executors tests' behaviours, against Ray actors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import exec_services as S
from executors import (
    CallTimeout,
    PoolBroken,
    PoolClosed,
    PoolSpec,
    PoolStartError,
    PoolState,
    ProcessPool,
    RemoteError,
    RemoteTraceback,
    StreamAborted,
    WorkerCrashed,
    make_pool,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = 64 << 10  # chunk size for the stream-boundary tests


def _pool(ray_opts=None, **kw):
    kw.setdefault("name", "test/ray")
    kw.setdefault("init", S.make_kv)
    p = make_pool(PoolSpec(**kw), backend="ray", **(ray_opts or {}))
    p.start()
    return p


@pytest.fixture
def pool(ray_cluster):
    p = _pool(workers=2)
    yield p
    p.close()


def _wait_ready(p, timeout=10.0):
    end = time.monotonic() + timeout
    while p.state is not PoolState.READY:
        assert time.monotonic() < end, p.status()
        time.sleep(0.01)


# -- the seam ---------------------------------------------------------------------------------


def test_importing_executors_does_not_import_ray():
    code = "import sys, executors; assert 'ray' not in sys.modules, 'ray imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_make_pool_ray_options_and_unknown_option(ray_cluster):
    from executors._ray import RayPool

    p = make_pool(PoolSpec(name="test/ray", init=S.make_kv), backend="ray", resources={"CPU": 0})
    assert isinstance(p, RayPool) and p.state is PoolState.STARTING
    p.close()
    with pytest.raises(TypeError):
        make_pool(PoolSpec(name="test/ray", init=S.make_kv), backend="ray", colour="red")
    with pytest.raises(TypeError, match="takes no options"):
        make_pool(PoolSpec(name="test/ray", init=S.make_kv), backend="process", address="x")


# -- calls ------------------------------------------------------------------------------------


def test_calls_run_in_actors_and_pin(pool):
    assert pool.state is PoolState.READY
    assert pool.call("put", "k", b"v" * 100) is None
    pids = {pool.call("pid", worker=i) for i in range(2)}
    assert len(pids) == 2 and os.getpid() not in pids
    assert pool.call("pid", worker=1) == pool.call("pid", worker=1)
    assert {w["pid"] for w in pool.status()["workers"]} == pids


def test_many_in_flight(pool):
    futs = [pool.submit("echo", i) for i in range(2000)]
    assert [f.result(timeout=30) for f in futs] == [(i,) for i in range(2000)]
    assert all(f.worker in (0, 1) for f in futs)
    assert all(w["outstanding"] == 0 for w in pool.status()["workers"])


def test_many_threads_many_calls(pool):
    errors = []

    def run(t):
        try:
            for i in range(100):
                assert pool.call("echo", t, i) == (t, i)
                assert pool.submit("echo", i).result() == (i,)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_error_is_reraised_with_remote_traceback(pool):
    with pytest.raises(ValueError, match="nope") as ei:
        pool.call("fail", "nope")
    assert isinstance(ei.value.__cause__, RemoteTraceback)
    assert "in fail" in str(ei.value.__cause__)
    assert pool.status()["errors"] == 1


def test_unpicklable_exception_becomes_remote_error(pool):
    with pytest.raises(RemoteError, match="fail_custom") as ei:
        pool.call("fail_custom")
    assert "boom-1" in str(ei.value)


def test_unpicklable_result_names_method_and_type_and_actor_lives(pool):
    pid = pool.call("pid", worker=0)
    with pytest.raises(RemoteError, match="unpicklable_result.*lambda_holder"):
        pool.call("unpicklable_result", worker=0)
    assert pool.call("pid", worker=0) == pid


def test_unpicklable_argument_raises_in_caller(pool):
    with pytest.raises(TypeError):
        pool.call("echo", threading.Lock())
    assert pool.call("echo", 1) == (1,)
    assert all(w["outstanding"] == 0 for w in pool.status()["workers"])


def test_function_argument_shipped_by_value(pool):
    pool.call("put", "x", 41, worker=0)
    assert pool.call("apply", lambda obj, k: obj.d[k] + 1, "x", worker=0) == 42


def test_status_has_the_process_pool_keys(pool):
    local = ProcessPool(PoolSpec(name="test/local", init=S.make_kv))
    local.start()
    try:
        local.call("echo", 1)
        want, want_w = set(local.status()), set(local.status()["workers"][0])
    finally:
        local.close()
    pool.call("echo", 1)
    st = pool.status()
    assert want <= set(st) and want_w <= set(st["workers"][0])
    assert st["name"] == "test/ray" and st["state"] == "ready" and st["calls"] >= 1
    assert st["workers"][0]["actor"] and st["workers"][0]["node"]


def test_broadcast_with_replay(pool):
    assert pool.broadcast("remember", "a", replay=True) == [None, None]
    assert pool.broadcast("remembered") == [["a"], ["a"]]


def test_share_puts_once_and_every_pool_reads_it(ray_cluster):
    import numpy as np
    import pyarrow as pa

    a, b = _pool(name="test/sink-a"), _pool(name="test/sink-b")
    try:
        batch = pa.RecordBatch.from_pydict({"seq": np.arange(100_000), "v": np.ones(100_000)})
        ref = a.share(batch)  # one copy in the object store, for every sink
        rows = [p.call("apply", lambda obj, rb: (rb.num_rows, int(rb.column(0)[-1].as_py())), ref) for p in (a, b)]
        assert rows == [(100_000, 99_999)] * 2
    finally:
        a.close()
        b.close()


# -- lifecycle --------------------------------------------------------------------------------


def test_init_error_names_the_cause_and_leaves_no_actor(ray_cluster):
    p = make_pool(PoolSpec(name="test/badinit", init=S.make_failing, workers=2), backend="ray")
    with pytest.raises(PoolStartError) as ei:
        p.start()
    msg = str(ei.value)
    assert "test/badinit" in msg and "cannot open the store: bad meta" in msg and "Traceback" in msg
    assert p.state is PoolState.CLOSED
    p.close()


def test_unplaceable_pool_fails_to_start_with_a_hint(ray_cluster):
    p = make_pool(
        PoolSpec(name="test/nowhere", init=S.make_kv, start_timeout=2), backend="ray", resources={"no_such_thing": 1}
    )
    with pytest.raises(PoolStartError, match="did not finish init within 2.*no_such_thing"):
        p.start()
    p.close()


def test_unknown_node_is_a_start_error(ray_cluster):
    p = make_pool(PoolSpec(name="test/ray", init=S.make_kv), backend="ray", node="10.9.9.9")
    with pytest.raises(PoolStartError, match="no alive Ray node '10.9.9.9'"):
        p.start()
    p.close()


def test_node_pins_every_actor(ray_cluster):
    target = ray_cluster.other or ray_cluster.head
    p = _pool({"node": target}, workers=2)
    try:
        assert {w["node"] for w in p.status()["workers"]} == {target}
    finally:
        p.close()


def test_close_waits_for_in_flight_and_runs_shutdown(ray_cluster, tmp_path):
    marker = tmp_path / "shutdown"
    p = _pool({"env": {"EXEC_TEST_SHUTDOWN_FILE": str(marker)}}, workers=2, shutdown_method="shutdown")
    pids = {p.call("pid", worker=i) for i in range(2)}
    f = p.submit("sleep", 0.3)
    p.close(timeout=5)
    assert f.result() == 0.3
    assert {int(x) for x in marker.read_text().split()} == pids
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    with pytest.raises(PoolClosed):
        p.submit("echo", 1)


def test_close_fails_calls_past_its_timeout(ray_cluster):
    p = _pool(workers=1, shutdown_method="shutdown_fails")
    f = p.submit("sleep", 20)
    p.close(timeout=0.3)
    with pytest.raises(PoolClosed, match="sleep"):
        f.result()
    assert p.state is PoolState.CLOSED
    p.close()  # idempotent
    with pytest.raises(PoolClosed):
        p.call("echo", 1)


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["call", "submit"])
def test_kill9_of_the_actor_fails_its_calls_and_is_replaced(ray_cluster, via):
    p = _pool(workers=1)
    try:
        p.broadcast("remember", "setup", replay=True)
        pid = p.call("pid")
        t0 = time.monotonic()
        if via == "call":
            with pytest.raises(WorkerCrashed) as ei:
                p.call("die", "sigkill")
        else:
            dying = p.submit("die", "sigkill", 0.2)
            queued = p.submit("echo", 1)  # behind it on the same actor: not retried either
            with pytest.raises(WorkerCrashed) as ei:
                dying.result()
            with pytest.raises(WorkerCrashed, match="echo"):
                queued.result()
        assert time.monotonic() - t0 < 5
        msg = str(ei.value)
        assert "test/ray" in msg and "die" in msg and f"pid {pid}" in msg and "died" in msg, msg
        assert p.call("remembered") == ["setup"]  # init and the replayed broadcast ran again
        assert p.call("pid") != pid
        _wait_ready(p)
        st = p.status()
        assert st["restarts"] == 1 and str(pid) in st["last_error"]
        assert all(w["outstanding"] == 0 for w in st["workers"])
    finally:
        p.close()


def test_idle_actor_killed_from_outside_is_replaced_before_the_next_call(ray_cluster):
    p = _pool(workers=1)
    try:
        pid = p.call("pid")
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while p.status()["restarts"] == 0:  # seen through the watch call, with no call running
            assert time.monotonic() < end
            time.sleep(0.01)
        assert p.call("pid", timeout=10) != pid
    finally:
        p.close()


@pytest.mark.parametrize("via", ["call", "submit"])
def test_timeout_kills_and_replaces_the_actor(ray_cluster, via):
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
        assert "test/ray" in msg and "sleep did not finish within 0.3s" in msg, msg
        assert isinstance(ei.value, TimeoutError)
        assert p.call("pid") != pid
        end = time.monotonic() + 5
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < end, "the timed-out actor's process is still running"
            time.sleep(0.02)
    finally:
        p.close()


def test_crash_loop_marks_the_pool_failed(ray_cluster):
    p = _pool(workers=1, max_restarts=2, restart_window=30)
    try:
        for _ in range(2):
            with pytest.raises(WorkerCrashed):
                p.call("die", "sigkill")
        with pytest.raises(PoolBroken, match="3 worker crashes"):
            p.call("die", "sigkill")
        assert p.state is PoolState.FAILED
        with pytest.raises(PoolBroken) as ei:
            p.call("echo", 1)
        assert "test/ray" in str(ei.value)
        assert p.status()["state"] == "failed"
    finally:
        p.close()


def test_crash_loop_in_init_fails_waiting_calls_with_pool_broken(ray_cluster, tmp_path):
    env = {"EXEC_TEST_MARKER": str(tmp_path / "started")}
    p = _pool({"env": env}, workers=1, init=S.make_kv_crashing_after_start, max_restarts=2, restart_window=30)
    try:
        with pytest.raises(WorkerCrashed):
            p.call("die", "sigkill")
        waiting = p.submit("echo", 1)  # queued for a replacement that never comes up
        with pytest.raises(PoolBroken, match="init"):
            waiting.result(timeout=30)
        assert p.state is PoolState.FAILED
    finally:
        p.close()


def test_call_queued_for_a_replacement_times_out(ray_cluster, tmp_path):
    env = {"EXEC_TEST_MARKER": str(tmp_path / "started")}
    p = _pool({"env": env}, workers=1, init=S.make_kv_hanging_after_start)
    try:
        with pytest.raises(WorkerCrashed):
            p.call("die", "sigkill")
        t = time.monotonic()
        with pytest.raises(CallTimeout, match="echo.*waiting for worker 0 to start"):
            p.call("echo", 1, timeout=0.5)
        assert time.monotonic() - t < 3
    finally:
        t = time.monotonic()
        p.close(timeout=1)
        assert time.monotonic() - t < 10  # does not wait for the hanging init


# -- byte streams -----------------------------------------------------------------------------


@pytest.fixture
def spool(ray_cluster):
    p = _pool({"chunk_bytes": SMALL, "chunks_in_flight": 3}, name="test/objstore", workers=2)
    yield p
    p.close()


def _pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, 5 * SMALL + 17])
def test_put_roundtrip(spool, size):
    data = os.urandom(size)
    assert spool.stream_put("consume_bytes", ("obj",), io.BytesIO(data)) == data


def test_put_zero_copy_views_and_early_stop(spool):
    assert spool.stream_put("consume", ("obj:views",), S.GenReader(3 * SMALL + 5)) == 3 * SMALL + 5
    assert spool.stream_put("consume_some", ("obj",), S.GenReader(50 * SMALL)) == 10
    assert spool.call("echo", 1, timeout=5) == (1,)


@pytest.mark.parametrize("size", [0, 100, 7 * SMALL + 3])
def test_get_roundtrip(spool, size):
    with spool.stream_get("produce", (size, 4096)) as r:
        assert r.read() == _pattern(size)


def test_get_iter_views_and_early_close(spool):
    r = spool.stream_get("produce", (10 * SMALL,))
    assert sum(len(v) for v in r.iter_views()) == 10 * SMALL
    r.close()
    r = spool.stream_get("produce", (1 << 30,))
    assert len(r.read(1000)) == 1000
    r.close()  # cancels: the actor stops producing
    assert spool.call("echo", 1, timeout=5) == (1,)
    assert all(w["outstanding"] == 0 for w in spool.status()["workers"])


def test_small_call_behind_a_stream_times_out_without_cutting_it(ray_cluster):
    """As the local pool does: the call queued behind a held stream fails alone; the actor
    (and so the stream) lives on."""
    p = _pool({"chunk_bytes": SMALL, "chunks_in_flight": 3}, name="test/objstore", workers=1)
    try:
        pid = p.call("pid")
        r = p.stream_get("produce", (20 * SMALL,))
        assert len(r.read(100)) == 100
        with pytest.raises(CallTimeout, match="busy with a byte stream"):
            p.call("echo", 1, timeout=0.5)
        rest = r.read()
        r.close()
        assert len(rest) == 20 * SMALL - 100
        assert p.call("pid", timeout=5) == pid
    finally:
        p.close()


def test_get_error_at_open_raises_at_the_call(spool):
    with pytest.raises(TypeError):
        spool.stream_get("produce", ("not a size",))
    assert spool.call("echo", 2, timeout=5) == (2,)


def test_source_error_fails_the_put_and_frees_the_actor(spool):
    with pytest.raises(OSError, match="disk read error"):
        spool.stream_put("consume", ("x",), S.FailingSource(100 * SMALL, after=3 * SMALL))
    assert spool.call("echo", 2, timeout=5) == (2,)
    assert spool.stream_put("consume", ("x",), S.GenReader(5 * SMALL)) == 5 * SMALL


def test_actor_death_mid_put_and_mid_get_is_reported_not_hung(spool):
    with pytest.raises(WorkerCrashed, match="consume_and_die"):
        spool.stream_put("consume_and_die", ("x",), S.GenReader(100 * SMALL))
    with pytest.raises((WorkerCrashed, StreamAborted)):
        r = spool.stream_get("produce_and_die", (100 * SMALL,))
        try:
            r.read()
        finally:
            r.close()
    _wait_ready(spool)
    assert spool.stream_put("consume", ("x",), S.GenReader(5 * SMALL)) == 5 * SMALL
    with spool.stream_get("produce", (SMALL,)) as r2:
        assert len(r2.read()) == SMALL


def _anon(pid: int) -> int:
    """Private (anonymous) resident bytes: object-store pages are shared, not counted."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


class _Peak:
    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.base = {p: _anon(p) for p in pids}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for p in self.pids:
                self.peak[p] = max(self.peak[p], _anon(p))

    def growth(self, pid: int) -> int:
        return self.peak[pid] - self.base[pid]

    def __enter__(self) -> "_Peak":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direction", ["put", "get"])
def test_256mib_stream_keeps_memory_flat(ray_cluster, direction):
    size, chunk, depth = 256 << 20, 8 << 20, 4
    p = _pool({"chunk_bytes": chunk, "chunks_in_flight": depth}, name="test/objstore", workers=1)
    try:
        apid = p.status()["workers"][0]["pid"]
        with _Peak(os.getpid(), apid) as m:
            if direction == "put":
                n = p.stream_put("consume", ("big",), S.GenReader(size, chunk))
            else:
                n = 0
                with p.stream_get("produce", (size, chunk)) as r:
                    buf = bytearray(1 << 20)
                    while k := r.readinto(buf):
                        n += k
        assert n == size
        limit = 3 * chunk + (48 << 20)  # a chunk buffer or two, plus interpreter noise
        assert m.growth(os.getpid()) < limit, f"caller grew by {m.growth(os.getpid()) >> 20} MiB"
        assert m.growth(apid) < limit, f"actor grew by {m.growth(apid) >> 20} MiB"
    finally:
        p.close()


def test_site_dirs_refused_with_the_fix(tmp_path):
    """A local folder of packages means nothing on another node: RayPool says to use runtime_env."""
    with pytest.raises(ValueError, match="site_dirs is for local workers; give RayPool a runtime_env"):
        make_pool(PoolSpec(name="test/ray", init=S.make_kv, site_dirs=(str(tmp_path),)), backend="ray")


# -- limits and confinement -------------------------------------------------------------------


def test_limits_apply_in_actors_and_confinement_is_refused(ray_cluster):
    from executors import WorkerLimits

    p = _pool(init=S.make_probe, limits=WorkerLimits(memory_bytes=4 << 30, max_open_files=512, nice=3))
    try:
        got = p.call("limits")
        assert got["data"] == (4 << 30, 4 << 30) and got["nofile"] == (512, 512) and got["nice"] == 3
    finally:
        p.close()
    with pytest.raises(PoolStartError, match="needs local worker processes"):
        _pool(init=S.make_probe, confine=S.refuse_confinement)
