"""Per-sink delivery: one thread per sink reads the journal after its checkpoint and delivers.

    journal (disk) --frames (segment, offset, length)--> endpoint.deliver(...) --> sink worker
          ^                                                                  maps the segment,
          |  checkpoint file <- advanced after each successful delivery      decodes zero-copy
          +- compaction deletes segments every sink has passed

Only references cross the process boundary: the OS page cache is the one shared copy. A sink
that raises is retried with capped exponential back-off; its backlog stays on disk, so a slow
or dead sink never blocks the state manager or another sink. Delivery is at-least-once (a
crash after deliver and before the checkpoint write redelivers); sinks deduplicate by seq.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from typing import Any, Callable, Protocol

from ._journal import Journal

__all__ = ["SinkDispatcher", "SinkEndpoint", "SinkState", "PoolSink", "as_endpoint"]


class SinkState(enum.Enum):
    RUNNING = "running"  # delivering or caught up
    BACKOFF = "backoff"  # the last delivery failed; waiting to retry
    STOPPED = "stopped"


class SinkEndpoint(Protocol):
    """What the dispatcher calls: a SinkHost in-process, or a pool of them (PoolSink)."""

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int: ...


class PoolSink:
    """A sink running in an executors Pool whose workers hold a SinkHost."""

    def __init__(self, pool: Any, timeout: float | None = 300.0) -> None:
        self.pool = pool
        self.timeout = timeout

    def deliver(self, segments_dir: str, frames: list[tuple[str, int, int]], after_seq: int) -> int:
        return int(self.pool.call("deliver", segments_dir, frames, after_seq, timeout=self.timeout))

    def query(self, sql: str) -> bytes:
        return bytes(self.pool.call("query", sql, timeout=self.timeout))


def as_endpoint(obj: Any) -> Any:
    """A Pool (has `call` and `spec`) becomes a PoolSink; anything with `deliver` is used as is."""
    if hasattr(obj, "deliver"):
        return obj
    if hasattr(obj, "call"):
        return PoolSink(obj)
    raise TypeError(f"not a sink endpoint (needs deliver() or a Pool): {obj!r}")


class SinkDispatcher:
    def __init__(
        self,
        name: str,
        endpoint: Any,
        journal: Journal,
        ckpt_dir: str,
        *,
        get_watermark: Callable[[], int],
        wait_watermark: Callable[[int, float], int],
        max_rows: int = 100_000,
        backoff: tuple[float, float] = (0.05, 5.0),
        start_seq: int = 0,
    ) -> None:
        self.name = name
        self.endpoint = as_endpoint(endpoint)
        self.journal = journal
        self.ckpt_path = os.path.join(ckpt_dir, f"{name}.ckpt")
        self._get_wm = get_watermark
        self._wait_wm = wait_watermark
        self.max_rows = max_rows
        self.backoff = backoff
        self.state = SinkState.RUNNING
        self.last_error: str | None = None
        self.errors = 0
        self.delivered_rows = 0
        self.deliveries = 0
        self.last_delivery: float | None = None
        self._stop = threading.Event()
        self.checkpoint = self._load_ckpt(start_seq)
        self._thread = threading.Thread(target=self._run, name=f"vsm-sink-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load_ckpt(self, default: int) -> int:
        try:
            with open(self.ckpt_path) as f:
                return int(f.read().strip() or default)
        except FileNotFoundError:
            return default

    def _store_ckpt(self, seq: int) -> None:
        tmp = self.ckpt_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(seq))
            f.flush()
            if self.journal.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.ckpt_path)
        self.checkpoint = seq

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            wm = self._get_wm()
            if wm <= self.checkpoint:
                self._wait_wm(self.checkpoint, 0.5)
                continue
            frames = self.journal.frames_between(self.checkpoint, wm, self.max_rows)
            if not frames:
                self._wait_wm(wm, 0.5)
                continue
            try:
                self.endpoint.deliver(
                    self.journal.seg_dir, [f.as_tuple() for f in frames], self.checkpoint
                )
            except Exception as e:  # noqa: BLE001 - any sink failure: record, back off, retry
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.state = SinkState.BACKOFF
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.backoff[1])
                continue
            self._store_ckpt(frames[-1].last_seq)
            self.delivered_rows += sum(f.rows for f in frames)
            self.deliveries += 1
            self.last_delivery = time.time()
            self.state = SinkState.RUNNING
            delay = self.backoff[0]
        self.state = SinkState.STOPPED

    def status(self) -> dict[str, Any]:
        wm = self._get_wm()
        return {
            "state": self.state.value,
            "checkpoint": self.checkpoint,
            "lag": max(0, wm - self.checkpoint),
            "last_error": self.last_error,
            "errors": self.errors,
            "delivered_rows": self.delivered_rows,
            "deliveries": self.deliveries,
            "last_delivery": self.last_delivery,
        }

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.state = SinkState.STOPPED
