"""ProcessPool: one plugin's pool of local worker processes.

Data flow::

    caller thread                                manager thread (one per pool)
    -------------                                -----------------------------
    call/submit(method, *args)                   epoll on: every worker socket,
      | C pickle (cloudpickle only if that          every worker sentinel, a wakeup fd
      |  fails) into a frame <len, rid, body>          |
      v                                                | recv -> frames -> pending[rid]
    _Worker.pending[rid] = CallFuture                  |   -> CallFuture.resolve/reject
    _Worker.sendq += frame                             | then sends what submit() left
      | the caller that finds no send in progress      |   queued (nagle), never blocking
      | becomes the sender and drains sendq in         | sentinel/EOF -> _on_death: replace
      | ONE sendall (no thread hop);                   |   the worker (back-off) or FAILED,
      | submit() also waits while the worker           |   then fail its calls WorkerCrashed
      | owes an answer (nagle, see below)              | tick 50 ms -> deadlines: CallTimeout,
      v                                                |   SIGKILL + replace the worker
    socketpair (AF_UNIX stream, one per worker) <------+
      |                                           ^
      v                                           | replies batched: flushed when no request
    worker: FrameReader -> obj.method(*args) -----+   is buffered, or 256 replies, or 2 ms

    call() on an idle worker takes the socket from the manager thread (epoll unregister),
    sends, and reads its own reply: no thread hop on either side.
    byte streams: a per-worker ring of memfd slots (_ring.py); only (slot, n) cross here.

Why these choices (numbers: bench/bench_executor.py on this noisy 2-vCPU VM, one run):

- Per-message wake-ups dominate. A sleeping peer costs ~15-30 us to wake; so the worker and
  a direct-reading caller poll for up to SPIN_SECONDS (50 us) before sleeping. call() one at
  a time: 13-18 us (56k-76k calls/s) vs ProcessPoolExecutor(1).submit().result() 126-227 us
  (7-15x), multiprocess.Pool(1).apply 400-520 us.
- Many in flight: submit() sends at once only when the worker owes nothing; otherwise the
  frame waits and the manager thread sends the whole batch right after reading the next
  answer (Nagle's rule). 10k-50k submits then wait: 150k-250k calls/s (20-49x the executor).
- CallFuture makes its Condition only when someone waits (a stock Future costs ~1 us and 4
  GC-tracked objects per call; the GC pass over many pending calls was half the submit cost).
- C pickle 0.26 us vs cloudpickle.dumps 2.8 us for a small request tuple: cloudpickle only on
  failure (lambdas, local functions).
- Start method: forkserver with `executors._worker` (+ spec.preload) imported once in the
  server. 2-worker pool start: forkserver 14-37 ms, fork 7-9 ms (first forkserver pool ~170
  ms: server start + preload); close ~2-3 ms either way. fork is 2-4x cheaper but unsafe
  here: the manager is multi-threaded (a lock held by another thread at fork time stays held
  in the child) and each child would inherit the other workers' sockets, hiding their EOF.
  Start cost is paid at start and restart only, so safety wins. `start_method="fork"` is
  kept for that measurement.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import array
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, BinaryIO, Iterable

import cloudpickle
import multiprocess
import multiprocess.forkserver
import multiprocess.process

from . import _wire as W
from . import _worker
from ._api import PoolSpec, PoolState
from ._future import CallFuture
from ._ring import Ring, SlotReader
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

__all__ = ["ProcessPool", "prestart"]

log = logging.getLogger("executors")

DEFAULT_RING_SLOTS = 8  # ring made lazily when spec.ring_slots == 0
_TICK = 0.05  # deadline scan period: timeouts fire within this of their deadline
_INF = float("inf")
_EXIT_GRACE = 2.0

_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.STARTING: frozenset({PoolState.READY, PoolState.CLOSED}),
    PoolState.READY: frozenset({PoolState.DEGRADED, PoolState.FAILED, PoolState.CLOSED}),
    PoolState.DEGRADED: frozenset({PoolState.READY, PoolState.FAILED, PoolState.CLOSED}),
    PoolState.FAILED: frozenset({PoolState.CLOSED}),
    PoolState.CLOSED: frozenset(),
}

_SOCK = 1
_SENT = 2
_WAKE = 3

# -- forkserver -----------------------------------------------------------------------------

_fs_lock = threading.Lock()
_fs_preload: list[str] = ["executors._worker"]


def prestart(preload: Iterable[str] = ()) -> None:
    """Start the forkserver now (it imports `executors._worker` and `preload` once), so the
    first pool does not pay for it. Modules named after the server started are imported by
    each worker instead."""
    with _fs_lock:
        for mod in preload:
            if mod not in _fs_preload:
                _fs_preload.append(mod)
        ctx = multiprocess.get_context("forkserver")
        ctx.set_forkserver_preload(list(_fs_preload))
        multiprocess.forkserver.ensure_running()


def _sigkill(pid: int) -> None:
    """SIGKILL one worker. Refuses pid <= 1: kill(0) hits our process group and kill(-1)
    every process we may signal."""
    if pid is None or pid <= 1:
        log.error("refusing to SIGKILL pid %r", pid)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _forkserver_pid() -> int:
    return multiprocess.forkserver._forkserver._forkserver_pid or 0  # type: ignore[attr-defined]


_live_pools: "weakref.WeakSet[ProcessPool]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for pool in list(_live_pools):
        try:
            pool.close(timeout=2.0)
        except Exception:
            pass


# -- records --------------------------------------------------------------------------------


class _Stream:
    __slots__ = ("cond", "q", "done")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.q: deque[Any] = deque()
        self.done = False


_Item = CallFuture  # one request in flight: its future is also the manager's record of it


class _Worker:
    """Manager-side record of one worker process. Replaced (new object) on restart."""

    def __init__(self, wid: int) -> None:
        self.id = wid
        self.proc: Any = None
        self.pid = 0
        self.sock: socket.socket | None = None
        self.fd = -1
        self.sentinel = -1
        self.rd: W.FrameReader | None = None
        self.mu = threading.Lock()
        self.pending: dict[int, _Item] = {}
        self.sendq: list[tuple[int, bytes, list[int] | None]] = []
        self.sending = True  # held by the starter until the worker is live
        self.nq = 0  # call frames in sendq (pending minus nq = sent, not yet answered)
        self.outbox: deque[tuple[memoryview, list[int] | None]] = deque()  # manager's unsent bytes
        self.wantout = False  # registered for EPOLLOUT (manager flush blocked on a full socket)
        self.direct = False  # a call() thread is reading the socket itself
        self.watched = False  # socket registered in the manager's epoll
        self.mreading = False  # the manager thread is reading the socket
        self.live = False
        self.dead = False
        self.reserved = False  # a byte stream owns this worker
        self.ring: Ring | None = None
        self.min_deadline = _INF
        self.kill_reason = ""
        self.calls = 0


# -- the pool -------------------------------------------------------------------------------


class ProcessPool:
    """A `Pool` of local worker processes (see executors/_api.py for the contract).

    `start_method="fork"` exists only to measure start cost; it is unsafe in a
    multi-threaded manager and leaks the other workers' sockets into each child.
    """

    def __init__(self, spec: PoolSpec, *, start_method: str = "forkserver") -> None:
        if spec.workers < 1:
            raise ValueError(f"pool {spec.name!r}: workers must be >= 1, got {spec.workers}")
        self.spec = spec
        self._start_method = start_method
        self._ctx = multiprocess.get_context(start_method)
        self._state = PoolState.STARTING
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rids = itertools.count(1)
        self._workers: list[_Worker] = []
        self._procs: list[Any] = []
        self._fdmap: dict[int, tuple[int, _Worker | None]] = {}
        self._ep: Any = None
        self._wake_fd = -1
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
        # metrics
        self._restarts = 0
        self._calls = 0
        self._errors = 0
        self._latency = 0.0
        self._last_error = ""
        self._started_at = 0.0

    def __repr__(self) -> str:
        return f"<ProcessPool {self.spec.name!r} {self._state.value} workers={self.spec.workers}>"

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> PoolState:
        return self._state

    def _move(self, new: PoolState) -> bool:
        with self._lock:
            if new is self._state:
                return True
            if new not in _TRANSITIONS[self._state]:
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

    # -- start --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                raise PoolError(f"pool {self.spec.name!r} was already started")
            self._started = True
        spec = self.spec
        try:
            self._init_bytes = cloudpickle.dumps(spec.init, 5)
        except Exception as exc:
            self._move(PoolState.CLOSED)
            raise PoolStartError(f"pool {spec.name!r}: init {spec.init!r} does not pickle: {exc}") from exc
        if self._start_method == "forkserver":
            prestart(spec.preload)
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fdmap[self._wake_fd] = (_WAKE, None)
        self._ep.register(self._wake_fd, select.EPOLLIN)
        self._thread = threading.Thread(target=self._loop, name=f"vsmpool:{spec.name}", daemon=True)
        self._thread.start()
        workers = [_Worker(i) for i in range(spec.workers)]
        self._workers = workers
        deadline = time.monotonic() + spec.start_timeout
        try:
            for w in workers:
                self._launch(w)
            for w in workers:
                self._handshake(w, deadline, [])
        except BaseException:
            for w in workers:
                self._kill(w)
            self._teardown()
            self._move(PoolState.CLOSED)
            raise
        for w in workers:
            self._go_live(w)
        self._started_at = time.time()
        _live_pools.add(self)
        self._move(PoolState.READY)
        self._refresh_state()

    def _launch(self, w: _Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ppid = _forkserver_pid() if self._start_method == "forkserver" else os.getpid()
        proc = self._ctx.Process(
            target=_worker.main, args=(child, ppid), name=f"vsmpool:{self.spec.name}:{w.id}", daemon=False
        )
        try:
            proc.start()
        finally:
            child.close()
        # we reap our workers ourselves; keep multiprocess's atexit from joining them
        multiprocess.process._children.discard(proc)  # type: ignore[attr-defined]
        self._procs.append(proc)
        w.proc = proc
        w.pid = proc.pid
        w.sock = parent
        w.fd = parent.fileno()
        w.sentinel = proc.sentinel
        w.rd = W.FrameReader(parent)

    def _recv_one(self, w: _Worker, deadline: float, what: str) -> tuple[int, Any]:
        """Blocking read of one frame during start, watching the sentinel and the deadline."""
        assert w.rd is not None
        poller = select.poll()
        poller.register(w.fd, select.POLLIN)
        poller.register(w.sentinel, select.POLLIN)
        while True:
            f = w.rd.next()
            if f is not None:
                rid, body = f
                return rid, pickle.loads(body)
            if self._closing:
                raise PoolStartError(f"pool {self.spec.name!r} was closed during {what} of worker {w.id}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise PoolStartError(
                    f"pool {self.spec.name!r}: worker {w.id} (pid {w.pid}) did not finish {what} "
                    f"within {self.spec.start_timeout}s"
                )
            events = dict(poller.poll(min(left, 0.1) * 1000))
            if w.fd in events:
                try:
                    w.rd.fill(False)
                except EOFError:
                    events = {w.sentinel: 1}
                else:
                    continue
            if w.sentinel in events:
                w.proc.join(1.0)
                raise PoolStartError(
                    f"pool {self.spec.name!r}: worker {w.id} (pid {w.pid}) died during {what} "
                    f"with {W.exit_reason(w.proc.exitcode)}"
                )

    def _handshake(self, w: _Worker, deadline: float, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        spec = self.spec
        assert w.sock is not None
        # the forkserver's environment is frozen at its start: send the manager's current one
        init = (W.OP_INIT, self._init_bytes, spec.preload, spec.name, dict(os.environ))
        w.sock.sendall(W.frame(0, pickle.dumps(init, 5)))
        _, msg = self._recv_one(w, deadline, "init")
        if msg[0] == W.K_INIT_ERROR:
            raise PoolStartError(f"pool {spec.name!r}: init raised in worker {w.id} (pid {w.pid}):\n{msg[1]}")
        if spec.ring_slots > 0:
            self._make_ring(w, direct=True)
        for method, args in replays:
            rid = next(self._rids)
            w.sock.sendall(W.frame(rid, W.dumps((W.OP_CALL, method, args))))
            _, msg = self._recv_one(w, deadline, f"replayed broadcast {method}")
            if msg[0] == W.K_ERROR:
                raise PoolStartError(
                    f"pool {spec.name!r}: replayed broadcast {method} raised in worker {w.id} "
                    f"(pid {w.pid}):\n{msg[2]}"
                )

    def _make_ring(self, w: _Worker, direct: bool = False) -> Ring:
        ring = w.ring
        if ring is not None:
            return ring
        ring = Ring(self.spec.ring_slots or DEFAULT_RING_SLOTS, self.spec.slot_bytes)
        w.ring = ring
        body = W.frame(0, pickle.dumps((W.OP_RING, ring.nslots, ring.slot_bytes), 5))
        if direct:
            assert w.sock is not None
            socket.send_fds(w.sock, [body], [ring.fd])
        else:
            self._enqueue(w, None, 0, body, [ring.fd], strict=True)
        return ring

    def _go_live(self, w: _Worker) -> None:
        assert w.sock is not None
        with w.mu:
            if w.dead:
                return
            self._fdmap[w.sentinel] = (_SENT, w)
            self._ep.register(w.sentinel, select.EPOLLIN)
            self._fdmap[w.fd] = (_SOCK, w)
            self._ep.register(w.fd, select.EPOLLIN)
            w.watched = True
            w.live = True
        self._drain(w)  # releases the send role held since creation, sends what queued up
        with self._cond:
            self._cond.notify_all()
        self._refresh_state()

    # -- calls ----------------------------------------------------------------------------
    def _pick(self, worker: int | None) -> _Worker:
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

    def _enqueue(
        self,
        w: _Worker,
        item: _Item | None,
        rid: int,
        data: bytes,
        fds: list[int] | None = None,
        strict: bool = False,
        pinned: int | None = None,
        nagle: bool = False,
    ) -> _Worker:
        """Queue one frame for w (registering item as pending) and send it, unless another
        thread is sending: then that thread takes it along in its batch. With `nagle`, a call
        frame also waits when the worker owes us an answer: the manager thread sends the
        whole batch right after reading that answer (submit() in a loop would otherwise pay
        one sendall and one worker wake-up per call). Returns the worker that took the frame
        (a replacement if w died meanwhile, unless strict)."""
        while True:
            with w.mu:
                if not w.dead:
                    if item is not None:
                        w.pending[rid] = item
                        w.nq += 1
                        if item.deadline < w.min_deadline:
                            w.min_deadline = item.deadline
                    w.sendq.append((rid, data, fds))
                    if w.live and not w.direct and not w.watched:
                        self._ep.register(w.fd, select.EPOLLIN)
                        w.watched = True
                    if w.sending:
                        return w
                    if nagle and w.watched and len(w.pending) > w.nq:
                        return w
                    w.sending = True
                    break
            if strict:
                if item is not None:
                    raise self._dead_error(w, item.method)
                return w
            self._check_open()
            again = self._pick(pinned)
            if again is w:
                time.sleep(0.001)  # its replacement is being put in place
            w = again
        self._drain(w)
        return w

    def _dead_error(self, w: _Worker, method: str) -> PoolError:
        if self._state is PoolState.FAILED and self._broken is not None:
            return PoolBroken(str(self._broken))
        if self._closing:
            return PoolClosed(f"pool {self.spec.name!r} is closed")
        return WorkerCrashed(f"pool {self.spec.name!r}: worker {w.id} (pid {w.pid}) died before {method} was sent")

    def _drain(self, w: _Worker) -> None:
        """Send everything queued for w; the caller holds the send role (w.sending)."""
        sock = w.sock
        while True:
            with w.mu:
                q = w.sendq
                if not q or w.dead:
                    w.sending = False
                    if w.dead:
                        w.sendq = []
                    return
                w.sendq = []
                w.nq = 0
            pending = w.pending
            try:
                if len(q) == 1 and q[0][2] is None:
                    rid, data, _ = q[0]
                    if rid == 0 or rid in pending:
                        sock.sendall(data)  # type: ignore[union-attr]
                    continue
                chunk: list[bytes] = []
                for rid, data, fds in q:
                    if fds is not None:
                        if chunk:
                            sock.sendall(b"".join(chunk))  # type: ignore[union-attr]
                            chunk = []
                        socket.send_fds(sock, [data], fds)  # type: ignore[arg-type]
                    elif rid == 0 or rid in pending:
                        chunk.append(data)
                if chunk:
                    sock.sendall(b"".join(chunk))  # type: ignore[union-attr]
            except OSError:
                with w.mu:
                    w.sending = False
                    w.sendq = []
                return  # the manager thread sees the death on the sentinel

    def _new_item(self, method: str, timeout: Any, stream: _Stream | None = None) -> _Item:
        return CallFuture(next(self._rids), method, self._timeout(timeout), time.monotonic(), stream)

    def submit(
        self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None  # type: ignore[assignment]
    ) -> cf.Future[Any]:
        self._check_open()
        item = self._new_item(method, timeout)
        data = W.frame(item.rid, W.dumps((W.OP_CALL, method, args)))
        w = self._enqueue(self._pick(worker), item, item.rid, data, pinned=worker, nagle=True)
        item.worker = w.id
        return item

    def call(self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None) -> Any:  # type: ignore[assignment]
        self._check_open()
        item = self._new_item(method, timeout)
        rid = item.rid
        data = W.frame(rid, W.dumps((W.OP_CALL, method, args)))
        w = self._pick(worker)
        with w.mu:
            fast = (
                w.live
                and not w.pending
                and not w.sending
                and not w.direct
                and not w.mreading
                and not w.dead
            )
            if fast:
                w.direct = True
                w.sending = True
                w.pending[rid] = item
                if item.deadline < w.min_deadline:
                    w.min_deadline = item.deadline
                if w.watched:
                    self._ep.unregister(w.fd)
                    w.watched = False
        if not fast:
            self._enqueue(w, item, rid, data, pinned=worker)
            return self._wait(item)
        # alone on an idle worker: send and read our own reply (no manager-thread hop)
        try:
            w.sock.sendall(data)  # type: ignore[union-attr]
        except OSError:
            pass
        with w.mu:
            handoff = bool(w.sendq)
            if handoff:  # others queued behind us: let the manager read, we drain as sender
                w.direct = False
                if not w.watched and not w.dead:
                    self._ep.register(w.fd, select.EPOLLIN)
                    w.watched = True
            else:
                w.sending = False
        if handoff:
            self._drain(w)
        else:
            self._direct_read(w, item)
        return self._wait(item)

    def _direct_read(self, w: _Worker, item: _Item) -> None:
        """Blocking reads until item is answered. A dead worker means EOF: its socket end
        closes, and _on_death shuts the socket down in case a grandchild holds it."""
        fut = item
        rd = w.rd
        assert rd is not None
        dispatch = self._dispatch
        try:
            while fut._state != "FINISHED":  # type: ignore[attr-defined]  # no lock, unlike done()
                try:
                    rd.fill_spin(W.SPIN_SECONDS)
                except (EOFError, OSError):
                    break
                f = rd.next()
                while f is not None:
                    dispatch(w, f[0], f[1])
                    f = rd.next()
        finally:
            with w.mu:
                w.direct = False
                if w.pending and not w.watched and not w.dead:
                    self._ep.register(w.fd, select.EPOLLIN)
                    w.watched = True

    def _wait(self, item: _Item) -> Any:
        fut = item
        if fut._state == "FINISHED":  # type: ignore[attr-defined]
            return fut.result()
        # the manager thread resolves every pending item (result, crash, timeout, close);
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
        futs = [self.submit(method, *args, worker=i) for i in range(len(self._workers))]
        return [f.result() for f in futs]

    # -- reading --------------------------------------------------------------------------
    def _read_frames(self, w: _Worker) -> bool:
        """Read and dispatch what the socket has (non-blocking). False at EOF. The caller
        holds the read role (manager with mreading, or a direct caller)."""
        rd = w.rd
        assert rd is not None
        dispatch = self._dispatch
        while True:
            try:
                if not rd.fill(False):
                    return True
            except (EOFError, OSError):
                return False
            nxt = rd.next
            f = nxt()
            while f is not None:
                dispatch(w, f[0], f[1])
                f = nxt()

    def _dispatch(self, w: _Worker, rid: int, body: memoryview) -> None:
        item = w.pending.get(rid)
        if item is None:
            return  # answer to a call that already timed out / was failed
        try:
            msg = pickle.loads(body)
        except Exception as exc:
            tb = traceback.format_exc()
            msg = (
                W.K_ERROR,
                None,
                tb,
                "RemoteError",
                f"{item.method}: its result could not be unpickled in the manager: {exc!r}",
            )
        kind = msg[0]
        if kind == W.K_RESULT:
            w.pending.pop(rid, None)
            w.calls += 1
            self._ok(item, msg[1])
        elif kind == W.K_ERROR:
            w.pending.pop(rid, None)
            w.calls += 1
            self._fail(item, self._remote_exc(item, msg))
        else:
            st = item.stream
            if st is None:
                return
            if item.timeout is not None:
                item.deadline = time.monotonic() + item.timeout
            with st.cond:
                st.q.append(msg[1] if kind == W.K_FREE else (msg[1], msg[2]))
                st.cond.notify()

    def _remote_exc(self, item: _Item, msg: tuple[Any, ...]) -> BaseException:
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
        err = RemoteError(f"pool {self.spec.name!r}: {text} ({tname})\n{tb}")
        err.__cause__ = cause
        return err

    def _ok(self, item: _Item, value: Any) -> None:
        self._calls += 1
        self._latency += time.monotonic() - item.t0
        item.resolve(value)
        st = item.stream
        if st is not None:
            with st.cond:
                st.done = True
                st.cond.notify_all()

    def _fail(self, item: _Item, exc: BaseException) -> None:
        self._calls += 1
        self._errors += 1
        self._latency += time.monotonic() - item.t0
        item.reject(exc)
        st = item.stream
        if st is not None:
            with st.cond:
                st.done = True
                st.cond.notify_all()

    # -- manager thread -------------------------------------------------------------------
    def _loop(self) -> None:
        ep = self._ep
        fdmap = self._fdmap
        next_check = time.monotonic() + _TICK
        while not self._stop:
            try:
                events = ep.poll(_TICK)
                for fd, _ev in events:
                    ent = fdmap.get(fd)
                    if ent is None:
                        continue
                    kind, w = ent
                    if kind == _SOCK:
                        if _ev & select.EPOLLOUT:
                            self._mflush(w, True)  # type: ignore[arg-type]
                        if _ev & ~select.EPOLLOUT:
                            self._manager_read(w)  # type: ignore[arg-type]
                    elif kind == _SENT:
                        self._on_death(w)  # type: ignore[arg-type]
                    else:
                        try:
                            os.read(fd, 8)
                        except BlockingIOError:
                            pass
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _TICK
                    self._check_deadlines(now)
            except Exception:  # the manager thread must survive anything
                log.exception("pool %r: manager thread error", self.spec.name)

    def _manager_read(self, w: _Worker) -> None:
        with w.mu:
            if w.direct or not w.watched or w.dead:
                return
            w.mreading = True
        try:
            ok = self._read_frames(w)
        finally:
            with w.mu:
                w.mreading = False
        if not ok:
            self._on_death(w)
        elif w.sendq:
            self._mflush(w, False)

    def _mflush(self, w: _Worker, resume: bool) -> None:
        """Manager-thread send of what callers left queued (nagle). Never blocks: the manager
        is the reader, so a blocking send could deadlock with a worker blocked on its reply;
        leftovers wait in w.outbox for EPOLLOUT."""
        while True:
            with w.mu:
                if w.dead:
                    return
                if not resume:
                    if w.sending:
                        return
                    w.sending = True
                    resume = True
                q = w.sendq
                w.sendq = []
                w.nq = 0
            pending = w.pending
            chunk: list[bytes] = []
            for rid, data, fds in q:
                if fds is not None:
                    if chunk:
                        w.outbox.append((memoryview(b"".join(chunk)), None))
                        chunk = []
                    w.outbox.append((memoryview(data), fds))
                elif rid == 0 or rid in pending:
                    chunk.append(data)
            if chunk:
                w.outbox.append((memoryview(b"".join(chunk)), None))
            sock = w.sock
            assert sock is not None
            try:
                while w.outbox:
                    data, fds = w.outbox[0]
                    if fds is not None:
                        n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], socket.MSG_DONTWAIT)
                    else:
                        n = sock.send(data, socket.MSG_DONTWAIT)
                    if n < len(data):
                        w.outbox[0] = (data[n:], None)
                    else:
                        w.outbox.popleft()
            except (BlockingIOError, InterruptedError):
                with w.mu:
                    if not w.wantout and w.watched:
                        self._ep.modify(w.fd, select.EPOLLIN | select.EPOLLOUT)
                        w.wantout = True
                return  # keep the send role until EPOLLOUT
            except OSError:
                w.outbox.clear()
                with w.mu:
                    w.sending = False
                return
            with w.mu:
                if w.sendq:
                    continue
                w.sending = False
                if w.wantout:
                    w.wantout = False
                    if w.watched:
                        self._ep.modify(w.fd, select.EPOLLIN)
                return

    def _check_deadlines(self, now: float) -> None:
        for w in list(self._workers):
            if w.min_deadline > now or w.dead:
                continue
            with w.mu:
                items = list(w.pending.values())
                for it in items:
                    # A stream whose queue holds slots for the manager side (data to read, or
                    # room to fill) waits on the manager, not on the plugin: not its timeout.
                    if it.stream is not None and it.stream.q and it.timeout is not None:
                        it.deadline = now + it.timeout
                expired = [it for it in items if it.deadline <= now]
                w.min_deadline = min((it.deadline for it in items if it.deadline > now), default=_INF)
                if expired and not w.live:
                    for it in expired:
                        w.pending.pop(it.rid, None)
            if not expired:
                continue
            if not w.live:
                for it in expired:
                    self._fail(it, CallTimeout(
                        f"pool {self.spec.name!r}: {it.method} timed out after {it.timeout}s "
                        f"waiting for worker {w.id} to start"
                    ))
                continue
            if w.reserved:
                # Small calls queued behind a byte stream on this worker: fail them, but do not
                # kill the worker for them, which would cut the stream (a stat during a 32 GiB
                # put). The stream's own call is bounded by its no-progress deadline.
                behind = [it for it in expired if it.stream is None]
                for it in behind:
                    if w.pending.pop(it.rid, None) is not None:
                        self._fail(it, CallTimeout(
                            f"pool {self.spec.name!r}: {it.method} did not start within {it.timeout}s: "
                            f"worker {w.id} is busy with a byte stream (raise Workers to serve calls beside streams)"
                        ))
                expired = [it for it in expired if it.stream is not None]
                if not expired:
                    continue
            it = min(expired, key=lambda i: i.rid)
            if w.pending.pop(it.rid, None) is None:
                continue
            w.kill_reason = f"killed after timeout of {it.method}"
            _sigkill(w.pid)
            # handle the death now, so that the caller, once told, already finds the
            # replacement (and not the doomed worker) when it calls again
            self._on_death(w)
            self._fail(it, CallTimeout(
                f"pool {self.spec.name!r}: {it.method} did not finish within {it.timeout}s; "
                f"worker {w.id} (pid {w.pid}) was killed and is being replaced"
            ))

    def _on_death(self, w: _Worker) -> None:
        """The worker's sentinel fired or its socket hit EOF: fail its calls, replace it."""
        with w.mu:
            if w.dead:
                return
            w.dead = True
            w.live = False
            if w.watched:
                try:
                    self._ep.unregister(w.fd)
                except OSError:
                    pass
                w.watched = False
            direct = w.direct
            w.sendq = []
        self._fdmap.pop(w.fd, None)
        if self._fdmap.pop(w.sentinel, None) is not None:
            try:
                self._ep.unregister(w.sentinel)
            except OSError:
                pass
        if not direct and not w.mreading:
            try:
                self._read_frames(w)  # answers sent just before it died are still good
            except Exception:
                pass
        elif direct and w.sock is not None:
            try:
                w.sock.shutdown(socket.SHUT_RDWR)  # wake the direct reader
            except OSError:
                pass
        proc = w.proc
        proc.join(1.0)
        if proc.exitcode is None:
            self._kill(w)
        reason = W.exit_reason(proc.exitcode)
        name = self.spec.name
        with w.mu:
            items = list(w.pending.values())
            w.pending.clear()
        if w.kill_reason:
            what = f"was {w.kill_reason} ({reason})"
        else:
            what = f"died with {reason}"
        err = f"pool {name!r}: worker {w.id} (pid {w.pid}) {what}"
        self._close_worker_fds(w)
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
                exc = WorkerCrashed(f"pool {name!r}: {it.method} failed: worker {w.id} (pid {w.pid}) {what}")
            self._fail(it, exc)
        with self._cond:
            self._cond.notify_all()

    def _crashed(
        self, w: _Worker, err: str, carry: tuple[dict[int, _Item], list[Any]] | None = None
    ) -> bool:
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
            if len(ct) > spec.max_restarts:
                self._fail_pool(
                    f"pool {spec.name!r} is broken: {len(ct)} worker crashes within "
                    f"{spec.restart_window}s (max_restarts={spec.max_restarts}); last error: {err}"
                )
                return False
            if self._closing or self._state not in (PoolState.READY, PoolState.DEGRADED):
                return False
            delay = min(0.1 * 2 ** (len(ct) - 1), 10.0)
            new = _Worker(w.id)
            if carry is not None:
                new.pending.update(carry[0])
                new.sendq.extend(carry[1])
                new.min_deadline = min((it.deadline for it in carry[0].values()), default=_INF)
            self._workers[w.id] = new
            replays = list(self._replays)
            self._restarts += 1
            self._move(PoolState.DEGRADED)
            t = threading.Thread(
                target=self._restart, args=(new, delay, replays), name=f"vsmpool:{spec.name}:restart", daemon=True
            )
            self._restart_threads = [x for x in self._restart_threads if x.is_alive()]
            self._restart_threads.append(t)
        log.warning("%s; restarting it in %.1fs", err, delay)
        t.start()
        return True

    def _restart(self, w: _Worker, delay: float, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        if self._stop_evt.wait(delay) or self._closing:
            self._abandon(w, PoolClosed(f"pool {self.spec.name!r} is closed"))
            return
        try:
            self._launch(w)
            self._handshake(w, time.monotonic() + self.spec.start_timeout, replays)
        except Exception as exc:
            self._kill(w)
            msg = str(exc) if isinstance(exc, PoolStartError) else f"pool {self.spec.name!r}: restart failed: {exc!r}"
            with w.mu:
                w.dead = True
                items = dict(w.pending)
                queued = list(w.sendq)
                w.pending.clear()
                w.sendq = []
            self._close_worker_fds(w)
            if self._closing or not self._crashed(w, msg, (items, queued)):
                if self._closing:
                    err: PoolError = PoolClosed(f"pool {self.spec.name!r} is closed")
                elif self._broken is not None:
                    err = PoolBroken(str(self._broken))
                else:
                    err = WorkerCrashed(f"replacement worker failed to start: {msg}")
                for it in items.values():
                    self._fail(it, err)
            return
        if self._closing:
            self._kill(w)
            self._abandon(w, PoolClosed(f"pool {self.spec.name!r} is closed"))
            return
        self._go_live(w)

    def _abandon(self, w: _Worker, exc: PoolError) -> None:
        with w.mu:
            w.dead = True
            items = list(w.pending.values())
            w.pending.clear()
            w.sendq = []
        for it in items:
            self._fail(it, exc)
        self._close_worker_fds(w)

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
                items = list(w.pending.values())
                w.pending.clear()
            for it in items:
                self._fail(it, PoolBroken(msg))
            self._kill(w)
        with self._cond:
            self._cond.notify_all()

    def _kill(self, w: _Worker) -> None:
        proc = w.proc
        if proc is None or proc.exitcode is not None:
            return
        _sigkill(proc.pid)
        proc.join(2.0)

    def _close_worker_fds(self, w: _Worker) -> None:
        if w.sock is not None:
            if w.watched:
                try:
                    self._ep.unregister(w.fd)
                except (OSError, ValueError):
                    pass
                w.watched = False
            self._fdmap.pop(w.fd, None)
            try:
                w.sock.close()
            except OSError:
                pass
        if w.ring is not None:
            w.ring.close()
            w.ring = None

    # -- streams --------------------------------------------------------------------------
    def _reserve(self, timeout: float | None) -> _Worker:
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

    def _unreserve(self, w: _Worker) -> None:
        with self._cond:
            w.reserved = False
            self._cond.notify_all()

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        """See Pool.stream_put. `timeout` bounds the time without progress, not the total."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            ring = self._make_ring(w)
            st = _Stream()
            item = self._new_item(method, tmo, st)
            rid = item.rid
            self._enqueue(w, item, rid, W.frame(rid, W.dumps((W.OP_PUT, method, tuple(args)))), strict=True)
            free: deque[int] = deque(range(ring.nslots))
            readinto = getattr(source, "readinto", None)
            fut = item
            while True:
                if not free:
                    with st.cond:
                        while not st.q and not st.done:
                            st.cond.wait(0.5)
                        free.extend(st.q)
                        st.q.clear()
                if st.done or fut.done():
                    break
                slot = free.popleft()
                view = ring.slot(slot)
                try:
                    if readinto is not None:
                        n = readinto(view) or 0
                    else:
                        chunk = source.read(len(view))
                        n = len(chunk)
                        view[:n] = chunk
                except BaseException as exc:
                    text = f"{type(exc).__name__}: {exc}"
                    self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_ABORT, text))), strict=True)
                    try:
                        self._wait(item)
                    except BaseException:
                        pass
                    raise
                finally:
                    try:
                        view.release()
                    except BufferError:
                        pass  # the source kept a view of the slot
                if tmo is not None:  # a slow source is progress too: the worker just waits
                    item.deadline = time.monotonic() + tmo
                if not n:
                    self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_EOF,))), strict=True)
                    break
                self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_DATA, slot, n))), strict=True)
            return self._wait(item)
        finally:
            self._unreserve(w)

    def stream_get(self, method: str, args: tuple[Any, ...], timeout: float | None = ...) -> SlotReader:  # type: ignore[assignment]
        """See Pool.stream_get. `timeout` bounds the time without progress, not the total."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            ring = self._make_ring(w)
            st = _Stream()
            item = self._new_item(method, tmo, st)
            rid = item.rid
            self._enqueue(w, item, rid, W.frame(rid, W.dumps((W.OP_GET, method, tuple(args)))), strict=True)
        except BaseException:
            self._unreserve(w)
            raise

        def next_slot() -> tuple[int, int] | None:
            with st.cond:
                while not st.q and not st.done:
                    st.cond.wait(0.5)
                # a failed stream raises at once: after a crash the ring is unmapped, so
                # slots announced before it are not readable any more
                if item.done() and item.exception() is not None:
                    raise item.exception()  # type: ignore[misc]
                if st.q:
                    return st.q.popleft()  # type: ignore[no-any-return]
            return None

        def free_slot(slot: int) -> None:
            if not item.done():
                try:
                    self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_FREE, slot))), strict=True)
                except PoolError:
                    pass
            if item.timeout is not None:
                item.deadline = time.monotonic() + item.timeout

        released = []

        def on_close(eof: bool) -> None:
            if released:
                return
            released.append(True)
            try:
                if not item.done():
                    try:
                        self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_ABORT, "cancelled"))), strict=True)
                    except PoolError:
                        pass
                    try:
                        item.result(self.spec.call_timeout or 10.0)
                    except BaseException:
                        pass
            finally:
                self._unreserve(w)

        # Wait for the first chunk, the end, or the failure: a get that fails (no such object,
        # bad path) raises here, at the call, as the Go `Get` returns its error.
        give_up = None if tmo is None else time.monotonic() + tmo
        with st.cond:
            while not st.q and not st.done and not item.done():
                if give_up is not None and time.monotonic() > give_up:
                    break
                st.cond.wait(0.05)
        if item.done() and item.exception() is not None and not st.q:
            on_close(False)
            raise item.exception()  # type: ignore[misc]
        return SlotReader(ring, next_slot, free_slot, on_close)

    # -- status / close -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self._state.value,
            "workers": [
                {"id": w.id, "pid": w.pid, "alive": w.live, "outstanding": len(w.pending), "calls": w.calls}
                for w in self._workers
            ],
            "restarts": self._restarts,
            "calls": self._calls,
            "errors": self._errors,
            "last_error": self._last_error,
            "latency_sum": self._latency,
            "started_at": self._started_at,
        }

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
        if already:
            self._closed_evt.wait(timeout + 5.0)
            return
        try:
            self._close(timeout)
        finally:
            _live_pools.discard(self)
            self._move(PoolState.CLOSED)
            self._closed_evt.set()

    def _close(self, timeout: float) -> None:
        name = self.spec.name
        if not self._started or self._ep is None or self._wake_fd < 0:
            return  # never started, or start() failed and already tore everything down
        self._stop_evt.set()
        deadline = time.monotonic() + timeout
        while any(w.pending for w in self._workers) and time.monotonic() < deadline:
            time.sleep(0.005)
        busy: list[_Worker] = []
        for w in list(self._workers):
            with w.mu:
                items = list(w.pending.values())
                w.pending.clear()
            for it in items:
                self._fail(it, PoolClosed(f"pool {name!r} closed before {it.method} finished"))
            if items:
                busy.append(w)
                self._kill(w)  # still running a call it was given: it cannot shut down cleanly
        for t in list(self._restart_threads):
            t.join(self.spec.start_timeout)
        live = [w for w in self._workers if w.live and not w.dead and w not in busy]
        sm = self.spec.shutdown_method
        if sm:
            items = []
            for w in live:
                item = self._new_item(sm, max(0.5, min(5.0, deadline - time.monotonic())))
                self._enqueue(w, item, item.rid, W.frame(item.rid, W.dumps((W.OP_CALL, sm, ()))), strict=True)
                items.append((w, item))
            for w, item in items:
                try:
                    item.result(item.timeout)
                except BaseException as exc:
                    log.warning("pool %r: %s in worker %d raised: %s", name, sm, w.id, exc)
        for w in live:
            try:
                self._enqueue(w, None, 0, W.frame(0, W.dumps((W.OP_EXIT,))), strict=True)
            except PoolError:
                pass
        end = time.monotonic() + _EXIT_GRACE
        for proc in self._procs:
            proc.join(max(0.0, end - time.monotonic()))
        for proc in self._procs:
            if proc.exitcode is None:
                _sigkill(proc.pid)
                proc.join(5.0)
        self._teardown()

    def _teardown(self) -> None:
        self._stop = True
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:
                pass
            self._thread.join(5.0)
        for w in self._workers:
            with w.mu:
                w.dead = True
                w.live = False
            self._close_worker_fds(w)
        for proc in self._procs:
            if proc.exitcode is None:
                _sigkill(proc.pid)
                proc.join(5.0)
            try:
                proc.close()
            except Exception:
                pass
        self._procs = []
        if self._ep is not None:
            self._ep.close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self) -> "ProcessPool":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

