"""The manager's config file (TOML, the seed's keys) and the home folder.

Every problem is one ConfigError naming the file and the key path, e.g.
`~/.vsm-pool/config.toml: Common.PieceStores[0].Weight: must be an integer, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import tomli

from .errors import ConfigError

__all__ = [
    "ApiConfig",
    "Config",
    "ConfigChanges",
    "DBConfig",
    "PluginSettings",
    "SectorSyncConfig",
    "StoreConfig",
    "config_changes",
    "default_config_text",
    "live_config",
    "load_config",
    "resolve_home",
]

# Builtin DB drivers are bundled plugins run in their own pool like any other.
BUILTIN_DB_DRIVERS = {"sqlite": "sqlitekv", "memory": "memdb"}
BUILTIN_STORE_PLUGIN = "fsstore"
POOL_BACKENDS = ("process", "ray")  # [Common.Plugins] Backend / [Common.Plugins.<name>] Backend
# Meta of the bundled plugins that keep files, for the keys a config leaves out (relative to the
# home folder): a damocles config names none of them (issue 26); the default config writes them.
BUNDLED_META_DEFAULTS: dict[str, dict[str, str]] = {
    "duckdb": {"Path": "data/duckdb/sectors.duckdb"},
    "parquet": {"Path": "data/parquet"},
}


DEFAULT_MEMORY_LIMIT = 4 << 30
# [[Common.PieceStores]] MinFreeSpace: above [Common] MinFreeSpace (256 MiB), so on a disk the
# home shares, piece PUTs stop while the journal and the KV still have room for sector changes
DEFAULT_PIECE_MIN_FREE_SPACE = 1 << 30
# [Common] MinFreeSpace: a fixed amount, not a share (1% of a 100 TB disk is 1 TB held back): room
# for the largest writes in flight at once: a DuckDB delivery of 100k rows (~100 MiB in its WAL),
# an import chunk in SQLite's WAL (~30 MiB), a journal frame (~10 MiB) and their rollbacks.
DEFAULT_MIN_FREE_SPACE = 256 << 20
DEFAULT_MAX_OPEN_FILES = 4096
# Below this a worker cannot even import vsm's SDK and pyarrow (~125 MiB of it, ~210 MiB with duckdb).
MIN_MEMORY_LIMIT = 128 << 20


@dataclasses.dataclass(frozen=True)
class PluginSettings:
    """[Common.Plugins.<name>]: how one plugin's pool runs."""

    workers: int | None = None  # None: the kind's default (vsm.loader.DEFAULT_WORKERS)
    call_timeout: float = 60.0
    start_timeout: float = 60.0  # seconds for the pool to start (imports, onInit); past it the plugin is disabled
    disabled: bool = False
    meta: dict[str, str] = dataclasses.field(default_factory=dict)
    backend: str = "process"  # "process" (local worker processes) | "ray" (one Ray actor per worker)
    ray_address: str = ""  # "" = RAY_ADDRESS or a local Ray; one address per manager process
    ray_resources: dict[str, float] = dataclasses.field(default_factory=dict)  # per actor: CPU, GPU, memory, custom
    ray_node: str = ""  # node id or IP: every worker of the plugin runs there
    # Resources, per worker process (applied by the worker itself before it imports the plugin;
    # executors/_limits.py says what each one counts). Defaults: a runaway allocation or a
    # descriptor leak stops at the plugin's own worker, long before it would hurt the machine.
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT  # bytes of private writable memory (RLIMIT_DATA); None: no limit
    max_open_files: int | None = DEFAULT_MAX_OPEN_FILES  # RLIMIT_NOFILE; None: the manager's
    cpus: tuple[int, ...] | None = None  # CPU affinity; None: every CPU the manager may use
    nice: int | None = None  # niceness; None: the manager's
    # The sandbox (Landlock, vsm/plugin/isolation.py): "auto" = "best-effort" for a plugin whose
    # manifest says `sandbox = true`, off for others; "true" refuses to load
    # the plugin where the kernel cannot confine it; "best-effort"; "false".
    sandbox: str = "auto"
    allow_connect: tuple[int, ...] = ()  # TCP ports, beyond the addresses its manifest's addressMeta names
    allow_write: tuple[str, ...] = ()  # folders or files, beyond its store Path and pathMeta
    allow_read: tuple[str, ...] = ()

    def pool_options(self) -> dict[str, Any]:
        """make_pool(..., backend="ray", **options) for this plugin."""
        options: dict[str, Any] = {"resources": dict(self.ray_resources)}
        if self.ray_address:
            options["address"] = self.ray_address
        if self.ray_node:
            options["node"] = self.ray_node
        return options


@dataclasses.dataclass(frozen=True)
class DBConfig:
    driver: str = "sqlite"
    plugin_name: str = "sqlitekv"
    meta: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """One [[Common.PieceStores]] or [[Common.PersistStores]] entry (or a scanned
    sectorstore.json)."""

    key: str  # key path, for messages: "Common.PieceStores[0]"
    name: str
    path: str
    plugin_name: str = BUILTIN_STORE_PLUGIN
    meta: dict[str, str] = dataclasses.field(default_factory=dict)
    read_only: bool = False
    strict: bool = False
    weight: int = 1
    # damocles' StoreSelectPolicy (persist stores): which miners' sectors may be placed here
    allow_miners: tuple[int, ...] = ()
    deny_miners: tuple[int, ...] = ()
    # MinFreeSpace: a piece PUT that would leave less free on the store's disk is refused (507)
    min_free_space: int = DEFAULT_PIECE_MIN_FREE_SPACE

    def allows(self, miner: int) -> bool:
        """Go StoreSelectPolicy.Allowed: a denied miner never; with an allow list, only those."""
        if miner in self.deny_miners:
            return False
        return not self.allow_miners or miner in self.allow_miners


