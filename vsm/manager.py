"""The manager: config -> plugins -> pools -> the DB, the stores, the sector state and its sinks.

One object owns the wiring, so the daemon, the CLI's offline commands and the tests start and
stop the same thing in the same order (stop is the reverse: sinks flushed, DB closed, pools
stopped with OnShutdown).

Start (issue 20: a hung onInit must not hold the others)::

    every pool starts at once, one thread each (Registry.start_all)
      KVStore of the DB ready -> open the DB -> reconcile the sector journal (_recover)
                              -> the sector state manager runs: start() returns (wait=False)
      ObjStore ready  -> its stores open (a piece route answers 503 `starting` until then)
      RPC plugin ready -> its namespace registers (its calls: -32004 `starting` until then)
      sink ready       -> attached once the sector state manager runs (it catches up from
                          its checkpoint: the journal kept its events)

What must be ordered is: the DB before the journal's recovery (it reads and fixes the KV), the
recovery before any sink (sinks read the journal up to the watermark it sets), a store's pool
before the store. A plugin still starting is STARTING in status and problems until it is ready
or its StartTimeout passes (then DISABLED with the cause; under Strict the daemon stops).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from executors import PoolState

from .config import Config, StoreConfig
from .errors import ConfigError, NotFoundError, PluginLoadError, PluginStarting, VsmError
from .plugin.loader import Plugin, PluginState, Registry, discover
from .plugin.proxies import PooledDB, PooledStore
from .sdk import Config as StoreCfg
from .sdk import Kind, Manifest
from .sdk.errors import InstanceNotFoundError

__all__ = ["Manager"]


class _SinkHandover:
    """Around a sink's pool swap: pause delivery and release the sink's files in the old
    workers before the new build opens them; undo both if the new build fails.

    A sink whose open never succeeded (its Constructor failed, or its pool broke while it was
    opening) has no open_sink for the swap to replay: the new build opens it here, else its
    workers would get deliveries with no sink (issue 24 item 5: `AttributeError: deliver`)."""

    def __init__(self, manager: "Manager", plugin: Plugin) -> None:
        self.manager, self.plugin = manager, plugin
        self.was_open = False

    def before(self, old: Any) -> None:
        self.was_open = bool(self.plugin.pool is not None and self.plugin.pool.has_replay("open_sink"))
        self.manager.sectors.remove_sink(self.plugin.manifest.name)  # waits for the delivery in flight
        if old.state in (PoolState.FAILED, PoolState.CLOSED):
            old.close()  # the breaker gave up on it: stop what is left before the new build opens the files
            return
        old.broadcast("close_sink")

    def undo(self, old: Any) -> None:
        if not self.was_open:
            return  # nothing was delivering before the reload: nothing to resume
        if old.state not in (PoolState.FAILED, PoolState.CLOSED):
            old.broadcast("open_sink", self.manager.config.settings(self.plugin.manifest.name).meta)
        self.manager.sectors.add_sink(self.plugin.manifest.name, self.plugin.pool)

    def after(self) -> None:
        if self.was_open:  # the swap replayed open_sink into the new build's workers
            self.manager.sectors.add_sink(self.plugin.manifest.name, self.plugin.pool)
        else:
            self.manager._attach_sink(self.plugin)  # a Constructor that fails again: plugin.error says why


class Manager:
    def __init__(self, config: Config, *, backend: str | None = None) -> None:
        self.config = config
        self.backend = backend
        self.registry: Registry | None = None
        self.db: PooledDB | None = None
        self.stores: dict[str, PooledStore] = {}
        self.store_errors: dict[str, str] = {}
        self.rpc: dict[str, Any] = {}  # namespace -> (plugin, methods)
        self.sectors: Any = None
        self.reserver: Any = None  # persist-store reservations for sectors (vsm.sectors._reserve)
        # what start() is doing, for the daemon's 503 `starting` answers: phase, done, total
        self.progress: dict[str, Any] = {"phase": "reading plugins"}
        self.starts: dict[str, concurrent.futures.Future[Plugin]] = {}  # plugin name -> its start (Registry.start_all)
        self._wiring = threading.Lock()  # self.sectors, .stores, .rpc, .reserver as start threads fill them
        self._attached: set[str] = set()  # sinks attached by the start (once: by _wire or _start_sectors)
        self._closing = False

    @property
    def _state_file(self) -> Path:
        return self.config.data_dir / "plugin-state.json"

    def _disabled_by_operator(self) -> set[str]:
        try:
            return set(json.loads(self._state_file.read_text()).get("disabled", []))
        except FileNotFoundError:
            return set()
        except ValueError as e:
            raise ConfigError(self._state_file, "disabled", f"unreadable plugin state ({e}): fix or delete the file") from None

    def _save_disabled(self, names: set[str]) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"disabled": sorted(names)}))
        os.replace(tmp, self._state_file)

    def start(self, wait: bool = True) -> "Manager":
        """Start the plugins' pools (all at once), open the DB, reconcile the sector journal,
        attach the sinks (the order: module docstring). wait=True: return once every plugin is
        ready or disabled (Strict: raise the first failure). wait=False (the daemon): return
        once the sector state manager runs; plugins still starting join when ready
        (`settled()` waits for them)."""
        cfg = self.config
        plugins, warnings = discover(cfg.plugins_dir)
        for w in warnings:
            logger.warning(w)
        for plugin in plugins:  # disabled by `vsm-pool plugin disable`: kept across restarts
            if plugin.manifest.name in self._disabled_by_operator() and plugin.state is PluginState.LOADED:
                plugin.state, plugin.error = PluginState.DISABLED, "disabled by `vsm-pool plugin disable`"
        self.registry = registry = Registry(plugins, cfg)
        registry.check_config()
        self.progress = {"phase": "starting plugin pools"}
        stores = (*cfg.piece_stores, *cfg.persist_stores)
        needed = {cfg.db.plugin_name, *(s.plugin_name for s in stores)}
        try:
            self.starts = registry.start_all(needed=needed, backend=self.backend, strict=cfg.strict, then=self._wire, wait=False)
            for name in {s.plugin_name for s in stores}:
                if name in self.starts:
                    self.starts[name].add_done_callback(lambda start, name=name: self._stores_of_failed_starts(name, start))
                else:  # disabled: its stores say so
                    self._stores_of_failed_starts(name, None)
            self._open_db()
            self._start_sectors()
            if wait:
                self.settled()
        except BaseException:
            self.close()
            raise
        return self

    def settled(self, timeout: float | None = None) -> bool:
        """Wait until every plugin start() began is ready (and wired) or disabled; False if
        some are still starting after `timeout`. Under Strict, raise the first failure."""
        done, pending = concurrent.futures.wait(list(self.starts.values()), timeout)
        if self.config.strict:
            for start in self.starts.values():
                if start in done and start.exception() is not None:
                    raise start.exception()  # type: ignore[misc]
        return not pending

    def starting(self) -> list[Plugin]:
        """The plugins starting now: their pools, or what waits for them (its stores opening,
        its namespace registering: until its start's future is done)."""
        return [p for p in self.registry.plugins if self._still_starting(p)] if self.registry is not None else []

    def _still_starting(self, plugin: Plugin) -> bool:
        start = self.starts.get(plugin.manifest.name)
        return plugin.state is PluginState.STARTING or (start is not None and not start.done() and plugin.state is PluginState.READY)

    def _open_db(self) -> None:
        """Wait for the DB's KVStore plugin (its start runs beside the others), then open the DB."""
        assert self.registry is not None
        cfg = self.config
        start = self.starts.get(cfg.db.plugin_name)
        if start is not None:
            self.progress = {"phase": f"starting the DB's plugin '{cfg.db.plugin_name}'"}
            concurrent.futures.wait([start])  # bounded by its StartTimeout; a failure is its plugin's error
        kv = self.registry.get(Kind.KVStore, cfg.db.plugin_name)
        if kv is None or kv.pool is None:
            cause = kv.error if kv is not None else "not loaded"
            raise PluginLoadError(f"the DB plugin '{cfg.db.plugin_name}' is not ready, so the manager cannot start: {cause}")
        self.progress = {"phase": "opening the DB"}
        self.db = PooledDB(kv.pool, cfg.db.meta)
        try:
            self.db.run()
        except Exception as e:  # the plugin's Constructor raised (bad Meta, server down): one line
            self.db = None
            key = "Common.DB.Plugin.Meta" if cfg.db.driver == "plugin" else "Common.DB"
            raise ConfigError(cfg.file, key, f"the KVStore plugin '{cfg.db.plugin_name}' failed to open the DB: {type(e).__name__}: {e}") from None

    def _wire(self, plugin: Plugin) -> None:
        """A plugin started by start() is ready (this runs in its start thread): its stores
        open, its RPC namespace registers, a sink attaches if the sector state manager runs
        (else _start_sectors attaches it)."""
        kind = plugin.manifest.kind
        if kind is Kind.ObjStore:
            self._open_stores_of(plugin.manifest.name)
        elif kind is Kind.RegisterJsonRpc and not self._closing:
            self._register_rpc_of(plugin)
        elif kind is Kind.SyncSectorState:
            with self._wiring:
                if self.sectors is not None and not self._closing:
                    self._attach_once(plugin)

    def _attach_once(self, plugin: Plugin) -> None:
        """Under _wiring: attach a sink the start has not attached yet."""
        if plugin.manifest.name not in self._attached and plugin.pool is not None:
            self._attached.add(plugin.manifest.name)
            self._attach_sink(plugin)

    def _open_store(self, store: StoreConfig) -> None:
        """Open one configured store in its plugin's pool, or note why not (store_errors).
        Both dicts are replaced, not changed, so status can read them while a start fills them."""
        assert self.registry is not None
        plugin = self.registry.get(Kind.ObjStore, store.plugin_name)
        if plugin is None or plugin.pool is None:
            self._store_failed(store, f"{store.key}: plugin '{store.plugin_name}' is not ready: {plugin.error if plugin else ''}")
            return
        cfg = _store_cfg(store)
        try:
            opened = PooledStore(plugin.pool, cfg, min_free_space=store.min_free_space)
        except Exception as e:  # the store's constructor failed in the worker: this store only
            self._store_failed(store, f"{store.key}: store {store.name!r} ({store.plugin_name}) failed to open: {e}")
            return
        with self._wiring:
            self.stores = {**self.stores, store.name: opened}
            self.store_errors = {k: v for k, v in self.store_errors.items() if k != store.name}
            if self.reserver is not None:  # a persist store that opened after the sector manager started
                self.reserver.set_stores(self._persist_stores())

    def _open_stores_of(self, name: str) -> None:
        """Open the configured stores of one ObjStore plugin that are not open yet (a piece
        store that is a persist store too opens once)."""
        for store in (*self.config.piece_stores, *self.config.persist_stores):
            if store.plugin_name == name and store.name not in self.stores and not self._closing:
                self._open_store(store)

    def _store_failed(self, store: StoreConfig, why: str) -> None:
        with self._wiring:
            self.store_errors = {**self.store_errors, store.name: why}
        logger.warning(why)

    def _stores_of_failed_starts(self, name: str, start: concurrent.futures.Future[Plugin] | None) -> None:
        """A start that failed (or never began: disabled) leaves its stores failed, with why."""
        if start is None or start.exception() is not None:
            self._open_stores_of(name)

    def _persist_stores(self) -> list[tuple[StoreConfig, PooledStore]]:
        return [(s, self.stores[s.name]) for s in self.config.persist_stores if s.name in self.stores]

    def _register_rpc_of(self, plugin: Plugin) -> None:
        """(Re)register the namespace and methods a RegisterJsonRpc plugin's build describes
        (after a reload, its new build's: issue 13, item 9)."""
        assert plugin.pool is not None
        namespace, methods = plugin.pool.call("describe")
        with self._wiring:  # RPC plugins that start together register one at a time
            rpc = {ns: entry for ns, entry in self.rpc.items() if entry[0] is not plugin}
            if namespace in rpc:
                self.rpc = rpc
                logger.warning("plugin {} registers json rpc namespace '{}' again; ignored", plugin.manifest.name, namespace)
                return
            self.rpc = {**rpc, namespace: (plugin, set(methods))}
        logger.info("register json rpc handler by plugin({}). namespace: '{}'", plugin.manifest.name, namespace)

    def _after_swap(self, plugin: Plugin) -> None:
        """A plugin's pool was replaced (reload, enable of a failed pool): its RPC namespace is
        described again, and stores of it that failed to open are opened again."""
        if plugin.pool is None:
            return
        if plugin.manifest.kind is Kind.RegisterJsonRpc:
            self._register_rpc_of(plugin)
        if plugin.manifest.kind is Kind.ObjStore:
            for store in (*self.config.piece_stores, *self.config.persist_stores):
                if store.plugin_name == plugin.manifest.name and store.name in self.store_errors:
                    self._open_store(store)

    def _start_sectors(self) -> None:
        """The sector state manager over the DB (its journal reconciled with the KV first),
        with every ready sink attached; sinks still starting attach when ready (_wire)."""
        assert self.registry is not None and self.db is not None
        from .sectors import SectorStateManager

        from .sectors._reserve import StoreReserver

        sync = self.config.sector_sync
        self.progress = {"phase": "reconciling the sector journal"}
        sectors = SectorStateManager(
            self.db, Path(sync.journal_dir), flush_rows=sync.batch_rows, flush_age=sync.batch_age, max_backlog=sync.max_backlog,
            segment_bytes=sync.segment_bytes, recovery_progress=self._recovery_progress,
            min_free_space=self.config.min_free_space, space_paths=self._space_paths,
        )
        with self._wiring:
            self.reserver = StoreReserver(self.db.open_collection("common"), self._persist_stores())
            self.sectors = sectors
            for plugin in self.registry.of_kind(Kind.SyncSectorState):
                if plugin.state is PluginState.READY:
                    self._attach_once(plugin)

    def _space_paths(self) -> dict[str, str]:
        """The files the sector data lives in besides the journal, for MinFreeSpace: the KV's and
        each sink's `Path` Meta key (what the bundled sqlitekv, duckdb and parquet take; a plugin
        whose Meta names no local path is not watched: a server's disk is the server's), as the
        config and the plugins are now: asked again when a sink attaches."""

        def local(meta: dict[str, str]) -> str | None:
            path = next((v for k, v in meta.items() if k.casefold() == "path"), "")
            if not path or path == ":memory:" or "://" in path:
                return None
            return os.path.join(self.config.home, os.path.expanduser(path))

        out = {}
        if (kv := local(self.config.db.meta)) is not None:
            out["kv"] = kv
        for plugin in self.registry.of_kind(Kind.SyncSectorState) if self.registry is not None else ():
            name = plugin.manifest.name
            if (path := local(self.config.settings(name).meta)) is not None:
                out[f"sink/{name}"] = path
        return out

    def _recovery_progress(self, done: int, total: int) -> None:
        self.progress = {"phase": "reconciling the sector journal (reading the KV)", "done": done, "total": total}

    def _attach_sink(self, plugin: Plugin) -> bool:
        """Open the sink in its workers and let it consume from its checkpoint."""
        assert plugin.pool is not None and self.sectors is not None
        try:
            plugin.pool.broadcast("open_sink", self.config.settings(plugin.manifest.name).meta, replay=True)
        except Exception as e:  # its Constructor failed: this sink only
            plugin.error = f"{plugin.source}: Constructor failed: {e}"
            logger.warning("sink '{}' is not attached: {}", plugin.label, plugin.error)
            return False
        self.sectors.add_sink(plugin.manifest.name, plugin.pool)
        plugin.error = ""  # a reload that opened it at last: no cause left to show
        return True

    # --- plugins at run time -------------------------------------------------------------

    def _plugin(self, name: str) -> Plugin:
        assert self.registry is not None
        for p in self.registry.plugins:
            if p.manifest.name == name and self._still_starting(p):
                raise PluginStarting(f"{p.starting_line()}: try again once it is ready")
            if p.manifest.name == name and p.state is not PluginState.FAILED:
                return p
        failed = [p for p in self.registry.plugins if p.manifest.name == name]
        if failed:
            raise PluginLoadError(f"plugin {name!r} failed to load: {failed[0].error}")
        known = ", ".join(sorted({p.manifest.name for p in self.registry.plugins})) or "none"
        raise NotFoundError(f"no plugin named {name!r} (plugins: {known})")

    def _users(self, plugin: Plugin) -> list[str]:
        """What in the config needs this plugin running: the DB, or stores by key and name."""
        cfg, name = self.config, plugin.manifest.name
        users = []
        if plugin.manifest.kind is Kind.KVStore and cfg.db.plugin_name == name:
            users.append("Common.DB (the sector metadata database)")
        if plugin.manifest.kind is Kind.ObjStore:
            users += [f"{s.key} (store {s.name!r})" for s in (*cfg.piece_stores, *cfg.persist_stores) if s.plugin_name == name]
        return users

    def disable(self, name: str) -> dict[str, Any]:
        """Stop the plugin's pool and keep it stopped across restarts. A sink keeps its
        checkpoint and catches up when enabled again."""
        plugin = self._plugin(name)
        users = self._users(plugin)
        if users:
            raise PluginLoadError(f"cannot disable '{plugin.label}': it is used by {', '.join(users)}")
        if plugin.manifest.kind is Kind.SyncSectorState and self.sectors is not None and plugin.pool is not None:
            self.sectors.remove_sink(name)  # keeps the checkpoint file
        if plugin.manifest.kind is Kind.RegisterJsonRpc:
            self.rpc = {ns: entry for ns, entry in self.rpc.items() if entry[0] is not plugin}
        if plugin.pool is not None:
            pool, plugin.pool = plugin.pool, None
            pool.close()
        plugin.state, plugin.error = PluginState.DISABLED, "disabled by `vsm-pool plugin disable`"
        self._save_disabled(self._disabled_by_operator() | {name})
        logger.info("disabled plugin '{}'", plugin.label)
        return plugin.describe()

    def enable(self, name: str) -> dict[str, Any]:
        """Start a disabled plugin's pool again (a sink resumes from its checkpoint)."""
        assert self.registry is not None
        plugin = self._plugin(name)
        self._save_disabled(self._disabled_by_operator() - {name})
        if plugin.pool is not None and plugin.pool.state is PoolState.FAILED:
            self.reload(name)  # the crash-loop breaker gave up on it: a fresh pool of the same build
            logger.info("enabled plugin '{}' again: its failed pool was replaced", plugin.label)
        elif plugin.pool is None:
            plugin.state = PluginState.LOADED
            self.registry.start(plugin, backend=self.backend)
            if plugin.manifest.kind is Kind.SyncSectorState and self.sectors is not None and not self._attach_sink(plugin):
                raise PluginLoadError(f"enable of '{plugin.label}' failed: {plugin.error}")
            self._after_swap(plugin)
            logger.info("enabled plugin '{}'", plugin.label)
        elif plugin.manifest.kind is Kind.SyncSectorState and self.sectors is not None and not plugin.pool.has_replay("open_sink"):
            # running, but its sink never opened (its Constructor failed): new workers open it (a
            # sandbox's rules name the files as they were when its workers started)
            self.reload(name)
            logger.info("enabled sink '{}': a new pool opened it", plugin.label)
        row = plugin.describe()
        if row["state"] != PluginState.READY.value:  # e.g. its workers crash-looped right away
            raise PluginLoadError(f"enable of '{plugin.label}' failed: it is {row['state']}: {row.get('error') or 'no cause given'}")
        return row

    def reload(self, name: str, artifact: str | None = None) -> dict[str, Any]:
        """Swap a plugin for a new build while the manager keeps serving (see Registry.reload).
        A sink is handed over at a batch boundary: its dispatcher pauses (its checkpoint says
        where it was), the old workers release the sink's files, the new build opens them,
        and delivery resumes from the checkpoint; if the new build fails, the old one reopens."""
        assert self.registry is not None
        plugin = self._plugin(name)
        if plugin.manifest.kind is Kind.SyncSectorState and plugin.pool is not None and self.sectors is not None:
            handover = _SinkHandover(self, plugin)
            plugin, previous = self.registry.reload(name, Path(artifact) if artifact else None, backend=self.backend, handover=handover)
            if plugin.error:  # the new build runs, but its sink did not open (its Constructor failed)
                raise PluginLoadError(f"reload of '{plugin.label}': the new build runs but its sink did not open: {plugin.error}")
        else:
            plugin, previous = self.registry.reload(name, Path(artifact) if artifact else None, backend=self.backend)
        self._after_swap(plugin)
        return {**plugin.describe(), "previous_version": previous.version, "previous_build_time": previous.build_time}

    def rebuild_sink(self, name: str) -> dict[str, Any]:
        """Refill a running sink from the sector states in the KV, then let it go on from the
        journal (`vsm-pool sinks rebuild NAME`; vsm/sectors/_rebuild.py)."""
        plugin = self._plugin(name)
        if plugin.manifest.kind is not Kind.SyncSectorState:
            raise PluginLoadError(f"'{plugin.label}' is not a SyncSectorState sink: nothing to rebuild")
        if plugin.pool is None or self.sectors is None:
            raise PluginLoadError(f"sink '{name}' is not running ({plugin.state.value}): `vsm-pool plugin enable {name}` first")
        if plugin.pool.state is PoolState.FAILED:
            raise PluginLoadError(f"sink '{name}': its pool failed: `vsm-pool plugin reload {name}` first")
        return dict(self.sectors.rebuild_sink(name, plugin.pool))

    def forget_sink(self, name: str) -> None:
        """Drop a detached sink's checkpoint and mark: the journal stops keeping its events."""
        if self.sectors is None:
            raise PluginLoadError("the sector state manager is not running")
        plugin = self.registry.get(Kind.SyncSectorState, name) if self.registry is not None else None
        if plugin is not None and plugin.pool is not None:
            raise PluginLoadError(f"sink '{name}' is running: `vsm-pool plugin disable {name}` first")
        if name not in self.sectors.status()["sinks"]:
            raise ValueError(f"no sink {name!r} has a checkpoint")
        self.sectors.remove_sink(name, forget=True)
        logger.info("forgot sink '{}': its checkpoint is deleted; the journal no longer keeps its events", name)

    def flush(self, name: str) -> list[bool]:
        assert self.registry is not None
        for p in self.registry.plugins:
            if p.manifest.name == name and self._still_starting(p):
                raise PluginStarting(f"{p.starting_line()}: try again once it is ready")
        return self.registry.flush(name)

    def rescan(self) -> list[dict[str, Any]]:
        """Pick up changed and new artifacts in the plugins dir, on request only: a newer build
        of a loaded plugin is reloaded, never an older one (a `plugin dev` build serves on); a
        new plugin is loaded (and started if it is a sink or an RPC plugin). Every artifact that
        does not load is a row ("failed", "refused") and, like one found at start, a plugin in
        status' problems until a rescan finds it fixed or gone; none stops the others."""
        assert self.registry is not None
        running = [p.source for p in self.registry.plugins if p.state is not PluginState.FAILED]
        found, warnings = discover(self.config.plugins_dir, keep=running)
        for w in warnings:
            logger.warning(w)
        # what failed to load before is judged again from what is there now
        failed_before = [p for p in self.registry.plugins if p.state is PluginState.FAILED]
        self.registry.plugins = [p for p in self.registry.plugins if p.state is not PluginState.FAILED]
        changes = []
        known = {p.manifest.name: p for p in self.registry.plugins}
        for fresh in found:
            name, row = fresh.manifest.name, {"name": fresh.manifest.name, "artifact": str(fresh.source)}
            if fresh.state is PluginState.FAILED:
                self.registry.add(fresh)
                changes.append({**row, "change": "failed", "error": fresh.error})
                continue
            old = known.get(name)
            try:
                if old is None:
                    self.registry.add(fresh)
                    if fresh.manifest.kind in (Kind.SyncSectorState, Kind.RegisterJsonRpc):
                        self.enable(name)
                    changes.append({**row, "change": "loaded", "version": fresh.manifest.version})
                elif (fresh.manifest.build_time, fresh.source) == (old.manifest.build_time, old.source):
                    continue
                elif _newer_build(fresh.manifest, old.manifest):
                    on_purpose = name in self._disabled_by_operator() or self.config.settings(name).disabled
                    start_failed = old.state is PluginState.DISABLED and bool(old.error) and not on_purpose
                    self.reload(name, str(fresh.source))
                    if start_failed:  # its build before failed to start: this one starts in its place
                        self.enable(name)
                    changes.append({**row, "change": "reloaded", "version": fresh.manifest.version})
                else:
                    changes.append({**row, "change": "kept", "version": old.manifest.version, "error": (
                        f"built {fresh.manifest.build_time}, not after the running build of '{old.label}' ({old.source}, built "
                        f"{old.manifest.build_time}), which serves on; to run this one anyway: `vsm-pool plugin reload {name} {fresh.source}`")})
            except VsmError as e:
                changes.append({**row, "change": "refused", "error": str(e)})
                if old is not None and old.pool is not None:  # the running build serves on; the artifact is listed as broken
                    fresh.state, fresh.error = PluginState.FAILED, str(e)
                    self.registry.add(fresh)
        sources = {p.source for p in found}
        for gone in [p for p in self.registry.plugins if p.source not in sources and not p.source.exists()]:
            changes.append(self._drop_removed(gone))
        changes += [{"name": p.manifest.name, "artifact": str(p.source), "change": "removed"} for p in failed_before if p.source not in sources]
        return changes

    def _drop_removed(self, plugin: Plugin) -> dict[str, Any]:
        """Its artifact was deleted: stop and forget the plugin, unless the config uses it (a
        sink's checkpoint stays: `vsm-pool sinks forget` drops it)."""
        row = {"name": plugin.manifest.name, "artifact": str(plugin.source)}
        users = self._users(plugin) if plugin.state is not PluginState.FAILED else []
        if users:
            return {**row, "change": "kept", "error": f"its artifact is gone but {', '.join(users)} uses it: it runs until the daemon stops"}
        if plugin.manifest.kind is Kind.SyncSectorState and self.sectors is not None and plugin.pool is not None:
            self.sectors.remove_sink(plugin.manifest.name)
        self.rpc = {ns: entry for ns, entry in self.rpc.items() if entry[0] is not plugin}
        if plugin.pool is not None:
            pool, plugin.pool = plugin.pool, None
            pool.close()
        assert self.registry is not None
        self.registry.plugins.remove(plugin)
        logger.info("plugin '{}' removed: its artifact {} is gone", plugin.label, plugin.source)
        return {**row, "change": "removed"}

    # --- the config at run time (issue 26: `vsm-pool config reload`, SIGHUP; status) ------------

    _config_reload_lock = threading.Lock()  # one reload at a time (a SIGHUP beside `config reload`)
    _disk_config: Any = None  # (stat of the file, (its Config or None, why not))
    config_not_applied: list[str] = []  # what the last reload could not apply, for status
    cli_listen = ""  # `vsm-pool start --listen`, over the file's [Common.Api] Listen

    def _as_started(self, disk: Config) -> Config:
        """The file's config as the daemon was started on it (`--listen` over its Listen)."""
        return dataclasses.replace(disk, api=dataclasses.replace(disk.api, listen=self.cli_listen)) if self.cli_listen else disk

    def config_on_disk(self) -> tuple[Config | None, str]:
        """The config file as it is now (parsed once per change of its mtime and size), or None
        and why it does not load."""
        from .config import load_config

        try:
            st = os.stat(self.config.file)
            stamp: tuple[Any, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            return None, f"{self.config.file}: {e.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return None, ""  # a pipe (`--config <(...)`) is read once: nothing to compare
        cached = self._disk_config
        if cached is None or cached[0] != stamp:
            try:
                loaded: tuple[Config | None, str] = (load_config(self.config.file, Path(self.config.home))[0], "")
            except ConfigError as e:
                loaded = (None, str(e))
            cached = self._disk_config = (stamp, loaded)
        return cached[1]

    def config_drift(self) -> dict[str, Any]:
        """Whether the config on disk differs from the running one, what differs, and what a
        reload could not apply (status shows it: a running config never hides behind the file)."""
        from .config import config_changes

        disk, error = self.config_on_disk()
        changes = [] if disk is None else config_changes(self.config, self._as_started(disk), self._plugin_names()).keys()
        return {"file": self.config.file, "differs": bool(changes or error), "changes": changes, "error": error,
                "not_applied": list(self.config_not_applied)}

    def _plugin_names(self) -> tuple[str, ...]:
        return tuple(p.manifest.name for p in self.registry.plugins) if self.registry is not None else ()

    def reload_config(self) -> dict[str, Any]:
        """Read the config file again and apply what can change live: a plugin whose pool
        settings or Meta changed gets a new pool (a reload of its running build: a sink hands
        over at a batch boundary, open with the new Meta); an ObjStore plugin whose stores
        changed gets a new pool opening the new set (its sandbox then allows the new Paths);
        store policies apply to the next reservation. What only a restart applies is listed,
        untouched. A plugin whose new pool fails runs on as it was, listed under `failed`."""
        with self._config_reload_lock:
            return self._reload_config()

    def _reload_config(self) -> dict[str, Any]:
        from .config import config_changes, live_config, load_config
        from .plugin.isolation import describe_limits

        assert self.registry is not None
        on_disk, _ = load_config(self.config.file, Path(self.config.home))  # ConfigError: nothing changes
        self.registry.check_config(on_disk)
        on_disk = self._as_started(on_disk)
        old = self.config
        changes = config_changes(old, on_disk, self._plugin_names())
        new = live_config(old, on_disk)
        with self._wiring:
            self.config = new
            self.registry.config = new
        applied: list[str] = []
        failed: list[str] = []
        for name in sorted({*changes.plugins, *changes.store_plugins}):
            plugin = next((p for p in self.registry.plugins if p.manifest.name == name and p.state is not PluginState.FAILED), None)
            if plugin is None:
                continue  # settings of a plugin not loaded: read when it is
            plugin.limits = describe_limits(new.settings(name))
            try:
                applied.append(self._apply_config_to(plugin, old))
            except VsmError as e:
                failed.append(f"{plugin.label}: {e}; it runs on as before")
        gone = {n for n, what in changes.stores.items() if what == "removed"}
        with self._wiring:
            self.stores = {n: st for n, st in self.stores.items() if n not in gone}
            self.store_errors = {n: e for n, e in self.store_errors.items() if n not in gone}
            if self.reserver is not None:
                self.reserver.set_stores(self._persist_stores())
        applied += [f"store {n!r}: {what}" for n, what in changes.stores.items() if what == "policy"]
        self.config_not_applied = failed
        self._disk_config = None
        logger.info("config reloaded from {}: {}", new.file, "; ".join(applied + failed + [f"needs a restart: {k}" for k in changes.restart]) or "nothing changed")
        return {"file": new.file, "changed": changes.keys(), "applied": applied, "failed": failed, "restart": changes.restart,
                "previous_file_unchanged": old.file == new.file}

    def _apply_config_to(self, plugin: Plugin, old: Config) -> str:
        """One plugin's share of a config reload (reload_config); what was done, in a line."""
        name, kind, pool = plugin.manifest.name, plugin.manifest.kind, plugin.pool
        mine = [s for s in {s.name: s for s in (*self.config.piece_stores, *self.config.persist_stores)}.values() if s.plugin_name == name]
        if pool is None:
            if kind is Kind.ObjStore and mine and plugin.state is PluginState.LOADED:
                assert self.registry is not None
                self.registry.start(plugin, backend=self.backend)  # its first store: its pool starts now
                self._open_stores_of(name)
                return f"{plugin.label}: started for store(s) {', '.join(s.name for s in mine)}"
            return f"{plugin.label}: not running; the new settings apply when it starts"
        if kind is Kind.ObjStore:
            before = pool.set_replays("open_store", [(s.name, _store_cfg(s)) for s in mine])
            with self._wiring:  # opened by the swap below, not again by _after_swap
                self.store_errors = {n: e for n, e in self.store_errors.items() if n not in {s.name for s in mine}}
            try:
                self.reload(name)
            except BaseException as e:
                pool.set_replays("open_store", before)
                with self._wiring:  # the stores it had serve on; the new ones say why they are not open
                    self.store_errors = {**self.store_errors, **{
                        s.name: f"{s.key}: store {s.name!r} ({name}) was not opened by `vsm-pool config reload`: {e}"
                        for s in mine if s.name not in self.stores}}
                raise
            with self._wiring:
                kept = {n: st for n, st in self.stores.items() if st.pool is not pool}
                self.stores = {**kept, **{s.name: PooledStore(pool, _store_cfg(s), opened=True, min_free_space=s.min_free_space) for s in mine}}
            return f"{plugin.label}: new pool, stores {', '.join(s.name for s in mine) or 'none'}"
        if kind is Kind.SyncSectorState:
            new = self.config
            before = pool.set_replays("open_sink", [(dict(new.settings(name).meta),)])
            if not before:  # never opened (its Constructor failed): the reload's handover opens it with the new Meta
                pool.set_replays("open_sink", [])
                self.reload(name)
                return f"{plugin.label}: new pool, sink open with the new Meta"
            with self._wiring:  # if the new pool fails, the handover reopens the old one with its old Meta
                self.config = dataclasses.replace(new, plugins={**new.plugins, name: old.settings(name)})
            try:
                self.reload(name)
            except BaseException:
                pool.set_replays("open_sink", before)
                raise
            finally:
                with self._wiring:
                    self.config = new
            return f"{plugin.label}: new pool, sink open with the new Meta"
        self.reload(name)
        return f"{plugin.label}: new pool"

    def store(self, name: str) -> PooledStore:
        try:
            return self.stores[name]
        except KeyError:
            if name in self.store_errors:
                raise ConfigError(self.config.file, "", self.store_errors[name]) from None
            starting = self.stores_starting().get(name)
            if starting:
                raise PluginStarting(starting) from None
            # damocles' StoreManager.GetInstance: ErrObjectStoreInstanceNotFound
            raise InstanceNotFoundError(f"instance not found: no store named {name!r} (stores: {', '.join(sorted(self.stores)) or 'none'})") from None

    def stores_starting(self) -> dict[str, str]:
        """Store name -> why it is not open yet, for each store whose plugin is starting."""
        out = {}
        for store in (*self.config.piece_stores, *self.config.persist_stores):
            plugin = self.registry.get(Kind.ObjStore, store.plugin_name) if self.registry is not None else None
            if store.name not in self.stores and plugin is not None and self._still_starting(plugin):
                out[store.name] = f"store {store.name!r} opens once its {plugin.starting_line()}"
        return out

    def rpc_starting(self) -> str:
        """Why a method no RPC namespace serves may yet be served: RPC plugins still starting."""
        lines = [p.starting_line() for p in self.starting() if p.manifest.kind is Kind.RegisterJsonRpc]
        return "; ".join(lines)

    def sink_pool(self, name: str) -> Any:
        assert self.registry is not None
        plugin = self.registry.get(Kind.SyncSectorState, name)
        if plugin is not None and self._still_starting(plugin):
            raise PluginStarting(f"sink {name!r} answers once its {plugin.starting_line()}")
        return plugin.pool if plugin is not None and plugin.state is PluginState.READY else None

    def close(self, timeout: float = 10.0) -> None:
        """Flush the sinks, close the DB, stop every pool (those still starting give up their
        start). Safe to call twice."""
        with self._wiring:  # no start thread wires anything from now on
            self._closing = True
            sectors, self.sectors = self.sectors, None
        if sectors is not None:
            try:
                sectors.close(timeout)
            except Exception as e:
                logger.warning("closing the sector state manager: {}", e)
        if self.db is not None:
            db, self.db = self.db, None
            try:
                db.close()
            except Exception as e:
                logger.warning("closing the DB: {}", e)
        if self.registry is not None:
            self.registry.close(timeout)


def _store_cfg(store: StoreConfig) -> StoreCfg:
    """What a store plugin's Constructor gets for one configured store."""
    return StoreCfg(name=store.name, path=store.path, meta=dict(store.meta), strict=store.strict, read_only=store.read_only, weight=store.weight)


def _newer_build(fresh: Manifest, running: Manifest) -> bool:
    """Whether `fresh` was built after `running`; without two comparable build
    times (a source folder has none) a changed plugin counts as newer."""
    try:
        return datetime.datetime.fromisoformat(fresh.build_time) > datetime.datetime.fromisoformat(running.build_time)
    except (TypeError, ValueError):
        return True
