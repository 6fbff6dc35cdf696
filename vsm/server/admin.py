"""JSON-RPC methods that change plugins at run time (enable, disable, reload, flush, rescan), and
the KV's hot backup."""

from __future__ import annotations

from typing import Any

from .jsonrpc import MethodTable

__all__ = ["ADMIN_METHODS"]

ADMIN_METHODS = MethodTable()


@ADMIN_METHODS.method("plugin.enable")
def plugin_enable(manager: Any, name: str) -> dict[str, Any]:
    return manager.enable(name)


@ADMIN_METHODS.method("plugin.disable")
def plugin_disable(manager: Any, name: str) -> dict[str, Any]:
    return manager.disable(name)


@ADMIN_METHODS.method("plugin.reload")
def plugin_reload(manager: Any, name: str, artifact: str | None = None) -> dict[str, Any]:
    return manager.reload(name, artifact)


@ADMIN_METHODS.method("plugin.flush")
def plugin_flush(manager: Any, name: str) -> list[bool]:
    return manager.flush(name)


@ADMIN_METHODS.method("config.reload")
def config_reload(manager: Any) -> dict[str, Any]:
    return manager.reload_config()


@ADMIN_METHODS.method("plugin.rescan")
def plugin_rescan(manager: Any) -> list[dict[str, Any]]:
    return manager.rescan()


@ADMIN_METHODS.method("kv.backup")
def kv_backup(manager: Any, dest: str) -> dict[str, Any]:
    """A consistent copy of the KV at `dest` (a new file), made by the KV plugin while the daemon
    serves (`vsm-pool backup`: vsm/care/backup.py). Returns {plugin, bytes, seconds}."""
    from ..care.backup import backup_kv

    return backup_kv(manager, dest)
