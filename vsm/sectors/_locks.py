"""Per-sector lock striping: one sector's operations run one at a time, others in parallel."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator

from vsm.sdk.sectors import SectorID

__all__ = ["StripedLocks"]


class StripedLocks:
    """`n` locks; a sector maps to one. Multi-sector holds take stripes in ascending order,
    so two bulk operations can never deadlock each other or a single-sector one."""

    def __init__(self, n: int = 1024) -> None:
        self._locks = [threading.Lock() for _ in range(n)]
        self._n = n

    def index(self, sid: SectorID) -> int:
        return (sid.miner * 1_000_003 + sid.number) % self._n

    @contextlib.contextmanager
    def hold(self, sids: Iterable[SectorID]) -> Iterator[None]:
        idx = sorted({self.index(s) for s in sids})
        taken: list[threading.Lock] = []
        try:
            for i in idx:
                lk = self._locks[i]
                lk.acquire()
                taken.append(lk)
            yield
        finally:
            for lk in reversed(taken):
                lk.release()
