"""The worker process: one socket to the manager, one service object, requests run in order.

    manager socket --frames--> FrameReader --> handle(op) --> obj.method(*args)
                   <--frames-- out (replies batched: flushed when no request is waiting,
                                    after 256 replies or 2 ms)

Start: the forkserver forks us with the runtime already imported (preload); _init then takes
the manager's environment variables, imports the rest of preload, puts the pool's site_dirs in
front of sys.path (dropping already-imported modules they provide: see use_site_dirs), and
only then unpickles and runs the pool's init, which imports the plugin.

The worker leaves on socket EOF (manager gone or closing), on OP_EXIT, and is killed by
PR_SET_PDEATHSIG when its parent (the forkserver, which itself exits with the manager) dies.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any

from . import _wire as W
from ._api import WithFds
from ._limits import apply_setup
from ._ring import Ring, SlotFlow, SlotReader
from .errors import StreamAborted

__all__ = ["main", "use_site_dirs"]

_FLUSH_COUNT = 256
_FLUSH_SECONDS = 0.002


def _die_with_parent(expected_ppid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    # the parent may have died before prctl: then we were already reparented
    if expected_ppid and os.getppid() != expected_ppid:
        os._exit(1)


def _drop_forkserver_alive_fd() -> None:
    """forkserver hands every child a copy of its "alive" pipe, and only exits once every
    copy is closed: a worker stuck in a long call would keep it (and so itself, through
    PDEATHSIG) alive after the manager is killed. We never ask the forkserver for children."""
    try:
        from multiprocess import forkserver

        fd = forkserver._forkserver._forkserver_alive_fd
        if fd is not None:
            forkserver._forkserver._forkserver_alive_fd = None
            os.close(fd)
    except Exception:
        pass


def main(sock: socket.socket, expected_ppid: int) -> None:
    """Process target. Never returns normally: exits via os._exit to skip atexit work
    inherited from the parent."""
    _die_with_parent(expected_ppid)
    sock.set_inheritable(False)  # a grandchild holding it would hide our EOF from the manager
    _drop_forkserver_alive_fd()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C goes to the manager, which closes us
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand (a hung init)
    code = 0
    try:
        _Worker(sock).run()
    except (EOFError, ConnectionError):
        pass
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def use_site_dirs(dirs: tuple[str, ...] | list[str]) -> list[str]:
    """Put `dirs` (and what their .pth files add) in front of sys.path, and drop from
    sys.modules the modules already imported (by the forkserver's preload) whose top-level
    name one of `dirs` provides, so the next import finds the dirs' version. Code imported
    earlier keeps the objects it holds; this package (executors) is never dropped.
    Returns the dropped top-level names."""
    import importlib
    import site

    before = list(sys.path)
    for d in dirs:
        site.addsitedir(d)  # appends d and its .pth entries; moved to the front below
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in before if p not in added]
    provided: set[str] = set()
    for d in dirs:
        for entry in os.listdir(d):
            if entry.endswith((".dist-info", ".egg-info", ".pth", ".data")) or entry in ("bin", "__pycache__"):
                continue
            provided.add(entry.split(".", 1)[0])  # pkg/, mod.py, mod.cpython-311-x86_64-linux-gnu.so
    provided.discard(__name__.split(".", 1)[0])
    dropped = sorted({m.split(".", 1)[0] for m in sys.modules} & provided)
    if dropped:
        for mod in list(sys.modules):
            if mod.split(".", 1)[0] in provided:
                del sys.modules[mod]
    importlib.invalidate_caches()
    return dropped


class _Exit(Exception):
    pass


class _Worker:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.rd = W.FrameReader(sock, with_fds=True)
        self.out: list[bytes] = []
        self.out_t0 = 0.0
        self.obj: Any = None
        self.ring: Ring | None = None
        self.deferred: deque[tuple[int, Any]] = deque()
        self.name = "?"
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)

    # -- io -------------------------------------------------------------------------------
    def _decode(self, rid: int, body: memoryview) -> Any:
        try:
            return pickle.loads(body)
        except BaseException as exc:  # a class the worker cannot import, a bad pickle
            return exc

    def recv(self, block: bool, probe: bool = True) -> tuple[int, Any] | None:
        """Next message (deferred ones first). Non-blocking: None when none is buffered
        (and, with probe, none is waiting in the socket either)."""
        if self.deferred:
            return self.deferred.popleft()
        rd = self.rd
        while True:
            f = rd.next()
            if f is not None:
                rid, body = f
                return rid, self._decode(rid, body)
            if not block and not probe:
                return None
            if not (rd.fill_spin(W.SPIN_SECONDS) if block else rd.fill(False)):
                return None

    def reply(self, rid: int, body: bytes) -> None:
        if not self.out:
            self.out_t0 = time.monotonic()
        self.out.append(W.frame(rid, body))

    def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.sock.sendall(data)

    def send_now(self, rid: int, body: bytes) -> None:
        self.reply(rid, body)
        self.flush()

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> None:
        self._init()
        recv = self.recv
        while True:
            msg = recv(False, probe=False)
            if msg is None:  # nothing buffered: answer what we have, then wait
                self.flush()
                msg = recv(True)
            try:
                self.handle(*msg)
            except _Exit:
                self.flush()
                return
            out = self.out
            if out and (len(out) >= _FLUSH_COUNT or time.monotonic() - self.out_t0 > _FLUSH_SECONDS):
                self.flush()

    def _init(self) -> None:
        rid, msg = self.recv(True)  # type: ignore[misc]
        try:
            if isinstance(msg, BaseException):
                raise msg
            op, init_bytes, preload, name, env, site_dirs, setup = msg
            assert op == W.OP_INIT, op
            self.name = name
            if env != os.environ:
                for k in set(os.environ) - set(env):
                    del os.environ[k]
                os.environ.update(env)
            apply_setup(setup)  # limits, then confinement: before any import the pool asked for
            for mod in preload:
                __import__(mod)
            if site_dirs:
                use_site_dirs(site_dirs)
            init = pickle.loads(init_bytes)
            self.obj = init()
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            self.send_now(rid, pickle.dumps((W.K_INIT_ERROR, tb), 5))
            raise _Exit from None
        self.send_now(rid, pickle.dumps((W.K_READY, os.getpid()), 5))

    def handle(self, rid: int, msg: Any) -> None:
        if isinstance(msg, BaseException):
            self.reply(rid, W.error_reply(msg, "<request could not be unpickled in the worker>"))
            return
        op = msg[0]
        if op == W.OP_CALL:
            method = msg[1]
            try:
                value = getattr(self.obj, method)(*msg[2])
            except Exception as exc:
                self.reply(rid, W.error_reply(exc, method, self.obj))
                return
            if type(value) is WithFds:
                self._reply_fds(rid, value, method)
                return
            self.reply(rid, W.result_reply(value, method))
        elif op == W.OP_PUT:
            self._put(rid, msg[1], msg[2])
        elif op == W.OP_GET:
            self._get(rid, msg[1], msg[2])
        elif op == W.OP_RING:
            fd = self.rd.fds.popleft()
            if self.ring is not None:
                self.ring.close()
            self.ring = Ring(msg[1], msg[2], fd=fd)
        elif op == W.OP_EXIT:
            raise _Exit
        # stale stream messages (DATA/EOF/ABORT/FREE of a finished stream) are dropped

    def _reply_fds(self, rid: int, value: WithFds, method: str) -> None:
        """A value with open fds: one frame in a sendmsg of its own with the fds beside it
        (after the replies queued before it), then our copies are closed: they are the
        caller's now."""
        fds = list(value.fds)
        try:
            try:
                body = W.fds_reply(value.value, len(fds))
            except Exception:  # the value does not pickle: result_reply's RemoteError says so
                self.reply(rid, W.result_reply(value.value, method))
                return
            self.flush()
            socket.send_fds(self.sock, [W.frame(rid, body)], fds)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- streams --------------------------------------------------------------------------
    def _stream_msg(self, rid: int, block: bool) -> Any:
        """Next message of stream `rid`; other requests are deferred until the stream ends."""
        while True:
            rd = self.rd
            f = rd.next()
            if f is None:
                self.flush()
                if not rd.fill(block):
                    return None
                continue
            mrid, body = f
            msg = self._decode(mrid, body)
            if mrid == rid and not isinstance(msg, BaseException) and msg[0] in (W.OP_DATA, W.OP_EOF, W.OP_ABORT, W.OP_FREE):
                return msg
            if not isinstance(msg, BaseException) and msg[0] in (W.OP_DATA, W.OP_EOF, W.OP_ABORT, W.OP_FREE):
                continue  # stale message of an earlier stream
            if not isinstance(msg, BaseException) and msg[0] == W.OP_RING:
                self.handle(mrid, msg)  # must pop its fd in order
                continue
            self.deferred.append((mrid, msg))

    def _stream_wait(self, rid: int, st: "_StreamEnd", timeout: float) -> int | None:
        """SlotFlow's wait for stream rid: take the caller's messages (wake-ups with its
        count, EOF, abort); sleep up to `timeout` for one if none is there."""
        latest: int | None = None
        slept = False
        while True:
            msg = self._stream_msg(rid, False)
            if msg is None:
                if slept or timeout <= 0 or latest is not None or st.eof or st.abort is not None:
                    return latest
                self.poller.poll(timeout * 1000.0)
                slept = True
                continue
            op = msg[0]
            if op in (W.OP_DATA, W.OP_FREE):
                latest = msg[1] if latest is None else max(latest, msg[1])
            elif op == W.OP_EOF:
                st.eof = True
            else:
                st.abort = msg[1]

    def _flow(self, rid: int, wake_kind: int) -> tuple[SlotFlow, "_StreamEnd"]:
        st = _StreamEnd()
        ring = self.ring
        assert ring is not None

        def wake(count: int) -> None:
            self.send_now(rid, pickle.dumps((wake_kind, count), 5))

        flow = SlotFlow(ring, lambda t: self._stream_wait(rid, st, t), wake, lambda: st.eof or st.abort is not None)
        return flow, st

    def _put(self, rid: int, method: str, args: tuple[Any, ...]) -> None:
        if self.ring is None:
            self.reply(rid, W.error_reply(StreamAborted(f"pool {self.name!r}: no ring for stream"), method))
            return
        flow, st = self._flow(rid, W.K_FREE)

        def next_slot() -> tuple[int, int] | None:
            got = flow.next()
            if got is None and st.abort is not None:
                raise StreamAborted(f"pool {self.name!r}: stream to {method} aborted by the caller: {st.abort}")
            return got

        reader = SlotReader(self.ring, next_slot, lambda _slot: flow.release())
        try:
            value = getattr(self.obj, method)(*args, reader)
        except Exception as exc:
            body = W.error_reply(exc, method, self.obj)
        else:
            body = W.result_reply(value, method)
        finally:
            reader._on_close = None
            try:
                reader.close()
            except Exception:
                pass
        self.send_now(rid, body)

    def _get(self, rid: int, method: str, args: tuple[Any, ...]) -> None:
        ring = self.ring
        if ring is None:
            self.reply(rid, W.error_reply(StreamAborted(f"pool {self.name!r}: no ring for stream"), method))
            return
        flow, _st = self._flow(rid, W.K_DATA)
        src: Any = None
        try:
            src = getattr(self.obj, method)(*args)
            readinto = getattr(src, "readinto", None)
            while True:
                slot = flow.acquire()
                if slot is None:  # the caller closed the stream early
                    break
                view = ring.slot(slot)
                if readinto is not None:
                    n = readinto(view) or 0
                else:
                    chunk = src.read(len(view))
                    n = len(chunk)
                    view[:n] = chunk
                try:
                    view.release()
                except BufferError:
                    pass
                if not n:
                    break
                flow.publish(n)
        except Exception as exc:
            body = W.error_reply(exc, method, self.obj)
        else:
            body = pickle.dumps((W.K_RESULT, None), 5)
        finally:
            close = getattr(src, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    traceback.print_exc()
        self.send_now(rid, body)


class _StreamEnd:
    """What the caller said about a stream besides counts: EOF (put) or abort (either)."""

    __slots__ = ("eof", "abort")

    def __init__(self) -> None:
        self.eof = False
        self.abort: str | None = None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("executors._worker is started by ProcessPool")
