"""Byte streams through a ring of reused, pre-touched shared-memory slots.

One ring per worker: a control block and `nslots * slot_bytes` of anonymous memory from
`os.memfd_create`, mmapped by both sides (the fd crosses the worker socket with SCM_RIGHTS).
Nothing is ever named in /dev/shm, so nothing can leak, even after kill -9. Pages are
populated once at creation (madvise MADV_POPULATE_WRITE, or one write per page) so copies run
at memcpy speed instead of paying ~2.9 us per first-touched 4 KiB page
(reference/ipc-costs.md section 2).

A stream's slots flow through the ring in order (`SlotFlow`): the producer fills slot
`filled % nslots` and counts it in the control block, the consumer reads it and counts it
freed. In steady state neither side makes a system call or wakes a thread per slot: each
polls the other's counter for a moment before it sleeps, and a side that goes to sleep says so
in the control block, so the other sends one wake-up message over the worker socket only then.

    get:  worker (plugin reader -> slot) --filled--> caller (slot -> its buffer) --freed-->
    put:  caller (source -> slot)        --filled--> worker (slot -> plugin)     --freed-->

Publishing by counter relies on x86-64 store ordering (a store is never seen before the
stores that precede it). Elsewhere the ring runs in message mode: every fill and free is
also a message, and a side trusts only counters that came in messages (the kernel orders
those), as the first version of this ring did for every slot.

Measured (bench/bench_executor.py, 4 GiB, this 2-vCPU VM): get from a generating worker 13.6
GB/s = 0.41 of in-process when each slot cost a message and a manager-thread hop; by counters
33.6 GB/s = 1.07 (put into a store keeping the bytes 1.05). Polling yields the core: with a
busy third process, a pure spin measured get 0.31 of in-process, polling with sched_yield 0.49.
"""

from __future__ import annotations

import io
import mmap
import os
import platform
import threading
import time
from typing import Callable, Iterator

__all__ = ["Ring", "SlotFlow", "SlotReader"]

_MADV_POPULATE_WRITE = 23  # Linux 5.14+
_PAGE = mmap.PAGESIZE
_CTL_BYTES = _PAGE  # the control block: a page of int64 before the slots

# control block words
_FILLED, _FREED, _PRODUCER_ASLEEP, _CONSUMER_ASLEEP, _ABORT, _COUNTERS_OK = 0, 1, 2, 3, 4, 5
_LENS = 8  # bytes in each slot, one word per slot

# Store order: a slot's bytes are visible before the counter that publishes them (TSO).
COUNTERS_OK = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

SPIN_SECONDS = 100e-6  # poll the peer's counter this long before sleeping (a wake costs ~15-30 us)
SLEEP_SLICE = 0.005  # a sleeper re-checks this often, so even a lost wake-up costs only this

_fence_lock = threading.Lock()
_now = time.perf_counter
_yield = os.sched_yield


def _fence() -> None:
    """A full memory barrier: the lock's atomic read-modify-write (LOCK-prefixed on x86-64)
    orders our last store before our next load, which the sleep/wake handshake needs."""
    _fence_lock.acquire()
    _fence_lock.release()


