"""Shared test guards: every test leaves no child process and no shared-memory segment."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

import psutil
import pytest

from tests._ray_cluster import RayCluster, start_ray_cluster


# Long-lived helpers of the multiprocess library, shared by every pool of the test session.
_SESSION_HELPERS = ("forkserver", "resource_tracker")


def _ours(proc: psutil.Process, me: psutil.Process) -> bool:
    """A leftover of the test, not the session's fork server (a direct child; the workers it
    forks share its command line but are its children)."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        helper = proc.ppid() == me.pid and any(h in " ".join(proc.cmdline()) for h in _SESSION_HELPERS)
    except psutil.Error:
        return False
    return not helper


def _under(proc: psutil.Process, existing: set[int], me: psutil.Process) -> bool:
    """A descendant of a process that was there before the test (a module's daemon starting a
    worker): that process owns it and is checked when it stops."""
    try:
        parent = proc.parent()
        while parent is not None and parent.pid != me.pid:
            if parent.pid in existing:
                return True
            parent = parent.parent()
    except psutil.Error:
        return False
    return False


def _shm() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if not n.startswith(("sem.", "PostgreSQL."))}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a child process or a new /dev/shm segment behind."""
    with leak_guard():
        yield


@contextlib.contextmanager
def leak_guard() -> Iterator[None]:
    """The check of `no_leaks`, for folders whose own guard uses it for some tests."""
    me = psutil.Process()
    before = _shm()
    # Servers that session- or module-scoped fixtures started are set up before this fixture
    # and torn down after it: only processes new since the test began are its leftovers.
    existing = {c.pid for c in me.children(recursive=True)}
    # Owners whose descendants are theirs to check (a module's daemon); not the session's fork
    # server, whose children are the workers of this test's own pools.
    owners = {c.pid for c in me.children(recursive=True) if _ours(c, me)}
    yield
    deadline = time.monotonic() + 5
    while True:
        children = [c for c in me.children(recursive=True) if c.pid not in existing and _ours(c, me) and not _under(c, owners, me)]
        if not children or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for c in children:  # kill them so one leak does not cascade into every later test
        c.kill()
    leaked = _shm() - before
    assert not children, f"test left processes behind: {[(c.pid, c.cmdline()[:3]) for c in children]}"
    assert not leaked, f"test left shared memory behind: {sorted(leaked)}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A local two-node Ray cluster, started once for the session when a test first asks."""
    with start_ray_cluster() as cluster:
        yield cluster
