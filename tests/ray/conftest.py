"""Tests of what is Ray's own (placement, the object store, sinks and the manager on Ray) on the
session's local two-node cluster (tests/_ray_cluster.py). The Pool contract that RayPool
shares with the local backends is in tests/contract.

Every test has a timeout, and must leave no actor of its pools and no process of its own
behind (`no_leaks`, below, replaces the repo-wide guard for this folder).
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Iterator

import pytest

from tests._ray_cluster import RayCluster, ray_leak_check

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (str(REPO), str(REPO / "tests" / "executors")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

DEFAULT_TIMEOUT = int(os.environ.get("RAY_TEST_TIMEOUT", "60"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).startswith(str(HERE)) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(autouse=True)
def no_leaks(ray_cluster: RayCluster) -> Iterator[None]:
    with ray_leak_check():
        yield
