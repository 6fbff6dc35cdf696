"""A byte stream never takes the last worker of a store's pool (issue 20 item 3): the proxy
refuses a stream past the pool's workers less one with StoreBusy (HTTP 503), and gives the
slot back when a stream ends, however it ends."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from vsm.errors import StoreBusy
from vsm.plugin.proxies import PooledStore, stream_cap


class _Pool:
    """A pool of `workers` whose streams block until released."""

    def __init__(self, workers: int) -> None:
        self.spec = SimpleNamespace(workers=workers, name="ObjStore/fake")
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def broadcast(self, *a: Any, **k: Any) -> list[Any]:
        return []

    def stream_put(self, method: str, args: tuple[Any, ...], source: Any) -> int:
        self.started.release()
        self.release.wait(30)
        return 0

    def stream_get(self, method: str, args: tuple[Any, ...]) -> Any:
        return io.BytesIO(b"data")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers,cap", [(1, 1), (2, 1), (4, 3)])
def test_streams_are_capped_at_the_workers_less_one(workers: int, cap: int) -> None:
    pool = _Pool(workers)
    store = PooledStore(pool, SimpleNamespace(name="s", path="/x"))  # type: ignore[arg-type]
    assert stream_cap(pool) == cap  # type: ignore[arg-type]
    threads = [threading.Thread(target=store.put, args=(f"p{i}", io.BytesIO(b""))) for i in range(cap)]
    for t in threads:
        t.start()
    for _ in threads:
        assert pool.started.acquire(timeout=10)
    with pytest.raises(StoreBusy, match=rf"{cap} byte streams already run on its pool of {workers} workers"):
        store.put("one-more", io.BytesIO(b""))
    with pytest.raises(StoreBusy):
        store.get("one-more")
    pool.release.set()
    for t in threads:
        t.join(10)
    reader = store.get("x")  # the slots are back; a download holds one until closed
    assert reader.read() == b"data"
    if cap == 1:
        with pytest.raises(StoreBusy):
            store.get("y")
    reader.close()
    store.get("z").close()
