"""InlinePool: the `Pool` contract run in the calling process.

`init()` runs once, calls are direct method calls under one lock (the worker's "one request
at a time"). It is the test double for code above the seam and the in-process baseline of
bench/bench_executor.py. No timeouts are enforced (nothing can be killed), no crash can be
contained: use ProcessPool for that. `spec.limits` and `spec.confine` are not applied: they
would bind the calling process.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time
from typing import Any, BinaryIO

from ._api import PoolSpec, PoolState
from ._latency import LatencyHistogram
from .errors import PoolClosed, PoolError, PoolStartError

__all__ = ["InlinePool"]


class InlinePool:
    passes_fds = True  # a WithFds value reaches the caller as it is: the same fds
    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self._state = PoolState.STARTING
        self._lock = threading.RLock()
        self._obj: Any = None
        self._calls = 0
        self._errors = 0
        self._latency = 0.0
        self._latency_hist = LatencyHistogram()
        self._last_error = ""
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<InlinePool {self.spec.name!r} {self._state.value}>"

    @property
    def state(self) -> PoolState:
        return self._state

    def start(self) -> None:
        if self._state is not PoolState.STARTING or self._obj is not None:
            raise PoolError(f"pool {self.spec.name!r} was already started")
        try:
            self._obj = self.spec.init()
        except Exception as exc:
            self._state = PoolState.CLOSED
            raise PoolStartError(f"pool {self.spec.name!r}: init raised: {exc!r}") from exc
        self._started_at = time.time()
        self._state = PoolState.READY

    def _check(self) -> None:
        if self._state is not PoolState.READY:
            if self._state is PoolState.CLOSED:
                raise PoolClosed(f"pool {self.spec.name!r} is closed")
            raise PoolError(f"pool {self.spec.name!r} is not started (state {self._state.value})")

    def _run(self, method: str, args: tuple[Any, ...]) -> Any:
        self._check()
        t0 = time.monotonic()
        with self._lock:
            try:
                return getattr(self._obj, method)(*args)
            except BaseException as exc:
                self._errors += 1
                self._last_error = f"{method}: {exc!r}"
                raise
            finally:
                self._calls += 1
                dt = time.monotonic() - t0
                self._latency += dt
                self._latency_hist.observe(dt)

    def call(self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None) -> Any:  # type: ignore[assignment]
        return self._run(method, args)

    def submit(
        self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None  # type: ignore[assignment]
    ) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        fut.worker = 0  # type: ignore[attr-defined]
        try:
            fut.set_result(self._run(method, args))
        except PoolError:
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    def broadcast(self, method: str, *args: Any, replay: bool = False) -> list[Any]:
        return [self._run(method, args)]

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        return self._run(method, (*args, source))

    def stream_get(self, method: str, args: tuple[Any, ...], timeout: float | None = ...) -> io.RawIOBase:  # type: ignore[assignment]
        return _InlineReader(self._run(method, tuple(args)))

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self._state.value,
            "workers": [{"id": 0, "pid": 0, "alive": self._state is PoolState.READY, "outstanding": 0, "calls": self._calls}],
            "restarts": 0,
            "calls": self._calls,
            "errors": self._errors,
            "last_error": self._last_error,
            "latency_sum": self._latency,
            "latency_buckets": list(self._latency_hist.counts),
            "started_at": self._started_at,
        }

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._state is PoolState.CLOSED:
                return
            was_ready = self._state is PoolState.READY
            self._state = PoolState.CLOSED
            if was_ready and self.spec.shutdown_method:
                try:
                    getattr(self._obj, self.spec.shutdown_method)()
                except Exception:
                    import logging

                    logging.getLogger("executors").warning(
                        "pool %r: %s raised", self.spec.name, self.spec.shutdown_method, exc_info=True
                    )
            self._obj = None

    def __enter__(self) -> "InlinePool":
        if self._state is PoolState.STARTING:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _InlineReader(io.RawIOBase):
    """The plugin's reader as the other backends hand it out: a context manager with
    `iter_views`, whose first bytes are read at once, so an error at open raises at the call
    as it does when a worker produces the stream. Past those first bytes a read goes straight
    to the plugin's reader (no copy: this is the in-process baseline of the benchmarks)."""

    FIRST = 64 << 10
    CHUNK = 1 << 20

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source
        first = bytearray(self.FIRST)
        self._pending = memoryview(first)[: self._fill(first)]

    def _fill(self, b: Any) -> int:
        readinto = getattr(self._source, "readinto", None)
        if readinto is not None:
            return readinto(b) or 0
        data = self._source.read(len(b)) or b""
        memoryview(b)[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._pending:
            return self._fill(b)
        view = memoryview(b).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def iter_views(self) -> Any:
        if self._pending:
            yield self._pending
            self._pending = memoryview(b"")
        while True:
            buf = bytearray(self.CHUNK)
            n = self._fill(buf)
            if not n:
                return
            yield memoryview(buf)[:n]

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        super().close()
