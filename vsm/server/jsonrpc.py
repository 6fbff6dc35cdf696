"""JSON-RPC 2.0 at /rpc/v0: the method table, and the translation of errors into codes.

    body -> parse (duplicate keys and nesting refused) -> one call, or a batch of calls
         -> per call: permission (auth.py) -> bind params to the signature -> run in a thread
         -> result, or an error translated once here (`translate_errors`) -> one log line

Methods are plain functions `fn(manager, **params)` in a MethodTable (methods.py, admin.py); params
are bound against the signature before the call, so wrong params are -32602 and never reach
the manager. Namespaces of RegisterJsonRpc plugins are served as `<namespace>.<method>` in the
plugin's own pool. Blocking calls run in the loop's thread pool.

Error codes (README "JSON-RPC errors" is this table):

    -32700  parse error        not JSON, not UTF-8, nested too deep
    -32600  invalid request    not a JSON-RPC 2.0 call, a duplicated key, a batch empty or over
                               1000 calls, a body over MaxBodyBytes (HTTP 413)
    -32601  method not found
    -32602  invalid params     the caller's params: wrong names or types, a value the method
                               refuses, a sector/store/plugin that does not exist, bad SQL
    -32000  server error       the manager could not do it (a plugin failed to start, the
                               journal is broken...): the message says what
    -32001  plugin error       the plugin raised: its exception's type and message
    -32002  pool error         the plugin's worker crashed, timed out, or its pool is broken
    -32003  forbidden          the token's level is below what the method needs
    -32004  starting           the manager is not ready yet (HTTP 503, with progress), or the
                               plugin a call needs is still starting (its store, sink, namespace)
    -32005  limit              a bound of [Common.Api] was hit (reply size, query time/size)
    -32006  disk full          a write was refused for want of space (by the disk, or before it
                               by [Common] MinFreeSpace): the path and its free space; nothing of
                               the call was stored; it resumes by itself once space is back

No message carries a traceback or a path of the server's (home, install, store folders: they
read `<home>`, `<install>`...). Every error is one log line; `vsm-pool start --debug` (or -v)
adds the full trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import pickle
import sys
from typing import Any, Callable

from loguru import logger

from executors import PoolError, RemoteError, RemoteTraceback

from ..errors import PluginStarting, VsmError
from ..sdk import DiskFullError, InvalidObjectPathError, InvalidRequestError, PluginError
from ..sdk.errors import InstanceNotFoundError
from ..sectors import JournalBroken

__all__ = ["MethodTable", "RpcError", "dispatch_rpc", "parse_json", "Scrubber", "translate_errors"]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, SERVER_ERROR = -32700, -32600, -32601, -32602, -32000
PLUGIN_ERROR, POOL_ERROR, FORBIDDEN, STARTING, LIMIT, DISK_FULL = -32001, -32002, -32003, -32004, -32005, -32006
MAX_BATCH = 1000
BATCH_CONCURRENCY = 8  # calls of one batch running at once: a batch cannot take every API thread


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def as_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class InvalidParams(ValueError):
    """Raised by a method when the caller's params are wrong (-32602)."""


