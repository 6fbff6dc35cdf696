"""What confines a plugin's workers, from its config and manifest: resource limits and the sandbox.

    [Common.Plugins] / [Common.Plugins.<name>]          this module                 executors
    MemoryLimit, MaxOpenFiles, CPUs, Nice  ---------->  worker_limits() ---------> PoolSpec.limits
    Sandbox, AllowRead/Write/Connect,                   plan_sandbox()
      + manifest sandbox, pathMeta, readPathMeta,         .confinement() -------> PoolSpec.confine
        addressMeta, + the Meta and store Paths           .describe() -----------> plugin list / status

The mechanisms (which rlimit and why; the Landlock syscalls) are executors/_limits.py's and
executors/_landlock.py's; this module is the policy: defaults, what a plugin may touch, how it
reads in status, and what a refused call tells its caller.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from executors import WorkerLimits
from executors import _landlock as landlock
from executors._landlock import LandlockRules

from ..config import Config, PluginSettings, address_port
from ..sdk import Kind, Manifest, SandboxDenied

__all__ = [
    "Confinement",
    "SandboxPlan",
    "describe_limits",
    "explain_denial",
    "format_size",
    "kernel_abi",
    "plan_sandbox",
    "prepare_worker_environment",
    "worker_limits",
]

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


# -- the sandbox ------------------------------------------------------------------------------
#
#   config + manifest --plan_sandbox()--> SandboxPlan --.confinement()--> PoolSpec.confine
#     store Path, pathMeta values          rules (LandlockRules), mode,      Confinement() in each
#     readPathMeta, addressMeta values     what the kernel cannot refuse     worker: TMPDIR, audit
#     AllowWrite/Read/Connect, Sandbox                                       hook, then Landlock
#   a call refused by it -> host.map_error -> explain_denial() -> SandboxDenied naming what

# Sandbox = true promises files (ABI 1), renames across folders (2), truncation (3) and TCP (4).
REQUIRED_ABI = 4
ABI_OVERRIDE_ENV = "VSM_LANDLOCK_ABI"  # tests: act as on a kernel with at most this Landlock ABI

# What every confined worker may read besides its Python, its plugin and its config's paths:
# shared libraries, name resolution, TLS roots, time zones, and what runtimes read about the
# machine (CPU count, memory, cgroup quotas: DuckDB, pyarrow, glibc).
SYSTEM_READ = (
    "/usr", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/localtime", "/etc/timezone", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf",
    "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/ssl", "/etc/pki", "/etc/ca-certificates",
    "/etc/mime.types", "/etc/passwd", "/etc/group", "/dev/urandom", "/dev/random",
    "/proc/self", "/proc/thread-self", "/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/loadavg",
    "/proc/sys/vm/overcommit_memory", "/sys/devices/system/cpu", "/sys/fs/cgroup", "/sys/kernel/mm/transparent_hugepage",
)
SYSTEM_WRITE = ("/dev/null", "/dev/zero", "/dev/full")


def kernel_abi() -> int:
    """This kernel's Landlock ABI (0: none), or less when VSM_LANDLOCK_ABI says so (tests)."""
    abi = landlock.abi_version()
    forced = os.environ.get(ABI_OVERRIDE_ENV, "").strip()
    return min(abi, int(forced)) if forced.isdigit() else abi


@dataclasses.dataclass(frozen=True)
class SandboxPlan:
    """How one plugin's workers are confined, decided in the manager before its pool starts."""

    mode: str  # "true" | "best-effort" | "false" (what the config asked, "auto" resolved)
    rules: LandlockRules | None  # None: not confined
    abi: int = 0
    missing: tuple[str, ...] = ()  # what this kernel cannot refuse (while confined)
    refusal: str = ""  # Sandbox = true that cannot be kept: why (the plugin is not started)
    note: str = ""  # why it is not confined
    tmpdir: str = ""

    @property
    def state(self) -> str:
        if self.refusal:
            return "refused"
        if self.rules is None:
            return "off"
        return "partial" if self.missing else "on"

    def describe(self) -> dict[str, Any]:
        r = self.rules
        text = {
            "on": f"on (Landlock ABI {self.abi})",
            "partial": f"partial (ABI {self.abi}: not refused: {', '.join(self.missing)})",
            "off": f"off ({self.note})" if self.note else "off",
            "refused": "refused",
        }[self.state]
        return {
            "mode": self.mode,
            "state": self.state,
            "abi": self.abi,
            "missing": list(self.missing),
            "write": [p for p in r.write if p not in SYSTEM_WRITE] if r else [],
            "connect": list(r.connect_tcp) if r else [],
            "note": self.refusal or self.note,
            "text": text,
        }

    def prepare(self) -> None:
        """Create the folders the rules name, so they can be granted (run in the manager)."""
        if self.rules is None:
            return
        for path in (*self.rules.write, self.tmpdir):
            if path and path not in SYSTEM_WRITE and not os.path.exists(path):
                os.makedirs(path, exist_ok=True)

    def confinement(self, label: str, name: str) -> "Confinement | None":
        return Confinement(label, name, self.rules, self.tmpdir) if self.rules is not None else None


