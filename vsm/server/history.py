"""The dashboard's figures over the last hours, kept in the daemon (GET /dashboard/history).

Every SAMPLE_SECONDS the sampler reads the counters the daemon already keeps (each pool's
calls, errors and latency histogram; each sink's lag; the journal's head; the rows bulk
imports received) and stores the rates and quantiles of that interval: one sample is a few
numbers per plugin and sink, and at most KEEP of them are kept (a ring), so memory is fixed
whatever the uptime. Nothing is counted twice: /metrics and `vsm-pool status` read the same
counters.

    sample = {"t": unix seconds, "dt": the interval's seconds, "journal_events_s", "imported_s",
              "plugins": {"Kind/name": [calls/s, errors/s, p50 s | None, p99 s | None]},
              "sinks": {"name": lag in events}}

p50/p99 are of the calls answered in that interval (the histogram's difference between two
samples); None when there were none.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

from loguru import logger

__all__ = ["Figures", "SAMPLE_SECONDS", "KEEP_SECONDS"]

# 10 s for 6 hours: 2160 samples of a few numbers each. The variable is for tests (sub-second).
SAMPLE_SECONDS = float(os.environ.get("VSM_DASHBOARD_SAMPLE_SECONDS", "10"))
KEEP_SECONDS = 6 * 3600


class Figures:
    """A bounded ring of samples of `manager`'s counters; `imported()` -> states received by
    bulk imports so far."""

    def __init__(self, manager: Any, imported: Any = lambda: 0, every: float = SAMPLE_SECONDS,
                 keep_seconds: float = KEEP_SECONDS) -> None:
        self.manager, self.imported, self.every = manager, imported, every
        self.samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(2, int(keep_seconds / every)))
        self._last: dict[str, Any] | None = None  # the raw counters of the previous sample

    def _counters(self) -> dict[str, Any]:
        registry = self.manager.registry
        pools = {}
        for plugin in registry.plugins if registry is not None else []:
            if plugin.pool is not None:
                s = plugin.pool.status()
                pools[f"{plugin.manifest.kind.value}/{plugin.manifest.name}"] = (
                    s.get("calls", 0), s.get("errors", 0), list(s.get("latency_buckets") or []))
        sectors = self.manager.sectors.status() if self.manager.sectors is not None else {}
        return {"t": time.time(), "mono": time.monotonic(), "pools": pools,
                "head": (sectors.get("journal") or {}).get("head"),  # None while the journal is not open
                "sinks": {n: s.get("lag", 0) for n, s in (sectors.get("sinks") or {}).items()},
                "imported": self.imported()}

    def sample(self) -> None:
        """Read the counters and store the interval since the previous call (the first call
        only sets the baseline)."""
        from executors import quantile

        now, last = self._counters(), self._last
        self._last = now
        if last is None:
            return
        dt = now["mono"] - last["mono"]
        if dt <= 0:
            return
        plugins = {}
        for label, (calls, errors, buckets) in now["pools"].items():
            c0, e0, b0 = last["pools"].get(label, (0, 0, []))
            if calls < c0:  # a reloaded pool counts from zero again
                c0, e0, b0 = 0, 0, []
            diff = [n - (b0[i] if i < len(b0) else 0) for i, n in enumerate(buckets)]
            plugins[label] = [round((calls - c0) / dt, 3), round((errors - e0) / dt, 3),
                              quantile(diff, 0.5), quantile(diff, 0.99)]
        self.samples.append({
            "t": round(now["t"], 3),
            "dt": round(dt, 3),  # the interval the rates are of
            # from the journal's open on: its first head is the whole history, not a rate
            "journal_events_s": round(max(0, now["head"] - last["head"]) / dt, 3) if None not in (now["head"], last["head"]) else 0.0,
            "imported_s": round(max(0, now["imported"] - last["imported"]) / dt, 3),
            "plugins": plugins,
            "sinks": now["sinks"],
        })

    def history(self) -> dict[str, Any]:
        return {"every": self.every, "keep_seconds": self.samples.maxlen * self.every, "samples": list(self.samples)}

    async def run(self) -> None:
        """Sample every `every` seconds until cancelled (in a thread: status reads files)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.sample)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed sample is a gap in the charts, not a dead daemon
                logger.warning("dashboard figures: a sample failed: {}: {}", type(e).__name__, e)
            await asyncio.sleep(self.every)
