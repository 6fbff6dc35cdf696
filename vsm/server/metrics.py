"""GET /metrics: Prometheus text built from the pools' and sinks' own status."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    """Prometheus text from the pools' and sinks' own status: nothing counted twice."""

    def __init__(self, manager: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.manager = manager
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from executors import LATENCY_BOUNDS

        labels = ["kind", "plugin"]
        calls = CounterMetricFamily("vsm_plugin_calls", "Calls served by the plugin's pool", labels=labels)
        errors = CounterMetricFamily("vsm_plugin_errors", "Calls that failed", labels=labels)
        latency = HistogramMetricFamily("vsm_plugin_call_seconds", "Time from a call's submission to its answer", labels=labels)
        restarts = CounterMetricFamily("vsm_plugin_worker_restarts", "Workers replaced after a crash or timeout", labels=labels)
        workers = GaugeMetricFamily("vsm_plugin_workers", "Live worker processes", labels=labels)
        lag = GaugeMetricFamily("vsm_sink_lag_rows", "Sector-state events not yet delivered to the sink", labels=["sink"])
        registry = self.manager.registry
        for plugin in registry.plugins if registry else []:
            if plugin.pool is None:
                continue
            s = plugin.pool.status()
            key = [plugin.manifest.kind.value, plugin.manifest.name]
            calls.add_metric(key, s.get("calls", 0))
            errors.add_metric(key, s.get("errors", 0))
            latency.add_metric(key, _cumulative(LATENCY_BOUNDS, s.get("latency_buckets") or []), s.get("latency_sum", 0.0))
            restarts.add_metric(key, s.get("restarts", 0))
            workers.add_metric(key, sum(1 for w in s.get("workers", []) if w.get("alive", True)))
        rebuild = GaugeMetricFamily("vsm_sink_needs_rebuild", "1: events the sink needs left the journal (vsm-pool sinks rebuild)", labels=["sink"])
        broken = GaugeMetricFamily("vsm_journal_broken", "1: the sector event journal cannot be written (it retries)")
        gap = GaugeMetricFamily("vsm_journal_watermark_gap_events", "Sector-state events committed to the KV that the watermark "
                                "has not passed: no sink can get them yet")
        age = GaugeMetricFamily("vsm_journal_watermark_age_seconds", "Seconds the watermark has waited for the ticket after it "
                                "(0: it waits for none)")
        problem = GaugeMetricFamily(
            "vsm_problem", "A broken or degraded part (as `vsm-pool status` lists it), its cause and fix", labels=["part", "state", "cause", "fix"]
        )
        sectors = self.manager.sectors.status() if self.manager.sectors is not None else None
        for name, sink in ((sectors or {}).get("sinks") or {}).items():
            lag.add_metric([name], sink.get("lag", 0))
            rebuild.add_metric([name], 1 if sink.get("needs_rebuild") else 0)
        journal = (sectors or {}).get("journal") or {}
        broken.add_metric([], 1 if journal.get("broken") else 0)
        gap.add_metric([], journal.get("watermark_gap", 0))
        age.add_metric([], journal.get("watermark_age", 0.0))
        from .problems import problems

        for p in problems(self.manager, sectors):
            # numbers (lag, seqs, pids) out of the cause: a label that changes every scrape would
            # make a new series each time; `vsm-pool status` has the exact text
            problem.add_metric([p["part"], p["state"], re.sub(r"\d+", "N", p["cause"])[:300], p["fix"]], 1)
        yield from (calls, errors, latency, restarts, workers, lag, rebuild, broken, gap, age, problem)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (le, calls at or below it) from per-bucket counts; +Inf last."""
    counts = list(counts) + [0] * (len(bounds) + 1 - len(counts))
    out, total = [], 0
    for le, n in zip([*(repr(b) for b in bounds), "+Inf"], counts):
        total += n
        out.append((le, total))
    return out

