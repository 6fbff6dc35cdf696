"""RayPool: one plugin's pool of Ray actors, with the ProcessPool's failure semantics.

Data flow::

    caller thread                       Ray (core worker threads)          actor process (one per worker)
    -------------                       -------------------------          -----------------------------
    call/submit(method, *args)                                             _VsmWorker
      item = CallFuture(rid) in w.pending                                    default group (1 thread):
      ref = actor.call.remote(method, args) -------------------------------->   obj.method(*args) ->
      ref.future() callback <---- pickled (K_RESULT, v) | (K_ERROR, ...) <--     bytes, like _worker
        resolve/reject item, or on RayActorError -> events queue               put_stream / get_stream
                                                                             "ctl" group (16 threads):
    manager thread (one per pool)                                              watch (never returns:
      events: a worker died (its watch ref or a call failed with               its ref fails when the
        RayActorError) -> replace it (back-off) or FAILED, then fail            actor dies = sentinel),
        its calls with WorkerCrashed                                           feed / next_chunk / abort
      tick 50 ms -> deadlines: CallTimeout, ray.kill + replace the actor

    byte streams: 8 MiB chunks through Ray's object store (ray.put of a numpy view, read back
    zero-copy with ray.get); at most `depth` chunks in flight, acknowledged per chunk:
      stream_put: caller source.readinto(buf) -> ray.put -> feed(sid, [ref]) returns once the
                  plugin's reader has consumed that chunk; <= 4 feeds outstanding
      stream_get: actor src.readinto(buf) -> ray.put -> next_chunk(sid, k) hands the ref out;
                  the producer stays <= 4 chunks ahead of what the caller took

What vsm-pool adds to Ray's defaults (Ray alone: max_restarts=0, an actor that dies stays
dead; max_task_retries=0, at-most-once, no timeout on a call):

- Restart: a dead actor is replaced by a new one by the pool itself (same init, then every
  `broadcast(replay=True)` call, before it takes calls), with back-off; more than
  spec.max_restarts deaths within spec.restart_window -> FAILED, every call -> PoolBroken.
  Ray's own actor restarts stay off (max_restarts=0): Ray would restart without our init
  replay and (with max_task_retries) re-run calls that may not be idempotent.
- No silent retry: a call in flight on an actor that dies fails with WorkerCrashed naming the
  pool, the method, the actor, its pid and node, and Ray's exit reason. The caller decides.
- Timeouts: spec.call_timeout (or timeout=) per call; past it the actor is killed (ray.kill,
  it may be stuck) and replaced, the call fails with CallTimeout (a TimeoutError).
- Death is seen at once, not at the next call: every actor runs a `watch` call that never
  returns, so its ref fails as soon as Ray marks the actor dead (measured ~10 ms after kill -9).
- Errors as in ProcessPool: a plugin exception re-raised as itself with a RemoteTraceback as
  __cause__; one that will not unpickle, or an unpicklable return value, -> RemoteError; an
  unpicklable argument -> TypeError in the caller; init failure -> PoolStartError with the
  worker's traceback.
- Actors are owned by the manager's Ray job (not detached): if the manager dies, Ray kills them.

Placement: `resources` ({"CPU": 1, "GPU": 0, "memory": bytes, "<custom>": n}; CPU defaults to
0: plugin workers mostly wait on I/O, so they do not hold a core each), `node` (a node id or
a node IP; hard affinity). The plugin's code must be importable on the node (same paths on
one machine; `runtime_env` with py_modules/working_dir across machines).

Measured (bench/bench_ray.py --quick, this noisy 2-vCPU VM, one-node local Ray, one run beside
ProcessPool): RayPool.call one at a time 1.2-1.3k calls/s, the same as a bare
`ray.get(actor.call.remote(...))` (0.97-0.99x: the pool's futures, deadlines and death
handling cost ~nothing next to Ray's ~0.8 ms round trip); ProcessPool.call 7.6k-70k/s on the
same run (Ray's threads steal its spin). 2000 submits in flight: 2.1-2.4k/s vs ProcessPool
107k-151k/s. stream_put 256 MiB 0.69-0.83 GB/s, stream_get 0.63-0.97 GB/s (ProcessPool's shm
ring: 9.6-11 / 5.3-6.8 GB/s): every chunk is copied into the store by ray.put. Start of a
2-worker pool: ~0.6 s (ProcessPool ~60-80 ms). Use Ray for placement and scale-out, not
for the latency of small calls.

Arrow batches to sinks: `share(batch)` is one ray.put; passing the returned ref as a
top-level argument of each sink pool's call makes every sink actor read the same copy
(zero-copy for Arrow/numpy buffers on its node; Ray moves it once to other nodes).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import io
import itertools
import logging
import os
import pickle
import queue
import re
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections import OrderedDict, deque
from typing import Any, BinaryIO, Iterator

import numpy as np
import ray
import ray.exceptions

from . import _wire as W
from ._api import PoolSpec, PoolState, WithFds
from ._core import INF as _INF
from ._core import TICK as _TICK
from ._core import StreamCall, _PoolCore, _WorkerCore, remote_exc, undecodable
from ._future import CallFuture
from ._limits import apply_setup
from .errors import PoolError, PoolStartError, RemoteError, StreamAborted

__all__ = ["RayPool"]

log = logging.getLogger("executors")

CHUNK_BYTES = 8 << 20  # one object-store object per chunk
CHUNKS_IN_FLIGHT = 4  # per stream, each direction
_CTL_THREADS = 16  # watch + ping + stream control calls, beside the one call thread
_FINISHED_KEEP = 4096  # stream ids remembered as finished (a late feed must not wait)


# -- actor side -----------------------------------------------------------------------------


def _resolve_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Top-level ObjectRef arguments (RayPool.share) become their objects: one ray.put, read
    zero-copy by every actor on the node."""
    if any(isinstance(a, ray.ObjectRef) for a in args):
        return tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)
    return args


