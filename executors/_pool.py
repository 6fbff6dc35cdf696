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
import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, BinaryIO, Iterable, Iterator

import multiprocess
import multiprocess.forkserver
import multiprocess.process

from . import _wire as W
from . import _worker
from ._api import PoolSpec, PoolState, WithFds
from ._core import INF as _INF
from ._core import TICK as _TICK
from ._core import StreamCall, _PoolCore, _WorkerCore, remote_exc, undecodable
from ._future import CallFuture
from ._ring import Ring, SlotFlow, SlotReader
from .errors import PoolError, PoolStartError, StreamAborted

__all__ = ["ProcessPool", "manager_sys_path", "prestart"]

log = logging.getLogger("executors")

DEFAULT_RING_SLOTS = 8  # ring made lazily when spec.ring_slots == 0
_EXIT_GRACE = 2.0

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
        # The server's environment is its workers': pyarrow's allocator (mimalloc) otherwise
        # maps a 1 GiB arena writable at its first allocation, so a worker forked from a server
        # that imported pyarrow.dataset starts at ~1.17 GiB of RLIMIT_DATA (WorkerLimits.
        # memory_bytes) while ~40 MiB is resident, and a 1 GiB limit fails its first malloc.
        # Committing on demand keeps the count near use (~125 MiB, measured).
        os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        for mod in preload:
            if mod not in _fs_preload:
                _fs_preload.append(mod)
        ctx = multiprocess.get_context("forkserver")
        ctx.set_forkserver_preload(list(_fs_preload))
        with _manager_sys_path():
            multiprocess.forkserver.ensure_running()


