"""Executor tests: every test has a timeout and must leave no process and no segment behind."""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_TIMEOUT = int(os.environ.get("EXEC_TEST_TIMEOUT", "60"))
_OUR_SHM_PREFIXES = ("vsmpool-", "psm_", "wnsm_", "mp-", "sem.mp-")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(_HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


def _helpers() -> set[int]:
    """The forkserver and the resource tracker live as long as the test process: not leaks."""
    pids = set()
    try:
        import multiprocess.forkserver
        import multiprocess.resource_tracker

        for pid in (
            multiprocess.forkserver._forkserver._forkserver_pid,
            multiprocess.resource_tracker._resource_tracker._pid,
        ):
            if pid:
                pids.add(pid)
    except Exception:
        pass
    return pids


def _our_procs() -> dict[int, str]:
    helpers = _helpers()
    out = {}
    for p in psutil.Process().children(recursive=True):
        if p.pid in helpers:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            out[p.pid] = " ".join(p.cmdline())[:120]
        except psutil.Error:
            pass
    return out


def _shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(_OUR_SHM_PREFIXES)}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks():
    before_procs = set(_our_procs())
    before_shm = _shm()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = {pid: cmd for pid, cmd in _our_procs().items() if pid not in before_procs}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"child processes left behind: {left}"
    new_shm = _shm() - before_shm
    assert not new_shm, f"shared memory left in /dev/shm: {sorted(new_shm)}"
