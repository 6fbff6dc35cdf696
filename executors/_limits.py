"""Resource limits a worker applies to itself, after it starts and before it runs init.

    manager: PoolSpec(limits=WorkerLimits(memory_bytes=2 << 30, cpus=(1,), nice=5, ...))
       | pickled into the worker's init message
       v
    worker: WorkerLimits.apply()  ->  confine() (PoolSpec.confine)  ->  preload, init

What each field does, and why that mechanism (Linux):

- memory_bytes -> RLIMIT_DATA (soft = hard, so the plugin cannot raise it again). It counts
  the worker's private writable memory: the heap, anonymous mmaps, thread stacks; not shared
  mappings (the ring's memfd slots), not file mappings, not the code. Past it malloc fails,
  and Python raises MemoryError in the call that asked. RLIMIT_AS would count every
  reservation too: pyarrow's mimalloc alone reserves ~1 GiB of address space, duckdb another
  ~0.8 GiB (measured: VmSize 2.1 GiB at 115 MiB resident). Under RLIMIT_DATA mimalloc reserves
  less, so a limit of a few hundred MiB still runs pyarrow and duckdb. A memory cgroup would
  count resident pages exactly, but needs a delegated, writable cgroup v2 with the memory
  controller, which an unprivileged manager rarely has (and this machine's v2 hierarchy has
  none). What RLIMIT_DATA does not stop: a plugin that maps shared memory on purpose.
- max_open_files -> RLIMIT_NOFILE (soft = hard). Descriptors already open stay open.
- cpus -> sched_setaffinity of every thread of the process (a fresh worker has one).
- nice -> setpriority of every thread (Linux niceness is per thread); lowering it below the
  manager's needs CAP_SYS_NICE, and then fails the start with the reason.
- oom_score_adj -> /proc/self/oom_score_adj: when the machine runs out of memory anyway, the
  kernel's OOM killer picks a worker before the manager (raising it needs no privilege).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import resource

__all__ = ["WorkerLimits", "apply_setup"]


@dataclasses.dataclass(frozen=True)
class WorkerLimits:
    """Limits for every worker of a pool; None leaves that one as the worker inherited it."""

    memory_bytes: int | None = None
    max_open_files: int | None = None
    cpus: tuple[int, ...] | None = None
    nice: int | None = None
    oom_score_adj: int | None = None

    def apply(self) -> None:
        """Apply in the calling process; raises OSError/ValueError naming the limit."""
        if self.memory_bytes is not None:
            _set_rlimit(resource.RLIMIT_DATA, self.memory_bytes, "memory limit (RLIMIT_DATA)")
        if self.max_open_files is not None:
            _set_rlimit(resource.RLIMIT_NOFILE, self.max_open_files, "open files limit (RLIMIT_NOFILE)")
        threads = _threads()
        if self.cpus is not None:
            try:
                for tid in threads:
                    os.sched_setaffinity(tid, self.cpus)
            except OSError as e:
                raise OSError(e.errno, f"CPUs {list(self.cpus)}: cannot pin the worker to them: {e.strerror}") from None
        if self.nice is not None:
            try:
                for tid in threads:
                    os.setpriority(os.PRIO_PROCESS, tid, self.nice)
            except OSError as e:
                raise OSError(e.errno, f"Nice {self.nice}: {e.strerror} (a niceness below the manager's needs CAP_SYS_NICE)") from None
        if self.oom_score_adj is not None:
            try:
                with open("/proc/self/oom_score_adj", "w") as f:
                    f.write(str(self.oom_score_adj))
            except OSError:
                pass  # lowering it needs privilege; it is a preference, not a limit

    def describe(self) -> dict[str, object]:
        """The limits as plain data, for status."""
        return {
            "memory_bytes": self.memory_bytes,
            "max_open_files": self.max_open_files,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "nice": self.nice,
            "oom_score_adj": self.oom_score_adj,
        }


def apply_setup(setup_bytes: bytes | None) -> None:
    """In a worker, before preload and init: PoolSpec.limits, then PoolSpec.confine (pickled
    together by the manager; None when the pool has neither)."""
    if setup_bytes is None:
        return
    limits, confine = pickle.loads(setup_bytes)
    if limits is not None:
        limits.apply()
    if confine is not None:
        confine()


def _set_rlimit(which: int, value: int, what: str) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard  # cannot raise the hard limit; keep the stricter one
    try:
        resource.setrlimit(which, (value, value))
    except (OSError, ValueError) as e:
        raise OSError(f"{what} {value}: {e}") from None


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
