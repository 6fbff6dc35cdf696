"""Wire format shared by the manager and its workers.

A frame is `<IQ` (body length, request id) followed by a pickle (protocol 5) of a small
tuple. Several frames written by one `sendall` form a batch; the reader parses as many whole
frames as one `recv` brought. The request id lives in the header so that a body that fails to
unpickle can still be answered (or failed) by id.
"""

from __future__ import annotations

import pickle
import signal
import socket
import struct
import time
import traceback
from collections import deque
from typing import Any

import cloudpickle

__all__ = [
    "error_reply",
    "fds_reply",
    "result_reply",
    "HDR",
    "FrameReader",
    "dumps",
    "exit_reason",
    "frame",
]

HDR = struct.Struct("<IQ")
_HDR_SIZE = HDR.size
_pack = HDR.pack
_unpack_from = HDR.unpack_from

# manager -> worker ops (first element of the body tuple)
OP_INIT = 0  # (OP_INIT, init_bytes, preload, pool_name, environ, site_dirs, setup_bytes: (limits, confine))
OP_CALL = 1  # (OP_CALL, method, args)
OP_PUT = 2  # (OP_PUT, method, args): stream source -> worker reader
OP_GET = 3  # (OP_GET, method, args): worker reader -> caller stream
OP_DATA = 4  # (OP_DATA, filled): put stream wake-up, the caller's count of filled slots
OP_FREE = 5  # (OP_FREE, freed): get stream wake-up, the caller's count of freed slots
OP_EOF = 6  # (OP_EOF,): put source exhausted
OP_ABORT = 7  # (OP_ABORT, text): put source failed / get stream cancelled
OP_RING = 8  # (OP_RING, nslots, slot_bytes) + the memfd as SCM_RIGHTS
OP_EXIT = 9  # (OP_EXIT,): leave the loop

# worker -> manager kinds
K_RESULT = 0  # (K_RESULT, value)
K_ERROR = 1  # (K_ERROR, exc_bytes | None, tb_text, type_name, message)
K_FREE = 2  # (K_FREE, freed): put stream wake-up, the worker's count of freed slots
K_DATA = 3  # (K_DATA, filled): get stream wake-up, the worker's count of filled slots
K_READY = 4  # (K_READY, pid)
K_INIT_ERROR = 5  # (K_INIT_ERROR, tb_text)
K_FDS = 6  # (K_FDS, nfds, value_pickle) + nfds fds as SCM_RIGHTS, in a sendmsg of its own:
#            the count is readable even when the value does not unpickle, so the manager
#            always takes exactly this frame's fds off its FIFO

_PROTO = 5
_dumps = pickle.dumps
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError)


def dumps(obj: Any) -> bytes:
    """Plain C pickle first (0.26 us for a small tuple here); cloudpickle (2.8 us) only when
    that fails, e.g. for lambdas and local functions shipped by value."""
    try:
        return _dumps(obj, _PROTO)
    except _PICKLE_ERRORS:
        return cloudpickle.dumps(obj, _PROTO)


def error_reply(exc: BaseException, method: str, obj: Any = None) -> bytes:
    """The reply body for a call that raised: the exception (when it pickles) and its traceback.
    `obj` (the service object) may translate it first with its `map_error(exc)`."""
    if isinstance(exc, MemoryError):
        # the frames may hold what ran out (a list being grown): free them before formatting
        traceback.clear_frames(exc.__traceback__)
        exc.__traceback__ = None
    mapper = getattr(obj, "map_error", None)
    if mapper is not None:
        try:
            exc = mapper(exc)
        except Exception:
            pass  # the original error is still the best report
    tb = "".join(traceback.format_exception(exc))
    try:
        eb: bytes | None = dumps(exc)
    except Exception:
        eb = None
    return pickle.dumps((K_ERROR, eb, tb, type(exc).__qualname__, f"{method}: {exc}"), 5)


def result_reply(value: Any, method: str) -> bytes:
    """The reply body for a call's return value; one that will not pickle becomes a RemoteError."""
    try:
        return pickle.dumps((K_RESULT, value), 5)
    except Exception:
        pass
    try:
        return dumps((K_RESULT, value))
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc))
        text = f"{method}: its return value of type {type(value).__qualname__} could not be pickled: {exc}"
        return pickle.dumps((K_ERROR, None, tb, "RemoteError", text), 5)


