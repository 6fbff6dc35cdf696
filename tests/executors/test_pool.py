"""What ProcessPool has beyond the Pool contract (which tests/contract runs on every backend):
routing, logging, pickling of init, stale segments, several pools side by side."""

from __future__ import annotations

import functools
import logging
import os

import pytest

import exec_services as S
from executors import (
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolSpec,
    ProcessPool,
    make_pool,
)


def _spec(**kw):
    kw.setdefault("name", "test/kv")
    kw.setdefault("init", S.make_kv)
    return PoolSpec(**kw)


def test_make_pool_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown pool backend 'ray2'"):
        make_pool(_spec(), backend="ray2")


@pytest.fixture
def ppool():
    p = ProcessPool(_spec(workers=2))
    p.start()
    yield p
    p.close()


def test_routing_prefers_least_outstanding(ppool):
    slow = ppool.submit("sleep", 0.5, worker=0)
    assert ppool.submit("echo", 1).worker == 1
    slow.result()


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
