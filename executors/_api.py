"""The pool seam: what proxies in `vsm/` call. Backends (local processes now, Ray later,
in-process for tests and baselines) implement `Pool`; nothing above this file knows which.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import io
from typing import Any, BinaryIO, Callable, Protocol

from ._limits import WorkerLimits

__all__ = ["Pool", "PoolSpec", "PoolState", "WithFds"]


class PoolState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"  # some worker is being restarted after a crash or a timeout
    FAILED = "failed"  # crash loop: gave up restarting; calls raise PoolBroken
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """How to run one plugin's pool.

    `init` runs once in every worker (and again in each replacement worker); it returns the
    worker's service object, whose methods the calls name. It must pickle by reference
    (a module-level function, or functools.partial of one) or by value with cloudpickle.
    If the service object has `map_error(exc) -> BaseException`, every exception a call
    raises passes through it before it is sent (to translate it at the boundary).

    In each worker, before `preload` and `init`: `limits` are applied (executors/_limits.py),
    then `confine()` runs (it pickles like init), e.g. a Landlock ruleset (executors/_landlock.py).
    A failure of either fails the worker's start with the reason.
    """

    name: str  # shown in every error and status, e.g. "KVStore/memdb"
    init: Callable[[], Any]
    workers: int = 1
    call_timeout: float | None = 60.0  # default per call; None = no limit
    start_timeout: float = 60.0
    shutdown_method: str | None = None  # called on each worker's object at close (OnShutdown)
    # shared-memory slots per worker for byte streams: >0 = ring made at worker start;
    # 0 = made on the worker's first stream, with 8 slots (memfd: nothing in /dev/shm).
    # 1 MiB slots measured ~1.3-2x faster than 8 MiB here (the ring stays in cache).
    ring_slots: int = 0
    slot_bytes: int = 1 << 20
    max_restarts: int = 5  # crashes within restart_window before the pool is FAILED
    restart_window: float = 60.0
    preload: tuple[str, ...] = ()  # modules imported once, before workers fork
    # Folders put in front of each worker's sys.path (their .pth files honoured) after preload
    # and before init: modules the worker already imported that these folders also provide
    # are dropped first, so init imports the folders' versions. A private package set per
    # pool (vsm: a plugin's environment, <home>/envs/<hash>/site); the worker only reads it.
    # Local worker processes only: RayPool refuses it (give Ray a runtime_env instead) and
    # InlinePool, which runs in the caller, ignores it.
    site_dirs: tuple[str, ...] = ()
    limits: WorkerLimits | None = None  # applied in each worker before preload (see the docstring)
    confine: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class WithFds:
    """A call's value that carries open file descriptors, e.g. a file the worker opened under
    its own rules for the caller to sendfile() from.

    A service method returns `WithFds(value, (fd, ...))`; the caller of `call`/`submit` gets a
    `WithFds` whose fds are its own: the local pool moves them over the worker socket
    (SCM_RIGHTS) and the worker closes its copies once sent; the inline pool hands the same
    fds over. The caller must close them. Ray cannot move an fd between processes: the call
    fails there (`Pool.passes_fds` is False).
    """

    value: Any
    fds: tuple[int, ...]


class Pool(Protocol):
    spec: PoolSpec
    passes_fds: bool  # a call's value may be WithFds (see WithFds)

    @property
    def state(self) -> PoolState: ...

    def start(self) -> None:
        """Start every worker and run init in it; raises PoolStartError naming the cause."""
        ...

    def call(self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None) -> Any:
        """Run obj.method(*args) in some worker (or in worker `worker`) and return its value."""
        ...

    def submit(
        self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None
    ) -> concurrent.futures.Future[Any]:
        """Like call, without waiting. The future's `.worker` attribute is set to the id of the
        worker that took the call (usable as `worker=` for calls that need the same worker)."""
        ...

    def broadcast(self, method: str, *args: Any, replay: bool = False) -> list[Any]:
        """Run obj.method(*args) in every live worker; with replay=True also in every worker
        started later (before it takes calls): this is how per-worker setup is kept."""
        ...

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, timeout: float | None = ...) -> Any:
        """Run obj.method(*args, reader) in one worker, where reader yields the bytes of source
        (read with source.readinto straight into shared memory). Returns what method returns.
        For streams `timeout` bounds the time without progress, not the whole transfer. If
        source raises, the worker's reader raises StreamAborted and the error reaches the caller."""
        ...

    def stream_get(self, method: str, args: tuple[Any, ...], timeout: float | None = ...) -> io.RawIOBase:
        """Run obj.method(*args) in one worker; it returns a binary reader whose bytes come back
        through shared memory. The returned stream is readable; closing it early cancels."""
        ...

    def status(self) -> dict[str, Any]:
        """{"name", "state" (PoolState value), "workers": [{"id", "pid", "alive",
        "outstanding", "calls"}], "restarts", "calls", "errors", "last_error",
        "latency_sum" (seconds, summed over finished calls), "latency_buckets" (finished calls
        per bucket of executors.LATENCY_BOUNDS, then +Inf), "started_at" (epoch seconds)}"""
        ...

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking calls, let in-flight calls finish (up to timeout, then fail them),
        call shutdown_method in each worker, stop every worker, free shared memory. Idempotent."""
        ...
