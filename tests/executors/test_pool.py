"""The Pool contract, on both backends where it applies."""

from __future__ import annotations

import functools
import logging
import os
import threading

import pytest

import exec_services as S
from executors import (
    InlinePool,
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolSpec,
    PoolState,
    ProcessPool,
    RemoteError,
    RemoteTraceback,
    make_pool,
)


def _spec(**kw):
    kw.setdefault("name", "test/kv")
    kw.setdefault("init", S.make_kv)
    return PoolSpec(**kw)


@pytest.fixture(params=["process", "inline"])
def pool(request):
    p = make_pool(_spec(workers=2), backend=request.param)
    p.start()
    yield p
    p.close()


def test_call_and_submit(pool):
    assert pool.state is PoolState.READY
    assert pool.call("put", "k", b"v" * 100) is None
    futs = [pool.submit("echo", i) for i in range(500)]
    assert [f.result() for f in futs] == [(i,) for i in range(500)]
    assert all(isinstance(f.worker, int) for f in futs)


def test_error_is_reraised_with_remote_traceback(pool):
    with pytest.raises(ValueError, match="nope") as ei:
        pool.call("fail", "nope")
    if isinstance(pool, ProcessPool):
        assert isinstance(ei.value.__cause__, RemoteTraceback)
        assert "in fail" in str(ei.value.__cause__)


def test_function_argument_shipped_by_value(pool):
    # a lambda only pickles with cloudpickle: it runs in the worker, next to the data
    pool.call("put", "x", 41, worker=0)
    assert pool.call("apply", lambda obj, k: obj.d[k] + 1, "x", worker=0) == 42


def test_status_fields(pool):
    pool.call("echo", 1)
    st = pool.status()
    assert st["name"] == "test/kv" and st["state"] == "ready"
    assert {"restarts", "calls", "errors", "last_error", "latency_sum", "started_at"} <= set(st)
    assert st["calls"] >= 1
    assert {"id", "pid", "alive", "outstanding"} <= set(st["workers"][0])


def test_closed_pool_refuses_calls_and_close_is_idempotent(pool):
    pool.close()
    pool.close()
    assert pool.state is PoolState.CLOSED
    with pytest.raises(PoolClosed):
        pool.call("echo", 1)


def test_make_pool_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown pool backend 'ray2'"):
        make_pool(_spec(), backend="ray2")


# -- ProcessPool only -----------------------------------------------------------------------


@pytest.fixture
def ppool():
    p = ProcessPool(_spec(workers=2))
    p.start()
    yield p
    p.close()


def test_calls_run_in_other_processes_and_pin(ppool):
    pids = {ppool.call("pid", worker=i) for i in range(2)}
    assert len(pids) == 2 and os.getpid() not in pids
    assert ppool.call("pid", worker=1) == ppool.call("pid", worker=1)


def test_routing_prefers_least_outstanding(ppool):
    slow = ppool.submit("sleep", 0.5, worker=0)
    assert ppool.submit("echo", 1).worker == 1
    slow.result()


def test_many_threads_many_calls(ppool):
    errors = []

    def run(t):
        try:
            for i in range(300):
                assert ppool.call("echo", t, i) == (t, i)
                f = ppool.submit("echo", i)
                assert f.result() == (i,)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert all(w["outstanding"] == 0 for w in ppool.status()["workers"])


def test_unpicklable_exception_becomes_remote_error(ppool):
    with pytest.raises(RemoteError, match="fail_custom") as ei:
        ppool.call("fail_custom")
    assert "boom-1" in str(ei.value)


def test_unpicklable_result_names_method_and_type_and_worker_lives(ppool):
    pid = ppool.call("pid", worker=0)
    with pytest.raises(RemoteError, match="unpicklable_result.*lambda_holder"):
        ppool.call("unpicklable_result", worker=0)
    assert ppool.call("pid", worker=0) == pid


def test_unpicklable_argument_raises_in_caller(ppool):
    lock = threading.Lock()
    with pytest.raises(TypeError):
        ppool.call("echo", lock)
    assert ppool.call("echo", 1) == (1,)


def test_broadcast_with_replay(ppool):
    assert ppool.broadcast("remember", "a", replay=True) == [None, None]
    assert ppool.broadcast("remembered") == [["a"], ["a"]]