class Ring:
    """A control block and `nslots` slots of `slot_bytes` in one memfd mapping."""

    def __init__(self, nslots: int, slot_bytes: int, fd: int | None = None) -> None:
        if 8 * (_LENS + nslots) > _CTL_BYTES:
            raise ValueError(f"a ring holds at most {_CTL_BYTES // 8 - _LENS} slots, not {nslots}")
        self.nslots = nslots
        self.slot_bytes = slot_bytes
        size = _CTL_BYTES + nslots * slot_bytes
        created = fd is None
        if fd is None:
            fd = os.memfd_create(f"vsmpool-{os.getpid()}-ring", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self.mm = mmap.mmap(fd, size)
        self._populate(size)
        self.view = memoryview(self.mm)
        self.ctl = self.view[:_CTL_BYTES].cast("q")
        if created:  # the creator decides the mode, so both sides agree
            self.ctl[_COUNTERS_OK] = int(COUNTERS_OK)

    def _populate(self, size: int) -> None:
        try:
            self.mm.madvise(_MADV_POPULATE_WRITE)
        except (OSError, ValueError):
            mm = self.mm
            for off in range(0, size, _PAGE):
                mm[off] = 0

    def offset(self, i: int) -> int:
        return _CTL_BYTES + i * self.slot_bytes

    def slot(self, i: int, n: int | None = None) -> memoryview:
        base = self.offset(i)
        return self.view[base : base + (self.slot_bytes if n is None else n)]

    def reset(self) -> None:
        """Zero the counters before a stream starts (the side that starts it does this,
        before it sends the request)."""
        ctl = self.ctl
        for k in range(_LENS):
            if k != _COUNTERS_OK:
                ctl[k] = 0

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self.ctl.release()
            self.view.release()
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a slot view: the mapping goes with the last view
        os.close(self.fd)
        self.fd = -1


class SlotFlow:
    """One side of one stream's slot flow through a Ring (one producer, one consumer).

    `wait(timeout)` blocks until a message from the peer arrives or the timeout passes and
    returns the newest counter the peer sent (or None); it may raise to end the stream.
    `wake(count)` sends the peer our counter. `ended()` says the peer will not go on (the
    manager: the call finished; the worker: EOF or abort came).
    """

    __slots__ = ("ring", "ctl", "nslots", "wait", "wake", "ended", "counters", "mine", "theirs")

    def __init__(
        self,
        ring: Ring,
        wait: Callable[[float], int | None],
        wake: Callable[[int], None],
        ended: Callable[[], bool],
    ) -> None:
        self.ring = ring
        self.ctl = ring.ctl
        self.nslots = ring.nslots
        self.wait = wait
        self.wake = wake
        self.ended = ended
        self.counters = bool(self.ctl[_COUNTERS_OK])
        self.mine = 0  # slots we filled (producer) or freed (consumer)
        self.theirs = 0  # the peer's count as far as we may trust it

    def _peer(self, word: int) -> int:
        if self.counters:
            self.theirs = self.ctl[word]
        return self.theirs

    def _heard(self, count: int | None) -> None:
        """Message mode: a count that came in a message (the kernel ordered it after the data)."""
        if count is not None and count > self.theirs:
            self.theirs = count

    def _sleep(self, asleep_word: int, ready: Callable[[], bool]) -> None:
        if self.counters:
            end = _now() + SPIN_SECONDS
            while True:
                if ready():
                    return
                _yield()  # on a busy 2-core machine the peer may need this core
                if _now() >= end:
                    break
            ctl = self.ctl
            ctl[asleep_word] = 1
            _fence()
            if ready():
                ctl[asleep_word] = 0
                return
            try:
                self.wait(SLEEP_SLICE)
            finally:
                ctl[asleep_word] = 0
            return
        self._heard(self.wait(SLEEP_SLICE))

    def _announce(self, peer_asleep_word: int) -> None:
        if not self.counters:
            self.wake(self.mine)
            return
        _fence()
        ctl = self.ctl
        if ctl[peer_asleep_word]:
            ctl[peer_asleep_word] = 0
            self.wake(self.mine)

    # -- producer ---------------------------------------------------------------------------
    def acquire(self) -> int | None:
        """The next slot to fill, once the consumer freed it; None if the stream ended."""
        nslots = self.nslots
        while self.mine - self._peer(_FREED) >= nslots:
            if self.ctl[_ABORT] or self.ended():
                return None
            self._sleep(_PRODUCER_ASLEEP, lambda: self.mine - self._peer(_FREED) < nslots or self.ended())
        if self.ctl[_ABORT]:
            return None
        return self.mine % nslots

    def publish(self, nbytes: int) -> None:
        """The slot from acquire() holds nbytes now."""
        ctl = self.ctl
        ctl[_LENS + self.mine % self.nslots] = nbytes
        self.mine += 1
        ctl[_FILLED] = self.mine
        self._announce(_CONSUMER_ASLEEP)

    # -- consumer ---------------------------------------------------------------------------
    def next(self) -> tuple[int, int] | None:
        """(slot, nbytes) of the next filled slot; None once the producer ended and every
        filled slot was taken."""
        while self._peer(_FILLED) <= self.mine:
            if self.ended():
                if not self.counters:  # fills announced before the end may still be queued
                    self._heard(self.wait(0.0))
                if self._peer(_FILLED) > self.mine:  # filled before it ended
                    break
                return None
            self._sleep(_CONSUMER_ASLEEP, lambda: self._peer(_FILLED) > self.mine or self.ended())
        slot = self.mine % self.nslots
        return slot, self.ctl[_LENS + slot]

    def release(self) -> None:
        """The slot from next() is consumed: the producer may refill it."""
        self.mine += 1
        self.ctl[_FREED] = self.mine
        self._announce(_PRODUCER_ASLEEP)

    def abort(self) -> None:
        """Consumer side: stop the producer at its next slot (the caller also sends a message)."""
        self.ctl[_ABORT] = 1

    # -- for deadlines: is the stream waiting on this side? ----------------------------------
    def producer_can_fill(self) -> bool:
        return self.mine - self.ctl[_FREED] < self.nslots

    def consumer_has_data(self) -> bool:
        return self.ctl[_FILLED] > self.mine


class SlotReader(io.RawIOBase):
    """A binary reader over filled ring slots, handed out one by one by `next_slot`.

    `next_slot()` blocks until the next (slot, nbytes) or returns None at EOF (it raises when
    the stream broke). `free_slot(slot)` gives a consumed slot back. `iter_views()` yields
    zero-copy views; each is valid until the next one is asked for.
    """

    def __init__(
        self,
        ring: Ring,
        next_slot: Callable[[], tuple[int, int] | None],
        free_slot: Callable[[int], None],
        on_close: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__()
        self._ring = ring
        self._next = next_slot
        self._free = free_slot
        self._on_close = on_close
        self._cur = -1
        self._off = 0
        self._end = 0
        self._eof = False
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def _advance(self) -> bool:
        if self._cur >= 0:
            slot, self._cur = self._cur, -1
            self._free(slot)
        if self._eof:
            return False
        nxt = self._next()
        if nxt is None:
            self._eof = True
            return False
        slot, n = nxt
        self._cur = slot
        self._off = self._ring.offset(slot)
        self._end = self._off + n
        self.nbytes += n
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read from a closed stream")
        while self._cur < 0 or self._off == self._end:
            if not self._advance():
                return 0
        dst = memoryview(b).cast("B")
        k = min(len(dst), self._end - self._off)
        dst[:k] = self._ring.view[self._off : self._off + k]
        self._off += k
        return k

    def readall(self) -> bytes:
        parts = []
        for v in self.iter_views():
            parts.append(bytes(v))
        return b"".join(parts)

    def iter_views(self) -> Iterator[memoryview]:
        """Zero-copy chunks until EOF; a view is valid until the next one is requested."""
        if self._cur >= 0 and self._off < self._end:
            yield self._ring.view[self._off : self._end]
            self._off = self._end
        while self._advance():
            view = self._ring.view[self._off : self._end]
            self._off = self._end
            try:
                yield view
            finally:
                try:
                    view.release()
                except BufferError:
                    pass  # the consumer kept a derived view; its bytes change once the slot is reused

    @property
    def at_eof(self) -> bool:
        return self._eof

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._cur >= 0:
                slot, self._cur = self._cur, -1
                try:
                    self._free(slot)
                except Exception:
                    pass
            if self._on_close is not None:
                self._on_close(self._eof)
        finally:
            super().close()