def plan_sandbox(
    manifest: Manifest,
    settings: PluginSettings,
    config: Config,
    plugin_files: tuple[str, ...],
    backend: str = "process",
    abi: int | None = None,
) -> SandboxPlan:
    """The plan for one plugin: `plugin_files` are its artifact (or source folder) and its
    environment's folders; `abi` defaults to this kernel's."""
    name = manifest.name
    section = f"[Common.Plugins.{name}]"
    mode = settings.sandbox
    if mode == "auto":
        if not manifest.sandbox:
            return SandboxPlan("false", None, note="its manifest does not declare `sandbox = true`; set Sandbox to confine it")
        mode = "best-effort"
    if mode == "false":
        return SandboxPlan("false", None, note=f"Sandbox = false in {section}")
    strict = mode == "true"
    if backend != "process":
        if strict:
            return SandboxPlan(mode, None, refusal=f"{section} Sandbox = true needs Backend = \"process\": a {backend} worker cannot be confined (set Sandbox = \"best-effort\" or false)")
        return SandboxPlan(mode, None, note=f"Backend = {backend!r} workers cannot be confined")
    abi = kernel_abi() if abi is None else abi
    if abi == 0:
        if strict:
            return SandboxPlan(mode, None, refusal=f"{section} Sandbox = true, but this kernel has no Landlock (Linux 6.7+ with landlock in its lsm= list is needed): set Sandbox = \"best-effort\" or false")
        return SandboxPlan(mode, None, abi=0, missing=tuple(landlock.missing_features(0)), note="this kernel has no Landlock")
    missing = tuple(landlock.missing_features(min(abi, max(landlock.ABI_FEATURES))))
    if strict and abi < REQUIRED_ABI:
        lacks = ", ".join(landlock.missing_features(abi)[: REQUIRED_ABI - abi])
        return SandboxPlan(mode, None, abi=abi, refusal=f"{section} Sandbox = true, but this kernel's Landlock ABI {abi} cannot refuse {lacks} (ABI {REQUIRED_ABI}, Linux 6.7+, can): set Sandbox = \"best-effort\" or false")
    read, write, ports = _grants(manifest, settings, config, plugin_files)
    tmpdir = str(Path(config.home) / "tmp" / name)
    rules = LandlockRules(read=read, write=(*write, tmpdir, *SYSTEM_WRITE), connect_tcp=ports, abi=abi)
    return SandboxPlan(mode, rules, abi=abi, missing=missing, tmpdir=tmpdir)


