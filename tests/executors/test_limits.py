"""PoolSpec.limits and PoolSpec.confine: applied in every worker (and every replacement)
before init; a MemoryError under the limit is an error reply, and the worker lives."""

from __future__ import annotations

import os
import resource
import time

import pytest

import exec_services as S
from executors import PoolSpec, PoolStartError, ProcessPool, WorkerLimits, make_pool


def test_limits_apply_in_every_worker_and_its_replacement():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    limits = WorkerLimits(memory_bytes=1 << 30, max_open_files=256, cpus=(cpu,), nice=5, oom_score_adj=500)
    pool = ProcessPool(PoolSpec(name="test/limits", init=S.make_probe, workers=2, limits=limits))
    pool.start()
    try:
        for w in (0, 1):
            got = pool.call("limits", worker=w)
            assert got["data"] == (1 << 30, 1 << 30)
            assert got["nofile"] == (256, 256)
            assert got["cpus"] == [cpu]
            assert got["nice"] == 5
            assert got["oom"] == "500"
        pid = pool.status()["workers"][0]["pid"]
        os.kill(pid, 9)
        with pytest.raises(Exception):
            pool.call("limits", worker=0, timeout=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                got = pool.call("limits", worker=0)
                break
            except Exception:
                time.sleep(0.05)
        assert got["data"] == (1 << 30, 1 << 30) and got["nice"] == 5
        # the manager itself is untouched
        assert resource.getrlimit(resource.RLIMIT_DATA)[0] != 1 << 30
    finally:
        pool.close()


def test_memory_error_under_the_limit_is_an_error_and_the_worker_lives():
    pool = ProcessPool(PoolSpec(name="test/hog", init=S.make_probe, limits=WorkerLimits(memory_bytes=300 << 20)))
    pool.start()
    try:
        pid = pool.status()["workers"][0]["pid"]
        with pytest.raises(MemoryError):
            pool.call("hog")
        assert pool.call("small") == 42
        assert pool.status()["restarts"] == 0
        assert pool.status()["workers"][0]["pid"] == pid
    finally:
        pool.close()


def test_map_error_translates_at_the_boundary():
    pool = ProcessPool(PoolSpec(name="test/map", init=S.make_translating, limits=WorkerLimits(memory_bytes=300 << 20)))
    pool.start()
    try:
        with pytest.raises(RuntimeError, match="out of memory under the test limit"):
            pool.call("hog")
    finally:
        pool.close()


def test_confine_runs_before_init_and_its_failure_fails_the_start():
    import functools

    pool = ProcessPool(PoolSpec(name="test/confine", init=S.make_probe, confine=functools.partial(S.mark_confined, "yes")))
    pool.start()
    try:
        assert pool.call("limits")["confined"] == "yes"
    finally:
        pool.close()
    bad = ProcessPool(PoolSpec(name="test/refuse", init=S.make_probe, confine=S.refuse_confinement))
    with pytest.raises(PoolStartError, match="this kernel will not confine us"):
        bad.start()


def test_inline_pool_applies_nothing_to_the_caller():
    before = resource.getrlimit(resource.RLIMIT_DATA)
    pool = make_pool(PoolSpec(name="test/inline", init=S.make_probe, limits=WorkerLimits(memory_bytes=1 << 30)), backend="inline")
    pool.start()
    pool.close()
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


_FRESH_MANAGER = """
import sys
from executors import PoolSpec, ProcessPool, WorkerLimits
import exec_services as S
if __name__ == "__main__":
    pool = ProcessPool(PoolSpec(name="test/arrow-limit", init=S.make_probe, preload=("pyarrow.dataset",),
                                limits=WorkerLimits(memory_bytes=512 << 20)))
    pool.start()
    try:
        print(pool.call("allocate", 64 << 20))
    finally:
        pool.close()
"""


def test_a_worker_forked_from_a_server_that_imported_pyarrow_runs_under_a_limit_below_1_gib(tmp_path):
    """pyarrow's allocator maps a 1 GiB writable arena at its first allocation unless told to
    commit on demand; the fork server is where that must be told, since its workers inherit
    its mappings. A fresh manager, so this test's forkserver is the one that imports pyarrow."""
    import subprocess
    import sys

    script = tmp_path / "manager.py"
    script.write_text(_FRESH_MANAGER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(S.__file__), os.path.dirname(os.path.dirname(os.path.dirname(S.__file__)))])
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(64 << 20)