@contextlib.contextmanager
def _manager_sys_path() -> Iterator[None]:
    """The forkserver imports exactly what the manager imports: it runs `python -c`, which puts
    the current folder first on sys.path, and multiprocess's forkserver ignores the sys_path it
    is handed. A daemon started in a checkout then ran its workers on the checkout's vsm/ while
    itself ran the installed one (and the sandbox, rightly, refused to read it). -P drops the
    current folder (PYTHONSAFEPATH); PYTHONPATH gives the manager's own entries, an editable
    install's included. Workers get the manager's environment at init, so neither leaks."""
    saved = {k: os.environ.get(k) for k in ("PYTHONSAFEPATH", "PYTHONPATH")}
    os.environ["PYTHONSAFEPATH"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(manager_sys_path())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def manager_sys_path() -> list[str]:
    """The manager's sys.path as absolute folders ('' is the folder it started in)."""
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


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


class _Stream(StreamCall):
    """Manager side of one byte stream: the slot flow, and the peer's wake-ups (counts)."""

    __slots__ = ("q", "flow", "caller_fills")

    def __init__(self, caller_fills: bool) -> None:
        super().__init__()
        self.q: deque[int] = deque()
        self.flow: SlotFlow | None = None
        self.caller_fills = caller_fills  # put: the caller fills slots; get: it empties them

    def wait(self, timeout: float) -> int | None:
        """SlotFlow's wait: the newest count a wake-up carried, or None after timeout."""
        with self.cond:
            if not self.q and not self.done and timeout > 0:
                self.cond.wait(timeout)
            got = max(self.q) if self.q else None
            self.q.clear()
        return got

    def waits_on_caller(self) -> bool:
        """The worker is waiting for us (room to fill, data to read): not the plugin's delay."""
        flow = self.flow
        if flow is None:
            return False
        try:
            return flow.producer_can_fill() if self.caller_fills else flow.consumer_has_data()
        except ValueError:  # the ring went with its worker
            return False


_Item = CallFuture  # one request in flight: its future is also the manager's record of it


class _Worker(_WorkerCore):
    """Manager-side record of one worker process. Replaced (new object) on restart."""

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.proc: Any = None
        self.sock: socket.socket | None = None
        self.fd = -1
        self.sentinel = -1
        self.rd: W.FrameReader | None = None
        self.sendq: list[tuple[int, bytes, list[int] | None]] = []
        self.sending = True  # held by the starter until the worker is live
        self.nq = 0  # call frames in sendq (pending minus nq = sent, not yet answered)
        self.outbox: deque[tuple[memoryview, list[int] | None]] = deque()  # manager's unsent bytes
        self.wantout = False  # registered for EPOLLOUT (manager flush blocked on a full socket)
        self.direct = False  # a call() thread is reading the socket itself
        self.watched = False  # socket registered in the manager's epoll
        self.mreading = False  # the manager thread is reading the socket
        self.ring: Ring | None = None
        self.min_deadline = _INF


# -- the pool -------------------------------------------------------------------------------


class ProcessPool(_PoolCore[_Worker]):
    """A `Pool` of local worker processes (see executors/_api.py for the contract; state,
    crash handling and status are _PoolCore's, executors/_core.py).

    `start_method="fork"` exists only to measure start cost; it is unsafe in a
    multi-threaded manager and leaks the other workers' sockets into each child.
    """

    _KIND = "ProcessPool"
    passes_fds = True
    _THREAD = "vsmpool"
    _DIED_UNSENT = "pool {name!r}: {worker} died before {method} was sent"
    _registry = _live_pools

    def __init__(self, spec: PoolSpec, *, start_method: str = "forkserver") -> None:
        super().__init__(spec)
        self._start_method = start_method
        self._ctx = multiprocess.get_context(start_method)
        self._procs: list[Any] = []
        self._fdmap: dict[int, tuple[int, _Worker | None]] = {}
        self._ep: Any = None
        self._wake_fd = -1

    # -- start --------------------------------------------------------------------------
    def start(self) -> None:
        self._begin_start()
        spec = self.spec
        if self._start_method == "forkserver":
            prestart(spec.preload)
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fdmap[self._wake_fd] = (_WAKE, None)
        self._ep.register(self._wake_fd, select.EPOLLIN)
        self._thread = threading.Thread(target=self._loop, name=f"{self._THREAD}:{spec.name}", daemon=True)
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
        self._finish_start(workers)

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
        w.rd = W.FrameReader(parent, with_fds=True)  # WithFds replies carry fds

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
                except (EOFError, ConnectionError):  # the worker died before it answered
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
        init = (W.OP_INIT, self._init_bytes, spec.preload, spec.name, dict(os.environ), spec.site_dirs, self._setup_bytes)
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

    def _start_worker(self, w: _Worker, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        self._launch(w)
        self._handshake(w, time.monotonic() + self.spec.start_timeout, replays)

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
        if item is None:  # answer to a call that already timed out / was failed
            if w.rd is not None and w.rd.fds:  # it may carry fds nobody will close
                try:
                    stale = pickle.loads(body)
                except Exception:
                    return
                for fd in self._take_fds(w, stale):
                    os.close(fd)
            return
        try:
            msg = pickle.loads(body)
        except Exception as exc:
            msg = undecodable(item.method, exc)
        kind = msg[0]
        if kind == W.K_FDS:
            w.pending.pop(rid, None)
            w.calls += 1
            fds = self._take_fds(w, msg)
            try:
                value = pickle.loads(msg[2])
            except Exception as exc:
                for fd in fds:
                    os.close(fd)
                self._fail(item, remote_exc(self.spec.name, undecodable(item.method, exc)))
            else:
                self._ok(item, WithFds(value, fds))
        elif kind == W.K_RESULT:
            w.pending.pop(rid, None)
            w.calls += 1
            self._ok(item, msg[1])
        elif kind == W.K_ERROR:
            w.pending.pop(rid, None)
            w.calls += 1
            self._fail(item, remote_exc(self.spec.name, msg))
        else:
            st = item.stream
            if st is None:
                return
            if item.timeout is not None:
                item.deadline = time.monotonic() + item.timeout
            with st.cond:
                st.q.append(msg[1])  # K_DATA / K_FREE wake-up: the worker's count
                st.cond.notify()

    @staticmethod
    def _take_fds(w: _Worker, msg: Any) -> tuple[int, ...]:
        """The fds a K_FDS frame brought, off the reader's FIFO (closed if msg is stale)."""
        if not (isinstance(msg, tuple) and msg and msg[0] == W.K_FDS):
            return ()
        rd = w.rd
        assert rd is not None
        return tuple(rd.fds.popleft() for _ in range(min(msg[1], len(rd.fds))))

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

    # -- deadlines: the loop is _PoolCore._check_deadlines ----------------------------------
    def _overdue(self, w: _Worker, now: float) -> list[_Item]:
        if w.min_deadline > now or w.dead:
            return []
        with w.mu:
            items = list(w.pending.values())
            for it in items:
                # A stream whose queue holds slots for the manager side (data to read, or
                # room to fill) waits on the manager, not on the plugin: not its timeout.
                if it.stream is not None and it.timeout is not None and it.stream.waits_on_caller():
                    it.deadline = now + it.timeout
            expired = [it for it in items if it.deadline <= now]
            w.min_deadline = min((it.deadline for it in items if it.deadline > now), default=_INF)
            if expired and not w.live:
                for it in expired:
                    w.pending.pop(it.rid, None)
        return expired

    def _kill_overdue(self, w: _Worker) -> None:
        _sigkill(w.pid)
        self._on_death(w)

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
        self._forget_proc(proc)
        with w.mu:
            items = list(w.pending.values())
            w.pending.clear()
        if w.kill_reason:
            what = f"was {w.kill_reason} ({reason})"
        else:
            what = f"died with {reason}"
        self._close_worker_fds(w, keep_streamed_ring=True)
        self._worker_died(w, what, items)

    # -- restarts: _PoolCore._crashed / _restart ---------------------------------------------
    def _replacement(
        self, w: _Worker, carry: tuple[dict[int, _Item], list[tuple[int, bytes, list[int] | None]]] | None
    ) -> _Worker:
        new = _Worker(w.id)
        if carry is not None:
            new.pending.update(carry[0])
            new.sendq.extend(carry[1])
            new.min_deadline = min((it.deadline for it in carry[0].values()), default=_INF)
        return new

    def _take_failed(self, w: _Worker) -> tuple[Any, list[_Item]]:
        with w.mu:
            w.dead = True
            items = dict(w.pending)
            queued = list(w.sendq)
            w.pending.clear()
            w.sendq = []
        self._close_worker_fds(w)
        return (items, queued), list(items.values())

    def _release(self, w: _Worker) -> None:
        w.sendq = []  # never live: its frames were never sent
        self._close_worker_fds(w)

    def _forget_proc(self, proc: Any) -> None:
        """Close a dead worker's process object: it holds two pipe fds until then (a daemon
        that lost a worker every half minute kept 2 more fds each time: bench_soak, issue 13)."""
        if proc.exitcode is None:
            return
        try:
            self._procs.remove(proc)
        except ValueError:
            pass
        try:
            proc.close()
        except Exception:  # noqa: BLE001 - best effort: pool close tries again
            pass

    def _kill(self, w: _Worker) -> None:
        proc = w.proc
        try:
            if proc is None or proc.exitcode is not None:
                return
        except ValueError:  # closed: it died and was forgotten
            return
        _sigkill(proc.pid)
        proc.join(2.0)

    def _close_worker_fds(self, w: _Worker, keep_streamed_ring: bool = False) -> None:
        """Close what the manager holds of w. keep_streamed_ring (a death): a byte stream's
        caller may be reading or filling a slot right now, so its ring stays mapped until the
        stream lets go of w (_unreserve); unmapped under it, the caller got a ValueError, not
        the WorkerCrashed its call fails with."""
        while w.rd is not None and w.rd.fds:  # fds of replies nobody read
            try:
                os.close(w.rd.fds.popleft())
            except OSError:
                pass
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
        with self._lock:  # one closer only, with _unreserve
            ring, w.ring = (None, w.ring) if keep_streamed_ring and w.reserved else (w.ring, None)
        if ring is not None:
            ring.close()

    def _unreserve(self, w: _Worker) -> None:
        super()._unreserve(w)
        with self._lock:  # a dead worker's ring, kept for the stream that just ended
            ring, w.ring = (w.ring, None) if w.dead else (None, w.ring)
        if ring is not None:
            ring.close()

    # -- streams --------------------------------------------------------------------------
    def _open_stream(self, w: _Worker, op: int, method: str, args: tuple[Any, ...], tmo: float | None) -> tuple[CallFuture, SlotFlow]:
        """Start a byte stream on the reserved worker w: fresh counters, then the request."""
        ring = self._make_ring(w)
        st = _Stream(caller_fills=op == W.OP_PUT)
        item = self._new_item(method, tmo, st)
        rid = item.rid
        wake_op = W.OP_DATA if op == W.OP_PUT else W.OP_FREE

        def wake(count: int) -> None:
            try:
                self._enqueue(w, None, rid, W.frame(rid, W.dumps((wake_op, count))), strict=True)
            except PoolError:
                pass  # the worker died: the call fails on its own

        ring.reset()
        st.flow = SlotFlow(ring, st.wait, wake, lambda: item._state == "FINISHED")
        self._enqueue(w, item, rid, W.frame(rid, W.dumps((op, method, tuple(args)))), strict=True)
        return item, st.flow

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        """See Pool.stream_put. `timeout` bounds the time without progress, not the total."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            item, flow = self._open_stream(w, W.OP_PUT, method, args, tmo)
            rid = item.rid
            ring = flow.ring
            readinto = getattr(source, "readinto", None)
            while True:
                try:
                    slot = flow.acquire()
                except ValueError:  # the ring went with its worker: the call says why
                    break
                if slot is None:  # the call ended early (the plugin returned or failed)
                    break
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
                try:
                    flow.publish(n)
                except ValueError:
                    break
            return self._wait(item)
        finally:
            self._unreserve(w)

    def stream_get(self, method: str, args: tuple[Any, ...], timeout: float | None = ...) -> SlotReader:  # type: ignore[assignment]
        """See Pool.stream_get. `timeout` bounds the time without progress, not the total."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            item, flow = self._open_stream(w, W.OP_GET, method, args, tmo)
        except BaseException:
            self._unreserve(w)
            raise
        rid = item.rid

        def next_slot() -> tuple[int, int] | None:
            try:
                got = flow.next()
            except ValueError:  # the ring went with its worker: the call is failing now
                got = None
                try:
                    item.exception(5.0)
                except cf.TimeoutError:
                    pass
            # a failed stream raises at once: after a crash the ring is unmapped, so
            # slots filled before it are not readable any more
            if item._state == "FINISHED" and item._exception is not None:
                raise item._exception
            if got is None and item._state != "FINISHED":
                raise StreamAborted(f"pool {self.spec.name!r}: stream from {method} broke")
            return got

        def free_slot(slot: int) -> None:
            try:
                flow.release()
            except ValueError:
                pass
            if item.timeout is not None:
                item.deadline = time.monotonic() + item.timeout

        released = []

        def on_close(eof: bool) -> None:
            if released:
                return
            released.append(True)
            if item._state == "FINISHED":
                self._unreserve(w)
                return
            try:
                flow.abort()
            except ValueError:
                pass
            try:
                self._enqueue(w, None, rid, W.frame(rid, W.dumps((W.OP_ABORT, "cancelled"))), strict=True)
            except PoolError:
                pass
            try:
                item.result(self.spec.call_timeout or 10.0)
            except BaseException:
                pass
            # the ring is the worker's until its side of the stream ends: only then may the
            # next stream reset it
            item.add_done_callback(lambda _f: self._unreserve(w))

        # Wait for the first chunk, the end, or the failure: a get that fails (no such object,
        # bad path) raises here, at the call, as the Go `Get` returns its error.
        try:
            next_slot()
        except BaseException:
            on_close(False)
            raise
        return SlotReader(flow.ring, next_slot, free_slot, on_close)

    # -- close: _PoolCore.close / _close, then this ------------------------------------------
    def _running(self) -> bool:
        return self._started and self._ep is not None and self._wake_fd >= 0

    def _stop_workers(self, live: list[_Worker], deadline: float) -> None:
        name = self.spec.name
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