class _InStream:
    """Actor side of a put stream: chunks fed by `feed` (ctl threads), read by the plugin."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        # chunk index -> (ref | None = EOF, consumed); feeds run on concurrent ctl threads,
        # so they may arrive out of order: the reader takes index after index
        self.q: dict[int, tuple[Any, threading.Event]] = {}
        self.next = 0
        self.abort = ""
        self.closed = False


class _OutStream:
    """Actor side of a get stream: chunk refs by index, handed out by `next_chunk`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.refs: dict[int, Any] = {}
        self.produced = 0
        self.taken = 0
        self.end = ""  # "" running, "eof", "error"
        self.abort = ""
        self.closed = False


class _ChunkReader(io.RawIOBase):
    """A binary reader over chunks that `_advance()` makes current one at a time (as
    `self._view`, read from `self._off`); readinto copies out, iter_views does not."""

    _view: memoryview | None
    _off: int

    def _advance(self) -> bool:
        raise NotImplementedError

    def _drop_view(self) -> None:
        """Let go of the current chunk (a consumer may still hold a derived view of it)."""
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass
            self._view = None

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed stream")
        while self._view is None or self._off >= len(self._view):
            if not self._advance():
                return 0
        dst = memoryview(b).cast("B")
        k = min(len(dst), len(self._view) - self._off)
        dst[:k] = self._view[self._off : self._off + k]
        self._off += k
        return k

    def readall(self) -> bytes:
        return b"".join(bytes(v) for v in self.iter_views())

    def iter_views(self) -> Iterator[memoryview]:
        """Zero-copy chunks until EOF; a view is valid until the next one is requested."""
        if self._view is not None and self._off < len(self._view):
            v = self._view[self._off :]
            self._off = len(self._view)
            yield v
        while self._advance():
            assert self._view is not None
            self._off = len(self._view)
            yield self._view


class _PutReader(_ChunkReader):
    """The reader a plugin's put method gets: readinto/read/iter_views over fed chunks."""

    def __init__(self, st: _InStream, pool: str, method: str) -> None:
        super().__init__()
        self._st = st
        self._what = f"pool {pool!r}: stream to {method}"
        self._view: memoryview | None = None
        self._off = 0
        self._ev: threading.Event | None = None
        self._eof = False
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def _release(self) -> None:
        self._drop_view()
        if self._ev is not None:
            self._ev.set()  # tell the caller this chunk is consumed: its object can go
            self._ev = None

    def _advance(self) -> bool:
        self._release()
        if self._eof:
            return False
        st = self._st
        with st.cond:
            while st.next not in st.q and not st.abort:
                st.cond.wait()
            if st.abort:
                raise StreamAborted(f"{self._what} aborted by the caller: {st.abort}")
            ref, ev = st.q.pop(st.next)
            st.next += 1
        if ref is None:
            ev.set()
            self._eof = True
            return False
        arr = ray.get(ref)  # zero-copy from the node's object store
        del ref
        self._view = memoryview(arr).cast("B")
        self._off = 0
        self._ev = ev
        self.nbytes += len(self._view)
        return True


    def close(self) -> None:
        if not self.closed:
            self._release()
        super().close()


