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

import dataclasses
import errno
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import executors
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
    "worker_limits",
]

# When the machine runs out of memory anyway, the kernel's OOM killer should take a worker
# (replaced as a crash) before the manager: this much is added to the manager's own score.
WORKER_OOM_SCORE_BONUS = 500


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
    own_folders: tuple[str, ...] = ()  # folders the rules grant that are made before the pool starts
    own_files: tuple[str, ...] = ()  # files the rules grant that are made (empty) before it starts

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
        """Create the folders of own_folders (run in the manager): a rule on a path that does not
        exist yet is skipped, and would stay refused. A store's missing Path is not made: the
        store fails to open, as unconfined, and `plugin reload` grants it once it exists."""
        if self.rules is None:
            return
        for path in self.own_folders:
            if path and not os.path.exists(path):
                os.makedirs(path, exist_ok=True)
        for path in self.own_files:
            if not os.path.lexists(path):
                open(path, "ab").close()

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
    read, write, ports, folders = _grants(manifest, settings, config, plugin_files)
    tmpdir = str(Path(config.home) / "tmp" / name)
    journal: tuple[str, ...] = ()
    if manifest.kind is Kind.SyncSectorState and config.sector_sync.journal_dir:
        # a sink's workers map the journal's segments themselves (sink_host.read: the manager
        # sends frame references, not rows); read-only, and nothing else of the journal
        journal = (os.path.join(_absolute(config.sector_sync.journal_dir, config.home), "segments"),)
    own: tuple[str, ...] = ()
    if manifest.plugins_dir_files:  # its config file and data folder in the plugins dir, by its name
        own = (os.path.join(config.plugins_dir, f"{name}.toml"), os.path.join(config.plugins_dir, f".{name}"))
    rules = LandlockRules(read=(*read, *journal), write=(*write, *own, tmpdir, *SYSTEM_WRITE), connect_tcp=ports, abi=abi)
    return SandboxPlan(mode, rules, abi=abi, missing=missing, tmpdir=tmpdir, own_folders=(*folders, *own[1:], *journal, tmpdir), own_files=own[:1])


def _grants(
    manifest: Manifest, settings: PluginSettings, config: Config, plugin_files: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(read, write, ports, folders) from what the config gives the plugin and its manifest
    declares; folders: its pathMeta folders, which the plugin would make itself unconfined (a
    store's Path is not one: a missing one is the operator's to make, e.g. a disk to mount)."""
    name, kind = manifest.name, manifest.kind
    # the Meta of each instance the config makes of the plugin: a store's (the DB's) Meta for a
    # store plugin, else its own section's; only those get the manifest's default addresses
    # (an unused s3store is given no port, a used one its Endpoint's, not also AWS's)
    store_kind = kind in (Kind.KVStore, Kind.ObjStore)
    metas: list[tuple[dict[str, str], bool]] = [(settings.meta, not store_kind)]
    write: list[str] = list(settings.allow_write)
    read: list[str] = list(settings.allow_read)
    folders: list[str] = []
    if kind is Kind.KVStore and config.db.plugin_name == name:
        metas.append((config.db.meta, True))
    if kind is Kind.ObjStore:
        for store in (*config.piece_stores, *config.persist_stores):
            if store.plugin_name == name:
                metas.append((store.meta, True))
                if store.path and "://" not in store.path and not manifest.path_is_name:
                    (read if store.read_only else write).append(_absolute(store.path, config.home))
    ports: set[int] = set(settings.allow_connect)
    for meta, defaults in metas:
        for key in manifest.path_meta:
            folder = _owned_folder(meta.get(key, ""), config.home)
            if folder:
                write.append(folder)
                folders.append(folder)
        for key in manifest.read_path_meta:
            if meta.get(key):
                read.append(_absolute(meta[key], config.home))
        for key, default in manifest.address_meta.items():
            address = meta.get(key, "").strip() or (default if defaults else "")
            if address:
                try:
                    ports.add(address_port(address))
                except ValueError:
                    pass  # not a TCP address (a unix socket path): nothing to allow
    home = Path(config.home).resolve()
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values(), *executors.manager_sys_path()}
    # never a folder that holds the home (its token): a sys.path entry such as the current
    # folder can be one
    python = {p for p in python if not _contains(p, home)}
    read += sorted(python) + [*SYSTEM_READ, *plugin_files, config.plugins_dir]
    return _unique(read), _unique(write), tuple(sorted(ports)), _unique(folders)


def _absolute(path: str, home: str) -> str:
    """A config path as the worker sees it: it runs in the home folder (host.worker_init), so a
    relative one is relative to the home."""
    return os.path.normpath(os.path.join(home, os.path.expanduser(path)))


def _owned_folder(value: str, home: str) -> str:
    """The folder a pathMeta value lets the plugin write: the folder itself, or a file's folder
    (a database writes its journal beside it). "" for values that are not paths (":memory:")."""
    value = value.strip()
    if not value or value.startswith(":") or "://" in value:
        return ""
    p = Path(_absolute(value, home))
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
#
# A refusal is named where the error leaves the plugin (host.map_error -> explain_denial), from
# the error itself and the rules: nothing runs on the worker's hot path. (A Python audit hook
# recording each open and connect named them first; it cost a call per audited event, ~4 per
# fsstore put: bench/bench_isolation.py's sandbox+hook rows.)

_active: "Confinement | None" = None
# the engine's and vsm's own code: the frames of a worker serving a call (their locals are call
# arguments, not what the plugin connected to)
_HOST_CODE = (str(Path(executors.__file__).resolve().parent) + os.sep, str(Path(__file__).resolve().parents[1]) + os.sep)


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
        self.rules()
        _active = self


def explain_denial(exc: BaseException) -> BaseException | None:
    """In a confined worker: a SandboxDenied naming what was refused, when `exc` (or what
    caused it) is the sandbox's refusal; None otherwise (also for a file the rules let it use,
    which its permissions refused)."""
    c = _active
    if c is None:
        return None
    denied = _permission_error(exc)
    if denied is None:
        return None
    missing = _missing_own_folder(denied, c.rules)
    if missing is not None:  # issue 26: a scaffold's makedirs of its store Path was a bare Errno 13
        return SandboxDenied(
            f"plugin '{c.label}' is sandboxed and was denied creating {os.fsdecode(denied.filename)}: "  # type: ignore[attr-defined]
            f"{missing} is its to write, but did not exist when its workers started, and the sandbox can allow "
            f"only a folder that exists: create it (mkdir -p {missing}), then `vsm-pool plugin reload {c.name}`"
        )
    what = _what(denied, c)
    if what is None:
        return None
    return SandboxDenied(
        f"plugin '{c.label}' is sandboxed and was denied {what}: allow it with AllowRead, "
        f"AllowWrite or AllowConnect in [Common.Plugins.{c.name}] (or pathMeta / readPathMeta / addressMeta in its manifest)"
    )


def _permission_error(exc: BaseException) -> BaseException | None:
    """The EACCES/EPERM OSError in exc's chain (it says what and where), else the first error
    whose text says so (a library's own: libpq's "... failed: Permission denied")."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 6:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    for e in chain:
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            return e
    return next((e for e in chain if "Permission denied" in str(e) or "Errno 13" in str(e)), None)