@dataclasses.dataclass(frozen=True)
class SectorSyncConfig:
    """[Common.SectorSync]: micro-batching of sector-state events and the journal."""

    batch_rows: int = 10000
    batch_age: float = 0.01  # seconds
    journal_dir: str = ""
    max_backlog: int = 10_000_000  # [Common.Journal] MaxBacklog: events kept for a sink behind
    segment_bytes: int = 64 << 20  # [Common.Journal] SegmentBytes: compaction deletes whole segments


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """[Common.Api]: where the daemon listens and what one request may cost (README "Limits")."""

    listen: str = "127.0.0.1:1789"
    max_body_bytes: int = 64 << 20  # JSON-RPC bodies; piece uploads stream and are not bound
    max_response_bytes: int = 64 << 20  # one JSON-RPC reply, a batch's results together
    max_list_limit: int = 10_000  # sectors.list `limit`
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive
    body_timeout: float = 60.0  # seconds for a JSON-RPC body to arrive
    query_timeout: float = 30.0  # seconds a `query` may run before it is interrupted
    query_max_bytes: int = 64 << 20  # Arrow bytes a `query` result may hold


@dataclasses.dataclass(frozen=True)
class Config:
    file: str
    home: str
    plugins_dir: str
    strict: bool = False
    plugins: dict[str, PluginSettings] = dataclasses.field(default_factory=dict)
    plugin_defaults: PluginSettings = PluginSettings()  # [Common.Plugins] Backend / RayAddress
    db: DBConfig = DBConfig()
    piece_stores: tuple[StoreConfig, ...] = ()
    persist_stores: tuple[StoreConfig, ...] = ()
    sector_sync: SectorSyncConfig = SectorSyncConfig()
    api: ApiConfig = ApiConfig()
    # [Common] MinFreeSpace: under it on a path the daemon writes (journal, KV, sinks) new
    # writes are refused with "disk full: PATH" (vsm.sdk.diskspace); 0: only a full disk refuses
    min_free_space: int = DEFAULT_MIN_FREE_SPACE

    def settings(self, plugin: str) -> PluginSettings:
        return self.plugins.get(plugin, self.plugin_defaults)

    @property
    def data_dir(self) -> Path:
        return Path(self.home) / "data"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """--home, else $VSM_HOME, else ~/.vsm-pool."""
    chosen = home or os.environ.get("VSM_HOME") or Path.home() / ".vsm-pool"
    return Path(chosen).expanduser().resolve()


class _Reader:
    """Typed access to a TOML table that remembers the key path for messages.

    Keys match as damocles-manager's TOML decoder (BurntSushi/toml) matches them to its struct
    fields: exactly, else case-insensitively (`driver` is `Driver`); tables whose names differ
    only in case (`[Common.API]` and `[Common.Api]`) are one table. Map keys (Meta) keep
    their case."""

    def __init__(self, file: Path, data: Mapping[str, Any], path: str, warnings: list[str]) -> None:
        self.file, self.data, self.path, self.warnings = file, data, path, warnings
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def spellings(self, name: str) -> list[str]:
        """The keys of this table that mean `name`: the exact one first."""
        folded = name.casefold()
        return sorted((k for k in self.data if k.casefold() == folded), key=lambda k: k != name)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
        found = self.spellings(name)
        self.used.update(found or [name])
        if not found:
            return default
        if len(found) > 1 and kind is not dict:
            raise ConfigError(self.file, self.key(found[1]), f"set twice: keys match case-insensitively, and {found[0]!r} is set too")
        actual = found[0]
        value = self.data[actual]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            want = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigError(self.file, self.key(actual), f"must be {want}, got {value!r}")
        if check and (problem := check(value)):
            raise ConfigError(self.file, self.key(actual), problem)
        return value

    def table(self, name: str) -> "_Reader":
        found = self.spellings(name)
        self.get(name, dict, {})  # type check of the first spelling
        merged: dict[str, Any] = {}
        for actual in found:
            value = self.data[actual]
            if not isinstance(value, dict):
                raise ConfigError(self.file, self.key(actual), f"must be a table, got {value!r}")
            for k, v in value.items():
                if k in merged:
                    raise ConfigError(self.file, f"{self.key(actual)}.{k}", f"set twice: [{self.key(found[0])}] sets it too")
                merged[k] = v
        return _Reader(self.file, merged, self.key(found[0] if found else name), self.warnings)

    def strings(self, name: str) -> dict[str, str]:
        table = self.get(name, dict, {})
        for k, v in table.items():
            if not isinstance(v, (str, int, float, bool)):
                raise ConfigError(self.file, f"{self.key(name)}.{k}", f"must be a string, got {v!r}")
        return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in table.items()}

    def accept(self, *names: str) -> None:
        """Keys damocles-manager has for its own parts (chain, sealing): known, not used here."""
        for name in names:
            self.used.update(self.spellings(name))

    def warn_unknown(self, also_allowed: Callable[[str], bool] = lambda _: False) -> None:
        for k in self.data:
            if k not in self.used and not also_allowed(k):
                self.warnings.append(f"{self.file}: {self.key(k)}: unknown key, ignored")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table", list: "a list"}


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _between(low: float, high: float, unit: str = "") -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if low <= v <= high else f"must be between {low:g} and {high:g}{unit}, got {v!r}"

    return check


