"""Soak: the real daemon under steady load for minutes, with a worker of some pool killed -9
every half minute, then a kill -9 of the daemon and a restart; prints the fault and soak
figures (`vsm-pool bench --suite soak`; the short version of the same run is the CI fault
suite, tests/faults/).

    minutes of load (imports, updates, piece PUT/GET, an RPC namespace)
      | every 30 s: kill -9 a worker of the next pool (KVStore, ObjStore, both sinks, RPC)
      | every 5 s:  the daemon's RSS and open fds (and its whole tree's RSS)
      v
    kill -9 the daemon -> restart: seconds to /healthz, to every sink caught up
    SIGTERM -> verify (bench/faults.py): events lost / duplicated per sink, updates and
    imports lost, pieces intact, partial objects, temp files, processes, /dev/shm

Growth per minute is the least-squares slope over the samples after the first third (pools
warm up: DuckDB's cache, the rings, the first imports). The daemon process is the one that
lives the whole run; workers are replaced by the faults, so the tree's RSS is shown for
information. There is no peer to compare with: every figure stands alone (0 is the target for
the losses and leaks, ~0 for the growth).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.faults import RPC_PLUGIN, Daemon, Load, prepare_home, shm_entries, verify

POOLS = ("sqlitekv", "fsstore", "duckdb", "parquet", RPC_PLUGIN)


def _minutes(quick: bool) -> float:
    env = os.environ.get("VSM_SOAK_MINUTES")
    return float(env) if env else (1.0 if quick else 10.0)


class _Sampler:
    """The daemon's RSS (MiB), open fds and the tree's RSS, every `every` seconds."""

    def __init__(self, d: Daemon, every: float = 5.0) -> None:
        self.d, self.every = d, every
        self.samples: list[tuple[float, float, int, float]] = []  # (minute, daemon MiB, fds, tree MiB)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            tree = self.d.tree()
            if not tree:
                continue
            try:
                daemon = tree[0].memory_info().rss / (1 << 20)
                fds = tree[0].num_fds()
            except psutil.Error:
                continue
            total = 0.0
            for p in tree:
                try:
                    total += p.memory_info().rss / (1 << 20)
                except psutil.Error:
                    pass
            self.samples.append(((time.monotonic() - self._t0) / 60, daemon, fds, total))

    def __enter__(self) -> "_Sampler":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(10)

    def slope(self, column: int) -> float:
        """Growth per minute of a column, over the samples after the first third."""
        points = self.samples[len(self.samples) // 3 :]
        if len(points) < 3:
            return float("nan")
        xs, ys = [p[0] for p in points], [float(p[column]) for p in points]
        return statistics.linear_regression(xs, ys).slope


def run(quick: bool) -> list[dict[str, Any]]:
    minutes = _minutes(quick)
    shm_before = shm_entries()
    tmp = tempfile.mkdtemp(prefix="vsm-soak-")
    ok = False
    try:
        d = Daemon(prepare_home(Path(tmp) / "home"))
        kills: list[float] = []
        try:
            d.start()
            load = Load(d, pause=0.5).start()  # ~400 states/s imported; updates and pieces back to back
            try:
                with _Sampler(d) as sampler:
                    end = time.monotonic() + minutes * 60
                    n = 0
                    while time.monotonic() < end:
                        time.sleep(min(30.0, max(0.0, end - time.monotonic())))
                        if time.monotonic() < end - 1:
                            kills.append(d.kill_workers(POOLS[n % len(POOLS)], timeout=180))
                            n += 1
                d.kill9()
                restart = d.start()
                caught_up = d.caught_up()
            finally:
                load.stop()
            d.caught_up()
            if d.stop() != 0:
                raise RuntimeError(f"the daemon did not stop cleanly:\n{d.log_tail()}")
            report = verify(d, load, shm_before)
            ok = True
        finally:
            d.kill9(whole_tree=True)
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"[soak] failed: its home and daemon log are kept in {tmp}", file=sys.stderr)
    lost = report["duckdb_lost"] + report["parquet_lost"] + report["updates_lost"] + report["imports_lost"]
    dups = report["duckdb_duplicates"] + report["parquet_duplicates"]
    leaks = report["processes_left"] + report["shm_left"] + report["temp_files"] + report["partial_objects"]
    ops = sum(report["ops_ok"].values())
    last = sampler.samples[-1] if sampler.samples else (0, float("nan"), 0, float("nan"))
    variant = f"{minutes:g} min, {report['events']} events, {ops} calls"
    rows = [
        _row("soak: events lost", variant, lost, "events"),
        _row("soak: events delivered twice", variant, dups, "events"),
        _row("soak: acked pieces intact", f"of {report['pieces_acked']} (sha256)", report["pieces_intact"], "pieces"),
        _row("soak: leaks (proc,shm,tmp,partial)", variant, leaks, "items"),
        _row("soak: daemon RSS growth", f"at {last[1]:.0f} MiB at the end", round(sampler.slope(1), 3), "MiB/min"),
        _row("soak: daemon open fds growth", f"{last[2]} fds at the end", round(sampler.slope(2), 3), "fds/min"),
        _row("soak: whole tree RSS growth", f"at {last[3]:.0f} MiB; workers replaced", round(sampler.slope(3), 3), "MiB/min"),
        _row("soak: worker kill -9 -> pool ready", f"{len(kills)} kills, max {max(kills, default=0):.2f} s", round(statistics.median(kills), 3) if kills else 0, "s median"),
        _row("soak: daemon kill -9 -> /healthz", "restart on the same home", round(restart, 3), "s"),
        _row("soak: kill -9 -> sinks caught up", "after /healthz", round(caught_up, 3), "s"),
    ]
    print(f"[soak] {report}", file=sys.stderr)
    return rows


def _row(workload: str, variant: str, value: Any, unit: str) -> dict[str, Any]:
    return {"workload": workload, "variant": variant, "value": value, "unit": unit, "ratio_vs": {}}