def _missing_own_folder(exc: BaseException, rules: LandlockRules) -> str | None:
    """The folder the rules let it write that `exc`'s file is in, when that folder does not
    exist: its rule was skipped (Landlock needs an open folder), so creating it was refused."""
    filename = getattr(exc, "filename", None)
    if filename is None:
        return None
    real = os.path.realpath(os.fsdecode(filename))
    return next((root for root in rules.write if _beneath(real, (root,)) and not os.path.exists(root)), None)


def _what(exc: BaseException, c: Confinement) -> str | None:
    filename = getattr(exc, "filename", None)
    if filename is not None:
        return _file_denial(os.fsdecode(filename), getattr(exc, "filename2", None), c.rules)
    address = _address(exc)
    if address is not None:
        allowed = ", ".join(map(str, c.rules.connect_tcp)) or "none"
        return f"a TCP connection to {address[0]}:{address[1]} (ports allowed: {allowed})"
    return f"an access ({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})"


def _file_denial(path: str, path2: Any, rules: LandlockRules) -> str | None:
    """What the rules refused on `path`: a change where it may only read; anything where it may
    neither read nor write. None where it may write (its file permissions refused it)."""
    real = os.path.realpath(path)
    if _beneath(real, rules.write):
        return None
    if path2 is not None:
        return f"moving {path} to {os.fsdecode(path2)}"
    if not os.path.lexists(real):
        return f"writing {path}"  # creating it
    if _beneath(real, rules.read):
        try:  # it may read there: a change was refused, unless reading this file is refused too
            os.close(os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
        except OSError:
            return None
        return f"writing {path}"
    return f"access to {path} (it may neither read nor write there)"


def _beneath(path: str, roots: tuple[str, ...]) -> bool:
    for root in roots:
        r = os.path.realpath(root)
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return True
    return False


def _address(exc: BaseException) -> tuple[str, int] | None:
    """The (host, port) a refused connect was for: a socket address among the locals of the
    frames it was raised through, innermost first (socket.create_connection's `sa`, a client
    library's own), else a `host` and `port` pair."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_HOST_CODE):  # the worker's own frames hold call args
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        values = frame.f_locals
        for v in values.values():
            if isinstance(v, tuple) and len(v) in (2, 4) and isinstance(v[0], str) and isinstance(v[1], int) and 0 < v[1] < 65536:
                return v[0], v[1]
        host, port = values.get("host"), values.get("port")
        if isinstance(host, str) and isinstance(port, int):
            return host, port
    return None
