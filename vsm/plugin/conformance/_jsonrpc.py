"""The RegisterJsonRpc kit: the plugin's namespace served exactly as the daemon serves it.

    JSON-RPC request bytes -> vsm.server.jsonrpc.dispatch_rpc (the daemon's own dispatcher,
    with the daemon's own method table) -> the plugin's pool -> invoke(method, params)

The kit knows nothing of what the methods mean: it calls each with arguments made from its
signature (a str parameter gets "kit", an int 1, ...), by position and by name, as a
notification, and with wrong params, and checks what comes back against the documented
mapping (docs/plugin-format.md, "RegisterJsonRpc").
"""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any, Callable

from ._result import CheckResult, SkipCheck, expect, run_checks

__all__ = ["JSONRPC_CHECKS", "RpcKit", "run_jsonrpc_kit"]

# What a parameter gets, by the first type named in its annotation (the rest: "kit").
_SAMPLES: tuple[tuple[str, Any], ...] = (
    ("bool", True),
    ("int", 1),
    ("float", 1.5),
    ("str", "kit"),
    ("bytes", "kit"),
    ("list", []),
    ("Sequence", []),
    ("tuple", []),
    ("dict", {}),
    ("Mapping", {}),
)


def sample(annotation: str) -> Any:
    """A JSON value for a parameter annotated `annotation` (text)."""
    first = annotation.replace("typing.", "").split("|")[0].split("[")[0].strip().strip("'\"")
    for name, value in _SAMPLES:
        if first == name or first.startswith("Optional") and name in annotation:
            return value
    return "kit"


class RpcKit:
    """The plugin's namespace behind the daemon's dispatcher, and its methods' signatures."""

    def __init__(self, pool: Any) -> None:
        from vsm.server.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, PLUGIN_ERROR
        from vsm.server.methods import METHODS

        self.pool = pool
        self.namespace, methods = pool.call("describe")
        self.methods: list[str] = sorted(methods)
        self.signatures: dict[str, list[tuple[str, str, bool, str]]] = pool.call("signatures")
        self.daemon_methods = METHODS
        self.codes = types.SimpleNamespace(invalid_params=INVALID_PARAMS, not_found=METHOD_NOT_FOUND, plugin_error=PLUGIN_ERROR)
        plugin = types.SimpleNamespace(pool=pool)
        self._manager = types.SimpleNamespace(rpc={self.namespace: (plugin, set(methods))})
        self._ids = iter(range(1, 1 << 30))
        self.not_json: list[str] = []  # replies holding a value JSON has no form for

    def dispatch(self, payload: Any) -> Any:
        """The daemon's reply to one request body (a dict, a list for a batch, None)."""
        from vsm.server.jsonrpc import dispatch_rpc

        raw = json.dumps(payload).encode()
        reply = asyncio.run(dispatch_rpc(raw, self.daemon_methods, self._manager, lambda: None))
        try:
            return json.loads(json.dumps(reply))
        except (TypeError, ValueError):  # the daemon sends str() of what is not JSON: say so
            self.not_json.append(f"{reply!r:.120}")
            return json.loads(json.dumps(reply, default=str))

    def call(self, method: str, params: Any) -> dict[str, Any]:
        """{"result": ...} or {"error": {...}} of one call of `<namespace>.<method>`."""
        reply = self.dispatch({"jsonrpc": "2.0", "id": next(self._ids), "method": f"{self.namespace}.{method}", "params": params})
        return reply  # type: ignore[no-any-return]

    def arguments(self, method: str) -> tuple[list[Any], dict[str, Any]]:
        """(positional, named) arguments for the method's required parameters, from their
        annotations (a positional-only one is left out of named, a keyword-only one out of
        positional)."""
        positional: list[Any] = []
        named: dict[str, Any] = {}
        for name, kind, has_default, annotation in self.signatures.get(method, []):
            if has_default or kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
                continue
            value = sample(annotation)
            if kind != "KEYWORD_ONLY":
                positional.append(value)
            if kind != "POSITIONAL_ONLY":
                named[name] = value
        return positional, named

    def required(self, method: str) -> list[str]:
        return [n for n, kind, has_default, _ in self.signatures.get(method, []) if not has_default and kind not in ("VAR_POSITIONAL", "VAR_KEYWORD")]


def _daemon_namespaces(kit: RpcKit) -> set[str]:
    return {name.split(".")[0] for name in kit.daemon_methods} | {"daemon"}


def _outcome(reply: dict[str, Any]) -> str:
    return "result" if "result" in reply else f"error {reply['error']['code']}"


# -- the rules -----------------------------------------------------------------------------


def handler_names_a_namespace(kit: RpcKit) -> None:
    """Handler() returns (namespace, handler): the namespace is a non-empty name, none of the daemon's own (sectors, plugin, pieces, sinks, query, status, daemon), and the handler has at least one public method."""
    ns = kit.namespace
    expect(isinstance(ns, str) and ns != "" and "." not in ns and ns.strip() == ns, f"namespace {ns!r}: use a plain name like MY_PLUGIN")
    taken = sorted(_daemon_namespaces(kit))
    expect(ns not in taken, f"namespace {ns!r} is the daemon's own ({', '.join(taken)}): its methods would be shadowed")
    expect(bool(kit.methods), f"the handler of {ns} has no public method")


