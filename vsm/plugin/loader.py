"""Discovery and loading of plugins: the registry of what is loaded, and their pools.

Discovery reads manifests as data (artifact zips in the plugins dir, in file-name order, and
source folders registered by pip-installed distributions under the `vsm_pool.plugins`
entry-point group). Plugin code is imported only inside the plugin's own workers, when its
pool starts: a plugin that fails there is disabled with a warning (or stops start-up when
`Strict = true`); the manager and the other plugins go on.

Pools start concurrently (`Registry.start_all`): one thread each, since a pool's work at start
is in its own worker processes (importing the plugin, onInit); the forkserver serves the
concurrent forks one connection each (measured: bench row "pools start"). A plugin whose onInit
hangs is STARTING until it is ready or its StartTimeout passes; the others serve meanwhile.

A plugin whose requirements the manager's packages do not satisfy runs in its own environment
(envs.py): created on its first start under <home>/envs/<key>, then put in front of its
workers' sys.path (PoolSpec.site_dirs); on Ray, the same requirements go to runtime_env pip.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import importlib.util
import re
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable

from loguru import logger
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from executors import Pool, PoolError, PoolSpec, make_pool

from . import envs, host, isolation
from .reload import SwappablePool
from .artifact import ARTIFACT_SUFFIX, code_path, read_artifact_manifest
from .blame import last_line, plugin_frame
from ..config import Config, resolve_home
from ..errors import ArtifactError, ConfigError, ManifestError, NotFoundError, PluginLoadError
from ..home import bundled_sources_by_name
from .manifest import read_source_manifest
from ..sdk import SPI_VERSION, Kind, Manifest

__all__ = ["ENTRY_POINT_GROUP", "Plugin", "PluginState", "Registry", "discover"]

ENTRY_POINT_GROUP = "vsm_pool.plugins"
# Workers per pool when the config does not say (capped by the manifest's maxWorkers). An
# ObjStore pool gets more: a byte stream holds its worker for the whole transfer, and the
# store's small calls (stat, delete) need a free one meanwhile.
DEFAULT_WORKERS = {Kind.KVStore: 2, Kind.ObjStore: 4, Kind.SyncSectorState: 1, Kind.RegisterJsonRpc: 1}
# Modules every worker needs; imported once by the fork server, not once per worker.
WORKER_PRELOAD = ("vsm.plugin.host", "vsm.sdk", "cloudpickle")


class PluginState(enum.Enum):
    LOADED = "loaded"  # manifest valid; no pool yet (not used by the config)
    STARTING = "starting"  # its pool is starting (workers importing it, onInit): not serving yet
    READY = "ready"  # pool running
    DISABLED = "disabled"  # by config, or its onInit/constructor failed
    FAILED = "failed"  # cannot load: bad artifact, SPI/Python mismatch, missing requirement


@dataclasses.dataclass
class Plugin:
    manifest: Manifest
    source: Path  # artifact file or source folder
    state: PluginState = PluginState.LOADED
    error: str = ""
    pool: Pool | None = None
    unreadable: bool = False  # no manifest could be read: kind and name are not known
    env: envs.EnvPlan | None = None  # its own environment; None: the manager's packages
    env_info: dict[str, Any] | None = None  # the environment's env.json once it exists
    limits: dict[str, Any] | None = None  # the resource limits its workers run under (isolation.describe_limits)
    sandbox: isolation.SandboxPlan | None = None  # how its workers are confined (None: no config)
    starting: tuple[float, float] | None = None  # while STARTING: (time.monotonic() at its start, StartTimeout)

    @property
    def label(self) -> str:
        return f"{self.manifest.kind.value}/{self.manifest.name}"

    def starting_line(self) -> str:
        """'plugin 'KVStore/x' is starting (3 s so far; StartTimeout 60 s)', while it is."""
        if self.starting is None:  # its pool is up; what waits for it is being opened
            return f"plugin '{self.label}' is starting (opening what it serves)"
        since, timeout = self.starting
        return f"plugin '{self.label}' is starting ({time.monotonic() - since:.0f} s so far; StartTimeout {timeout:g} s)"

    @property
    def code_path(self) -> str:
        """What a worker puts on sys.path to import the module."""
        if self.source.is_file():
            return code_path(self.source)
        inside = self.source.name == self.manifest.module and (self.source / "__init__.py").is_file()
        return str(self.source.parent if inside else self.source)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        row = {
            "kind": "-" if self.unreadable else m.kind.value,
            "name": m.name,
            "version": m.version,
            "build_time": m.build_time,
            "state": self.state.value,
            "artifact": str(self.source),
            "error": self.error,
            "env": self.env_row(),
        }
        if self.limits is not None:
            row["limits"] = self.limits
        if self.sandbox is not None:
            row["sandbox"] = self.sandbox.describe()
        starting = self.starting
        if self.state is PluginState.STARTING and starting is not None:
            row["starting"] = {"seconds": round(time.monotonic() - starting[0], 1), "start_timeout": starting[1]}
        if self.pool is not None:
            status = self.pool.status()
            row["pool"] = status
            if status.get("state") in ("failed", "closed") and self.state is PluginState.READY:
                row["state"] = status["state"]
                row["error"] = status.get("last_error") or ""
        return row


    def env_row(self, envs_dir: Path | None = None) -> dict[str, Any] | None:
        """Its environment for plugin list / status: key, requirements, and the installed
        packages' versions once it exists (read from envs_dir when given)."""
        if self.env is None:
            return None
        info = self.env_info
        if info is None and envs_dir is not None:
            info = envs.read_info(self.env.path(envs_dir))
        row: dict[str, Any] = {"key": self.env.key, "requirements": list(self.env.requirements)}
        row["packages"] = dict(info["packages"]) if info else None  # None: not created yet
        if info and "path" in info:
            row["path"] = info["path"]
        return row


