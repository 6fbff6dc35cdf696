"""Errors of the executor engine. Every one names the pool (the plugin) it comes from.

Tree::

    PoolError (RuntimeError)           base: catch this to catch anything the engine raises
    ├── PoolClosed                     call after close(), or dropped by close() while queued
    ├── PoolStartError                 a worker failed to start (its init raised or it died)
    ├── PoolBroken                     the pool gave up: crash loop; holds the last error
    ├── WorkerCrashed                  the worker running the call died (pid, signal name)
    ├── CallTimeout (TimeoutError)     the call ran past its timeout; its worker was replaced
    ├── RemoteError                    the call raised something that would not unpickle;
    │                                  holds the remote traceback as text
    └── StreamAborted                  a byte stream was cut off (either side)

An exception raised by the plugin itself that pickles (SDK errors, builtins) is re-raised as
itself, with `__cause__` a RemoteTraceback holding the worker's traceback text.
"""

from __future__ import annotations

__all__ = [
    "CallTimeout",
    "PoolBroken",
    "PoolClosed",
    "PoolError",
    "PoolStartError",
    "RemoteError",
    "RemoteTraceback",
    "StreamAborted",
    "WorkerCrashed",
]


class PoolError(RuntimeError):
    """Base of every error the executor engine raises."""


class PoolClosed(PoolError):
    pass


class PoolStartError(PoolError):
    pass


class PoolBroken(PoolError):
    pass


class WorkerCrashed(PoolError):
    pass


class CallTimeout(PoolError, TimeoutError):
    pass


class RemoteError(PoolError):
    pass


class StreamAborted(PoolError):
    pass


class RemoteTraceback(Exception):
    """The worker-side traceback, attached as __cause__ of a re-raised plugin error."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
