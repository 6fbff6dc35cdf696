"""A plugin's pool that a reload replaces under its callers without failing any call.

Proxies, sinks and RPC namespaces hold a `SwappablePool`. A reload starts the new build's pool,
replays the setup calls (open_db, open_store, open_sink) into it, then swaps: new calls go to
the new pool, calls in flight finish on the old one, which then drains and stops. A call that
reached the old pool only as it closed (PoolClosed: it never ran) is sent to the new one.
A build with other requirements gets its environment made (envs.py) before its pool starts,
so the old pool serves meanwhile: creating it delays the swap, never a call.
"""

from __future__ import annotations

import threading
from typing import Any, BinaryIO

from executors import Pool, PoolClosed

__all__ = ["SwappablePool"]


class SwappablePool:
    def __init__(self, pool: Pool) -> None:
        self._current = pool
        self._replays: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SwappablePool({self._current.spec.name!r}, {self._current.state.value})"

    @property
    def spec(self) -> Any:
        return self._current.spec

    @property
    def state(self) -> Any:
        return self._current.state

    @property
    def passes_fds(self) -> bool:
        return bool(getattr(self._current, "passes_fds", False))

    def pinned(self) -> Pool:
        """The pool serving now: for calls that must reach the same worker (scan cursors)."""
        return self._current

    def _run(self, fn: Any) -> Any:
        while True:
            pool = self._current
            try:
                return fn(pool)
            except PoolClosed:
                if pool is self._current:
                    raise  # closed for good, not swapped out

    def start(self) -> None:
        self._current.start()

    def call(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._run(lambda p: p.call(method, *args, **kw))

    def submit(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._run(lambda p: p.submit(method, *args, **kw))

    def broadcast(self, method: str, *args: Any, replay: bool = False) -> list[Any]:
        result = self._run(lambda p: p.broadcast(method, *args, replay=replay))
        if replay:
            with self._lock:
                self._replays.append((method, args))
        return result

    def has_replay(self, method: str) -> bool:
        """Whether the setup call `method` was made here (broadcast with replay=True): a swap
        replays it into the new pool; one never made (a sink whose open failed) is not."""
        with self._lock:
            return any(m == method for m, _ in self._replays)

    def set_replays(self, method: str, calls: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Make `calls` the setup calls `method` a swap replays (a config reload: the stores or the
        Meta the next pool opens); returns the previous ones, to put back if the swap fails."""
        with self._lock:
            before = [args for m, args in self._replays if m == method]
            self._replays = [(m, a) for m, a in self._replays if m != method] + [(method, args) for args in calls]
        return before

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, **kw: Any) -> Any:
        return self._run(lambda p: p.stream_put(method, args, source, **kw))

    def stream_get(self, method: str, args: tuple[Any, ...], **kw: Any) -> Any:
        return self._run(lambda p: p.stream_get(method, args, **kw))

    def status(self) -> dict[str, Any]:
        return self._current.status()

    def close(self, timeout: float = 10.0) -> None:
        self._current.close(timeout)

    def swap(self, new: Pool, drain_timeout: float = 60.0) -> None:
        """Replay the setup calls into `new` (raises, leaving the old pool serving, if one fails),
        switch traffic to it, then drain and stop the old pool."""
        with self._lock:
            replays = list(self._replays)
        for method, args in replays:
            new.broadcast(method, *args, replay=True)
        old, self._current = self._current, new
        old.close(drain_timeout)