def discover(plugins_dir: str | Path | None, *, entry_points: bool = True, keep: Iterable[Path] = ()) -> tuple[list[Plugin], list[str]]:
    """Every plugin found, valid or not (invalid ones are FAILED with their error), plus
    warnings. A name declared twice loads once: the other is FAILED naming both files (the
    one in `keep`, the sources running now, wins; else the first found), and the rest loads."""
    found: list[Plugin] = []
    warnings: list[str] = []
    if plugins_dir:
        directory = Path(plugins_dir)
        if not directory.is_dir():
            raise PluginLoadError(f"{directory}: plugins dir does not exist (set [Common.Plugins] Dir)")
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix == ARTIFACT_SUFFIX:
                found.append(_from_artifact(path, warnings))
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            found.append(_from_entry_point(ep, warnings))
    running = set(keep)
    seen: dict[str, Plugin] = {}
    for p in sorted(found, key=lambda p: p.source not in running):  # stable: file order otherwise
        if p.state is PluginState.FAILED:
            continue
        other = seen.setdefault(p.manifest.name, p)
        if other is not p:
            p.state = PluginState.FAILED
            p.error = f"{p.source}: plugin name {p.manifest.name!r} is declared by {other.source} too: remove one of them"
    return found, warnings


def _failed(source: Path, name: str, error: str) -> Plugin:
    placeholder = Manifest(name=name, kind=Kind.KVStore, version="")
    return Plugin(placeholder, source, PluginState.FAILED, error, unreadable=True)


def _from_artifact(path: Path, warnings: list[str]) -> Plugin:
    try:
        manifest, more = read_artifact_manifest(path)
    except (ArtifactError, ManifestError) as e:
        return _failed(path, path.stem.removeprefix("plugin-"), str(e))
    warnings.extend(more)
    plugin = Plugin(manifest, path)
    problem = _compatibility_problem(manifest)
    if problem:
        plugin.state, plugin.error = PluginState.FAILED, f"{path}: {problem}"
    else:
        plugin.env = envs.plan(manifest)
    return plugin


