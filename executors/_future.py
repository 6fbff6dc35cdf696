"""A `concurrent.futures.Future` that is cheap when nobody waits on it yet.

The stock Future builds a Condition (an RLock and a Python object) in `__init__` and takes it
on every `set_result`/`result`: about 1 us and several GC-tracked objects per call, which is
a third of a small call's manager-side budget at 100k calls/s. Here the Condition is created
on first use by a waiter (`result()` on a pending future, `cf.wait`, `add_done_callback`...).
The resolving side writes the result, then the state, then looks for a Condition: a waiter
that created it earlier is notified under it; one that creates it later sees the final state
(the GIL orders these steps). Everything else is the stock implementation.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any

__all__ = ["CallFuture"]

_create_lock = threading.Lock()


class CallFuture(cf.Future):  # type: ignore[type-arg]
    """Future of one pool call; also the manager's record of it (rid, method, deadline)."""

    def __init__(self, rid: int, method: str, timeout: float | None, t0: float, stream: Any = None) -> None:
        # no super().__init__(): the Condition is made lazily (see _condition)
        self._state = PENDING
        self._result = None
        self._exception = None
        self.rid = rid
        self.method = method
        self.timeout = timeout
        self.t0 = t0
        self.deadline = float("inf") if timeout is None else t0 + timeout
        self.stream = stream
        self.worker = -1

    @property  # type: ignore[override]
    def _condition(self) -> threading.Condition:
        d = self.__dict__
        cond = d.get("_cond")
        if cond is None:
            with _create_lock:
                cond = d.get("_cond")
                if cond is None:
                    cond = d["_cond"] = threading.Condition()
        return cond

    # the stock code appends to these under _condition; made on first use, like it, to keep
    # GC-tracked objects per call to one (the GC pass over 100k pending calls is what costs)
    @property  # type: ignore[override]
    def _waiters(self) -> list[Any]:
        w = self.__dict__.get("_w")
        if w is None:
            w = self.__dict__["_w"] = []
        return w  # type: ignore[no-any-return]

    @property  # type: ignore[override]
    def _done_callbacks(self) -> list[Any]:
        c = self.__dict__.get("_cb")
        if c is None:
            c = self.__dict__["_cb"] = []
        return c  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<CallFuture {self.method} rid={self.rid} state={self._state}>"

    # -- resolving (manager side) -----------------------------------------------------------
    def resolve(self, value: Any) -> None:
        if self._state != PENDING:
            return  # already failed (timeout, crash) or cancelled
        self._result = value
        self._state = FINISHED
        if "_cond" in self.__dict__:
            self._wake()

    def reject(self, exc: BaseException) -> None:
        if self._state != PENDING:
            return
        self._exception = exc
        self._state = FINISHED
        if "_cond" in self.__dict__:
            self._wake()

    def _wake(self) -> None:
        with self._condition:
            for waiter in self._waiters:
                if self._exception is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def set_result(self, result: Any) -> None:
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
            raise cf.InvalidStateError(f"{self._state}: {self!r}")
        self.resolve(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED):
            raise cf.InvalidStateError(f"{self._state}: {self!r}")
        assert exception is not None
        self.reject(exception)

    # -- waiting (caller side): skip the lock when already finished ---------------------------
    def done(self) -> bool:
        if self._state == FINISHED:
            return True
        return super().done()

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # break the traceback cycle, as the stock one does
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)
