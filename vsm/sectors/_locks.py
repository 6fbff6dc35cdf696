"""Per-sector lock striping: one sector's operations run one at a time, others in parallel."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterable, Iterator

import numpy as np

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

    def indices(self, miner: Any, number: Any) -> list[int]:
        """Stripe indices (sorted, unique) of the sectors in two Arrow/array columns; the same
        mapping as index()."""
        m = np.asarray(miner, dtype=np.uint64)
        n = np.asarray(number, dtype=np.uint64)
        if len(m) and (int(m.max()) >= 1 << 43 or int(n.max()) >= 1 << 63):  # would wrap in uint64
            return sorted({(a * 1_000_003 + b) % self._n for a, b in zip(m.tolist(), n.tolist())})
        return np.unique((m * np.uint64(1_000_003) + n) % np.uint64(self._n)).tolist()  # type: ignore[no-any-return]

    def hold(self, sids: Iterable[SectorID]) -> "contextlib.AbstractContextManager[None]":
        return self.hold_indices(sorted({self.index(s) for s in sids}))

    def hold_all(self) -> "contextlib.AbstractContextManager[None]":
        return self.hold_indices(list(range(self._n)))

    @contextlib.contextmanager
    def hold_indices(self, idx: list[int]) -> Iterator[None]:
        """Hold the stripes idx, which must be sorted ascending."""
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
