"""__NAME__: a JSON-RPC namespace, served by the daemon at /rpc/v0 as __NAME_UPPER__.<method>.

Every public method of Handler is a JSON-RPC method; params come by position (an array) or by
name (an object). Raise ValueError or TypeError for bad params (-32602, invalid params) and
vsm.sdk.PluginError for anything else the caller should see (-32001). Return JSON values.
"""

from __future__ import annotations

from vsm.sdk import PluginError


class Handler:
    def __init__(self) -> None:
        self.greeted = 0

    def echo(self, text: str) -> str:
        return text

    def greet(self, name: str, greeting: str = "hello") -> dict[str, object]:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        if len(name) > 64:
            raise PluginError(f"{name[:16]}...: names are at most 64 characters")
        self.greeted += 1
        return {"text": f"{greeting}, {name}", "greeted": self.greeted}


def handler() -> tuple[str, Handler]:
    return "__NAME_UPPER__", Handler()