def every_method_is_served(kit: RpcKit) -> None:
    """Every public method of the handler is served as <namespace>.<method>; a private one (_name) or an unknown one is method not found (-32601)."""
    for method in kit.methods:
        reply = kit.call(method, kit.arguments(method)[1])
        error = reply.get("error") or {}
        expect(error.get("code") != kit.codes.not_found, f"{kit.namespace}.{method} is listed but not found: {error.get('message')}")
    for missing in ("_kit_private", "kit_no_such_method", "__init__"):
        reply = kit.call(missing, [])
        code = reply.get("error", {}).get("code")
        expect(code == kit.codes.not_found, f"{kit.namespace}.{missing} answered {_outcome(reply)}, expected method not found ({kit.codes.not_found})")


# What Python raises about the code itself, not about the values it was given: a plugin error of
# one of these is a bug. Any other exception, the plugin's own classes too, is its answer, as
# go-jsonrpc sends any error a method returns (issue 26: echo.Fail raising EchoFailed failed).
BUG_EXCEPTIONS = frozenset({
    "NameError", "UnboundLocalError", "AttributeError", "ImportError", "ModuleNotFoundError",
    "SyntaxError", "IndentationError", "RecursionError", "ZeroDivisionError",
})


def every_method_answers(kit: RpcKit) -> None:
    """Each method, called with arguments made from its signature (str "kit", int 1, float 1.5, bool true, list [], dict {}), answers a JSON value (not bytes or an object the daemon would send as its str()) or a documented error (invalid params -32602; a plugin error -32001 of any exception it raises, its own classes too, as go-jsonrpc sends any error), never a bug's exception (NameError, UnboundLocalError, AttributeError, ImportError, SyntaxError, RecursionError, ZeroDivisionError) nor a crash."""
    allowed = {kit.codes.invalid_params, kit.codes.plugin_error}
    for method in kit.methods:
        kit.not_json.clear()
        reply = kit.call(method, kit.arguments(method)[1] or [])
        expect(not kit.not_json, f"{kit.namespace}.{method} returned a value that is not JSON (the caller gets its str()): {''.join(kit.not_json)}")
        if "error" in reply:
            err = reply["error"]
            kind = (err.get("data") or {}).get("type", "")
            bug = err["code"] == kit.codes.plugin_error and kind in BUG_EXCEPTIONS
            expect(err["code"] in allowed and not bug, f"{kit.namespace}.{method}: error {err['code']}: {err['message']}")


def positional_and_named_params(kit: RpcKit) -> None:
    """A method answers alike whether its params come as an array (by position) or as an object (by name): both a result, or both the same error code."""
    tried = 0
    for method in kit.methods:
        positional, named = kit.arguments(method)
        if not positional or len(named) != len(positional):
            continue
        tried += 1
        by_position, by_name = kit.call(method, positional), kit.call(method, named)
        expect(
            _outcome(by_position) == _outcome(by_name),
            f"{kit.namespace}.{method}: by position {_outcome(by_position)}, by name {_outcome(by_name)}"
            + (f" ({by_name['error']['message']})" if "error" in by_name else ""),
        )
    if not tried:
        raise SkipCheck("no method takes parameters that can be given both ways")


def wrong_params_are_invalid_params(kit: RpcKit) -> None:
    """One argument too many, an unknown parameter name, or a required one left out is invalid params (-32602) with the reason."""
    tried = 0
    for method in kit.methods:
        if any(kind in ("VAR_POSITIONAL", "VAR_KEYWORD") for _, kind, _, _ in kit.signatures.get(method, [])):
            continue
        positional, named = kit.arguments(method)
        n_params = len(kit.signatures.get(method, []))
        cases = [("one argument too many", [*positional] + ["kit"] * (n_params - len(positional) + 1)), ("an unknown parameter name", {**named, "kit_unknown": 1})]
        if kit.required(method):
            cases.append(("a required parameter left out", []))
        for what, params in cases:
            tried += 1
            reply = kit.call(method, params)
            code = reply.get("error", {}).get("code")
            expect(code == kit.codes.invalid_params, f"{kit.namespace}.{method} with {what} answered {_outcome(reply)}, expected invalid params ({kit.codes.invalid_params})")
    if not tried:
        raise SkipCheck("every method takes *args or **kwargs")


def notifications_get_no_reply(kit: RpcKit) -> None:
    """A call without an id (a notification) gets no reply, alone or in a batch, where the calls with an id get theirs, in any order, matched by id."""
    method = kit.methods[0]
    params = kit.arguments(method)[1]
    alone = kit.dispatch({"jsonrpc": "2.0", "method": f"{kit.namespace}.{method}", "params": params})
    expect(alone is None, f"a notification of {kit.namespace}.{method} got a reply: {alone!r:.120}")
    batch = [
        {"jsonrpc": "2.0", "method": f"{kit.namespace}.{method}", "params": params},
        {"jsonrpc": "2.0", "id": "kit-1", "method": f"{kit.namespace}.{method}", "params": params},
        {"jsonrpc": "2.0", "method": f"{kit.namespace}.kit_no_such_method", "params": []},
    ]
    replies = kit.dispatch(batch)
    expect(isinstance(replies, list) and [r.get("id") for r in replies] == ["kit-1"], f"a batch of 2 notifications and 1 call got {replies!r:.200}")


JSONRPC_CHECKS: tuple[Callable[[RpcKit], None], ...] = (
    handler_names_a_namespace,
    every_method_is_served,
    every_method_answers,
    positional_and_named_params,
    wrong_params_are_invalid_params,
    notifications_get_no_reply,
)


def run_jsonrpc_kit(kit: RpcKit, checks: tuple[Callable[[RpcKit], None], ...] = JSONRPC_CHECKS, **kw: Any) -> list[CheckResult]:
    return run_checks(checks, kit, **kw)