def _grants(manifest: Manifest, settings: PluginSettings, config: Config, plugin_files: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(read, write, ports) from what the config gives the plugin and its manifest declares."""
    name, kind = manifest.name, manifest.kind
    metas: list[dict[str, str]] = [settings.meta]
    write: list[str] = list(settings.allow_write)
    read: list[str] = list(settings.allow_read)
    if kind is Kind.KVStore and config.db.plugin_name == name:
        metas.append(config.db.meta)
    if kind is Kind.ObjStore:
        for store in (*config.piece_stores, *config.persist_stores):
            if store.plugin_name == name:
                metas.append(store.meta)
                if store.path and "://" not in store.path:
                    (read if store.read_only else write).append(_absolute(store.path))
    ports: set[int] = set(settings.allow_connect)
    for meta in metas:
        for key in manifest.path_meta:
            folder = _owned_folder(meta.get(key, ""))
            if folder:
                write.append(folder)
        for key in manifest.read_path_meta:
            if meta.get(key):
                read.append(_absolute(meta[key]))
        for key, default in manifest.address_meta.items():
            address = meta.get(key, "").strip() or default
            if address:
                try:
                    ports.add(address_port(address))
                except ValueError:
                    pass  # not a TCP address (a unix socket path): nothing to allow
    home = Path(config.home).resolve()
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values(), *(p for p in sys.path if p)}
    # never a folder that holds the home (its token): a sys.path entry such as the current
    # folder can be one
    python = {p for p in python if not _contains(p, home)}
    read += sorted(python) + [*SYSTEM_READ, *plugin_files, config.plugins_dir]
    return _unique(read), _unique(write), tuple(sorted(ports))


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _owned_folder(value: str) -> str:
    """The folder a pathMeta value lets the plugin write: the folder itself, or a file's folder
    (a database writes its journal beside it). "" for values that are not paths (":memory:")."""
    value = value.strip()
    if not value or value.startswith(":") or "://" in value:
        return ""
    p = Path(_absolute(value))
    if p.is_dir():
        return str(p)
    if p.exists() or p.suffix:
        return str(p.parent)
    return str(p)


def _contains(path: str, inner: Path) -> bool:
    try:
        return inner == Path(path).resolve() or Path(path).resolve() in inner.parents
    except OSError:
        return False


def _unique(paths: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for p in paths if p))


# -- inside a confined worker -----------------------------------------------------------------

_active: "Confinement | None" = None
_recent: "collections.deque[tuple[str, Any, Any]]" = collections.deque(maxlen=16)
_AUDITED = frozenset({"open", "socket.connect", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.link", "os.symlink"})


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _AUDITED:
        if event == "open":
            _recent.append((event, args[0], (args[1], args[2])))
        elif event == "socket.connect":
            _recent.append((event, args[1], None))
        else:
            _recent.append((event, args[0], None))


@dataclasses.dataclass(frozen=True)
class Confinement:
    """PoolSpec.confine of a sandboxed plugin: runs in each worker before it imports the plugin."""

    label: str  # "KVStore/redis"
    name: str
    rules: LandlockRules
    tmpdir: str  # the plugin's own temporary folder (a shared /tmp would show it others' files)

    def __call__(self) -> None:
        global _active
        os.environ["TMPDIR"] = self.tmpdir
        tempfile.tempdir = None
        sys.addaudithook(_audit)  # remembers what was opened or connected to, to say what was denied
        self.rules()
        _active = self


def explain_denial(exc: BaseException) -> BaseException | None:
    """In a confined worker: a SandboxDenied naming what was refused, when `exc` (or what
    caused it) is a refusal; None otherwise."""
    c = _active
    if c is None:
        return None
    denied = _permission_error(exc)
    if denied is None:
        return None
    return SandboxDenied(
        f"plugin '{c.label}' is sandboxed and was denied {_what(denied, c)}: allow it with AllowRead, "
        f"AllowWrite or AllowConnect in [Common.Plugins.{c.name}] (or pathMeta / readPathMeta / addressMeta in its manifest)"
    )


def _permission_error(exc: BaseException) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
            return exc
        if "Permission denied" in str(exc) or "Errno 13" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None


def _what(exc: BaseException, c: Confinement) -> str:
    filename = getattr(exc, "filename", None)
    last = _recent[-1] if _recent else None
    if filename:
        for event, target, how in reversed(_recent):
            if str(target) == str(filename):
                if event == "open":
                    mode, flags = how
                    writes = (mode and any(ch in str(mode) for ch in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
                    return f"{'writing' if writes else 'reading'} {filename}"
                return f"{event.split('.')[-1]} of {filename}"
        return f"access to {filename}"
    if last is not None and last[0] == "socket.connect":
        address = last[1]
        port = address[1] if isinstance(address, tuple) and len(address) >= 2 else "?"
        allowed = ", ".join(map(str, c.rules.connect_tcp)) or "none"
        host = address[0] if isinstance(address, tuple) else address
        return f"a TCP connection to {host}:{port} (ports allowed: {allowed})"
    return f"an access ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"
