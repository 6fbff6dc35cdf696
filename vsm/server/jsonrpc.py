"""JSON-RPC 2.0 at /rpc/v0: the method table, and the translation of errors into codes.

Methods are plain functions `fn(manager, **params)` in a MethodTable (methods.py, admin.py); params
are bound against the signature before the call, so wrong params are -32602 and never reach
the manager. Namespaces of RegisterJsonRpc plugins are served as `<namespace>.<method>` in the
plugin's own pool. Blocking calls run in the loop's thread pool.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any, Callable

from loguru import logger

from executors import PoolError

from ..errors import VsmError
from ..sdk import PluginError

__all__ = ["MethodTable", "RpcError", "dispatch_rpc"]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, SERVER_ERROR = -32700, -32600, -32601, -32602, -32000
PLUGIN_ERROR, POOL_ERROR = -32001, -32002
MAX_BATCH = 1000


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class MethodTable(dict[str, Callable[..., Any]]):
    """Method name -> `fn(manager, **params)`; `@table.method("name")` registers one."""

    def method(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self[name] = fn
            return fn

        return register


def _error(id_: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": err.as_dict()}


async def dispatch_rpc(raw: bytes, methods: MethodTable, manager: Any, request_stop: Callable[[], None]) -> Any:
    """The reply to one HTTP body: an object, a list (batch), or None (notifications only)."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return _error(None, RpcError(PARSE_ERROR, f"parse error: {e}"))
    if isinstance(payload, list):
        if not payload:
            return _error(None, RpcError(INVALID_REQUEST, "empty batch"))
        if len(payload) > MAX_BATCH:
            return _error(None, RpcError(INVALID_REQUEST, f"batch of {len(payload)} calls is over the limit of {MAX_BATCH}"))
        replies = await asyncio.gather(*(_one(item, methods, manager, request_stop) for item in payload))
        replies = [r for r in replies if r is not None]
        return replies or None
    return await _one(payload, methods, manager, request_stop)


async def _one(req: Any, methods: MethodTable, manager: Any, request_stop: Callable[[], None]) -> dict[str, Any] | None:
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        id_ = req.get("id") if isinstance(req, dict) else None
        return _error(id_, RpcError(INVALID_REQUEST, 'invalid request: need {"jsonrpc": "2.0", "method": <string>, ...}'))
    id_ = req.get("id")
    notification = "id" not in req
    params = req.get("params", {})
    if not isinstance(params, (list, dict)):
        return _error(id_, RpcError(INVALID_PARAMS, "params must be an array or an object"))
    try:
        result = await _call(req["method"], params, methods, manager, request_stop)
    except RpcError as e:
        return None if notification else _error(id_, e)
    return None if notification else {"jsonrpc": "2.0", "id": id_, "result": result}


async def _call(name: str, params: Any, methods: MethodTable, manager: Any, request_stop: Callable[[], None]) -> Any:
    loop = asyncio.get_running_loop()
    if name == "daemon.stop":
        loop.call_soon(request_stop)
        return "stopping"
    fn = methods.get(name)
    if fn is None:
        namespace, _, leaf = name.rpartition(".")
        if namespace in manager.rpc:
            plugin, plugin_methods = manager.rpc[namespace]
            if leaf in plugin_methods:
                return await loop.run_in_executor(None, _translate, lambda: plugin.pool.call("invoke", leaf, params))
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {name!r}")
    try:
        bound = inspect.signature(fn).bind(manager, *params) if isinstance(params, list) else inspect.signature(fn).bind(manager, **params)
    except TypeError as e:
        raise RpcError(INVALID_PARAMS, f"invalid params for {name}: {e}") from None
    return await loop.run_in_executor(None, _translate, lambda: fn(*bound.args, **bound.kwargs))


def _translate(call: Callable[[], Any]) -> Any:
    """Errors -> JSON-RPC codes: the caller's mistakes are -32602, a plugin's errors -32001,
    a pool's (crash, timeout) -32002; anything else is logged and -32000."""
    try:
        return call()
    except RpcError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, PluginError):
            raise RpcError(PLUGIN_ERROR, f"{type(e).__name__}: {e}") from None
        raise RpcError(INVALID_PARAMS, f"{type(e).__name__}: {e}") from None
    except PluginError as e:
        raise RpcError(PLUGIN_ERROR, f"{type(e).__name__}: {e}") from None
    except PoolError as e:
        raise RpcError(POOL_ERROR, f"{type(e).__name__}: {e}") from None
    except VsmError as e:
        raise RpcError(SERVER_ERROR, str(e)) from None
    except Exception as e:
        logger.exception("JSON-RPC call failed")
        raise RpcError(SERVER_ERROR, f"{type(e).__name__}: {e}") from None
