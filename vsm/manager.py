"""The manager: config -> plugins -> pools -> the DB, the stores, the sector state and its sinks.

One object owns the wiring, so the daemon, the CLI's offline commands and the tests start and
stop the same thing in the same order (stop is the reverse: sinks flushed, DB closed, pools
stopped with OnShutdown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from .config import Config, StoreConfig
from .errors import ConfigError, PluginLoadError
from .loader import PluginState, Registry, discover
from .proxies import PooledDB, PooledStore
from .sdk import Config as StoreCfg
from .sdk import Kind

__all__ = ["Manager"]


class Manager:
    def __init__(self, config: Config, *, backend: str = "process") -> None:
        self.config = config
        self.backend = backend
        self.registry: Registry | None = None
        self.db: PooledDB | None = None
        self.stores: dict[str, PooledStore] = {}
        self.store_errors: dict[str, str] = {}
        self.rpc: dict[str, Any] = {}  # namespace -> (plugin, methods)
        self.sectors: Any = None

    def start(self) -> "Manager":
        cfg = self.config
        plugins, warnings = discover(cfg.plugins_dir)
        for w in warnings:
            logger.warning(w)
        self.registry = registry = Registry(plugins, cfg)
        registry.check_config()
        stores = (*cfg.piece_stores, *cfg.persist_stores)
        needed = {cfg.db.plugin_name, *(s.plugin_name for s in stores)}
        try:
            registry.start_all(needed=needed, backend=self.backend, strict=cfg.strict)
            kv = registry.get(Kind.KVStore, cfg.db.plugin_name)
            if kv is None or kv.pool is None:
                cause = kv.error if kv is not None else "not loaded"
                raise PluginLoadError(f"the DB plugin '{cfg.db.plugin_name}' is not ready, so the manager cannot start: {cause}")
            self.db = PooledDB(kv.pool, cfg.db.meta)
            self.db.run()
            for store in stores:
                self._open_store(store)
            self._register_rpc()
            self._start_sectors()
        except BaseException:
            self.close()
            raise
        return self

    def _open_store(self, store: StoreConfig) -> None:
        assert self.registry is not None
        plugin = self.registry.get(Kind.ObjStore, store.plugin_name)
        if plugin is None or plugin.pool is None:
            self.store_errors[store.name] = f"{store.key}: plugin '{store.plugin_name}' is not ready: {plugin.error if plugin else ''}"
            logger.warning(self.store_errors[store.name])
            return
        cfg = StoreCfg(
            name=store.name, path=store.path, meta=dict(store.meta), strict=store.strict, read_only=store.read_only, weight=store.weight
        )
        try:
            self.stores[store.name] = PooledStore(plugin.pool, cfg)
        except Exception as e:  # the store's constructor failed in the worker: this store only
            self.store_errors[store.name] = f"{store.key}: store {store.name!r} ({store.plugin_name}) failed to open: {e}"
            logger.warning(self.store_errors[store.name])

    def _register_rpc(self) -> None:
        assert self.registry is not None
        for plugin in self.registry.of_kind(Kind.RegisterJsonRpc):
            if plugin.pool is None:
                continue
            namespace, methods = plugin.pool.call("describe")
            if namespace in self.rpc:
                logger.warning("plugin {} registers json rpc namespace '{}' again; ignored", plugin.manifest.name, namespace)
                continue
            self.rpc[namespace] = (plugin, set(methods))
            logger.info("register json rpc handler by plugin({}). namespace: '{}'", plugin.manifest.name, namespace)

    def _start_sectors(self) -> None:
        """The sector state manager over the DB, with every ready sink attached."""
        assert self.registry is not None and self.db is not None
        from .sectors import SectorStateManager

        sinks = {}
        for plugin in self.registry.of_kind(Kind.SyncSectorState):
            if plugin.pool is None:
                continue
            try:
                plugin.pool.broadcast("open_sink", self.config.settings(plugin.manifest.name).meta, replay=True)
            except Exception as e:  # its Constructor failed: this sink only
                plugin.error = f"{plugin.source}: Constructor failed: {e}"
                logger.warning("sink '{}' is not attached: {}", plugin.label, plugin.error)
                continue
            sinks[plugin.manifest.name] = plugin.pool
        sync = self.config.sector_sync
        self.sectors = SectorStateManager(
            self.db, Path(sync.journal_dir), sinks=sinks, flush_rows=sync.batch_rows, flush_age=sync.batch_age
        )

    def store(self, name: str) -> PooledStore:
        try:
            return self.stores[name]
        except KeyError:
            if name in self.store_errors:
                raise ConfigError(self.config.file, "", self.store_errors[name]) from None
            raise ValueError(f"no store named {name!r} (stores: {', '.join(sorted(self.stores)) or 'none'})") from None

    def sink_pool(self, name: str) -> Any:
        assert self.registry is not None
        plugin = self.registry.get(Kind.SyncSectorState, name)
        return plugin.pool if plugin is not None and plugin.state is PluginState.READY else None

    def close(self, timeout: float = 10.0) -> None:
        """Flush the sinks, close the DB, stop every pool. Safe to call twice."""
        if self.sectors is not None:
            sectors, self.sectors = self.sectors, None
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