def _from_entry_point(ep: importlib.metadata.EntryPoint, warnings: list[str]) -> Plugin:
    """An entry point names a package whose folder holds manifest.toml; it is located with
    find_spec, which does not execute the package."""
    label = f"entry point {ep.name!r} ({ep.value})"
    try:
        spec = importlib.util.find_spec(ep.module)
    except (ImportError, ValueError) as e:
        return _failed(Path(ep.value), ep.name, f"{label}: {e}")
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        return _failed(Path(ep.value), ep.name, f"{label}: module {ep.module!r} is not installed")
    folder = Path(list(spec.submodule_search_locations or [])[0] if spec.submodule_search_locations else spec.origin).resolve()  # type: ignore[arg-type]
    if folder.is_file():
        folder = folder.parent
    try:
        manifest, more = read_source_manifest(folder)
    except ManifestError as e:
        return _failed(folder, ep.name, f"{label}: {e}")
    warnings.extend(more)
    plugin = Plugin(manifest, folder)
    problem = _compatibility_problem(manifest)
    if problem:
        plugin.state, plugin.error = PluginState.FAILED, f"{label}: {problem}"
    else:
        plugin.env = envs.plan(manifest)
    return plugin


def _compatibility_problem(manifest: Manifest) -> str:
    if manifest.spi_version != SPI_VERSION:
        return (
            f"built for vsm-pool SPI {manifest.spi_version}, this manager speaks SPI {SPI_VERSION}: "
            "rebuild the plugin with `vsm-pool plugin build`"
        )
    here = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    if manifest.requires_python:
        try:
            if here not in SpecifierSet(manifest.requires_python):
                return f"requires Python {manifest.requires_python}, this is Python {here}"
        except InvalidSpecifier:
            return f"requiresPython {manifest.requires_python!r} is not a version specifier"
    return envs.requirement_problem(manifest)


# What a failed stage of a worker's start is called in the manager's one line (Go: "call
# Plugin OnInit failure"); the stages are host.worker_init's.
_STAGE_WORDS = {
    "import": "import error in plugin",
    "validate": "call Plugin Validate failure",
    "onInit": "call Plugin OnInit failure",
    "Handler": "call Plugin Handler failure",
}
_STARTFAILED = re.compile(r"StartFailed: (?P<stage>\w+): (?P<detail>.*)$")


def _start_failure(plugin: Plugin, report: str) -> tuple[str, str]:
    """(the warning line, the plugin's one-line error) for a pool that failed to start:
    which stage failed (import, validate, onInit, Handler), and where in the plugin's code."""
    last = last_line(report)
    m = _STARTFAILED.search(last)
    if m:
        stage, detail = m["stage"], m["detail"]
    else:  # not a stage of the plugin's own code: a worker that died, a replayed setup call
        stage = "start"
        where = plugin_frame(report, plugin.code_path)
        detail = f"{last} (at {where})" if where else last
    words = _STAGE_WORDS.get(stage, "start failure of plugin")
    short = {"import": "import error", "start": "start failure"}.get(stage, f"{stage} failure")
    return f"{words} '{plugin.label}': {plugin.source}: {detail}", f"{short}: {plugin.source}: {detail}"


