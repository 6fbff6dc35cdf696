"""JSON-RPC 2.0 at /rpc/v0: the method table, and the translation of errors into codes.

Methods are plain functions `fn(manager, **params)`, registered with `@method("name")`; params
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

from .errors import VsmError
from .sdk import PluginError

__all__ = ["METHODS", "RpcError", "dispatch_rpc", "method"]

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


METHODS: dict[str, Callable[..., Any]] = {}


def method(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        METHODS[name] = fn
        return fn

    return register


def _error(id_: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": err.as_dict()}


async def dispatch_rpc(raw: bytes, manager: Any, request_stop: Callable[[], None]) -> Any:
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
        replies = await asyncio.gather(*(_one(item, manager, request_stop) for item in payload))
        replies = [r for r in replies if r is not None]
        return replies or None
    return await _one(payload, manager, request_stop)


async def _one(req: Any, manager: Any, request_stop: Callable[[], None]) -> dict[str, Any] | None:
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        id_ = req.get("id") if isinstance(req, dict) else None
        return _error(id_, RpcError(INVALID_REQUEST, 'invalid request: need {"jsonrpc": "2.0", "method": <string>, ...}'))
    id_ = req.get("id")
    notification = "id" not in req
    params = req.get("params", {})
    if not isinstance(params, (list, dict)):
        return _error(id_, RpcError(INVALID_PARAMS, "params must be an array or an object"))
    try:
        result = await _call(req["method"], params, manager, request_stop)
    except RpcError as e:
        return None if notification else _error(id_, e)
    return None if notification else {"jsonrpc": "2.0", "id": id_, "result": result}


async def _call(name: str, params: Any, manager: Any, request_stop: Callable[[], None]) -> Any:
    loop = asyncio.get_running_loop()
    if name == "daemon.stop":
        loop.call_soon(request_stop)
        return "stopping"
    fn = METHODS.get(name)
    if fn is None:
        namespace, _, leaf = name.rpartition(".")
        if namespace in manager.rpc:
            plugin, methods = manager.rpc[namespace]
            if leaf in methods:
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


# --- the manager's methods -----------------------------------------------------------------


@method("plugin.list")
def plugin_list(manager: Any) -> list[dict[str, Any]]:
    return [p.describe() for p in manager.registry.plugins]


@method("status")
def status(manager: Any) -> dict[str, Any]:
    import os

    return {
        "daemon": {"pid": os.getpid(), "home": manager.config.home, "listen": manager.config.api.listen},
        "plugins": plugin_list(manager),
        "stores": {**{n: {"plugin": s.pool.spec.name, "state": "ready"} for n, s in manager.stores.items()},
                   **{n: {"state": "failed", "error": e} for n, e in manager.store_errors.items()}},
        "sectors": manager.sectors.status() if manager.sectors is not None else None,
    }


@method("pieces.stat")
def pieces_stat(manager: Any, store: str, path: str) -> dict[str, Any]:
    return {"store": store, "path": path, "size": manager.store(store).stat(path).size}


@method("pieces.delete")
def pieces_delete(manager: Any, store: str, path: str) -> None:
    manager.store(store).delete(path)


@method("pieces.stores")
def pieces_stores(manager: Any) -> list[dict[str, Any]]:
    return [{"name": n, "plugin": s.pool.spec.name, "path": s.cfg.path, "read_only": s.cfg.read_only} for n, s in manager.stores.items()]


# --- sectors -------------------------------------------------------------------------------


def _sid(miner: int, number: int) -> Any:
    from .sdk.sectors import SectorID

    if not isinstance(miner, int) or not isinstance(number, int) or miner < 0 or number < 0:
        raise ValueError(f"miner and number must be whole numbers >= 0, got {miner!r}, {number!r}")
    return SectorID(miner, number)


def _sectors(manager: Any) -> Any:
    if manager.sectors is None:
        raise VsmError("the sector state manager is not running")
    return manager.sectors


def _state_json(state: Any, worker_state: str | None = None) -> dict[str, Any]:
    out = state.to_go_dict()
    if worker_state:
        out["WorkerState"] = worker_state
    return out


@method("sectors.import")
def sectors_import(manager: Any, states: list[dict[str, Any]], override: bool = False, worker_state: str = "online") -> int:
    """States in damocles' JSON encoding; returns how many were written (existing ones are
    skipped unless override)."""
    from .sdk.sectors import SectorState

    if not isinstance(states, list):
        raise ValueError("states must be a list of SectorState objects in damocles' JSON encoding")
    parsed = []
    for i, raw in enumerate(states):
        try:
            parsed.append(SectorState.from_go_dict(raw))
        except Exception as e:
            raise ValueError(f"states[{i}]: not a SectorState: {type(e).__name__}: {e}") from None
    return _sectors(manager).import_states(parsed, override=override, worker_state=worker_state)


@method("sectors.init")
def sectors_init(manager: Any, sectors: list[dict[str, int]], worker_state: str = "online") -> list[dict[str, Any]]:
    """Allocated sectors [{"miner", "number", "proof_type"}] -> their new states."""
    from .sdk.sectors import AllocatedSector

    allocated = [AllocatedSector(_sid(s["miner"], s["number"]), int(s.get("proof_type", 0))) for s in sectors]
    return [_state_json(s, worker_state) for s in _sectors(manager).init(allocated, worker_state)]


@method("sectors.get")
def sectors_get(manager: Any, miner: int, number: int) -> dict[str, Any]:
    sid = _sid(miner, number)
    sm = _sectors(manager)
    where = sm.locate(sid)
    if where is None:
        raise ValueError(f"no sector m-{miner}-n-{number}")
    return _state_json(sm.get(sid, where), where)


@method("sectors.list")
def sectors_list(manager: Any, worker_state: str = "online", miner: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    out = []
    for state in _sectors(manager).list(worker_state, miner):
        if len(out) >= limit:
            break
        out.append(_state_json(state, worker_state))
    return out


@method("sectors.update")
def sectors_update(manager: Any, miner: int, number: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Set fields (Go names such as "Finalized", or attribute names) on a sector."""
    if not isinstance(fields, dict) or not fields:
        raise ValueError("fields must be a non-empty object of field name -> value")
    sm = _sectors(manager)
    state = sm.update(_sid(miner, number), fields)
    return _state_json(state, sm.locate(state.id))


