"""What every worker-pool transport shares: state, metrics, crash accounting, error decoding.

ProcessPool (_pool.py, sockets to local processes) and RayPool (_ray.py, Ray actors) differ
only in how a worker is started, how requests and replies travel, how a death is seen, and
how byte streams move. Everything else lives here, once:

    _PoolCore
      state machine     PoolState + TRANSITIONS; _move / _refresh_state / _check_open
      start / close     _begin_start, _finish_start; close() -> _close: drain, fail what is
                        left (PoolClosed), join restarts, then the transport's _stop_workers
      calls             _pick, _new_item, _wait, broadcast, _dead_error; _ok / _fail (metrics)
      deadlines         _check_deadlines: CallTimeout, kill and replace the worker
      deaths            _worker_died -> _crashed (crash window, back-off) -> _restart thread,
                        or _fail_pool (FAILED: every call PoolBroken); _abandon
      streams           _reserve / _unreserve a worker for a byte stream
      status()          the keys of Pool.status (executors/_api.py)
    remote_exc()        a (K_ERROR, ...) reply -> the plugin's exception, or RemoteError

The transport provides (see each method's docstring below): _go_live, _kill,
_start_worker, _replacement, _take_failed, _overdue, _kill_overdue, _running,
_stop_workers; and may refine _take_calls, _release, _status_extra, _worker_status.
Worker records derive from _WorkerCore.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import pickle
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, ClassVar, Generic, Self, TypeVar

import cloudpickle

from . import _wire as W
from ._api import PoolSpec, PoolState
from ._future import CallFuture
from ._latency import LatencyHistogram
from .errors import (
    CallTimeout,
    PoolBroken,
    PoolClosed,
    PoolError,
    PoolStartError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashed,
)

__all__ = ["INF", "TICK", "TRANSITIONS", "_PoolCore", "_WorkerCore", "remote_exc", "undecodable"]

log = logging.getLogger("executors")

TICK = 0.05  # deadline scan period: timeouts fire within this of their deadline
INF = float("inf")

TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.STARTING: frozenset({PoolState.READY, PoolState.CLOSED}),
    PoolState.READY: frozenset({PoolState.DEGRADED, PoolState.FAILED, PoolState.CLOSED}),
    PoolState.DEGRADED: frozenset({PoolState.READY, PoolState.FAILED, PoolState.CLOSED}),
    PoolState.FAILED: frozenset({PoolState.CLOSED}),
    PoolState.CLOSED: frozenset(),
}


# -- replies --------------------------------------------------------------------------------


def undecodable(method: str, exc: BaseException) -> tuple[Any, ...]:
    """The error reply standing in for a reply body that will not unpickle in the manager.
    Call it in the `except` block (it keeps that traceback)."""
    return (
        W.K_ERROR,
        None,
        traceback.format_exc(),
        "RemoteError",
        f"{method}: its result could not be unpickled in the manager: {exc!r}",
    )


def remote_exc(pool: str, msg: tuple[Any, ...]) -> BaseException:
    """A worker's (K_ERROR, exc_bytes, tb, type_name, text) -> the plugin's exception with a
    RemoteTraceback as __cause__, or RemoteError when it will not unpickle."""
    _, eb, tb, tname, text = msg
    cause = RemoteTraceback(tb)
    if eb is not None:
        try:
            exc = pickle.loads(eb)
            if isinstance(exc, BaseException):
                exc.__cause__ = cause
                return exc
        except Exception:
            pass
    err = RemoteError(f"pool {pool!r}: {text} ({tname})\n{tb}")
    err.__cause__ = cause
    return err


# -- records --------------------------------------------------------------------------------


class StreamCall:
    """The stream side of a byte-stream call (CallFuture.stream): a call that owns its worker
    for the stream. _ok/_fail mark it done and wake whoever waits on it."""

    __slots__ = ("cond", "done")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.done = False


class _WorkerCore:
    """Manager-side record of one worker; a transport adds its handles. Replaced (new object)
    on restart."""

    def __init__(self, wid: int) -> None:
        self.id = wid
        self.pid = 0
        self.mu = threading.Lock()
        self.pending: dict[int, CallFuture] = {}
        self.live = False
        self.dead = False
        self.reserved = False  # a byte stream owns this worker
        self.kill_reason = ""
        self.calls = 0

    def label(self) -> str:
        """How errors name this worker: "worker 0 (pid 123)"."""
        return f"worker {self.id} (pid {self.pid})"


_W = TypeVar("_W", bound=_WorkerCore)


# -- the shared pool ------------------------------------------------------------------------


class _PoolCore(Generic[_W]):
    """Transport-independent half of a `Pool` (see executors/_api.py for the contract)."""

    _KIND: ClassVar[str]  # the class name in repr
    _THREAD: ClassVar[str]  # thread name prefix
    # WorkerCrashed text for a call whose worker died before the call was sent to it
    _DIED_UNSENT: ClassVar[str]
    _registry: ClassVar["weakref.WeakSet[Any]"]  # started pools, closed by the module's atexit

    def __init__(self, spec: PoolSpec) -> None:
        if spec.workers < 1:
            raise ValueError(f"pool {spec.name!r}: workers must be >= 1, got {spec.workers}")
        self.spec = spec
        self._state = PoolState.STARTING
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rids = itertools.count(1)
        self._workers: list[_W] = []
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closing = False
        self._closed_evt = threading.Event()  # close() finished
        self._stop_evt = threading.Event()  # close() began: cuts restart back-offs short
        self._started = False
        self._broken: PoolBroken | None = None
        self._crash_times: deque[float] = deque()
        self._restart_threads: list[threading.Thread] = []
        self._replays: list[tuple[str, tuple[Any, ...]]] = []
        self._init_bytes = b""
        self._setup_bytes: bytes | None = None  # (spec.limits, spec.confine), when either is set
        # metrics
        self._restarts = 0
        self._calls = 0
        self._errors = 0
        self._latency = 0.0
        self._latency_hist = LatencyHistogram()
        self._last_error = ""
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<{self._KIND} {self.spec.name!r} {self._state.value} workers={self.spec.workers}>"

    # -- transport hooks ----------------------------------------------------------------
    def _go_live(self, w: _W) -> None:
        """w finished init (and replays): let it take calls, including those queued for it."""
        raise NotImplementedError

    def _kill(self, w: _W) -> None:
        """Kill w's process or actor, if any; safe on one already dead."""
        raise NotImplementedError

    def _start_worker(self, w: _W, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Launch w and run init, then `replays`, in it; PoolStartError names the cause."""
        raise NotImplementedError

    def _replacement(self, w: _W, carry: Any) -> _W:
        """A new record for w's slot, taking over `carry` (from _take_failed) if not None."""
        raise NotImplementedError

    def _take_failed(self, w: _W) -> tuple[Any, list[CallFuture]]:
        """w failed to start: mark it dead; return (the carry for its replacement, the calls
        to fail if there is none)."""
        raise NotImplementedError

    def _overdue(self, w: _W, now: float) -> list[CallFuture]:
        """w's calls past their deadline; those of a worker not live are also taken off it."""
        raise NotImplementedError

    def _kill_overdue(self, w: _W) -> None:
        """Kill w for a timed-out call and handle its death at once (see _check_deadlines)."""
        raise NotImplementedError

    def _running(self) -> bool:
        """start() got far enough that close() has workers and threads to stop."""
        raise NotImplementedError

    def _stop_workers(self, live: list[_W], deadline: float) -> None:
        """close(), after in-flight calls: shutdown_method in `live`, stop every worker and
        the manager thread."""
        raise NotImplementedError

    def _take_calls(self, w: _W) -> list[CallFuture]:
        """Under w.mu: take every call of w off it (the caller fails them)."""
        items = list(w.pending.values())
        w.pending.clear()
        return items

    def _release(self, w: _W) -> None:
        """Free what an abandoned (never live) worker holds."""

    def _spare(self, w: _W, expired: list[CallFuture]) -> list[CallFuture]:
        """Of a live worker's expired calls, those worth killing it for (the rest handled).

        Small calls queued behind a byte stream on this worker fail, but do not kill the
        worker for them, which would cut the stream (a stat during a 32 GiB put). The
        stream's own call is bounded by its no-progress deadline."""
        if not w.reserved:
            return expired
        for it in expired:
            if it.stream is None and w.pending.pop(it.rid, None) is not None:
                self._fail(it, CallTimeout(
                    f"pool {self.spec.name!r}: {it.method} did not start within {it.timeout}s: "
                    f"worker {w.id} is busy with a byte stream (raise Workers to serve calls beside streams)"
                ))
        return [it for it in expired if it.stream is not None]

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    def _move(self, new: PoolState) -> bool:
        with self._lock:
            if new is self._state:
                return True
            if new not in TRANSITIONS[self._state]:
                return False
            self._state = new
            self._cond.notify_all()
            return True

    def _refresh_state(self) -> None:
        with self._lock:
            if self._state in (PoolState.READY, PoolState.DEGRADED):
                ok = all(w.live for w in self._workers)
                self._move(PoolState.READY if ok else PoolState.DEGRADED)

    def _check_open(self) -> None:
        st = self._state
        if st is PoolState.READY or st is PoolState.DEGRADED:
            if self._closing:
                raise PoolClosed(f"pool {self.spec.name!r} is closed")
            return
        if st is PoolState.FAILED:
            assert self._broken is not None
            raise PoolBroken(str(self._broken))
        if st is PoolState.CLOSED or self._closing:
            raise PoolClosed(f"pool {self.spec.name!r} is closed")
        raise PoolError(f"pool {self.spec.name!r} is not started (state {st.value})")

    # -- start ----------------------------------------------------------------------------
    def _begin_start(self) -> None:
        """start() once only; pickle spec.init (PoolStartError if it does not)."""
        with self._lock:
            if self._started:
                raise PoolError(f"pool {self.spec.name!r} was already started")
            self._started = True
        spec = self.spec
        try:
            self._init_bytes = cloudpickle.dumps(spec.init, 5)
            if spec.limits is not None or spec.confine is not None:
                self._setup_bytes = cloudpickle.dumps((spec.limits, spec.confine), 5)
        except Exception as exc:
            self._move(PoolState.CLOSED)
            raise PoolStartError(f"pool {spec.name!r}: init {spec.init!r} or its confinement does not pickle: {exc}") from exc

    def _finish_start(self, workers: list[_W]) -> None:
        for w in workers:
            self._go_live(w)
        self._started_at = time.time()
        self._registry.add(self)
        self._move(PoolState.READY)
        self._refresh_state()

    # -- calls ----------------------------------------------------------------------------
    def _pick(self, worker: int | None) -> _W:
        ws = self._workers
        if worker is not None:
            try:
                return ws[worker]
            except IndexError:
                raise ValueError(f"pool {self.spec.name!r} has no worker {worker} (it has {len(ws)})") from None
        if len(ws) == 1:
            return ws[0]
        best = ws[0]
        bestn = 1 << 62
        for w in ws:
            n = len(w.pending)
            if w.reserved:
                n += 1 << 40
            if not w.live:
                n += 1 << 50
            if n < bestn:
                best, bestn = w, n
        return best

    def _timeout(self, timeout: Any) -> float | None:
        return self.spec.call_timeout if timeout is ... else timeout

    def _new_item(self, method: str, timeout: Any, stream: Any = None) -> CallFuture:
        return CallFuture(next(self._rids), method, self._timeout(timeout), time.monotonic(), stream)

    def _dead_error(self, w: _W, method: str) -> PoolError:
        if self._state is PoolState.FAILED and self._broken is not None:
            return PoolBroken(str(self._broken))
        if self._closing:
            return PoolClosed(f"pool {self.spec.name!r} is closed")
        return WorkerCrashed(self._DIED_UNSENT.format(name=self.spec.name, worker=w.label(), method=method))

    def _wait(self, item: CallFuture) -> Any:
        fut = item
        if fut._state == "FINISHED":  # type: ignore[attr-defined]
            return fut.result()
        # the manager resolves every pending item (result, crash, timeout, close);
        # the bound here only guards against a bug there
        limit = None if item.timeout is None else item.timeout + 30.0
        try:
            return fut.result(limit)
        except cf.TimeoutError:
            if fut.done():
                raise  # the call's own CallTimeout (a TimeoutError too)
            raise CallTimeout(
                f"pool {self.spec.name!r}: {item.method} got no answer within {limit}s"
            ) from None

    def broadcast(self, method: str, *args: Any, replay: bool = False) -> list[Any]:
        self._check_open()
        if replay:
            with self._lock:
                self._replays.append((method, args))
        futs = [self.submit(method, *args, worker=i) for i in range(len(self._workers))]  # type: ignore[attr-defined]
        return [f.result() for f in futs]

    def _ok(self, item: CallFuture, value: Any) -> None:
        self._calls += 1
        dt = time.monotonic() - item.t0
        self._latency += dt
        self._latency_hist.observe(dt)
        item.resolve(value)
        st = item.stream
        if st is not None:
            with st.cond:
                st.done = True
                st.cond.notify_all()

    def _fail(self, item: CallFuture, exc: BaseException) -> None:
        self._calls += 1
        self._errors += 1
        dt = time.monotonic() - item.t0
        self._latency += dt
        self._latency_hist.observe(dt)
        item.reject(exc)
        st = item.stream
        if st is not None:
            with st.cond:
                st.done = True
                st.cond.notify_all()

    # -- deadlines (manager thread) -------------------------------------------------------
    def _check_deadlines(self, now: float) -> None:
        for w in list(self._workers):
            expired = self._overdue(w, now)
            if not expired:
                continue
            if not w.live:
                for it in expired:
                    self._fail(it, CallTimeout(
                        f"pool {self.spec.name!r}: {it.method} timed out after {it.timeout}s "
                        f"waiting for worker {w.id} to start"
                    ))
                continue
            expired = self._spare(w, expired)
            if not expired:
                continue
            it = min(expired, key=lambda i: i.rid)
            if w.pending.pop(it.rid, None) is None:
                continue
            w.kill_reason = f"killed after timeout of {it.method}"
            # handle the death now, so that the caller, once told, already finds the
            # replacement (and not the doomed worker) when it calls again
            self._kill_overdue(w)
            self._fail(it, CallTimeout(
                f"pool {self.spec.name!r}: {it.method} did not finish within {it.timeout}s; "
                f"{w.label()} was killed and is being replaced"
            ))

    # -- deaths and restarts --------------------------------------------------------------
    def _worker_died(self, w: _W, what: str, items: list[CallFuture]) -> None:
        """w is dead (`what`: "died with SIGKILL(-9)", "was killed after ..."): replace it (or
        give up), then fail `items`, its calls."""
        name = self.spec.name
        err = f"pool {name!r}: {w.label()} {what}"
        # replace it (or give up) before telling the callers, so a caller that retries at
        # once lands on the replacement
        if not self._closing and self._state in (PoolState.READY, PoolState.DEGRADED):
            self._crashed(w, err)
        for it in items:
            if self._closing:
                exc: PoolError = PoolClosed(f"pool {name!r} closed; {it.method} was not answered")
            elif self._state is PoolState.FAILED and self._broken is not None:
                exc = PoolBroken(str(self._broken))
            else:
                exc = WorkerCrashed(f"pool {name!r}: {it.method} failed: {w.label()} {what}")
            self._fail(it, exc)
        with self._cond:
            self._cond.notify_all()

    def _crashed(self, w: _W, err: str, carry: Any = None) -> bool:
        """Count a crash; replace the worker after a back-off (True), or give up (FAILED).
        `carry`: calls that never reached a worker (queued for one that failed to start);
        they move to the replacement."""
        spec = self.spec
        with self._lock:
            self._last_error = err
            now = time.monotonic()
            ct = self._crash_times
            ct.append(now)
            while ct and ct[0] < now - spec.restart_window:
                ct.popleft()
            nowhere = self._nowhere_to_place()
            if nowhere:
                self._fail_pool(f"pool {spec.name!r} is broken: {nowhere}; last error: {err}")
                return False
            if len(ct) > spec.max_restarts:
                self._fail_pool(
                    f"pool {spec.name!r} is broken: {len(ct)} worker crashes within "
                    f"{spec.restart_window}s (max_restarts={spec.max_restarts}); last error: {err}"
                )
                return False
            if self._closing or self._state not in (PoolState.READY, PoolState.DEGRADED):
                return False
            delay = min(0.1 * 2 ** (len(ct) - 1), 10.0)
            new = self._replacement(w, carry)
            self._workers[w.id] = new
            replays = list(self._replays)
            self._restarts += 1
            self._move(PoolState.DEGRADED)
            t = threading.Thread(
                target=self._restart, args=(new, delay, replays), name=f"{self._THREAD}:{spec.name}:restart", daemon=True
            )
            self._restart_threads = [x for x in self._restart_threads if x.is_alive()]
            self._restart_threads.append(t)
        log.warning("%s; restarting it in %.1fs", err, delay)
        t.start()
        return True

    def _nowhere_to_place(self) -> str:
        """Why no replacement can start anywhere ("" when one may): a backend whose workers
        are pinned to a machine that is gone fails the pool at once, not after max_restarts
        doomed attempts."""
        return ""

    def _restart(self, w: _W, delay: float, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        if self._stop_evt.wait(delay) or self._closing:
            self._abandon(w, PoolClosed(f"pool {self.spec.name!r} is closed"))
            return
        try:
            self._start_worker(w, replays)
        except Exception as exc:
            self._kill(w)
            msg = str(exc) if isinstance(exc, PoolStartError) else f"pool {self.spec.name!r}: restart failed: {exc!r}"
            carry, items = self._take_failed(w)
            if self._closing or not self._crashed(w, msg, carry):
                if self._closing:
                    err: PoolError = PoolClosed(f"pool {self.spec.name!r} is closed")
                elif self._broken is not None:
                    err = PoolBroken(str(self._broken))
                else:
                    err = WorkerCrashed(f"replacement worker failed to start: {msg}")
                for it in items:
                    self._fail(it, err)
            return
        if self._closing:
            self._kill(w)
            self._abandon(w, PoolClosed(f"pool {self.spec.name!r} is closed"))
            return
        self._go_live(w)

    def _abandon(self, w: _W, exc: PoolError) -> None:
        with w.mu:
            w.dead = True
            items = self._take_calls(w)
        for it in items:
            self._fail(it, exc)
        self._release(w)

    def _fail_pool(self, msg: str) -> None:
        with self._lock:
            if not self._move(PoolState.FAILED):
                return
            self._broken = PoolBroken(msg)
            self._last_error = msg
            workers = list(self._workers)
        log.error("%s", msg)
        for w in workers:
            with w.mu:
                w.dead = True
                w.live = False
                items = self._take_calls(w)
            for it in items:
                self._fail(it, PoolBroken(msg))
            self._kill(w)
        with self._cond:
            self._cond.notify_all()

    # -- streams --------------------------------------------------------------------------
    def _reserve(self, timeout: float | None) -> _W:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_open()
                cands = [w for w in self._workers if w.live and not w.reserved and not w.dead]
                if cands:
                    w = min(cands, key=lambda x: len(x.pending))
                    w.reserved = True
                    return w
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise CallTimeout(f"pool {self.spec.name!r}: no worker free for a byte stream within {timeout}s")
                self._cond.wait(0.1 if left is None else min(left, 0.1))

    def _unreserve(self, w: _W) -> None:
        with self._cond:
            w.reserved = False
            self._cond.notify_all()

    # -- status / close -------------------------------------------------------------------
    def _status_extra(self) -> dict[str, Any]:
        return {}

    def _worker_status(self, w: _W) -> dict[str, Any]:
        return {"id": w.id, "pid": w.pid, "alive": w.live, "outstanding": len(w.pending), "calls": w.calls}

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self._state.value,
            **self._status_extra(),
            "workers": [self._worker_status(w) for w in self._workers],
            "restarts": self._restarts,
            "calls": self._calls,
            "errors": self._errors,
            "last_error": self._last_error,
            "latency_sum": self._latency,
            "latency_buckets": list(self._latency_hist.counts),
            "started_at": self._started_at,
        }

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            already = self._closing
            self._closing = True
            # start() runs in another thread (a manager stopping while a plugin's onInit hangs):
            # it sees _closing within a poll, stops its workers and raises; tearing down under
            # it would race its own clean-up, so wait for it to give up (or to finish)
            limit = time.monotonic() + self.spec.start_timeout + 5.0
            while not already and self._started and self._state is PoolState.STARTING and time.monotonic() < limit:
                self._cond.wait(0.1)
        if already:
            self._closed_evt.wait(timeout + 5.0)
            return
        try:
            self._close(timeout)
        finally:
            self._registry.discard(self)
            self._move(PoolState.CLOSED)
            self._closed_evt.set()

    def _close(self, timeout: float) -> None:
        name = self.spec.name
        if not self._running():
            return  # never started, or start() failed and already tore everything down
        self._stop_evt.set()
        deadline = time.monotonic() + timeout
        while any(w.pending for w in self._workers) and time.monotonic() < deadline:
            time.sleep(0.005)
        busy: list[_W] = []
        for w in list(self._workers):
            with w.mu:
                items = self._take_calls(w)
            for it in items:
                self._fail(it, PoolClosed(f"pool {name!r} closed before {it.method} finished"))
            if items:
                busy.append(w)
                self._kill(w)  # still running a call it was given: it cannot shut down cleanly
        for t in list(self._restart_threads):
            t.join(self.spec.start_timeout)
        live = [w for w in self._workers if w.live and not w.dead and w not in busy]
        self._stop_workers(live, deadline)

    def __enter__(self) -> Self:
        if not self._started:
            self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