class Registry:
    """The loaded plugins (Go `LoadedPlugins`), their states and their pools."""

    def __init__(
        self,
        plugins: Iterable[Plugin],
        config: Config | None = None,
        *,
        plugins_dir: str | None = None,
        envs_dir: Path | None = None,
        adapt_spec: Callable[[Plugin, PoolSpec], PoolSpec] | None = None,
    ) -> None:
        """plugins_dir: what onInit is told, when there is no config (`plugin test` gives its
        scratch folder); default: the folder the artifact sits in. envs_dir: the plugins' own
        environments; default <home>/envs (no config: $VSM_HOME or ~/.vsm-pool). adapt_spec:
        applied to each pool's spec (the conformance kit probes a sink's workers)."""
        self.plugins = list(plugins)
        self.config = config
        self.plugins_dir = plugins_dir
        self.envs_dir = Path(envs_dir) if envs_dir else Path(config.home if config else resolve_home()) / "envs"
        self.adapt_spec = adapt_spec
        self._lock = threading.Lock()
        self._closing = False
        self._starting_pools: set[Pool] = set()  # pools whose start() runs: close() stops them
        for p in self.plugins:
            self._describe_settings(p)

    def add(self, plugin: Plugin) -> None:
        """A plugin found after the start (`plugin rescan`): listed like those found at start."""
        self._describe_settings(plugin)
        self.plugins.append(plugin)

    def _describe_settings(self, plugin: Plugin) -> None:
        """What plugin list and status show before its first start: its limits, sandbox and
        existing environment."""
        if self.config is not None and not plugin.unreadable:
            settings = self.config.settings(plugin.manifest.name)
            plugin.limits = isolation.describe_limits(settings)
            plugin.sandbox = self._sandbox_plan(plugin, settings.backend)
        if plugin.env is not None and plugin.env_info is None:
            plugin.env_info = self._env_info(plugin.env, envs.read_info(plugin.env.path(self.envs_dir)))

    def _env_info(self, env: envs.EnvPlan, info: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if info is None else {**info, "path": str(env.path(self.envs_dir))}

    def _sandbox_plan(self, plugin: Plugin, backend: str, site_dirs: tuple[str, ...] = ()) -> isolation.SandboxPlan | None:
        if self.config is None:
            return None
        files = (str(plugin.source), plugin.code_path.removesuffix("/src"), *site_dirs)
        return isolation.plan_sandbox(plugin.manifest, self.config.settings(plugin.manifest.name), self.config, files, backend)

    def get(self, kind: Kind, name: str) -> Plugin | None:
        for p in self.plugins:
            if p.manifest.kind is kind and p.manifest.name == name and p.state is not PluginState.FAILED:
                return p
        return None

    def of_kind(self, kind: Kind) -> list[Plugin]:
        return [p for p in self.plugins if p.manifest.kind is kind and p.state is not PluginState.FAILED]

    def loaded_manifests(self) -> dict[str, Manifest]:
        """Every loadable plugin's manifest by name: what a plugin's validate hook sees."""
        return {p.manifest.name: p.manifest for p in self.plugins if p.state is not PluginState.FAILED}

    def check_config(self, config: Config | None = None) -> None:
        """Every plugin the config (or `config`, one to reload) names exists, with the right
        kind; raises ConfigError."""
        cfg = config or self.config
        if cfg is None:
            return
        wanted = [(Kind.KVStore, cfg.db.plugin_name, "Common.DB.Plugin.PluginName" if cfg.db.driver == "plugin" else "Common.DB.Driver")]
        wanted += [(Kind.ObjStore, s.plugin_name, f"{s.key}.PluginName") for s in (*cfg.piece_stores, *cfg.persist_stores)]
        for kind, name, key in wanted:
            if self.get(kind, name) is None:
                failed = [p for p in self.plugins if p.manifest.name == name]
                cause = failed[0].error if failed else ""
                loaded = ", ".join(sorted(p.manifest.name for p in self.of_kind(kind))) or "none"
                raise ConfigError(
                    cfg.file,
                    key,
                    f"no loaded {kind.value} plugin {name!r}" + (f" ({cause})" if cause else f" (loaded: {loaded})") + _build_hint(name, failed, cfg.plugins_dir),
                )

    def pool_spec(self, plugin: Plugin, backend_workers: int | None = None, site_dirs: tuple[str, ...] = (), backend: str = "process") -> PoolSpec:
        """The plugin's PoolSpec; confined as its sandbox plan says (PluginLoadError when the
        plan is a refusal: Sandbox = true where the kernel or the backend cannot keep it)."""
        spec = self._bare_spec(plugin, backend_workers, site_dirs)
        plan = self._sandbox_plan(plugin, backend, spec.site_dirs)
        if plan is None:
            return spec
        plugin.sandbox = plan
        if plan.refusal:
            raise PluginLoadError(f"plugin '{plugin.label}' is not started: {plan.refusal}")
        if plan.rules is None and plan.mode != "false":
            logger.warning("plugin '{}' runs unconfined: Sandbox = \"{}\" and {}", plugin.label, plan.mode, plan.note)
        elif plan.missing:
            logger.warning("plugin '{}': Sandbox = \"best-effort\": this kernel (Landlock ABI {}) cannot refuse {}", plugin.label, plan.abi, ", ".join(plan.missing))
        plan.prepare()
        return dataclasses.replace(spec, confine=plan.confinement(plugin.label, plugin.manifest.name))

    def _bare_spec(self, plugin: Plugin, backend_workers: int | None = None, site_dirs: tuple[str, ...] = ()) -> PoolSpec:
        settings = self.config.settings(plugin.manifest.name) if self.config else None
        workers = backend_workers or (settings.workers if settings else None) or DEFAULT_WORKERS[plugin.manifest.kind]
        if plugin.manifest.max_workers:
            workers = min(workers, plugin.manifest.max_workers)
        plugins_dir = self.config.plugins_dir if self.config else (self.plugins_dir or str(plugin.source.parent))
        spec = PoolSpec(
            name=plugin.label,
            init=functools.partial(
                host.worker_init, plugin.code_path, plugin.manifest, plugins_dir, self.loaded_manifests(), home=self.config.home if self.config else None
            ),
            workers=workers,
            call_timeout=settings.call_timeout if settings else 60.0,
            start_timeout=settings.start_timeout if settings else 60.0,
            shutdown_method="shutdown",
            preload=WORKER_PRELOAD,
            site_dirs=site_dirs,
            limits=isolation.worker_limits(settings) if settings else None,
        )
        return self.adapt_spec(plugin, spec) if self.adapt_spec else spec

    def start(self, plugin: Plugin, *, backend: str | None = None, workers: int | None = None) -> Pool:
        """Start the plugin's pool (imports it in its workers, runs onInit). On failure the
        plugin is DISABLED with the cause and PluginLoadError is raised."""
        if plugin.pool is not None:
            return plugin.pool
        if plugin.state is PluginState.FAILED:
            raise PluginLoadError(plugin.error)
        settings = self.config.settings(plugin.manifest.name) if self.config else None
        plugin.starting = (time.monotonic(), settings.start_timeout if settings else 60.0)
        plugin.state, plugin.error = PluginState.STARTING, ""
        try:
            pool = self._start_pool(plugin, backend, workers)
        except PluginLoadError as e:
            plugin.state, plugin.error, plugin.starting = PluginState.DISABLED, getattr(e, "short", str(e)), None
            raise
        plugin.pool = SwappablePool(pool)  # before READY: whoever sees READY finds the pool
        plugin.state, plugin.error, plugin.starting = PluginState.READY, "", None
        return plugin.pool

    def _start_pool(self, plugin: Plugin, backend: str | None, workers: int | None) -> Pool:
        """backend None: the plugin's configured Backend (with its Ray options)."""
        settings = self.config.settings(plugin.manifest.name) if self.config else None
        chosen = backend or (settings.backend if settings else "process")
        options = settings.pool_options() if settings is not None and chosen == "ray" else {}
        site_dirs: tuple[str, ...] = ()
        if plugin.env is not None and chosen == "ray":  # Ray installs per actor, on its node
            options["runtime_env"] = {**options.get("runtime_env", {}), "pip": plugin.env.pip_requirements()}
        elif plugin.env is not None:
            info = envs.ensure(plugin.env, self.envs_dir, plugin.label, plugin.source if plugin.source.is_file() else None)
            plugin.env_info = self._env_info(plugin.env, info)
            site_dirs = (str(plugin.env.site(self.envs_dir)),)
        pool = make_pool(self.pool_spec(plugin, workers, site_dirs, chosen), backend=chosen, **options)
        with self._lock:
            if self._closing:
                raise PluginLoadError(f"plugin '{plugin.label}' was not started: the manager is stopping")
            self._starting_pools.add(pool)
        try:
            pool.start()
        except PoolError as e:
            logger.debug("{} failed to start:\n{}", plugin.label, e)
            line, short = _start_failure(plugin, str(e))
            err = PluginLoadError(line)
            err.short = short  # type: ignore[attr-defined]
            raise err from None
        finally:
            with self._lock:
                self._starting_pools.discard(pool)
        return pool

    def reload(
        self, name: str, artifact: Path | None = None, *, backend: str | None = None, drain_timeout: float = 60.0, handover: Any = None
    ) -> tuple[Plugin, Manifest]:
        """Swap a running plugin for a new build (its own artifact file re-read, or `artifact`):
        start the new pool (validate, onInit), replay its setup, move traffic, drain the old
        pool. On any failure the old pool keeps serving and PluginLoadError says why.
        Returns (plugin, previous manifest)."""
        plugin = next((p for p in self.plugins if p.manifest.name == name and p.state is not PluginState.FAILED), None)
        if plugin is None:
            raise NotFoundError(f"no loaded plugin {name!r}")
        source = Path(artifact) if artifact else plugin.source
        try:
            manifest, _ = read_artifact_manifest(source)
        except (ArtifactError, ManifestError) as e:
            raise PluginLoadError(f"reload of '{plugin.label}' refused: {e}") from None
        if manifest.name != name or manifest.kind is not plugin.manifest.kind:
            raise PluginLoadError(
                f"reload of '{plugin.label}' refused: {source} holds '{manifest.kind.value}/{manifest.name}'"
            )
        problem = _compatibility_problem(manifest)
        if problem:
            raise PluginLoadError(f"reload of '{plugin.label}' refused: {source}: {problem}")
        candidate = Plugin(manifest, source.resolve(), env=envs.plan(manifest))
        if plugin.pool is None:  # not running: the new build just replaces the old one
            previous, plugin.manifest, plugin.source = plugin.manifest, manifest, candidate.source
            plugin.env, plugin.env_info = candidate.env, None
            return plugin, previous
        new_pool = self._start_pool(candidate, backend, None)  # its environment is made here, before the swap
        old_pool = plugin.pool.pinned()  # type: ignore[union-attr]
        try:
            if handover is not None:
                handover.before(old_pool)
        except BaseException:
            new_pool.close()  # never leak the new pool (issue 13: one leaked per failed attempt)
            raise
        try:
            plugin.pool.swap(new_pool, drain_timeout)  # type: ignore[union-attr]
        except BaseException as e:
            new_pool.close()
            if handover is not None:
                handover.undo(old_pool)
            _, short = _start_failure(candidate, str(e))
            raise PluginLoadError(f"reload of '{plugin.label}' refused: the new build failed its setup: {short}") from None
        if handover is not None:
            handover.after()
        previous, plugin.manifest, plugin.source = plugin.manifest, manifest, candidate.source
        plugin.env, plugin.env_info = candidate.env, candidate.env_info
        logger.info("reloaded plugin '{}': version {} -> {}, build time: '{}'.", plugin.label, previous.version, manifest.version, manifest.build_time)
        return plugin, previous

    def flush(self, name: str) -> list[bool]:
        """onFlush in every worker of the plugin's pool (TiDB's FLUSH PLUGINS)."""
        plugin = next((p for p in self.plugins if p.manifest.name == name and p.pool is not None), None)
        if plugin is None:
            raise NotFoundError(f"no running plugin {name!r}")
        return plugin.pool.broadcast("flush")

    def start_all(
        self,
        *,
        needed: set[str],
        backend: str | None = None,
        strict: bool = False,
        then: Callable[[Plugin], None] | None = None,
        wait: bool = True,
    ) -> dict[str, Future[Plugin]]:
        """Start the pools of every plugin in `needed` plus every sink and RPC plugin, all at
        once, one thread each; log each ready one exactly as the Go original does. Returns
        the starts: plugin name -> a future of the Plugin once it is READY and `then(plugin)`
        (the manager's wiring: open its stores, attach its sink...) ran, or of the
        PluginLoadError that disabled it. Failures disable just that plugin, unless strict:
        then the first one is raised (wait=False: the caller raises it from its future)."""
        starts: dict[str, Future[Plugin]] = {}
        for plugin in self.plugins:
            if plugin.state is PluginState.FAILED:
                logger.warning("cannot load plugin: {}", plugin.error)
                if strict:
                    raise PluginLoadError(plugin.error)
                continue
            if plugin.state is PluginState.DISABLED:
                logger.info("plugin '{}' is disabled: {}", plugin.label, plugin.error)
                continue
            settings = self.config.settings(plugin.manifest.name) if self.config else None
            if settings and settings.disabled:
                plugin.state, plugin.error = PluginState.DISABLED, "disabled in config"
                continue
            kind = plugin.manifest.kind
            if kind in (Kind.SyncSectorState, Kind.RegisterJsonRpc) or plugin.manifest.name in needed:
                plugin.state = PluginState.STARTING  # from now on, not when its thread gets going
                starts[plugin.manifest.name] = self._start_in_thread(plugin, backend, then)
                continue
            logger.info("loaded plugin '{}', build time: '{}'.", plugin.label, plugin.manifest.build_time)
        if wait:
            for start in starts.values():
                error = start.exception()
                if error is not None and strict:
                    raise error
        return starts

    def _start_in_thread(self, plugin: Plugin, backend: str | None, then: Callable[[Plugin], None] | None) -> Future[Plugin]:
        done: Future[Plugin] = Future()
        done.set_running_or_notify_cancel()  # running: a waiter that gives up cannot cancel it

        def run() -> None:
            try:
                self.start(plugin, backend=backend)
            except PluginLoadError as e:
                if self._closing:  # stopped while starting: not the plugin's failure
                    logger.info("plugin '{}' was not started: the manager stopped meanwhile", plugin.label)
                else:
                    logger.warning("{}", e)
                done.set_exception(e)
                return
            except BaseException as e:  # a bug: never leave the future (and start-up) pending
                logger.opt(exception=e).error("starting plugin '{}': unexpected {}", plugin.label, type(e).__name__)
                plugin.state, plugin.error = PluginState.DISABLED, f"start failure: {type(e).__name__}: {e}"
                done.set_exception(PluginLoadError(f"plugin '{plugin.label}': {plugin.error}"))
                return
            logger.info("loaded plugin '{}', build time: '{}'.", plugin.label, plugin.manifest.build_time)
            try:
                if then is not None:
                    then(plugin)
            except BaseException as e:
                done.set_exception(e)
            else:
                done.set_result(plugin)

        threading.Thread(target=run, name=f"vsm-start:{plugin.manifest.name}", daemon=True).start()
        return done

    def close(self, timeout: float = 10.0) -> None:
        """Stop every pool (each calls OnShutdown in its workers; errors are logged); a pool
        still starting gives up its start (its plugin is DISABLED: the manager is stopping)."""
        with self._lock:
            self._closing = True
            starting = list(self._starting_pools)
        for pool in starting:
            pool.close(timeout)  # returns once its start() gave up and stopped its workers
        for plugin in reversed(self.plugins):
            if plugin.pool is not None:
                pool, plugin.pool = plugin.pool, None
                try:
                    pool.close(timeout)
                except Exception as e:  # shutdown goes on, like the Go original's OnShutdown
                    logger.warning("call OnShutdown for failure '{}': {}", plugin.label, e)
                if plugin.state is PluginState.READY:
                    plugin.state = PluginState.LOADED


def _build_hint(name: str, found: list[Plugin], plugins_dir: str) -> str:
    """The command that builds a bundled plugin missing from the plugins dir (a damocles
    config's Dir is often the operator's own folder, without vsm-pool's plugins: issue 26)."""
    if found or name not in bundled_sources_by_name():
        return ""
    return (
        f": it is bundled with vsm-pool; build it into {plugins_dir} with `vsm-pool plugin build --bundled {name} "
        f"--out-dir {plugins_dir}` (or `--all`: every bundled plugin that needs no server)"
    )
