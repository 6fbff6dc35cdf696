"""The session's local Ray cluster and the Ray-aware leak check, shared by tests/ray and the
backend-parametrised contract suite (tests/contract).

The cluster (`ray.cluster_utils.Cluster`: a head node and a second node, both on loopback,
both processes of this test session) is started once, when a test first asks for it, and
stopped by handle at the end: never `ray stop`, which kills every Ray process on the host.
Without Ray the tests that need it are skipped with the reason, or fail when
VSM_REQUIRE_SERVERS=1 (CI).

Ray's raylet starts and reaps its own pooled `ray::IDLE` workers at any time, which are not a
test's leftovers; an actor process of a pool is (`ray_leak_check`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterator

import psutil
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # 2.60 turns token auth on otherwise
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Keep the whole cluster on loopback: without this, ray.init() rewrites 127.0.0.1 in the
# address to the host's outward IP, where the loopback-bound GCS does not listen. (Read by
# ray_constants at import: set before Ray is imported.)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

STORE_BYTES = 192 << 20  # per node: a 256 MiB stream must flow through it, not sit in it
ACTOR_TITLE = "ray::_VsmWorker"


def need_ray() -> Any:
    try:
        import ray
        import ray.cluster_utils  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        msg = f"Ray unavailable: import ray failed: {type(exc).__name__}: {exc} (pip install 'vsm-pool[ray]')"
        if os.environ.get("VSM_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{msg} (VSM_REQUIRE_SERVERS=1)", pytrace=False)
        pytest.skip(msg)
    return ray


class RayCluster:
    """The session's cluster: `head` and `other` node ids, `address`."""

    def __init__(self, cluster: Any, head: str, other: str | None) -> None:
        self.cluster = cluster
        self.address = cluster.address
        self.head = head
        self.other = other


@contextlib.contextmanager
def start_ray_cluster() -> Iterator[RayCluster]:
    ray = need_ray()
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("Ray is already initialised in this test process", pytrace=False)
    node_args = {"num_cpus": 1, "object_store_memory": STORE_BYTES, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "include_dashboard": False},
    )
    other = None
    try:
        try:
            cluster.add_node(**node_args)
        except Exception as exc:  # one node is enough for everything but the placement test
            print(f"tests/ray: second node did not start: {exc}", file=sys.stderr)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        me = ray.get_runtime_context().get_node_id()
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        others = [n for n in nodes if n != me]
        other = others[0] if others else None
        yield RayCluster(cluster, me, other)
    finally:
        ray.shutdown()
        cluster.shutdown()  # kills the processes this cluster started, by handle


def _our_actors() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == "vsm-pool"]


def _ray_managed(proc: psutil.Process, daemons: set[int]) -> bool:
    """A process a raylet of the session started (its parent is one of the cluster's daemons)."""
    try:
        return proc.ppid() in daemons
    except psutil.Error:
        return True


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _session_helper(proc: psutil.Process, me: psutil.Process) -> bool:
    """multiprocess's forkserver / resource tracker (ProcessPool baselines): live all session."""
    try:
        return proc.ppid() == me.pid and any(h in _title(proc) for h in ("forkserver", "resource_tracker"))
    except psutil.Error:
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def ray_leak_check() -> Iterator[None]:
    """Fail the test that leaves an actor of a pool, or a process of its own, behind. Enter it
    once the session's cluster runs: processes there before the test are the cluster's."""
    me = psutil.Process()
    existing = {c.pid for c in me.children(recursive=True)}
    daemons = existing  # the session cluster's raylets, GCS, agents... (started before any test)
    yield
    deadline = time.monotonic() + 5
    while True:
        actors = _our_actors()
        kids = [c for c in me.children(recursive=True) if _alive(c)]
        actor_procs = [c for c in kids if _title(c).startswith(ACTOR_TITLE)]
        strays = [
            c for c in kids if c.pid not in existing and not _ray_managed(c, daemons) and not _session_helper(c, me)
        ]
        if not (actors or actor_procs or strays) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for c in strays:  # ours by construction (descendants of this test process)
        try:
            c.kill()
        except psutil.Error:
            pass
    assert not actors, f"test left Ray actors alive: {actors}"
    assert not actor_procs, f"test left actor processes: {[(c.pid, _title(c)[:60]) for c in actor_procs]}"
    assert not strays, f"test left processes behind: {[(c.pid, _title(c)[:60]) for c in strays]}"
