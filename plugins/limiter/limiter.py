"""Concurrency limits shared by every sealing worker: a token per held slot, with a lease.

Limits come from `<plugins dir>/limiter.toml` (as the Go example reads its own config in
OnInit), e.g. `add_pieces = 4`; a name without a limit gets `default` (1).
"""

from __future__ import annotations

import time
import tomllib
import uuid
from pathlib import Path

from vsm.sdk import Manifest

_limits: dict[str, int] = {"default": 1}
LEASE_SECONDS = 300.0


def on_init(plugins_dir: str, manifest: Manifest) -> None:
    path = Path(plugins_dir) / "limiter.toml"
    if path.is_file():
        _limits.update({k: int(v) for k, v in tomllib.loads(path.read_text()).items()})


class Limiter:
    def __init__(self) -> None:
        self._held: dict[str, dict[str, float]] = {}  # name -> token -> lease expiry

    def _live(self, name: str) -> dict[str, float]:
        now = time.monotonic()
        held = self._held.setdefault(name, {})
        for token in [t for t, until in held.items() if until < now]:
            del held[token]  # a holder that died without release frees its slot at lease end
        return held

    def acquire(self, name: str) -> str | None:
        """A token if a slot of `name` is free, else null: the caller retries later."""
        held = self._live(name)
        if len(held) >= _limits.get(name, _limits["default"]):
            return None
        token = uuid.uuid4().hex
        held[token] = time.monotonic() + LEASE_SECONDS
        return token

    def extend(self, name: str, token: str) -> bool:
        held = self._live(name)
        if token not in held:
            return False
        held[token] = time.monotonic() + LEASE_SECONDS
        return True

    def release(self, name: str, token: str) -> bool:
        return self._live(name).pop(token, None) is not None

    def status(self) -> dict[str, dict[str, int]]:
        return {n: {"held": len(self._live(n)), "limit": _limits.get(n, _limits["default"])} for n in list(self._held)}


def handler() -> tuple[str, Limiter]:
    return "VSM_LIMITER", Limiter()
