"""LandlockRules as a PoolSpec.confine: a worker confined to what the rules name, and the
same worker unconfined can do all of it (so each assertion can fail)."""

from __future__ import annotations

import os
import socket
import sys
import sysconfig

import pytest

import exec_services as S
from executors import PoolSpec, PoolStartError, ProcessPool
from executors._landlock import LandlockRules, abi_version, missing_features

ABI = abi_version()
pytestmark = pytest.mark.skipif(ABI < 4, reason=f"this kernel's Landlock ABI is {ABI}: the tests need 4 (files and TCP)")


def _python_paths() -> tuple[str, ...]:
    paths = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"], *(p for p in sys.path if p)}
    return tuple(sorted(paths)) + ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/proc/self")


@pytest.fixture
def listeners():
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


@pytest.mark.parametrize("confined", [True, False])
def test_a_confined_worker_keeps_to_its_rules(tmp_path, listeners, confined):
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (other / "secret").write_text("s3cret")
    allowed, denied = listeners
    rules = LandlockRules(read=_python_paths(), write=(str(mine),), connect_tcp=(allowed,), abi=ABI)
    pool = ProcessPool(PoolSpec(name="test/landlock", init=S.make_files, confine=rules if confined else None))
    pool.start()
    try:
        pool.call("write", str(mine / "ok"), "fine")
        assert pool.call("read", str(mine / "ok")) == "fine"
        assert pool.call("connect", allowed)
        if not confined:  # the same worker unconfined can do all of the rest
            assert pool.call("read", str(other / "secret")) == "s3cret"
            pool.call("write", str(tmp_path / "outside"), "x")
            assert pool.call("connect", denied)
            return
        with pytest.raises(PermissionError):
            pool.call("read", str(other / "secret"))
        with pytest.raises(PermissionError):
            pool.call("write", str(tmp_path / "outside"), "x")
        with pytest.raises(PermissionError):
            pool.call("connect", denied)
        if ABI >= 6:  # scoped: no signal to a process outside the worker's domain
            with pytest.raises(PermissionError):
                pool.call("signal", os.getpid())
        assert not (tmp_path / "outside").exists()
    finally:
        pool.close()


def test_rules_planned_for_a_newer_kernel_fail_the_start():
    pool = ProcessPool(PoolSpec(name="test/landlock-new", init=S.make_files, confine=LandlockRules(abi=ABI + 1)))
    with pytest.raises(PoolStartError, match=f"Landlock ABI {ABI + 1} was planned, this kernel has ABI {ABI}"):
        pool.start()


def test_missing_features_by_abi():
    assert missing_features(0)[0] == "file access"
    assert missing_features(3) == ["TCP connect and bind", "device ioctls", "signals to and abstract unix sockets of other processes"]
    assert missing_features(6) == []