@method("sectors.finalize")
def sectors_finalize(manager: Any, miner: int, number: int) -> dict[str, Any]:
    return _state_json(_sectors(manager).finalize(_sid(miner, number)), "offline")


@method("sectors.restore")
def sectors_restore(manager: Any, miner: int, number: int) -> dict[str, Any]:
    return _state_json(_sectors(manager).restore(_sid(miner, number)), "online")


@method("sinks.status")
def sinks_status(manager: Any) -> dict[str, Any]:
    return _sectors(manager).status()


@method("query.arrow")
def query_arrow(manager: Any, sql: str, sink: str = "duckdb") -> str:
    """SQL over the sink's database; the result as base64 Arrow IPC (exact types)."""
    import base64

    from .sectors import PoolSink

    pool = manager.sink_pool(sink)
    if pool is None:
        raise ValueError(f"no ready SyncSectorState sink {sink!r} answers queries")
    return base64.b64encode(PoolSink(pool).query(sql)).decode()


@method("query")
def query(manager: Any, sql: str, sink: str = "duckdb") -> dict[str, Any]:
    """SQL over the sink's database; {"columns": [...], "rows": [[...], ...]}."""
    import base64

    from .sectors import ipc_to_table

    table = ipc_to_table(base64.b64decode(query_arrow(manager, sql, sink)))
    return {"columns": table.column_names, "rows": [list(r.values()) for r in table.to_pylist()]}


# The run-time plugin methods (plugin.enable/disable/reload/flush/rescan) live beside these.
from . import rpc_admin  # noqa: E402,F401