def test_close_waits_for_in_flight_and_runs_shutdown(tmp_path, monkeypatch):
    marker = tmp_path / "shutdown"
    monkeypatch.setenv("EXEC_TEST_SHUTDOWN_FILE", str(marker))
    p = ProcessPool(_spec(workers=2, shutdown_method="shutdown"))
    p.start()
    pids = {p.call("pid", worker=i) for i in range(2)}
    f = p.submit("sleep", 0.3)
    p.close(timeout=5)
    assert f.result() == 0.3
    assert {int(x) for x in marker.read_text().split()} == pids
    with pytest.raises(PoolClosed):
        p.submit("echo", 1)


def test_close_fails_calls_past_its_timeout(caplog):
    p = ProcessPool(_spec(workers=1, shutdown_method="shutdown_fails"))
    p.start()
    f = p.submit("sleep", 20)
    with caplog.at_level(logging.WARNING, logger="executors"):
        p.close(timeout=0.3)
    with pytest.raises(PoolClosed, match="sleep"):
        f.result()
    assert p.state is PoolState.CLOSED


def test_shutdown_error_is_logged_not_raised(caplog):
    p = ProcessPool(_spec(workers=1, shutdown_method="shutdown_fails"))
    p.start()
    with caplog.at_level(logging.WARNING, logger="executors"):
        p.close()
    assert "shutdown went wrong" in caplog.text


def test_partial_init_pickles_by_reference():
    p = ProcessPool(_spec(init=functools.partial(S.KV)))
    p.start()
    try:
        assert p.call("echo", 1) == (1,)
    finally:
        p.close()


def test_inline_pool_runs_in_process():
    p = InlinePool(_spec())
    p.start()
    assert p.call("pid") == os.getpid()
    p.close()


def test_unknown_worker_index(ppool):
    with pytest.raises(ValueError, match="no worker 7"):
        ppool.call("echo", worker=7)


def test_errors_derive_from_pool_error():
    assert issubclass(PoolBroken, PoolError) and issubclass(PoolClosed, PoolError)


def test_cleanup_stale_segments_removes_only_dead_owners(tmp_path):
    import subprocess
    import sys

    from executors import cleanup_stale_segments

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"vsmpool-{dead.pid}-ring").write_bytes(b"x")
    (tmp_path / f"vsmpool-{os.getpid()}-ring").write_bytes(b"x")
    (tmp_path / "other-segment").write_bytes(b"x")
    assert cleanup_stale_segments(str(tmp_path)) == [f"vsmpool-{dead.pid}-ring"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-segment", f"vsmpool-{os.getpid()}-ring"]


def test_several_pools_side_by_side():
    pools = [ProcessPool(_spec(name=f"test/p{i}", workers=1)) for i in range(3)]
    for p in pools:
        p.start()
    try:
        for i, p in enumerate(pools):
            p.call("put", "k", i)
        assert [p.call("get", "k") for p in pools] == [0, 1, 2]
        assert len({p.call("pid") for p in pools}) == 3
    finally:
        for p in pools:
            p.close()


def _module_seen(kv, name):
    import importlib
    import sys

    mod = importlib.import_module(name)
    return getattr(mod, "MARK", "stock"), sys.path[:2]


def test_site_dirs_come_first_and_replace_preloaded_modules(tmp_path):
    """A pool's site_dirs win over what the worker already imported (its preload) and over
    the manager's own packages; their .pth files count; the manager is untouched."""
    import colorsys
    import sys

    site, extra = tmp_path / "site", tmp_path / "extra"
    site.mkdir(), extra.mkdir()
    (site / "colorsys.py").write_text("MARK = 'site'\n")
    (site / "more.pth").write_text(f"{extra}\n")
    (extra / "only_in_extra.py").write_text("MARK = 'extra'\n")
    p = ProcessPool(_spec(preload=("colorsys",), site_dirs=(str(site),)))
    p.start()
    try:
        mark, front = p.call("apply", _module_seen, "colorsys")
        assert mark == "site"
        assert front == [str(site), str(extra)]
        assert p.call("apply", _module_seen, "only_in_extra")[0] == "extra"
    finally:
        p.close()
    assert not hasattr(colorsys, "MARK") and str(site) not in sys.path
