"""JSON-RPC methods that change plugins at run time (enable, disable, reload, flush, rescan)."""

from __future__ import annotations

from typing import Any

from .rpc import method

__all__: list[str] = []


@method("plugin.enable")
def plugin_enable(manager: Any, name: str) -> dict[str, Any]:
    return manager.enable(name)


@method("plugin.disable")
def plugin_disable(manager: Any, name: str) -> dict[str, Any]:
    return manager.disable(name)


@method("plugin.reload")
def plugin_reload(manager: Any, name: str, artifact: str | None = None) -> dict[str, Any]:
    return manager.reload(name, artifact)


@method("plugin.flush")
def plugin_flush(manager: Any, name: str) -> list[bool]:
    return manager.flush(name)


@method("plugin.rescan")
def plugin_rescan(manager: Any) -> list[dict[str, Any]]:
    return manager.rescan()
