"""What is RayPool's own: options, status fields (actor, node), the object store, placement, an
idle actor killed from outside, flat memory through the object store. The Pool contract it
shares with the local backends runs in tests/contract."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import exec_services as S
from executors import (
    PoolSpec,
    PoolStartError,
    PoolState,
    ProcessPool,
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


# -- status and the object store -------------------------------------------------------------


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


# -- placement --------------------------------------------------------------------------------


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


# -- failures ---------------------------------------------------------------------------------


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


# -- byte streams -----------------------------------------------------------------------------


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