class _VsmWorker:
    """The actor: holds the plugin's service object; `call` runs one request at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.obj: Any = None
        self._dead = threading.Event()
        self._lock = threading.Lock()
        self._streams: dict[int, Any] = {}
        self._finished: OrderedDict[int, str] = OrderedDict()

    # -- default group: one at a time, in order --------------------------------------------
    def init(
        self, init_bytes: bytes, preload: tuple[str, ...], env: dict[str, str], path: list[str], setup: bytes | None = None
    ) -> tuple[Any, ...]:
        try:
            os.environ.update(env)
            # as a forkserver child inherits the manager's sys.path (paths missing on this
            # node are skipped by the import system)
            sys.path.extend(p for p in path if p not in sys.path)
            apply_setup(setup)  # limits only: RayPool refuses a confinement (see start)
            for mod in preload:
                __import__(mod)
            self.obj = pickle.loads(init_bytes)()
        except BaseException as exc:
            return ("error", "".join(traceback.format_exception(exc)))
        return ("ok", os.getpid(), ray.get_runtime_context().get_node_id(), _node_ip())

    def call(self, method: str, args: tuple[Any, ...]) -> bytes:
        try:
            value = getattr(self.obj, method)(*_resolve_args(args))
        except Exception as exc:
            return W.error_reply(exc, method, self.obj)
        if isinstance(value, WithFds):
            for fd in value.fds:
                os.close(fd)
            return W.error_reply(PoolError(f"{method}: returned file descriptors, which cannot leave a Ray actor's process (RayPool.passes_fds is False)"), method, self.obj)
        return W.result_reply(value, method)

    def put_stream(self, sid: int, method: str, args: tuple[Any, ...]) -> bytes:
        st = self._stream(sid, _InStream)
        reader = _PutReader(st, self.name, method)
        try:
            value = getattr(self.obj, method)(*args, reader)
        except Exception as exc:
            body = W.error_reply(exc, method, self.obj)
        else:
            body = W.result_reply(value, method)
        finally:
            reader.close()
            self._finish(sid, st)
        return body

    def get_stream(self, sid: int, method: str, args: tuple[Any, ...], chunk: int, depth: int) -> bytes:
        st = self._stream(sid, _OutStream)
        src: Any = None
        try:
            src = getattr(self.obj, method)(*args)
            readinto = getattr(src, "readinto", None)
            buf = bytearray(chunk)
            view = memoryview(buf)
            while True:
                with st.cond:
                    while st.produced - st.taken >= depth and not st.abort:
                        st.cond.wait()
                    if st.abort:
                        break
                if readinto is not None:
                    n = readinto(view) or 0
                else:
                    data = src.read(chunk)
                    n = len(data)
                    view[:n] = data
                if not n:
                    break
                ref = ray.put(np.frombuffer(buf, dtype=np.uint8, count=n))  # copies into the store
                with st.cond:
                    st.refs[st.produced] = ref
                    st.produced += 1
                    st.cond.notify_all()
                del ref
            body = W.result_reply(None, method)
            end = "eof"
        except Exception as exc:
            body = W.error_reply(exc, method, self.obj)
            end = "error"
        finally:
            close = getattr(src, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    traceback.print_exc()
        with st.cond:
            st.end = end
            st.cond.notify_all()
        # the caller takes the remaining chunks (or aborts) after this returns
        return body

    # -- ctl group: never blocked by a running call ------------------------------------------
    @ray.method(concurrency_group="ctl")
    def watch(self) -> None:
        """Never returns: its ref fails when the actor dies, which is how the pool sees it."""
        self._dead.wait()

    @ray.method(concurrency_group="ctl")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="ctl")
    def feed(self, sid: int, k: int, refs: list[Any]) -> bool:
        """Give a put stream its chunk k ([] = EOF); returns once the reader consumed it."""
        st = self._stream(sid, _InStream)
        if st is None:
            return False
        ev = threading.Event()
        with st.cond:
            if st.closed:
                return False
            st.q[k] = (refs[0] if refs else None, ev)
            st.cond.notify_all()
        while not ev.wait(0.5):
            if st.closed:
                return False
        return True

    @ray.method(concurrency_group="ctl")
    def next_chunk(self, sid: int, k: int) -> tuple[Any, ...]:
        """Chunk k of a get stream: ("data", [ref]) | ("eof",) | ("error",) | ("aborted",)."""
        st = self._stream(sid, _OutStream)
        if st is None:  # finished: a prefetch past the end, or a cancelled stream
            return (self._finished.get(sid) or "aborted",)
        with st.cond:
            while k not in st.refs and not st.end and not st.abort and not st.closed:
                st.cond.wait(0.5)
            if k in st.refs:
                ref = st.refs.pop(k)
                st.taken = max(st.taken, k + 1)
                st.cond.notify_all()
                done = st.end == "eof" and not st.refs
            elif st.end == "eof" and k >= st.produced:
                ref, done = None, not st.refs
            elif st.abort or st.closed:
                return ("aborted",)
            else:
                return ("error",)
        if done:  # every chunk handed out: forget the stream (later prefetches see "eof")
            self._finish(sid, st, "eof")
        return ("data", [ref]) if ref is not None else ("eof",)

    @ray.method(concurrency_group="ctl")
    def abort(self, sid: int, text: str) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        with st.cond:
            st.abort = text or "aborted"
            st.cond.notify_all()
        if isinstance(st, _OutStream):
            self._finish(sid, st)

    def _stream(self, sid: int, kind: type) -> Any:
        with self._lock:
            if sid in self._finished:
                return None
            st = self._streams.get(sid)
            if st is None:
                st = self._streams[sid] = kind()
            return st

    def _finish(self, sid: int, st: Any, end: str = "aborted") -> None:
        with self._lock:
            self._streams.pop(sid, None)
            self._finished[sid] = end
            while len(self._finished) > _FINISHED_KEEP:
                self._finished.popitem(last=False)
        with st.cond:
            st.closed = True
            if isinstance(st, _OutStream):
                st.refs.clear()
            else:
                st.q.clear()
            st.cond.notify_all()


def _node_ip() -> str:
    try:
        return str(ray._private.worker.global_worker.node_ip_address)
    except Exception:
        return ray.util.get_node_ip_address()


_actor_cls: Any = None
_actor_lock = threading.Lock()


def _actor_class() -> Any:
    global _actor_cls
    with _actor_lock:
        if _actor_cls is None:
            _actor_cls = ray.remote(concurrency_groups={"ctl": _CTL_THREADS})(_VsmWorker)
        return _actor_cls


# -- caller side ----------------------------------------------------------------------------


_EXIT_RE = re.compile(r"Worker exit type: (\S+)\s*Worker exit detail: ([^.]*\.?)")


def _ray_reason(exc: BaseException) -> str:
    """Ray's ActorDiedError text -> one short reason."""
    text = str(exc)
    m = _EXIT_RE.search(text)
    if m:
        return f"died (Ray: {m.group(1)}: {m.group(2).strip()})"
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("The actor is dead because") or "node" in line.lower() and "died" in line.lower():
            return f"died (Ray: {line[:200]})"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"died (Ray: {first[:200]})"


