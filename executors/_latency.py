"""Call latency as a histogram with fixed power-of-two buckets, cheap enough for every call.

`LATENCY_BOUNDS[i]` is the upper bound (seconds) of bucket i: 2**-14 s (61 us) up to 2**6 s
(64 s), then +Inf. A call's bucket comes from the float's own exponent (math.frexp), not a
search: about 100 ns in the pool's manager thread. Prometheus reads the counts as a histogram
(`le` = the bounds); `quantile` interpolates a percentile from them for status displays.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["LATENCY_BOUNDS", "LatencyHistogram", "quantile"]

_MIN_EXP, _MAX_EXP = -14, 6
LATENCY_BOUNDS: tuple[float, ...] = tuple(2.0**e for e in range(_MIN_EXP, _MAX_EXP + 1))
_LAST = len(LATENCY_BOUNDS)  # index of the +Inf bucket


class LatencyHistogram:
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * (_LAST + 1)

    def observe(self, seconds: float) -> None:
        if seconds <= LATENCY_BOUNDS[0]:
            self.counts[0] += 1
            return
        i = math.frexp(seconds)[1] - _MIN_EXP  # seconds < 2**exponent
        self.counts[i if i < _LAST else _LAST] += 1


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a histogram's counts, interpolated inside its bucket; None when
    empty. A quantile in the +Inf bucket is reported as the last finite bound."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= _LAST:
                return LATENCY_BOUNDS[-1]
            lo = LATENCY_BOUNDS[i - 1] if i else 0.0
            return lo + (LATENCY_BOUNDS[i] - lo) * ((rank - seen) / n)
        seen += n
    return LATENCY_BOUNDS[-1]