def fds_reply(value: Any, nfds: int) -> bytes:
    """The reply body for a WithFds value (the fds go beside it as SCM_RIGHTS); raises when
    the value does not pickle."""
    return pickle.dumps((K_FDS, nfds, dumps(value)), 5)


def frame(rid: int, body: bytes) -> bytes:
    return _pack(len(body), rid) + body


def exit_reason(code: int | None) -> str:
    """-9 -> 'SIGKILL(-9)', 3 -> 'exit code 3' (as loky names them)."""
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"{signal.Signals(-code).name}({code})"
        except ValueError:
            return f"signal {-code}({code})"
    return f"exit code {code}"


_now = time.perf_counter
SPIN_SECONDS = 50e-6  # see FrameReader.fill_spin

_CMSG_FDS = socket.CMSG_SPACE(4 * 4)


class FrameReader:
    """Parses frames out of one socket into a reused buffer.

    `with_fds` makes it use recvmsg so SCM_RIGHTS fds are kept (FIFO in `fds`): the worker
    takes the ring memfd so, the manager the fds of WithFds replies (K_FDS). A unix stream
    socket delivers a sendmsg's fds with its first byte, so a frame's fds are queued by the
    time the frame is whole.
    """

    __slots__ = ("sock", "buf", "view", "lo", "hi", "with_fds", "fds")

    def __init__(self, sock: socket.socket, size: int = 1 << 18, with_fds: bool = False) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.lo = 0
        self.hi = 0
        self.with_fds = with_fds
        self.fds: deque[int] = deque()

    def fill(self, block: bool) -> bool:
        """Read more bytes. False: nothing available (non-blocking). Raises EOFError at EOF."""
        if self.lo == self.hi:
            self.lo = self.hi = 0
        elif self.hi == len(self.buf):
            self._make_room(0)
        flags = 0 if block else socket.MSG_DONTWAIT
        try:
            if self.with_fds:
                n, anc, _flags, _addr = self.sock.recvmsg_into([self.view[self.hi :]], _CMSG_FDS, flags)
                for level, typ, data in anc:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        usable = len(data) - len(data) % 4
                        self.fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
            else:
                n = self.sock.recv_into(self.view[self.hi :], 0, flags)
        except (BlockingIOError, InterruptedError):
            return False
        if n == 0:
            raise EOFError
        self.hi += n
        return True

    def fill_spin(self, spin: float) -> bool:
        """fill(True), but poll without sleeping for up to `spin` seconds first. On this
        2-vCPU VM a sleeping peer costs ~15-30 us to wake per message; a round trip between
        two spinning peers is ~6 us (bench/bench_executor.py measures both)."""
        if spin > 0:
            end = _now() + spin
            while True:
                if self.fill(False):
                    return True
                if _now() >= end:
                    break
        return self.fill(True)

    def _make_room(self, need: int) -> None:
        """Move the unread bytes to the front, or grow when `need` (or what is pending)
        does not fit. Frame views handed out earlier must be dead by now."""
        pending = self.hi - self.lo
        size = len(self.buf)
        if need > size or pending == size:
            new = bytearray(max(size * 2, need))
            new[:pending] = self.view[self.lo : self.hi]
            self.buf = new
            self.view = memoryview(new)
        else:
            self.view[:pending] = self.view[self.lo : self.hi]
        self.lo = 0
        self.hi = pending

    def next(self) -> tuple[int, memoryview] | None:
        """Next whole frame in the buffer as (rid, body view), or None. The view is valid
        until the next call to fill()."""
        lo = self.lo
        avail = self.hi - lo
        if avail < _HDR_SIZE:
            return None
        ln, rid = _unpack_from(self.buf, lo)
        end = lo + _HDR_SIZE + ln
        if end > self.hi:
            if _HDR_SIZE + ln > len(self.buf) - lo:
                self._make_room(_HDR_SIZE + ln)
            return None
        self.lo = end
        return rid, self.view[lo + _HDR_SIZE : end]
