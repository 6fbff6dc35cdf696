"""The Pool contract suite: one set of behaviours, run against every backend of executors/.

`backend` is each of process, inline and ray; a test marked `@only("process", "ray")` runs
on those alone (inline runs in the caller: it has no worker to crash, time out or pin). `new`
makes a started pool of the test's backend and closes it after the test. A third backend
is one more entry in BACKENDS and its options in `_options`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for _p in (ROOT, os.path.join(ROOT, "tests", "executors")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import exec_services as S  # noqa: E402
from executors import Pool, PoolSpec, make_pool  # noqa: E402
from tests._ray_cluster import ray_leak_check  # noqa: E402
from tests.conftest import leak_guard  # noqa: E402

BACKENDS = ("process", "inline", "ray")
STREAM_CHUNK = 64 << 10  # small slots/chunks: streams cross many boundaries
STREAM_DEPTH = 3


def only(*backends: str) -> pytest.MarkDecorator:
    return pytest.mark.backends(*backends)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run this contract test on these backends only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = marker.args if marker else BACKENDS
        metafunc.parametrize("backend", names, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """The repo-wide guard for local backends; on Ray, the Ray-aware one (the cluster's own
    processes come and go)."""
    if getattr(getattr(request.node, "callspec", None), "params", {}).get("backend") == "ray":
        request.getfixturevalue("ray_cluster")  # its processes are there before the test
        with ray_leak_check():
            yield
    else:
        with leak_guard():
            yield


def _options(backend: str, env: dict[str, str] | None, streams: bool) -> dict[str, Any]:
    if backend == "ray":
        opts: dict[str, Any] = {"env": env} if env else {}
        if streams:
            opts.update(chunk_bytes=STREAM_CHUNK, chunks_in_flight=STREAM_DEPTH)
        return opts
    return {}


@pytest.fixture
def new(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Pool]]:
    """new(env=None, streams=False, start=True, **spec) -> a pool of this test's backend."""
    made: list[Pool] = []

    def make(env: dict[str, str] | None = None, streams: bool = False, start: bool = True, **spec: Any) -> Pool:
        spec.setdefault("name", "test/contract")
        spec.setdefault("init", S.make_kv)
        if backend == "process":
            for k, v in (env or {}).items():  # workers get the manager's environment at start
                monkeypatch.setenv(k, v)
            if streams:
                spec.setdefault("ring_slots", STREAM_DEPTH)
                spec.setdefault("slot_bytes", STREAM_CHUNK)
        pool = make_pool(PoolSpec(**spec), backend=backend, **_options(backend, env, streams))
        made.append(pool)
        if start:
            pool.start()
        return pool

    yield make
    for pool in made:
        pool.close(timeout=2)
