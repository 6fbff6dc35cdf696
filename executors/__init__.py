"""executors: a generic engine of worker pools (knows nothing of sectors or plugins).

    pool = make_pool(PoolSpec(name="KVStore/memdb", init=functools.partial(open_db, meta)))
    pool.start()                                  # PoolStartError names the cause
    pool.call("get", b"key")                      # obj.get(b"key") in a worker
    fut = pool.submit("put", b"k", b"v")          # a concurrent.futures.Future; .worker
    pool.broadcast("setup", cfg, replay=True)     # every worker, and every replacement
    pool.stream_put("put", ("path",), source)     # source.readinto -> shared-memory ring
    with pool.stream_get("get", ("path",)) as r:  # readinto / read / iter_views()
        ...
    got = pool.call("open", "path")               # a method returning WithFds(value, fds):
    os.sendfile(sock, got.fds[0], 0, n)           #   the fds are the caller's (SCM_RIGHTS)
    pool.status(); pool.close()

Backends: "process" (ProcessPool: forkserver workers, one socketpair each, memfd ring) and
"inline" (InlinePool: same contract in the calling process, for tests and baselines).
`prestart()` starts the forkserver early; `cleanup_stale_segments()` removes named
`vsmpool-<pid>-*` segments of dead owners (the engine itself only uses anonymous memfd).
Errors: see executors/errors.py.
"""

from __future__ import annotations

from typing import Any

from ._api import Pool, PoolSpec, PoolState, WithFds
from ._inline import InlinePool
from ._latency import LATENCY_BOUNDS, quantile
from ._limits import WorkerLimits
from ._pool import ProcessPool, manager_sys_path, prestart
from .errors import (
    CallTimeout,
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolStartError,
    RemoteError,
    RemoteTraceback,
    StreamAborted,
    WorkerCrashed,
)

__all__ = [
    "LATENCY_BOUNDS",
    "CallTimeout",
    "InlinePool",
    "Pool",
    "PoolBroken",
    "PoolClosed",
    "PoolError",
    "PoolSpec",
    "PoolStartError",
    "PoolState",
    "ProcessPool",
    "RemoteError",
    "RemoteTraceback",
    "StreamAborted",
    "WithFds",
    "WorkerCrashed",
    "WorkerLimits",
    "cleanup_stale_segments",
    "make_pool",
    "manager_sys_path",
    "prestart",
    "quantile",
]

BACKENDS = ("process", "inline", "ray")


def make_pool(spec: PoolSpec, backend: str = "process", **options: Any) -> Pool:
    """A not-yet-started pool for spec. backend: "process" (local worker processes),
    "inline" (in the calling process: tests, baselines) or "ray" (one Ray actor per worker;
    options: address, resources, node, runtime_env, env; see executors/_ray.py). Ray is
    imported only here, when asked for."""
    if backend == "ray":
        try:
            from ._ray import RayPool
        except ImportError as exc:
            raise PoolError(
                f"pool {spec.name!r}: backend 'ray' needs Ray: pip install 'vsm-pool[ray]' ({exc})"
            ) from exc
        return RayPool(spec, **options)
    if options:
        raise TypeError(f"backend {backend!r} takes no options, got {', '.join(sorted(options))}")
    if backend == "process":
        return ProcessPool(spec)
    if backend == "inline":
        return InlinePool(spec)
    raise ValueError(f"unknown pool backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def cleanup_stale_segments(directory: str = "/dev/shm") -> list[str]:
    """Remove `vsmpool-<pid>-*` segments whose owner pid is dead; returns the removed names.

    The engine's rings are memfd (anonymous), so it names no segment itself; this is a
    safety net for any future named segment and for operators."""
    import os

    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith("vsmpool-"):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid <= 0:
            continue
        try:
            os.kill(pid, 0)
            continue  # owner alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        try:
            _obj.__module__ = "executors"
        except (AttributeError, TypeError):
            pass
del _name, _obj