# A worker is a process of ~30-60 MiB: past this many per plugin a typo (Workers = 240) or a
# guess costs the machine more than it gains. A stream-heavy ObjStore may want more workers
# than cores (they wait on I/O), hence twice the cores, and never fewer than 16.
MAX_WORKERS = max(16, 2 * (os.cpu_count() or 1))
# Below this a call cannot even cross to its worker and back under load: every call would
# time out and kill its worker. Above a day a hung call is never noticed.
CALL_TIMEOUT_BOUNDS = (0.1, 86400.0)


_RESOURCE_KEYS = ("MemoryLimit", "MaxOpenFiles", "CPUs", "Nice", "Sandbox")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int | None:
    """ "2GiB" / "512 MiB" / "2G" / 1073741824 -> bytes; "" or 0 -> None (no limit)."""
    if isinstance(text, int):
        return text or None
    number = text.strip().lower().rstrip()
    i = len(number)
    while i and not (number[i - 1].isdigit() or number[i - 1] == "."):
        i -= 1
    unit = number[i:].strip()
    if unit not in _SIZE_UNITS or not number[:i]:
        raise ValueError(text)
    value = int(float(number[:i]) * _SIZE_UNITS[unit])
    return value or None


def _free_space_size(v: str | int) -> str | None:
    try:
        if isinstance(v, int) and v < 0:
            raise ValueError(v)
        parse_size(v)
        return None
    except ValueError:
        return f'must be a size such as "256MiB" or "1GiB" (0: only a full disk refuses), got {v!r}'


def parse_cpus(value: str | list[int]) -> tuple[int, ...] | None:
    """ "0-3,6" or [0, 1, 2, 3, 6] -> (0, 1, 2, 3, 6); "" or [] -> None (every CPU)."""
    if isinstance(value, list):
        cpus = set(value)
    else:
        cpus = set()
        for part in filter(None, (p.strip() for p in value.split(","))):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus)) or None


def _resource_limits(t: "_Reader", inherit: PluginSettings) -> dict[str, Any]:
    """MemoryLimit, MaxOpenFiles, CPUs, Nice of one table ([Common.Plugins] or a plugin's),
    falling back to `inherit` (the [Common.Plugins] values, or the built-in defaults)."""

    def size(v: Any) -> str | None:
        try:
            n = parse_size(v)
        except ValueError:
            return f'must be a size such as "2GiB", "512MiB" or 0 (no limit), got {v!r}'
        if n is not None and n < MIN_MEMORY_LIMIT:
            return f"must be at least {MIN_MEMORY_LIMIT >> 20}MiB (a worker needs about that to import vsm's SDK), or 0 for no limit, got {v!r}"
        return None

    def cpus(v: Any) -> str | None:
        try:
            chosen = parse_cpus(v)
        except (ValueError, TypeError):
            return f'must be CPU numbers such as "0-3,6" or [0, 1], got {v!r}'
        usable = os.sched_getaffinity(0)
        if chosen and not set(chosen) <= usable:
            return f"CPU(s) {sorted(set(chosen) - usable)} are not available to this process (it may use {sorted(usable)})"
        return None

    memory = t.get("MemoryLimit", (str, int), None, size)
    files = t.get("MaxOpenFiles", int, None, lambda v: None if v == 0 or 16 <= v <= 1 << 20 else f"must be between 16 and 1048576, or 0 (the manager's), got {v}")
    chosen = t.get("CPUs", (str, list), None, cpus)
    nice = t.get("Nice", int, None, _between(-20, 19))
    sandbox = t.get("Sandbox", (bool, str), None, lambda v: None if v in (True, False, "best-effort") else f'must be true, false or "best-effort", got {v!r}')
    return {
        "sandbox": inherit.sandbox if sandbox is None else str(sandbox).lower(),
        "memory_limit": inherit.memory_limit if memory is None else parse_size(memory),
        "max_open_files": inherit.max_open_files if files is None else (files or None),
        "cpus": inherit.cpus if chosen is None else parse_cpus(chosen),
        "nice": inherit.nice if nice is None else nice,
    }


# The port a scheme means when an address names none (DSNs and endpoints of the bundled plugins).
DEFAULT_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379, "postgres": 5432, "postgresql": 5432,
                 "mysql": 3306, "mariadb": 3306, "mysql+pymysql": 3306}


def address_port(address: str) -> int:
    """The TCP port an address names: "6379", "127.0.0.1:6379", "[::1]:6379",
    "postgresql://u@host:5432/db", "https://s3.example" (443). ValueError says why not."""
    from urllib.parse import urlsplit

    text = address.strip()
    if text.isdigit():
        port = int(text)
    elif "://" in text:
        parts = urlsplit(text)
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        except (KeyError, ValueError):
            raise ValueError(f"{address!r} names no TCP port (and {parts.scheme!r} has no known default)") from None
    else:
        host, sep, tail = text.rpartition(":")
        if not sep or not host or not tail.isdigit():
            raise ValueError(f"{address!r} is not a port, host:port or URL")
        port = int(tail)
    if not 0 < port < 65536:
        raise ValueError(f"{address!r}: port {port} is out of range")
    return port


def _sandbox_allowances(t: "_Reader", local_path: Callable[[str], str]) -> dict[str, Any]:
    """AllowConnect (ports, or host:port / URLs), AllowWrite, AllowRead (paths) of a plugin."""

    def ports(v: Any) -> str | None:
        for item in v:
            try:
                address_port(str(item))
            except ValueError as e:
                return f"{item!r}: {e}"
        return None

    def paths(v: Any) -> str | None:
        bad = [p for p in v if not isinstance(p, str) or not p]
        return f"must be a list of paths, got {bad[0]!r}" if bad else None

    return {
        "allow_connect": tuple(address_port(str(p)) for p in t.get("AllowConnect", list, [], ports)),
        "allow_write": tuple(local_path(p) for p in t.get("AllowWrite", list, [], paths)),
        "allow_read": tuple(local_path(p) for p in t.get("AllowRead", list, [], paths)),
    }


