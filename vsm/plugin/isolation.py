"""What confines a plugin's workers, from its config: resource limits (and, next, its sandbox).

    [Common.Plugins] / [Common.Plugins.<name>]          this module                 executors
    MemoryLimit, MaxOpenFiles, CPUs, Nice  ---------->  worker_limits() ---------> PoolSpec.limits
                                                        describe() ---------------> plugin list / status

The mechanism (which rlimit, why RLIMIT_DATA) is executors/_limits.py's; this module is the
policy: defaults, and how the limits read in status.
"""

from __future__ import annotations

import os
from typing import Any

from executors import WorkerLimits

from ..config import PluginSettings

__all__ = ["describe_limits", "format_size", "prepare_worker_environment", "worker_limits"]

# When the machine runs out of memory anyway, the kernel's OOM killer should take a worker
# (replaced as a crash) before the manager: this much is added to the manager's own score.
WORKER_OOM_SCORE_BONUS = 500


def prepare_worker_environment() -> None:
    """Call before the first pool starts (the fork server inherits the environment).

    pyarrow's allocator (mimalloc) otherwise maps a 1 GiB arena as writable at its first
    allocation: a worker forked from a server that imported vsm.sdk starts at ~1.17 GiB of
    RLIMIT_DATA while ~37 MiB is resident. Committing on demand keeps the limit's count close
    to what the worker uses (~125 MiB at start, measured)."""
    os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")


def worker_limits(settings: PluginSettings) -> WorkerLimits:
    return WorkerLimits(
        memory_bytes=settings.memory_limit,
        max_open_files=settings.max_open_files,
        cpus=settings.cpus,
        nice=settings.nice,
        oom_score_adj=min(1000, max(0, _own_oom_score_adj()) + WORKER_OOM_SCORE_BONUS),
    )


def describe_limits(settings: PluginSettings | None) -> dict[str, Any]:
    """The limits as status shows them (JSON: numbers and lists; None = not limited)."""
    if settings is None:
        return {"memory_limit": None, "max_open_files": None, "cpus": None, "nice": None, "text": "none"}
    parts = [
        f"mem {format_size(settings.memory_limit)}" if settings.memory_limit else "mem unlimited",
        f"files {settings.max_open_files}" if settings.max_open_files else "",
        f"cpus {_cpu_list(settings.cpus)}" if settings.cpus else "",
        f"nice {settings.nice}" if settings.nice is not None else "",
    ]
    return {
        "memory_limit": settings.memory_limit,
        "max_open_files": settings.max_open_files,
        "cpus": list(settings.cpus) if settings.cpus else None,
        "nice": settings.nice,
        "text": ", ".join(p for p in parts if p),
    }


def format_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"


def _cpu_list(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 6) -> "0-3,6"."""
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def _own_oom_score_adj() -> int:
    try:
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0