class _Worker(_WorkerCore):
    """Caller-side record of one actor. Replaced (new object) on restart."""

    def __init__(self, wid: int) -> None:
        super().__init__(wid)
        self.actor: Any = None
        self.actor_id = ""
        self.node = ""
        self.ip = ""
        self.queued: list[tuple[CallFuture, str, tuple[Any, ...]]] = []  # waiting for live (also pending)
        self.watch_ref: Any = None

    def label(self) -> str:
        where = f", node {self.node[:12]}" if self.node else ""
        return f"worker {self.id} (actor {self.actor_id[:12]}, pid {self.pid}{where})"


_live_pools: "weakref.WeakSet[RayPool]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for pool in list(_live_pools):
        try:
            pool.close(timeout=2.0)
        except Exception:
            pass


class RayPool(_PoolCore[_Worker]):
    """A `Pool` of Ray actors (see executors/_api.py for the contract, and this module's
    docstring for what it guarantees beyond Ray's defaults; state, crash handling and status
    are _PoolCore's, executors/_core.py).

    address: passed to ray.init when this process is not connected yet (None: RAY_ADDRESS or
      a local Ray); resources: per actor {"CPU", "GPU", "memory", custom...}; node: node id or
      IP to pin every actor to; runtime_env: per actor; env: variables set in each actor
      before init (actors do not inherit the manager's environment); namespace: of the actors.
    """

    _KIND = "RayPool"
    passes_fds = False  # an fd cannot leave its process: a WithFds value fails the call
    _THREAD = "vsmray"
    _DIED_UNSENT = "pool {name!r}: {method} failed: {worker} died before it was sent"
    _registry = _live_pools

    def __init__(
        self,
        spec: PoolSpec,
        *,
        address: str | None = None,
        resources: dict[str, float] | None = None,
        node: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        chunks_in_flight: int = CHUNKS_IN_FLIGHT,
    ) -> None:
        super().__init__(spec)
        if chunk_bytes < 1 or chunks_in_flight < 1:
            raise ValueError(f"pool {spec.name!r}: chunk_bytes and chunks_in_flight must be >= 1")
        if spec.site_dirs:  # local folders: a node elsewhere has none; Ray installs per actor
            raise ValueError(f"pool {spec.name!r}: site_dirs is for local workers; give RayPool a runtime_env (pip) instead")
        self.address = address
        self.resources = dict(resources or {})
        self.node = node
        self.runtime_env = runtime_env
        self.env = dict(env or {})
        self.chunk_bytes = chunk_bytes
        self.depth = chunks_in_flight
        self._events: queue.Queue[tuple[_Worker, str]] = queue.Queue()
        self._options: dict[str, Any] = {}
        self._tag = uuid.uuid4().hex[:8]
        self._gen = itertools.count()
        self._all_actors: list[_Worker] = []  # every actor ever made: close() confirms each is dead

    # -- start --------------------------------------------------------------------------
    def _connect(self) -> None:
        if ray.is_initialized():
            return
        kw: dict[str, Any] = {"address": self.address, "log_to_driver": True}
        if self.address is None:
            kw["include_dashboard"] = False
        try:
            ray.init(**kw)
        except Exception as exc:
            raise PoolStartError(
                f"pool {self.spec.name!r}: cannot connect to Ray at {self.address or 'RAY_ADDRESS/local'}: {exc}"
            ) from exc

    def _actor_options(self) -> dict[str, Any]:
        res = dict(self.resources)
        opts: dict[str, Any] = {
            "num_cpus": float(res.pop("CPU", 0)),
            "max_restarts": 0,  # the pool restarts actors itself (init + replay), see docstring
            "max_task_retries": 0,  # at-most-once: a call in flight on a dead actor fails
            "namespace": "vsm-pool",
        }
        if "GPU" in res:
            opts["num_gpus"] = float(res.pop("GPU"))
        if "memory" in res:
            opts["memory"] = float(res.pop("memory"))
        if res:
            opts["resources"] = {k: float(v) for k, v in res.items()}
        if self.runtime_env:
            opts["runtime_env"] = self.runtime_env
        if self.node:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._node_id(self.node), soft=False)
        return opts

    def _nowhere_to_place(self) -> str:
        if not self.node:
            return ""  # Ray places the replacement on any node that can take it
        try:
            self._node_id(self.node)
        except PoolStartError:
            return f"its Ray node {self.node!r} is gone and the pool is pinned there (RayNode): no other node may run it"
        except Exception:  # the cluster itself cannot be asked: let the restart find out
            return ""
        return ""

    def _node_id(self, node: str) -> str:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        for n in alive:
            if n["NodeID"] == node:
                return node
        for n in alive:
            if n.get("NodeManagerAddress") == node:
                return str(n["NodeID"])
        known = ", ".join(f"{n['NodeID'][:12]}@{n.get('NodeManagerAddress')}" for n in alive) or "none"
        raise PoolStartError(f"pool {self.spec.name!r}: no alive Ray node {node!r} (RayNode); alive: {known}")

    def start(self) -> None:
        if self.spec.confine is not None:
            # a confinement (Landlock) binds the thread that applies it and its later threads:
            # an actor runs Ray's own threads before its init could apply it
            self._move(PoolState.CLOSED)
            raise PoolStartError(f"pool {self.spec.name!r}: a confined pool (PoolSpec.confine) needs local worker processes, not Ray actors")
        self._begin_start()
        spec = self.spec
        workers = [_Worker(i) for i in range(spec.workers)]
        self._workers = workers
        try:
            self._connect()
            self._options = self._actor_options()
            deadline = time.monotonic() + spec.start_timeout
            refs = [self._launch(w) for w in workers]
            for w, ref in zip(workers, refs):
                self._handshake(w, ref, deadline, [])
        except BaseException:
            for w in workers:
                self._kill(w)
            self._confirm_dead(workers, 5.0)
            self._move(PoolState.CLOSED)
            raise
        self._thread = threading.Thread(target=self._loop, name=f"{self._THREAD}:{spec.name}", daemon=True)
        self._thread.start()
        self._finish_start(workers)

    def _launch(self, w: _Worker) -> Any:
        """Create w's actor and send init (returns its ref); arms the death watch."""
        name = f"{self.spec.name}:{w.id}:{self._tag}.{next(self._gen)}"
        w.actor = _actor_class().options(name=name, **self._options).remote(self.spec.name)
        w.actor_id = w.actor._actor_id.hex()
        self._all_actors.append(w)
        ref = w.actor.init.remote(self._init_bytes, self.spec.preload, self.env, list(sys.path), self._setup_bytes)
        w.watch_ref = w.actor.watch.remote()
        return ref

    def _start_worker(self, w: _Worker, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        ref = self._launch(w)
        self._handshake(w, ref, time.monotonic() + self.spec.start_timeout, replays)

    def _arm_watch(self, w: _Worker) -> None:
        def fired(_f: Any, w: _Worker = w) -> None:
            exc = _f.exception()
            self._events.put((w, _ray_reason(exc) if exc is not None else "died (its watch call returned)"))

        w.watch_ref.future().add_done_callback(fired)

    def _get(self, w: _Worker, ref: Any, deadline: float, what: str) -> Any:
        """ray.get during start/restart, bounded by the deadline and close()."""
        while True:
            left = deadline - time.monotonic()
            if self._stop_evt.is_set() and self._started_at:
                raise PoolStartError(f"pool {self.spec.name!r} was closed during {what} of worker {w.id}")
            if left <= 0:
                hint = ""
                if w.pid == 0:
                    hint = f"; Ray may have no node able to place it (options {self._placement()})"
                raise PoolStartError(
                    f"pool {self.spec.name!r}: {w.label()} did not finish {what} within {self.spec.start_timeout}s{hint}"
                )
            try:
                return ray.get(ref, timeout=min(left, 0.2))
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError as exc:
                raise PoolStartError(f"pool {self.spec.name!r}: {w.label()} {_ray_reason(exc)} during {what}") from None

    def _placement(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._options.items() if k not in ("max_restarts", "max_task_retries", "namespace"))

    def _handshake(self, w: _Worker, ref: Any, deadline: float, replays: list[tuple[str, tuple[Any, ...]]]) -> None:
        spec = self.spec
        msg = self._get(w, ref, deadline, "init")
        if msg[0] == "error":
            raise PoolStartError(f"pool {spec.name!r}: init raised in worker {w.id} (actor {w.actor_id[:12]}):\n{msg[1]}")
        _, w.pid, w.node, w.ip = msg
        for method, args in replays:
            body = self._get(w, w.actor.call.remote(method, args), deadline, f"replayed broadcast {method}")
            reply = pickle.loads(body)
            if reply[0] == W.K_ERROR:
                raise PoolStartError(
                    f"pool {spec.name!r}: replayed broadcast {method} raised in {w.label()}:\n{reply[2]}"
                )

    def _go_live(self, w: _Worker) -> None:
        self._arm_watch(w)
        with w.mu:
            if w.dead:
                return
            queued, w.queued = w.queued, []
            for item, method, args in queued:
                if item.done():  # timed out while waiting for this worker
                    w.pending.pop(item.rid, None)
                    continue
                try:
                    self._send(w, item, w.actor.call, (method, args))
                except Exception as exc:  # an argument that will not serialize
                    w.pending.pop(item.rid, None)
                    self._fail(item, exc)
            w.live = True
        with self._cond:
            self._cond.notify_all()
        self._refresh_state()

    # -- calls ----------------------------------------------------------------------------
    def _send(self, w: _Worker, item: CallFuture, fn: Any, fargs: tuple[Any, ...]) -> None:
        """fn.remote(*fargs) on w's actor (w.mu held, w not dead); the result comes back by
        callback. An argument that will not serialize raises here, in the caller."""
        ref = fn.remote(*fargs)
        w.pending[item.rid] = item
        if item.deadline < _INF:
            self._has_deadlines = True
        ref.future().add_done_callback(lambda f, w=w, item=item: self._done(w, item, f))

    def _done(self, w: _Worker, item: CallFuture, f: cf.Future[Any]) -> None:
        """Ray's callback thread: a call's ref resolved."""
        exc = f.exception()
        if exc is not None:
            if isinstance(exc, ray.exceptions.RayActorError):
                self._events.put((w, _ray_reason(exc)))  # the manager fails every call of w
                return
            if w.pending.pop(item.rid, None) is None:
                return
            err = RemoteError(f"pool {self.spec.name!r}: {item.method} failed in Ray: {exc}")
            err.__cause__ = exc
            self._fail(item, err)
            return
        if w.pending.pop(item.rid, None) is None:
            return  # already failed (timeout, crash, close)
        w.calls += 1
        try:
            msg = pickle.loads(f.result())
        except Exception as e:
            msg = undecodable(item.method, e)
        if msg[0] == W.K_RESULT:
            self._ok(item, msg[1])
        else:
            self._fail(item, remote_exc(self.spec.name, msg))

    _has_deadlines = False

    def _submit_item(self, item: CallFuture, method: str, args: tuple[Any, ...], worker: int | None) -> _Worker:
        w = self._pick(worker)
        while True:
            with w.mu:
                if not w.dead:
                    if w.live:
                        self._send(w, item, w.actor.call, (method, args))
                    else:  # sent by _go_live once the replacement is up
                        w.pending[item.rid] = item
                        if item.deadline < _INF:
                            self._has_deadlines = True
                        w.queued.append((item, method, args))
                    item.worker = w.id
                    return w
            self._check_open()
            again = self._pick(worker)
            if again is w:
                time.sleep(0.001)  # its replacement is being put in place
            w = again

    def _submit_stream(self, w: _Worker, item: CallFuture, fn_name: str, fargs: tuple[Any, ...]) -> None:
        with w.mu:
            if w.dead or not w.live:
                raise self._dead_error(w, item.method)
            self._send(w, item, getattr(w.actor, fn_name), fargs)
            item.worker = w.id

    def submit(
        self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None  # type: ignore[assignment]
    ) -> cf.Future[Any]:
        self._check_open()
        item = self._new_item(method, timeout)
        self._submit_item(item, method, args, worker)
        return item

    def call(self, method: str, *args: Any, timeout: float | None = ..., worker: int | None = None) -> Any:  # type: ignore[assignment]
        self._check_open()
        item = self._new_item(method, timeout)
        self._submit_item(item, method, args, worker)
        return self._wait(item)

    def share(self, obj: Any) -> Any:
        """Put obj into Ray's object store once; pass the returned ref as a top-level argument
        of calls to any RayPool (e.g. one Arrow batch to every sink): each actor gets obj,
        read zero-copy from its node's store (numpy and Arrow buffers)."""
        self._check_open()
        return ray.put(obj)

    # -- manager thread -------------------------------------------------------------------
    def _loop(self) -> None:
        next_check = time.monotonic() + _TICK
        while not self._stop:
            try:
                try:
                    w, reason = self._events.get(timeout=_TICK)
                except queue.Empty:
                    pass
                else:
                    self._on_death(w, reason)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + _TICK
                    if self._has_deadlines:
                        self._check_deadlines(now)
            except Exception:  # the manager thread must survive anything
                log.exception("pool %r: manager thread error", self.spec.name)

    # -- deadlines: the loop is _PoolCore._check_deadlines ----------------------------------
    def _overdue(self, w: _Worker, now: float) -> list[CallFuture]:
        if w.dead:
            return []
        with w.mu:
            expired = [it for it in w.pending.values() if it.deadline <= now]
            if expired and not w.live:
                for it in expired:
                    w.pending.pop(it.rid, None)
        return expired

    def _kill_overdue(self, w: _Worker) -> None:
        self._on_death(w, "")  # kills the actor

    def _kill(self, w: _Worker) -> None:
        if w.actor is not None:
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:
                pass

    def _on_death(self, w: _Worker, reason: str) -> None:
        """w's actor died (or is to be killed): fail its calls, replace it."""
        with w.mu:
            if w.dead:
                return
            w.dead = True
            w.live = False
            items = self._take_calls(w)
        self._kill(w)
        what = f"was {w.kill_reason}" if w.kill_reason else reason or "died"
        self._worker_died(w, what, items)

    # -- restarts: _PoolCore._crashed / _restart ---------------------------------------------
    def _replacement(self, w: _Worker, carry: list[tuple[CallFuture, str, tuple[Any, ...]]] | None) -> _Worker:
        new = _Worker(w.id)
        if carry:
            new.queued.extend(carry)
            for item, _m, _a in carry:
                new.pending[item.rid] = item
        return new

    def _take_failed(self, w: _Worker) -> tuple[Any, list[CallFuture]]:
        with w.mu:
            w.dead = True
            queued = [q for q in w.queued if not q[0].done()]
            w.pending.clear()
            w.queued = []
        return queued, [it for it, _m, _a in queued]

    def _take_calls(self, w: _Worker) -> list[CallFuture]:
        items = list(w.pending.values())
        w.pending.clear()
        w.queued = []
        return items

    # -- streams --------------------------------------------------------------------------
    def _progress(self, item: CallFuture) -> None:
        if item.timeout is not None:
            item.deadline = time.monotonic() + item.timeout

    def _await_ref(self, ref: Any, item: CallFuture) -> bool:
        """Wait for a stream control ref; False if the stream's call finished first."""
        while True:
            ready, _ = ray.wait([ref], timeout=0.1)
            if ready:
                return True
            if item.done():
                return False

    def stream_put(self, method: str, args: tuple[Any, ...], source: BinaryIO, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        """See Pool.stream_put: chunks of chunk_bytes through the object store, at most
        chunks_in_flight not yet consumed by the plugin. `timeout` bounds time without progress."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            item = self._new_item(method, tmo, StreamCall())
            sid = item.rid
            actor = w.actor
            self._submit_stream(w, item, "put_stream", (sid, method, tuple(args)))
            buf = bytearray(self.chunk_bytes)
            view = memoryview(buf)
            readinto = getattr(source, "readinto", None)
            inflight: deque[Any] = deque()
            k = 0
            while not item.done():
                if len(inflight) >= self.depth:
                    if not self._await_ref(inflight[0], item):
                        break
                    inflight.popleft()
                    self._progress(item)
                    continue
                try:
                    if readinto is not None:
                        n = readinto(view) or 0
                    else:
                        data = source.read(len(buf))
                        n = len(data)
                        view[:n] = data
                except BaseException as exc:
                    actor.abort.remote(sid, f"{type(exc).__name__}: {exc}")
                    try:
                        self._wait(item)
                    except BaseException:
                        pass
                    raise
                self._progress(item)  # a slow source is progress too: the actor just waits
                if not n:
                    actor.feed.remote(sid, k, [])
                    break
                ref = ray.put(np.frombuffer(buf, dtype=np.uint8, count=n))  # copies: buf is reusable
                inflight.append(actor.feed.remote(sid, k, [ref]))
                k += 1
                del ref
            return self._wait(item)
        finally:
            self._unreserve(w)

    def stream_get(self, method: str, args: tuple[Any, ...], timeout: float | None = ...) -> io.RawIOBase:  # type: ignore[assignment]
        """See Pool.stream_get. The reader has readinto/read/iter_views; closing it early
        cancels. `timeout` bounds time without progress."""
        self._check_open()
        tmo = self._timeout(timeout)
        w = self._reserve(tmo)
        try:
            item = self._new_item(method, tmo, StreamCall())
            sid = item.rid
            args_t = (sid, method, tuple(args), self.chunk_bytes, self.depth)
            self._submit_stream(w, item, "get_stream", args_t)
        except BaseException:
            self._unreserve(w)
            raise
        reader = _GetReader(self, w, item, sid)
        try:
            reader._first()  # a get that fails at open (no such object) raises here, at the call
        except BaseException:
            reader.close()
            raise
        return reader

    # -- status / close: _PoolCore.status / close / _close, then _stop_workers --------------
    def _status_extra(self) -> dict[str, Any]:
        return {"backend": "ray"}

    def _worker_status(self, w: _Worker) -> dict[str, Any]:
        return {**super()._worker_status(w), "actor": w.actor_id, "node": w.node, "ip": w.ip}

    def _running(self) -> bool:
        return self._started and bool(self._started_at)

    def _stop_workers(self, live: list[_Worker], deadline: float) -> None:
        name = self.spec.name
        sm = self.spec.shutdown_method
        if sm:
            refs = [(w, w.actor.call.remote(sm, ())) for w in live]
            end = time.monotonic() + max(0.5, min(5.0, deadline - time.monotonic()))
            for w, ref in refs:
                try:
                    reply = pickle.loads(ray.get(ref, timeout=max(0.0, end - time.monotonic())))
                    if reply[0] == W.K_ERROR:
                        log.warning("pool %r: %s in worker %d raised: %s", name, sm, w.id, reply[4])
                except Exception as exc:
                    log.warning("pool %r: %s in worker %d failed: %s", name, sm, w.id, exc)
        self._stop = True
        for w in self._workers:
            with w.mu:
                w.dead = True
                w.live = False
        for w in self._all_actors:
            self._kill(w)
        self._confirm_dead(self._all_actors, 10.0)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _confirm_dead(self, workers: list[_Worker], timeout: float) -> None:
        """Wait until Ray reports every actor dead (its watch ref fails), so a closed pool
        leaves no actor process behind."""
        refs = [w.watch_ref for w in workers if w.watch_ref is not None]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
        # the worker process exits just after Ray marks the actor dead; on this host, wait for it
        end = time.monotonic() + 5.0
        for w in workers:
            while w.pid > 1 and _pid_alive(w.pid) and time.monotonic() < end and w.ip in _local_ips():
                time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


_ips: set[str] | None = None


def _local_ips() -> set[str]:
    global _ips
    if _ips is None:
        ips = {"127.0.0.1", _node_ip()}
        _ips = ips
    return _ips


class _GetReader(_ChunkReader):
    """Caller side of stream_get: chunk refs prefetched two ahead, read zero-copy."""

    def __init__(self, pool: RayPool, w: _Worker, item: CallFuture, sid: int) -> None:
        super().__init__()
        self._pool = pool
        self._w = w
        self._item = item
        self._sid = sid
        self._k = 0
        self._ahead: deque[Any] = deque()
        self._view: memoryview | None = None
        self._off = 0
        self._eof = False
        self._released = False
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def _ask(self) -> None:
        while len(self._ahead) < 2:
            self._ahead.append(self._w.actor.next_chunk.remote(self._sid, self._k + len(self._ahead)))

    def _raise_failure(self) -> None:
        item = self._item
        try:
            item.result(30.0)  # the death / error is on its way to the call's future
        except cf.TimeoutError:
            raise StreamAborted(f"pool {self._pool.spec.name!r}: stream from {item.method} broke off") from None
        raise StreamAborted(f"pool {self._pool.spec.name!r}: stream from {item.method} ended without its data")

    def _advance(self) -> bool:
        self._drop_view()
        if self._eof:
            return False
        self._ask()
        ref = self._ahead[0]
        if not self._pool._await_ref(ref, self._item):
            if self._item.exception() is not None:
                raise self._item.exception()  # type: ignore[misc]
            ray.wait([ref], timeout=5.0)
        try:
            msg = ray.get(ref, timeout=5.0)
        except ray.exceptions.RayError:
            self._raise_failure()
        self._ahead.popleft()
        if msg[0] == "data":
            arr = ray.get(msg[1][0])
            self._view = memoryview(arr).cast("B")
            self._off = 0
            self._k += 1
            self.nbytes += len(self._view)
            self._pool._progress(self._item)
            self._ask()
            return True
        if msg[0] == "eof":
            self._eof = True
            self._item.result(30.0)  # the call finished; raises if it failed
            return False
        if msg[0] == "error":
            self._raise_failure()
        raise StreamAborted(f"pool {self._pool.spec.name!r}: stream from {self._item.method} was cancelled")

    def _first(self) -> None:
        self._advance()


    @property
    def at_eof(self) -> bool:
        return self._eof

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._view is not None:
                try:
                    self._view.release()
                except BufferError:
                    pass
                self._view = None
            self._ahead.clear()
            if not self._released:
                self._released = True
                item = self._item
                if not item.done():
                    try:
                        self._w.actor.abort.remote(self._sid, "cancelled")
                    except Exception:
                        pass
                    try:
                        item.result(self._pool.spec.call_timeout or 10.0)
                    except BaseException:
                        pass
                self._pool._unreserve(self._w)
        finally:
            super().close()
