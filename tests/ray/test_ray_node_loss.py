"""A lost Ray node (issue 25): the session's cluster gets a third node for each test, the pool's
actors are placed there, and the node is removed under load (`Cluster.remove_node`, as a
machine that dies: its raylet and every actor process on it are killed at once).

What must hold: a call in flight on the lost node fails at once naming the node; a pool that
may run anywhere is placed again on a node that can take it and serves; a pool pinned there
(RayNode) is marked failed with that reason instead of retrying a placement that cannot
happen; a byte stream through the lost node fails cleanly (no hang, the caller is told).
The daemon-level proof (a sink on the lost node misses no event) is test_ray_sinks.py's
test_sink_on_a_lost_node_gets_every_event_exactly_once.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest

import exec_services as S
from executors import PoolBroken, PoolSpec, PoolState, StreamAborted, WorkerCrashed, make_pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def third_node(ray_cluster) -> Iterator[Any]:
    """A node of its own for the test, removed at the end if the test did not remove it."""
    node = ray_cluster.cluster.add_node(num_cpus=1, object_store_memory=96 << 20, node_ip_address="127.0.0.1")
    ray_cluster.cluster.wait_for_nodes()
    yield node
    if node in ray_cluster.cluster.worker_nodes:
        ray_cluster.cluster.remove_node(node)


def _pool(name: str, **ray_opts: Any) -> Any:
    p = make_pool(PoolSpec(name=name, init=S.make_kv, workers=1, start_timeout=30), backend="ray", **ray_opts)
    p.start()
    return p


def _call_in_background(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # the outcome is the test's to judge
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _on_node(p: Any) -> str:
    (w,) = p.status()["workers"]
    return str(w["node"])


def test_pinned_pool_on_a_lost_node_fails_its_call_at_once_and_is_marked_failed(ray_cluster, third_node):
    p = _pool("test/pinned", node=third_node.node_id)
    try:
        assert _on_node(p) == third_node.node_id
        t, out = _call_in_background(p.call, "sleep", 600)  # would hold the call for 10 minutes
        time.sleep(0.5)
        ray_cluster.cluster.remove_node(third_node)
        t.join(60)
        assert not t.is_alive(), "the call on the lost node is still waiting"
        err = out.get("error")
        # the call's worker died with its node; the pool, pinned there, is failed at once (not
        # after max_restarts placements that cannot happen), so the call gets PoolBroken
        assert isinstance(err, PoolBroken), out
        msg = str(err)
        assert "its node has died" in msg and third_node.node_id[:12] in msg, msg
        assert "pinned there (RayNode)" in msg, msg
        assert p.state is PoolState.FAILED
        assert p.status()["restarts"] == 0, p.status()  # no placement was tried
        with pytest.raises(PoolBroken, match="pinned there"):
            p.call("pid")
    finally:
        p.close()


def test_pool_free_to_move_is_placed_again_on_a_node_that_can_take_it(ray_cluster, third_node):
    # the session's two nodes have one CPU each: hold them so that the pool's one-CPU actor
    # can only start on the third node, then let them go
    holders = [_pool(f"test/hold{i}", node=n, resources={"CPU": 1}) for i, n in enumerate({ray_cluster.head, ray_cluster.other} - {None})]
    try:
        p = _pool("test/mobile", resources={"CPU": 1})
    finally:
        for h in holders:
            h.close()
    try:
        assert _on_node(p) == third_node.node_id
        p.call("put", "k", "v")
        t, out = _call_in_background(p.call, "sleep", 600)
        time.sleep(0.5)
        ray_cluster.cluster.remove_node(third_node)
        t.join(60)
        assert not t.is_alive(), "the call on the lost node is still waiting"
        err = out.get("error")
        assert isinstance(err, WorkerCrashed) and not isinstance(err, PoolBroken), out
        assert "its node has died" in str(err) and third_node.node_id[:12] in str(err), str(err)
        assert p.call("pid", timeout=60) > 0  # the replacement serves
        assert p.state is PoolState.READY
        assert _on_node(p) != third_node.node_id
        assert p.call("get", "k") is None  # a new actor: the lost one's memory went with it
    finally:
        p.close()


def test_stream_through_a_lost_node_fails_cleanly(ray_cluster, third_node):
    p = make_pool(
        PoolSpec(name="test/objstore", init=S.make_kv, workers=1, start_timeout=30),
        backend="ray",
        node=third_node.node_id,
        chunk_bytes=64 << 10,
        chunks_in_flight=2,
    )
    p.start()
    try:
        # the plugin reads slowly, so the stream is still moving when the node goes
        t, out = _call_in_background(p.stream_put, "consume_slowly", (0.05,), S.GenReader(64 << 20, 64 << 10))
        time.sleep(1.0)
        ray_cluster.cluster.remove_node(third_node)
        t.join(60)
        assert not t.is_alive(), "the stream through the lost node hangs"
        err = out.get("error")
        # pinned to the lost node: the pool is failed, and the stream's caller is told why
        assert isinstance(err, (WorkerCrashed, StreamAborted, PoolBroken)), out
        assert "its node has died" in str(err) and third_node.node_id[:12] in str(err), str(err)
    finally:
        p.close()


# -- through the real daemon --------------------------------------------------------------------


def _plugin(d: Any, name: str) -> dict[str, Any]:
    (row,) = [p for p in d.rpc("plugin.list") if p["name"] == name]
    return row  # type: ignore[no-any-return]


def test_sink_on_a_lost_node_gets_every_event_exactly_once(ray_cluster, third_node, tmp_path):
    """The daemon runs its DuckDB sink on a Ray actor that lands on the third node; the node is
    lost while updates flow. The sink is placed again elsewhere, redelivered from its
    checkpoint (at least once from the journal) and keeps each event once in its table."""
    from tests.daemon import harness

    home = harness.prepare_home(tmp_path / "home", append='[Common.Plugins.duckdb]\nBackend = "ray"\nRayResources = { CPU = 1 }')
    config = home / "config.toml"
    config.write_text(config.read_text().replace("[Common.Plugins]\n", f'[Common.Plugins]\nRayAddress = "{ray_cluster.address}"\n', 1))
    holders = [_pool(f"test/hold{i}", node=n, resources={"CPU": 1}) for i, n in enumerate({ray_cluster.head, ray_cluster.other} - {None})]
    try:
        d = harness.start(home)
    finally:
        for h in holders:
            h.close()
    try:
        (worker,) = _plugin(d, "duckdb")["pool"]["workers"]
        assert worker["node"] == third_node.node_id, worker
        states = "\n".join(
            '{"ID":{"Miner":1001,"Number":%d},"SectorType":8}' % n for n in range(200)
        )
        (tmp_path / "states.jsonl").write_text(states + "\n")
        d.cli("sectors", "import", str(tmp_path / "states.jsonl"))
        acknowledged: list[int] = []
        stop = threading.Event()

        def updates() -> None:
            n = 0
            while not stop.is_set() and n < 400:
                d.rpc("sectors.update", {"miner": 1001, "number": n % 200, "fields": {"AbortReason": f"update {n}"}})
                acknowledged.append(n)
                n += 1

        t = threading.Thread(target=updates, daemon=True)
        t.start()
        time.sleep(0.5)
        ray_cluster.cluster.remove_node(third_node)
        t.join(90)
        stop.set()
        assert acknowledged, "no update was acknowledged"
        head = d.wait_delivered(timeout=90)
        rows = d.rpc("query", {"sql": "SELECT count(*) AS n, count(DISTINCT seq) AS d, max(seq) AS m FROM sector_events"})["rows"]
        assert rows == [[head, head, head]], (rows, head)
        kinds = dict(d.rpc("query", {"sql": "SELECT kind, count(*) FROM sector_events GROUP BY kind"})["rows"])
        assert kinds.get("import") == 200 and kinds.get("update") == len(acknowledged), kinds
        duck = _plugin(d, "duckdb")
        assert duck["state"] == "ready" and duck["pool"]["state"] == "ready", duck
        (worker,) = duck["pool"]["workers"]
        assert worker["node"] != third_node.node_id
    finally:
        harness.finish(d)