class MethodTable(dict[str, Callable[..., Any]]):
    """Method name -> `fn(manager, **params)`; `@table.method("name")` registers one."""

    def method(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self[name] = fn
            return fn

        return register


class _DuplicateKey(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKey(f"duplicated key {dup!r} in an object: which one is meant is ambiguous")
    return obj


def parse_json(raw: bytes) -> Any:
    """JSON -> Python, refusing duplicated keys; raises RpcError (-32700 / -32600)."""
    try:
        return json.loads(raw, object_pairs_hook=_object)
    except _DuplicateKey as e:
        raise RpcError(INVALID_REQUEST, f"invalid request: {e}") from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, f"parse error: nested deeper than {sys.getrecursionlimit()} levels") from None
    except UnicodeDecodeError as e:
        raise RpcError(PARSE_ERROR, f"parse error: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except ValueError as e:
        raise RpcError(PARSE_ERROR, f"parse error: {e}") from None


class Scrubber:
    """Replaces the server's own paths in a message by a placeholder, so a client learns no
    layout of the machine: the home folder, the install, store folders, the temp folder."""

    def __init__(self, manager: Any) -> None:
        import sysconfig
        import tempfile

        cfg = getattr(manager, "config", None)
        places: list[tuple[str, str]] = []
        if cfg is not None:
            places += [(str(cfg.plugins_dir), "<plugins>"), (str(cfg.home), "<home>"), (str(cfg.file), "<config>")]
            places += [(s.path, f"<store {s.name}>") for s in (*cfg.piece_stores, *cfg.persist_stores) if s.path.startswith("/")]
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        places += [(here, "<install>"), (sys.prefix, "<python>"), (sys.base_prefix, "<python>"), (tempfile.gettempdir(), "<tmp>")]
        places += [(p, "<python>") for p in sysconfig.get_paths().values()]
        places += [(os.path.expanduser("~"), "<user home>")]
        self.places = sorted({(p.rstrip("/"), label) for p, label in places if p and p != "/"}, key=lambda x: -len(x[0]))

    def __call__(self, text: str) -> str:
        for path, label in self.places:
            if path in text:
                text = text.replace(path, label)
        return text


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


class _Call:
    """One request of a body: what the log line and the reply need."""

    __slots__ = ("method", "id", "notification")

    def __init__(self, method: str, id_: Any, notification: bool) -> None:
        self.method, self.id, self.notification = method, id_, notification


def _error(id_: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": err.as_dict()}


async def dispatch_rpc(
    raw: bytes,
    methods: MethodTable,
    manager: Any,
    request_stop: Callable[[], None],
    *,
    allowed: Callable[[str], str | None] = lambda _m: None,
    scrub: Callable[[str], str] = lambda s: s,
    max_response_bytes: int = 64 << 20,
    log_errors: bool = False,
) -> Any:
    """The reply to one HTTP body: an object, a list (batch), or None (notifications only).
    log_errors: one log line per error (the daemon; not an in-process caller such as the kit).

    allowed(method) -> None if the caller may call it, else why not (-32003).
    max_response_bytes: the results of one body together; past it the calls not yet run
    answer -32005 instead of running."""
    try:
        payload = parse_json(raw)
    except RpcError as e:
        if log_errors:
            _log_error(_Call("", None, False), e, None)
        return _error(None, e)
    budget = [max_response_bytes]
    if isinstance(payload, list):
        if not payload:
            return _error(None, RpcError(INVALID_REQUEST, "invalid request: empty batch"))
        if len(payload) > MAX_BATCH:
            return _error(None, RpcError(INVALID_REQUEST, f"invalid request: a batch of {len(payload)} calls is over the limit of {MAX_BATCH}"))
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(item: Any) -> dict[str, Any] | None:
            async with gate:
                return await _one(item, methods, manager, request_stop, allowed, scrub, budget, max_response_bytes, log_errors)

        replies = [r for r in await asyncio.gather(*(one(item) for item in payload)) if r is not None]
        return replies or None
    return await _one(payload, methods, manager, request_stop, allowed, scrub, budget, max_response_bytes, log_errors)


async def _one(
    req: Any,
    methods: MethodTable,
    manager: Any,
    request_stop: Callable[[], None],
    allowed: Callable[[str], str | None],
    scrub: Callable[[str], str],
    budget: list[int],
    max_response_bytes: int,
    log_errors: bool,
) -> dict[str, Any] | None:
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        id_ = req.get("id") if isinstance(req, dict) else None
        err = RpcError(INVALID_REQUEST, 'invalid request: need {"jsonrpc": "2.0", "method": <string>, ...}')
        if log_errors:
            _log_error(_Call("", id_, False), err, None)
        return _error(id_, err)
    call = _Call(req["method"], req.get("id"), "id" not in req)
    params = req.get("params", {})
    try:
        if not isinstance(params, (list, dict)):
            raise RpcError(INVALID_PARAMS, "invalid params: params must be an array or an object")
        why_not = allowed(call.method)
        if why_not is not None:
            raise RpcError(FORBIDDEN, why_not)
        if budget[0] <= 0:
            raise RpcError(LIMIT, f"not run: the batch's results are over {max_response_bytes} bytes ([Common.Api] MaxResponseBytes)")
        result = await _call(call.method, params, methods, manager, request_stop, scrub)
        size = len(json.dumps(result, default=str))
        budget[0] -= size
        if budget[0] < 0:
            raise RpcError(LIMIT, f"the result is {size} bytes, over what is left of [Common.Api] MaxResponseBytes ({max_response_bytes} per request): ask for less (a smaller limit, a LIMIT in the SQL)")
    except RpcError as e:
        if log_errors:
            _log_error(call, e, e.__context__ if isinstance(e.__context__, Exception) else None)
        return None if call.notification else _error(call.id, e)
    return None if call.notification else {"jsonrpc": "2.0", "id": call.id, "result": result}


def _log_error(call: _Call, err: RpcError, cause: BaseException | None) -> None:
    """One line per error; the full trace only at debug level (`vsm-pool start --debug`)."""
    what = call.method or "(no method)"
    if err.code == SERVER_ERROR:
        logger.warning("rpc {}: {} {}", what, err.code, err.message)
    else:
        logger.info("rpc {}: {} {}", what, err.code, err.message)
    if cause is not None:
        logger.opt(exception=cause).debug("rpc {}: the trace of {}", what, err.code)


def _check_no_params(name: str, params: Any) -> None:
    if params not in ({}, [], None):
        raise RpcError(INVALID_PARAMS, f"invalid params for {name}: it takes none, got {json.dumps(params)[:200]}")


async def _call(
    name: str, params: Any, methods: MethodTable, manager: Any, request_stop: Callable[[], None], scrub: Callable[[str], str]
) -> Any:
    loop = asyncio.get_running_loop()
    if name == "daemon.stop":
        _check_no_params(name, params)
        loop.call_soon(request_stop)
        return "stopping"
    fn = methods.get(name)
    if fn is None:
        namespace, _, leaf = name.rpartition(".")
        rpc = getattr(manager, "rpc", {}) or {}
        if namespace in rpc:
            plugin, plugin_methods = rpc[namespace]
            if leaf in plugin_methods:
                return await loop.run_in_executor(None, translate_errors, lambda: plugin.pool.call("invoke", leaf, params), name, scrub)
        starting = manager.rpc_starting() if hasattr(manager, "rpc_starting") else ""
        if starting and namespace not in rpc:  # a namespace is known once its plugin is ready
            raise RpcError(STARTING, f"method {name!r} is not known yet: {starting}")
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {name!r}")
    try:
        sig = inspect.signature(fn)
        bound = sig.bind(manager, *params) if isinstance(params, list) else sig.bind(manager, **params)
    except TypeError as e:
        raise RpcError(INVALID_PARAMS, f"invalid params for {name}: {e}") from None
    # in this request's context: the method's ops know their client (vsm.sectors.op_client)
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(None, ctx.run, translate_errors, lambda: fn(*bound.args, **bound.kwargs), name, scrub)


def _remote(e: BaseException) -> bool:
    """The exception was raised in a plugin's worker (the pool re-raised it here)."""
    return isinstance(e.__cause__, RemoteTraceback) or isinstance(e, RemoteError)


def translate_errors(call: Callable[[], Any], name: str, scrub: Callable[[str], str]) -> Any:
    """Errors -> JSON-RPC codes (the module's table). Decided by where the error comes from:
    a plugin's own exception is the plugin's (-32001), whatever its type; the manager's
    ValueError/KeyError/TypeError are the caller's params (-32602)."""
    try:
        return call()
    except RpcError:
        raise
    except (RecursionError, pickle.PicklingError) as e:  # params too deep to send to a worker
        raise RpcError(INVALID_PARAMS, f"invalid params for {name}: cannot be passed on ({type(e).__name__}: nested too deep?)") from None
    except Exception as e:
        code, text = _classify(e)
        data = {"type": _type_name(e)}
        if isinstance(getattr(e, "written", None), int):  # an import refused part-way: what it stored
            data["written"] = e.written  # type: ignore[attr-defined]
        raise RpcError(code, scrub(text), data) from e


def _type_name(e: BaseException) -> str:
    if isinstance(e, RemoteError):  # "pool 'x': <text> (<TypeName>)\n<traceback>"
        head = _first_line(str(e))
        if head.endswith(")") and "(" in head:
            return head[head.rindex("(") + 1 : -1]
    return type(e).__name__


def _classify(e: Exception) -> tuple[int, str]:
    if isinstance(e, DiskFullError):  # the manager's floor, the journal, or a plugin's disk
        written = getattr(e, "written", 0)  # an import's chunks stored before the refusal
        more = f" ({written} of the import's states were written before it; the same import again skips them)" if written else ""
        return DISK_FULL, _first_line(str(e)) + more
    if isinstance(e, JournalBroken):  # a journal write failed for another cause: it retries by itself
        return SERVER_ERROR, _first_line(str(e))
    if isinstance(e, RemoteError):  # a plugin's exception that would not unpickle
        head = _first_line(str(e))  # "pool '<plugin>': <pool method>: <message> (<type>)"
        parts = head.split(": ", 2)
        return PLUGIN_ERROR, parts[2] if head.startswith("pool ") and len(parts) == 3 else head
    if isinstance(e, PoolError):
        return POOL_ERROR, f"{type(e).__name__}: {_first_line(str(e))}"
    if isinstance(e, PluginStarting):  # what the call needs is not ready yet: try again shortly
        return STARTING, f"starting: {_first_line(str(e))}"
    if isinstance(e, InvalidRequestError):  # the plugin says: the caller's mistake, in its words
        return INVALID_PARAMS, _first_line(str(e))
    if isinstance(e, (InvalidObjectPathError, InstanceNotFoundError)):  # the caller's path or store name
        return INVALID_PARAMS, f"{type(e).__name__}: {_first_line(str(e))}"
    if _remote(e) or isinstance(e, PluginError):
        return PLUGIN_ERROR, f"{type(e).__name__}: {_first_line(str(e))}"
    if isinstance(e, (ValueError, KeyError, TypeError, LookupError)):
        return INVALID_PARAMS, f"{type(e).__name__}: {_first_line(str(e))}" if not isinstance(e, InvalidParams) else _first_line(str(e))
    if isinstance(e, VsmError):
        return SERVER_ERROR, _first_line(str(e))
    logger.opt(exception=e).error("rpc: unexpected {} (a bug: please report it with this trace)", type(e).__name__)
    return SERVER_ERROR, f"internal error ({type(e).__name__}); the daemon's log has the trace"
