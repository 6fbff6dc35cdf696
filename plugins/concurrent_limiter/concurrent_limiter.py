"""concurrent-limiter: damocles' example of the same name, in Python. Cluster-wide concurrency
limits served as the JSON-RPC namespace DAMOCLES_LIMITER, which sealing workers call:

    Acquire(name, id) -> slot     a free slot "<i>-<name>" (i < the name's limit), held by id for
                                  30 s; "" when every slot is held; error "invalid name: <name>"
                                  for a name without a limit
    Extend(slot, id) -> bool      hold the slot 30 s more (taking it again if it expired); false
                                  if another id holds it or the slot is not of a limited name
    Release(slot, id) -> bool     free the slot if id holds it; true; error "invalid slot <slot>"

Config, as the Go example: `<plugins dir>/concurrent-limiter.toml`, written on first start with
every line commented out (the defaults then apply):

    DataDir = "<plugins dir>/.concurrent-limiter"   # where the held slots are kept
    [Concurrent]
    add_pieces = 1024                               # slots per name (merged into the defaults)

Persistence: the Go example keeps slots in a Badger store in DataDir with a TTL; here a SQLite
file in DataDir (`slots.sqlite`, slot -> id and expiry), so held slots survive a restart of the
daemon and every worker of the pool sees the same slots (each call is one IMMEDIATE transaction).
"""

from __future__ import annotations

import os
import sqlite3
import time
import tomllib
from pathlib import Path
from typing import Any

from vsm.sdk import Manifest

__all__ = ["handler", "on_init", "on_shutdown"]

CONFIG_FILE = "concurrent-limiter.toml"
SLOT_TIMEOUT = 30.0  # seconds, as the Go example's NewConcurrentLimiter(..., 30*time.Second, ...)

_config: dict[str, Any] = {}
_store: "_Store | None" = None


def _default_config(plugins_dir: str) -> dict[str, Any]:
    return {"DataDir": os.path.join(plugins_dir, ".concurrent-limiter"), "Concurrent": {"add_pieces": 1024}}


def _commented_default(config: dict[str, Any]) -> str:
    """What the Go example writes (ConfigComment of its Config with CommentAll, BurntSushi/toml)."""
    lines = [f'DataDir = "{config["DataDir"]}"', "", "[Concurrent]", *(f"{k} = {v}" for k, v in sorted(config["Concurrent"].items())), ""]
    return "# Default config:\n" + "\n".join("#" + line for line in lines)


def load_config(plugins_dir: str) -> dict[str, Any]:
    """The Go example's LoadConfig: defaults, overlaid by the file (keys match as BurntSushi/toml
    matches them, case-insensitively); a missing file is written, commented out."""
    path = Path(plugins_dir) / CONFIG_FILE
    config = _default_config(plugins_dir)
    # empty: made by vsm-pool so its sandbox can grant it (a rule needs an existing file)
    if not path.exists() or path.stat().st_size == 0:
        path.write_text(_commented_default(config), encoding="utf-8")
        return config
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: TOML syntax error: {e}") from None
    for key, value in data.items():
        if key.casefold() == "datadir":
            if not isinstance(value, str):
                raise ValueError(f"{path}: DataDir: must be a string, got {value!r}")
            config["DataDir"] = value
        elif key.casefold() == "concurrent":
            if not isinstance(value, dict):
                raise ValueError(f"{path}: Concurrent: must be a table of name = limit")
            for name, limit in value.items():
                if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 0xFFFF:
                    raise ValueError(f"{path}: Concurrent.{name}: must be a whole number 0-65535 (Go uint16), got {limit!r}")
                config["Concurrent"][name] = limit
        else:
            raise ValueError(f"{path}: {key}: unknown key (DataDir, [Concurrent])")
    return config


def on_init(plugins_dir: str, manifest: Manifest) -> None:
    global _config, _store
    _config = load_config(plugins_dir)
    _store = _Store(_config["DataDir"])


def on_shutdown(manifest: Manifest) -> None:
    if _store is not None:
        _store.close()


class _Store:
    """Held slots: slot -> (id, expiry in wall-clock seconds); an expired slot is free."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self._db = sqlite3.connect(os.path.join(data_dir, "slots.sqlite"), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS slots (slot TEXT PRIMARY KEY, id TEXT NOT NULL, expires REAL NOT NULL)")

    def update(self, fn: Any) -> Any:
        """fn(get, set, delete) in one IMMEDIATE transaction (the Go example's Update)."""
        db, now = self._db, time.time()

        def get(slot: str) -> str | None:
            row = db.execute("SELECT id FROM slots WHERE slot = ? AND expires > ?", (slot, now)).fetchone()
            return None if row is None else row[0]

        def set_(slot: str, ident: str) -> None:
            db.execute("INSERT OR REPLACE INTO slots (slot, id, expires) VALUES (?, ?, ?)", (slot, ident, now + SLOT_TIMEOUT))

        def delete(slot: str) -> None:
            db.execute("DELETE FROM slots WHERE slot = ?", (slot,))

        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(get, set_, delete)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return out

    def close(self) -> None:
        self._db.close()


class ConcurrentLimiter:
    """The namespace's methods, named as go-jsonrpc names the Go handler's."""

    def __init__(self, concurrent: dict[str, int], store: _Store) -> None:
        self._concurrent, self._store = concurrent, store

    def _check_slot(self, slot: str) -> bool:
        parts = slot.split("-", 1)
        return len(parts) == 2 and parts[1] in self._concurrent

    def Acquire(self, name: str, id: str) -> str:  # noqa: N802, A002 - the Go method and parameter names
        slots = [f"{i}-{name}" for i in range(self._concurrent.get(name, 0))]
        if not slots:
            raise ValueError(f"invalid name: {name}")

        def take(get: Any, set_: Any, _delete: Any) -> str:
            for slot in slots:
                if get(slot) is None:
                    set_(slot, id)
                    return slot
            return ""

        return str(self._store.update(take))

    def Release(self, slot: str, id: str) -> bool:  # noqa: N802, A002
        if not self._check_slot(slot):
            raise ValueError(f"invalid slot {slot}")

        def release(get: Any, _set: Any, delete: Any) -> None:
            if get(slot) == id:
                delete(slot)

        self._store.update(release)
        return True  # Go: ok = err == nil ("jsonrpc does not allow returning nil")

    def Extend(self, slot: str, id: str) -> bool:  # noqa: N802, A002
        if not self._check_slot(slot):
            return False

        def extend(get: Any, set_: Any, _delete: Any) -> bool:
            holder = get(slot)
            if holder is None or holder == id:
                set_(slot, id)
                return True
            return False

        return bool(self._store.update(extend))


def handler() -> tuple[str, ConcurrentLimiter]:
    if _store is None:
        raise RuntimeError("concurrent-limiter: on_init did not run")
    return "DAMOCLES_LIMITER", ConcurrentLimiter(dict(_config["Concurrent"]), _store)