def load_config(file: str | os.PathLike[str] | None, home: Path) -> tuple[Config, list[str]]:
    """Parse and validate the config; returns (config, warnings). Plugin names are checked
    against the loaded plugins later (`Registry.check_config`), since only then are they known."""
    path = Path(file) if file else home / "config.toml"
    try:
        data = tomli.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "config file does not exist (create one with `vsm-pool config init`)") from None
    except tomli.TOMLDecodeError as e:
        raise ConfigError(path, "", f"TOML syntax error: {e}") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(path, "", f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at line {line} (offset {e.start})") from None
    warnings: list[str] = []
    root = _Reader(path, data, "", warnings)
    common = root.table("Common")

    def local_path(value: str) -> str:  # relative paths are relative to the home folder
        return str((home / Path(value).expanduser()).resolve()) if value else ""

    plugins_t = common.table("Plugins")
    # damocles' Dir = "" loads no plugin; here the embedded stores are plugins: "" is the default
    plugins_dir = local_path(plugins_t.get("Dir", str, "") or "plugins")
    strict = plugins_t.get("Strict", bool, False)

    def backend_name(v: str) -> str | None:
        return None if v in POOL_BACKENDS else f"must be one of {', '.join(POOL_BACKENDS)}, got {v!r}"

    def resources(t: _Reader) -> dict[str, float]:
        table = t.get("RayResources", dict, {})
        for k, v in table.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(path, f"{t.key('RayResources')}.{k}", f"must be a number >= 0, got {v!r}")
        return {k: float(v) for k, v in table.items()}

    default_backend = plugins_t.get("Backend", str, "process", backend_name)
    ray_address = plugins_t.get("RayAddress", str, "")
    default_limits = _resource_limits(plugins_t, PluginSettings())
    defaults = PluginSettings(backend=default_backend, ray_address=ray_address, **default_limits)
    settings: dict[str, PluginSettings] = {}
    for name in plugins_t.data:
        if name.casefold() in ("dir", "strict", "backend", "rayaddress", *(k.casefold() for k in _RESOURCE_KEYS)):
            continue
        t = plugins_t.table(name)
        address = t.get("RayAddress", str, ray_address)
        if address != ray_address:
            # Ray connects a process to one cluster: every plugin must name the same one
            raise ConfigError(
                path, t.key("RayAddress"), f"differs from [Common.Plugins] RayAddress {ray_address!r}: set it there, once"
            )
        settings[name] = PluginSettings(
            workers=t.get("Workers", int, None, _between(1, MAX_WORKERS, " (the limit is 2 x the CPUs, at least 16)")),
            call_timeout=float(t.get("CallTimeout", (int, float), 60.0, _between(*CALL_TIMEOUT_BOUNDS, " seconds"))),
            start_timeout=float(t.get("StartTimeout", (int, float), 60.0, _between(1.0, 3600.0, " seconds"))),
            disabled=t.get("Disabled", bool, False),
            meta=t.strings("Meta"),
            backend=t.get("Backend", str, default_backend, backend_name),
            ray_address=address,
            ray_resources=resources(t),
            ray_node=t.get("RayNode", str, ""),
            **_resource_limits(t, defaults),
            **_sandbox_allowances(t, local_path),
        )
        t.warn_unknown()
    for name, meta in BUNDLED_META_DEFAULTS.items():
        given = settings.get(name, defaults)
        have = {k.casefold() for k in given.meta}
        missing = {k: local_path(v) for k, v in meta.items() if k.casefold() not in have}
        if missing:
            settings[name] = dataclasses.replace(given, meta={**given.meta, **missing})

    db = _db_config(common, path, home, local_path, warnings)
    stores = {section: _stores(common, section, path, local_path, warnings) for section in ("PieceStores", "PersistStores")}
    stores["PersistStores"] += _scanned_persist_stores(common, path, local_path, len(stores["PersistStores"]))
    _check_store_names(stores["PieceStores"], stores["PersistStores"], path)

    sync_t, journal_t = common.table("SectorSync"), common.table("Journal")
    sector_sync = SectorSyncConfig(
        batch_rows=sync_t.get("BatchRows", int, 10000, _positive),
        batch_age=float(sync_t.get("BatchAge", (int, float), 0.01, _positive)),
        journal_dir=local_path(sync_t.get("JournalDir", str, "data/journal")),
        max_backlog=journal_t.get("MaxBacklog", int, 10_000_000, _positive),
        segment_bytes=journal_t.get("SegmentBytes", int, 64 << 20, _positive),
    )
    sync_t.warn_unknown()
    journal_t.warn_unknown()
    api_t = common.table("Api")
    api = ApiConfig(
        listen=api_t.get("Listen", str, "127.0.0.1:1789", lambda v: None if ":" in v else "must be host:port"),
        max_body_bytes=api_t.get("MaxBodyBytes", int, 64 << 20, _positive),
        max_response_bytes=api_t.get("MaxResponseBytes", int, 64 << 20, _between(1 << 10, 1 << 34, " bytes")),
        max_list_limit=api_t.get("MaxListLimit", int, 10_000, _between(1, 1_000_000)),
        header_timeout=float(api_t.get("HeaderTimeout", (int, float), 10.0, _between(0.5, 3600.0, " seconds"))),
        body_timeout=float(api_t.get("BodyTimeout", (int, float), 60.0, _between(0.5, 3600.0, " seconds"))),
        query_timeout=float(api_t.get("QueryTimeout", (int, float), 30.0, _between(0.1, 86400.0, " seconds"))),
        query_max_bytes=api_t.get("QueryMaxBytes", int, 64 << 20, _between(1 << 10, 1 << 34, " bytes")),
    )
    api_t.accept(*_DAMOCLES_API_KEYS)
    api_t.warn_unknown()
    min_free_space = parse_size(common.get("MinFreeSpace", (str, int), DEFAULT_MIN_FREE_SPACE, _free_space_size)) or 0
    common.accept("ScanPersistStores", "MongoKVStore", "Proving")
    common.warn_unknown()
    root.accept("Miners")
    root.warn_unknown()
    return (
        Config(
            file=str(path),
            home=str(home),
            plugins_dir=plugins_dir,
            strict=strict,
            plugins=settings,
            plugin_defaults=defaults,
            db=db,
            piece_stores=stores["PieceStores"],
            persist_stores=stores["PersistStores"],
            sector_sync=sector_sync,
            api=api,
            min_free_space=min_free_space,
        ),
        warnings,
    )


# damocles' [Common.API] keys: where its chain, messager and market services are. vsm-pool does
# not talk to those services; the keys are accepted so a damocles config loads as it is.
_DAMOCLES_API_KEYS = ("Chain", "Messager", "Market", "Gateway", "Token", "ChainEventInterval")
# Collections of damocles' Badger store (one Badger folder each under its BaseDir).
_BADGER_COLLECTIONS = ("common", "meta", "offline_meta", "sector-index", "snapup", "worker", "rebuild", "unseal", "prover")
_SECTOR_IMPORT = "bring the sector states over with `vsm-pool sectors import` (README: Coming from damocles-manager)"


def _db_config(common: _Reader, path: Path, home: Path, local_path: Callable[[str], str], warnings: list[str]) -> DBConfig:
    """[Common.DB] with damocles' meaning. Its drivers are badger (the default), mongo and
    plugin; vsm-pool cannot open the first two and says so, and has its own embedded ones
    (sqlite, memory)."""
    mongo_v05 = common.table("MongoKVStore")  # v0.5: Enable = true meant Driver = "mongo"
    if mongo_v05.get("Enable", bool, False):
        raise ConfigError(
            path, mongo_v05.key("Enable"), 'damocles-manager v0.5\'s MongoDB store (Driver = "mongo"): vsm-pool has no MongoDB '
            'KVStore; remove [Common.MongoKVStore], set [Common.DB] Driver = "sqlite" or "plugin" (e.g. redis) and ' + _SECTOR_IMPORT
        )
    mongo_v05.accept("DSN", "DatabaseName")
    mongo_v05.warn_unknown()
    db_t = common.table("DB")
    badger_t, mongo_t, plugin_t = db_t.table("Badger"), db_t.table("Mongo"), db_t.table("Plugin")
    base_dir = badger_t.get("BaseDir", str, "")
    mongo_t.accept("Enable", "DSN", "DatabaseName")
    driver = db_t.get("Driver", str, "")
    if not driver:
        # damocles' default is badger in BaseDir or its home folder (the config's folder)
        where = Path(local_path(base_dir)) if base_dir else path.parent
        held = [where / c for c in _BADGER_COLLECTIONS if (where / c / "MANIFEST").is_file()]
        if held or base_dir:
            raise ConfigError(
                path, db_t.key("Driver"), 'not set, so damocles-manager\'s default "badger" applies'
                + (f" and its data is in {held[0].parent}" if held else f" (BaseDir {base_dir!r})")
                + f': vsm-pool cannot open Badger; set Driver = "sqlite" or "plugin" and {_SECTOR_IMPORT}'
            )
        warnings.append(
            f'{path}: {db_t.key("Driver")}: not set (damocles-manager\'s default is "badger", which vsm-pool cannot open): '
            'using vsm-pool\'s embedded SQLite store; write Driver = "sqlite" to say so'
        )
        driver = "sqlite"
    driver = driver.lower()
    if driver == "badger":
        raise ConfigError(
            path, db_t.key("Driver"), f'"badger" is damocles-manager\'s embedded store, which vsm-pool cannot open: '
            f'set Driver = "sqlite" (embedded) or "plugin" and {_SECTOR_IMPORT}'
        )
    if driver == "mongo":
        raise ConfigError(
            path, db_t.key("Driver"), f'"mongo": vsm-pool has no MongoDB KVStore: set Driver = "plugin" with a KVStore '
            f'plugin (e.g. the bundled redis) or "sqlite", and {_SECTOR_IMPORT}'
        )
    if driver == "plugin":
        plugin_name = plugin_t.get("PluginName", str, "")
        if not plugin_name:
            raise ConfigError(path, plugin_t.key("PluginName"), 'missing: Driver = "plugin" needs the KVStore plugin\'s name')
        db_meta = plugin_t.strings("Meta")
    elif driver in BUILTIN_DB_DRIVERS:
        plugin_name = BUILTIN_DB_DRIVERS[driver]
        # no Meta (a damocles config): the file in a folder of its own, as a new home's config
        # says (the sandbox confines the plugin to it); data/kv.sqlite where an earlier home has it
        kv_file = home / "data" / "kv.sqlite" if (home / "data" / "kv.sqlite").exists() else home / "data" / "kv" / "kv.sqlite"
        db_meta = plugin_t.strings("Meta") or ({"Path": str(kv_file)} if driver == "sqlite" else {})
    else:
        raise ConfigError(
            path, db_t.key("Driver"), f"unsupported db driver {driver!r}: expected one of {', '.join([*BUILTIN_DB_DRIVERS, 'plugin'])}"
        )
    for t in (badger_t, mongo_t, plugin_t, db_t):
        t.warn_unknown()
    return DBConfig(driver=driver, plugin_name=plugin_name, meta=db_meta)


def _miners(t: _Reader, name: str) -> tuple[int, ...]:
    ids = t.get(name, list, [])
    for i, v in enumerate(ids):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(t.file, f"{t.key(name)}[{i}]", f"must be a miner actor id (an integer >= 0), got {v!r}")
    return tuple(ids)


def _store(t: _Reader, key: str, persist: bool, local_path: Callable[[str], str]) -> StoreConfig:
    """One store entry as damocles reads it: PluginName (or v0.5's Plugin) empty means the
    builtin folder store, which needs a Path; Name defaults to Path as written."""
    raw_path = t.get("Path", str, "")
    plugin = t.get("PluginName", str, "")
    v05 = t.get("Plugin", str, "")
    if not plugin and v05:  # damocles: PluginName = Plugin when only the v0.5 key is set
        if "/" in v05 or v05.endswith(".so"):
            raise ConfigError(
                t.file, t.key("Plugin"), f"{v05!r} is a v0.5 plugin file; damocles-manager since v0.6 and vsm-pool name the "
                'ObjStore plugin by its manifest name: set PluginName = "<name>" (see `vsm-pool plugin list`)'
            )
        plugin = v05
    plugin = plugin or BUILTIN_STORE_PLUGIN
    if plugin == BUILTIN_STORE_PLUGIN and not raw_path:
        raise ConfigError(t.file, t.key("Path"), "missing: the bundled fsstore keeps the objects in this folder")
    name = t.get("Name", str, "") or raw_path
    if not name:
        raise ConfigError(t.file, t.key("Name"), "missing: a store without a Path needs a Name (the pieces API addresses stores by name)")
    return StoreConfig(
        key=key,
        name=name,
        path=local_path(raw_path) if plugin == BUILTIN_STORE_PLUGIN else raw_path,
        plugin_name=plugin,
        meta=t.strings("Meta"),
        read_only=t.get("ReadOnly", bool, False),
        strict=t.get("Strict", bool, False),
        weight=t.get("Weight", int, 1, lambda v: None if v >= 0 else "must be >= 0") or 1,  # 0 means 1, as damocles
        allow_miners=_miners(t, "AllowMiners") if persist else (),
        deny_miners=_miners(t, "DenyMiners") if persist else (),
        min_free_space=_store_min_free(t),
    )


def _store_min_free(t: _Reader) -> int:
    """A store's MinFreeSpace: a size ("1GiB", bytes as an integer); 0 or "0": only a full disk refuses."""
    value = t.get("MinFreeSpace", (str, int), DEFAULT_PIECE_MIN_FREE_SPACE)
    try:
        if isinstance(value, int) and value < 0:
            raise ValueError(value)
        return parse_size(value) or 0
    except ValueError:
        raise ConfigError(t.file, t.key("MinFreeSpace"), f'must be a size such as "1GiB" or "512MiB" (0: only a full disk refuses), got {value!r}') from None


def _stores(common: _Reader, section: str, path: Path, local_path: Callable[[str], str], warnings: list[str]) -> tuple[StoreConfig, ...]:
    parsed = []
    for i, entry in enumerate(common.get(section, list, [])):
        key = f"{common.key(section)}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(path, key, f"must be a table ([[Common.{section}]])")
        if not any(v != {} for v in entry.values()):
            # damocles' `daemon init` writes the example entries with every key commented out
            # (damocles-manager would then open its working directory as the store)
            warnings.append(f"{path}: {key}: an entry without any key (as damocles-manager's `daemon init` writes it): ignored")
            continue
        t = _Reader(path, entry, key, warnings)
        parsed.append(_store(t, key, section == "PersistStores", local_path))
        t.warn_unknown()
    return tuple(parsed)


def _check_store_names(pieces: tuple[StoreConfig, ...], persists: tuple[StoreConfig, ...], path: Path) -> None:
    """Names are unique within a section (damocles: "duplicate persist store name"). The pieces
    API addresses both sections by name, so a piece store and a persist store may share a name
    only when they are the same store (same plugin, path, meta and ReadOnly), as in the
    example damocles writes."""
    first_use: dict[str, StoreConfig] = {}
    for s in pieces + persists:
        other = first_use.get(s.name)
        if other is None:
            first_use[s.name] = s
            continue
        same = (other.plugin_name, other.path, other.meta, other.read_only) == (s.plugin_name, s.path, s.meta, s.read_only)
        if (other in pieces) == (s in pieces) or not same:
            why = "" if same else " and is a different store (vsm-pool serves piece and persist stores under one name)"
            raise ConfigError(path, f"{s.key}.Name", f"store name {s.name!r} is used twice (first by {other.key}){why}")


def _scanned_persist_stores(common: _Reader, path: Path, local_path: Callable[[str], str], first: int) -> tuple[StoreConfig, ...]:
    """[Common] ScanPersistStores: folders matching the globs that hold a `sectorstore.json`
    (damocles' ScanPersistStores: its fields are a PersistStores entry's, plus ID, the
    default Name; the folder is the Path)."""
    import glob
    import json

    out = []
    for i, pattern in enumerate(common.get("ScanPersistStores", list, [])):
        if not isinstance(pattern, str):
            raise ConfigError(path, f"{common.key('ScanPersistStores')}[{i}]", f"must be a glob pattern (a string), got {pattern!r}")
        for folder in sorted(glob.glob(local_path(pattern))):
            file = Path(folder) / "sectorstore.json"
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                raise ConfigError(file, "", f"unreadable sectorstore.json ({e}), matched by ScanPersistStores {pattern!r}") from None
            if not isinstance(data, dict):
                raise ConfigError(file, "", "must be a JSON object")
            t = _Reader(file, data, "", [])
            t.accept("ID")
            fields = {k: v for k, v in data.items() if k.casefold() != "path"}  # the folder is the Path
            ident = t.get("ID", str, "")
            entry = _Reader(file, {**fields, "Path": folder, "Name": t.get("Name", str, "") or ident}, "", [])
            out.append(_store(entry, f"{common.key('ScanPersistStores')} ({file})", True, local_path))
    return tuple(out)


# -- a config against the running one (issue 26: `vsm-pool config reload`, status) -----------

# Config fields only a restart applies, by the keys an operator writes; the rest (plugins' pool
# settings and Meta, stores, store policies) a reload applies live (Manager.reload_config).
_RESTART_KEYS = {
    "plugins_dir": "Common.Plugins.Dir", "strict": "Common.Plugins.Strict", "db": "Common.DB",
    "sector_sync": "Common.SectorSync / Common.Journal", "api": "Common.Api", "min_free_space": "Common.MinFreeSpace",
}
_LIVE_FIELDS = frozenset({"file", "home", "plugins", "plugin_defaults", "piece_stores", "persist_stores"})
_PLUGIN_PLACEMENT = ("backend", "ray_address", "ray_resources", "ray_node", "disabled")  # where (whether) its pool runs
_STORE_POLICY = ("allow_miners", "deny_miners", "weight")  # read by each reservation: no pool change


@dataclasses.dataclass
class ConfigChanges:
    """What `new` changes from the running config `old` (config_changes)."""

    restart: list[str] = dataclasses.field(default_factory=list)  # keys only a restart applies
    plugins: list[str] = dataclasses.field(default_factory=list)  # plugins whose pool settings or Meta change
    stores: dict[str, str] = dataclasses.field(default_factory=dict)  # store name -> added | removed | changed | policy
    store_plugins: set[str] = dataclasses.field(default_factory=set)  # ObjStore plugins whose stores open anew

    def __bool__(self) -> bool:
        return bool(self.restart or self.plugins or self.stores)

    def keys(self) -> list[str]:
        """Each change as an operator reads it, e.g. `Common.Plugins.duckdb`, `store 'blobs' added`."""
        return [*self.restart, *(f"Common.Plugins.{n}" for n in self.plugins), *(f"store {n!r} {w}" for n, w in self.stores.items())]


def live_config(old: Config, new: Config) -> Config:
    """`new` with what only a restart applies kept as in `old`: the config a reload runs on (so
    status goes on showing those keys as differing from the file until the restart)."""
    keep = {f.name: getattr(old, f.name) for f in dataclasses.fields(Config) if f.name not in _LIVE_FIELDS}
    backend = {"backend": old.plugin_defaults.backend, "ray_address": old.plugin_defaults.ray_address}
    plugins = {
        name: dataclasses.replace(now, **{f: getattr(old.settings(name), f) for f in _PLUGIN_PLACEMENT})
        for name, now in new.plugins.items()
    }
    return dataclasses.replace(new, **keep, plugin_defaults=dataclasses.replace(new.plugin_defaults, **backend), plugins=plugins)


def config_changes(old: Config, new: Config, plugin_names: tuple[str, ...] = ()) -> ConfigChanges:
    """Compare two loads of a config; `plugin_names`: the loaded plugins, whose settings may come
    from [Common.Plugins] alone."""
    out = ConfigChanges()
    for f in dataclasses.fields(Config):
        if f.name not in _LIVE_FIELDS and getattr(old, f.name) != getattr(new, f.name):
            out.restart.append(_RESTART_KEYS.get(f.name, f.name))
    if (old.plugin_defaults.backend, old.plugin_defaults.ray_address) != (new.plugin_defaults.backend, new.plugin_defaults.ray_address):
        out.restart.append("Common.Plugins.Backend / RayAddress")
    for name in sorted({*old.plugins, *new.plugins, *plugin_names}):
        was, now = old.settings(name), new.settings(name)
        moved = [f for f in _PLUGIN_PLACEMENT if getattr(was, f) != getattr(now, f)]
        if moved:
            out.restart.append(f"Common.Plugins.{name}: {', '.join(moved)}")
        if dataclasses.replace(was, **{f: getattr(now, f) for f in _PLUGIN_PLACEMENT}) != now:
            out.plugins.append(name)
    olds, news = ({s.name: dataclasses.replace(s, key="") for s in (*c.piece_stores, *c.persist_stores)} for c in (old, new))
    for name in sorted(olds.keys() | news.keys()):
        was_s, now_s = olds.get(name), news.get(name)
        if was_s == now_s:
            continue
        if was_s is not None and now_s is not None and dataclasses.replace(was_s, **{f: getattr(now_s, f) for f in _STORE_POLICY}) == now_s:
            out.stores[name] = "policy"
            continue
        out.stores[name] = "added" if was_s is None else "removed" if now_s is None else "changed"
        out.store_plugins |= {s.plugin_name for s in (was_s, now_s) if s is not None}
    return out


def default_config_text(home: Path) -> str:
    """The commented config `vsm-pool config init` writes for a home folder."""
    data = home / "data"
    duckdb, parquet = (home / BUNDLED_META_DEFAULTS[name]["Path"] for name in ("duckdb", "parquet"))
    return f'''\
# vsm-pool config. Relative paths are relative to the home folder holding this file.

[Common]
# Free space kept on every path the daemon writes (the journal, the KV file, each sink's files):
# under it new sector changes are refused with "disk full: PATH" (JSON-RPC -32006) and a sink
# waits, so a commit, a rollback and the journal always find room; all resume by themselves
# once space is back. 0: only a full disk refuses.
MinFreeSpace = "256MiB"

[Common.Plugins]
# Plugin artifacts (plugin-<name>.vsmp) are loaded from here, in file-name order.
Dir = "plugins"
# true: any plugin that fails to load or initialise stops start-up.
Strict = false

# Where plugin pools run: "process" (local worker processes) or "ray" (one Ray actor per
# worker; pip install 'vsm-pool[ray]'). RayAddress: the cluster ("" = RAY_ADDRESS or a local Ray).
# Backend = "process"
# RayAddress = ""

# Per-plugin pool settings, keyed by the plugin's manifest name:
# [Common.Plugins.sqlitekv]
# Workers = 2          # worker processes, never more than the plugin's maxWorkers; default:
#                      # KVStore 2, ObjStore 4 (a byte stream holds a worker while it runs), others 1
# CallTimeout = 60     # seconds (0.1 to 86400); a call past it fails and its worker is replaced
# StartTimeout = 60    # seconds for the pool to start (onInit); past it the plugin is disabled
# Disabled = false
# Backend = "ray"      # this plugin only; default: [Common.Plugins] Backend
# RayNode = ""         # node id or IP to pin the workers to
# RayResources = {{ CPU = 1 }}   # per worker actor: CPU, GPU, memory (bytes), custom resources
# Resources of each worker process (here per plugin, or under [Common.Plugins] for all):
# MemoryLimit = "4GiB" # private writable memory per worker (RLIMIT_DATA): past it the call
#                      # fails with MemoryLimitExceeded naming the plugin; 0 = no limit
# MaxOpenFiles = 4096  # file descriptors per worker (RLIMIT_NOFILE); 0 = the manager's
# CPUs = "0-3"         # pin the workers to these CPUs (default: all)
# Nice = 5             # run the workers at this niceness (default: the manager's)
# Sandbox = true       # Landlock: the plugin may write only its config's paths (store Path, Meta
#                      # its manifest declares in pathMeta, its own TMPDIR) and connect only to the
#                      # ports of Meta its manifest declares in addressMeta. true: confined or not
#                      # started; "best-effort": what this kernel can; false. Default: "best-effort"
#                      # for plugins whose manifest says sandbox = true, else off
# AllowWrite = []      # more folders it may write;  AllowRead = [] more it may read
# AllowConnect = []    # more TCP ports it may connect to, e.g. [6379]

# Meta for SyncSectorState and RegisterJsonRpc plugins (passed to their Constructor):
[Common.Plugins.duckdb.Meta]
Path = "{duckdb}"    # `vsm-pool query` reads this database; its own folder:
                                         # a sandboxed sink may write the whole folder of its file
# Threads = "1"                   # DuckDB threads while ingesting
[Common.Plugins.parquet.Meta]
Path = "{parquet}"           # Parquet files partitioned by day
# FlushInterval = "10"            # seconds rows may wait (in the journal): at most 60/FlushInterval files a minute

[Common.DB]
# sqlite (default: embedded, persistent) | memory | plugin
Driver = "sqlite"
[Common.DB.Plugin.Meta]
Path = "{data}/kv/kv.sqlite"         # in its own folder: the sandboxed store may write that folder
# With Driver = "plugin":
# [Common.DB.Plugin]
# PluginName = "redis"           # the manifest name, not the file name
# [Common.DB.Plugin.Meta]
# Addr = "127.0.0.1:6379"

[[Common.PieceStores]]
Name = "pieces"
Path = "{data}/pieces"
# PluginName = "s3store"         # empty: the bundled fsstore
# ReadOnly = false
# MinFreeSpace = "1GiB"          # a PUT that would leave less free on its disk: 507; 0: only a full disk
# [Common.PieceStores.Meta]
# Bucket = "mybucket"

# [[Common.PersistStores]]
# Name = "sealed"
# Path = "/mnt/sealed"
# Weight = 1
# Strict = false

[Common.SectorSync]
BatchRows = 10000    # flush a batch of sector-state events at this many rows...
BatchAge = 0.01      # ...or after this many seconds
JournalDir = "{data}/journal"

[Common.Journal]
# Events the journal keeps for a sink that is behind (disabled, failing, slow): about 0.8 KB
# each on disk for sealed states. Past it the sink holds nothing, is marked as needing a
# rebuild (shown in `vsm-pool status` and /metrics) and is refilled from the sector states
# with `vsm-pool sinks rebuild NAME`.
MaxBacklog = 10000000
# SegmentBytes = 67108864   # journal file size; compaction deletes whole files

[Common.Api]
Listen = "127.0.0.1:1789"
# What one request may cost (the README's "Limits" table says what a client gets past each):
# MaxBodyBytes = 67108864        # a JSON-RPC body
# MaxResponseBytes = 67108864    # a JSON-RPC reply (a batch's results together)
# MaxListLimit = 10000           # sectors.list limit
# HeaderTimeout = 10             # seconds for a request's headers to arrive
# BodyTimeout = 60               # seconds for a JSON-RPC body to arrive
# QueryTimeout = 30              # seconds a query may run
# QueryMaxBytes = 67108864       # bytes (Arrow) a query's result may hold
'''
