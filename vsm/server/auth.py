"""Who may call what: API tokens with permission levels, and the level each endpoint needs.

    request -> credential (Authorization: Bearer <token>; a dashboard may bring a cookie's)
            -> TokenStore.level(credential) -> Level, or None (401)
            -> needed_for_rpc(method) / needed_for_http(verb, path) -> allowed, or 403 / -32003

Levels are venus-auth's (damocles' ecosystem), ordered read < write < sign < admin; nothing
here signs, so tokens are made read, write or admin. What each level may do is the table
below (README "Permissions"); a manager method missing from it needs admin (fail closed, and
tests/daemon/test_auth.py fails until it is listed).

Tokens are stored hashed (sha256; they are 256-bit random, so a slow hash adds nothing) in
<home>/tokens.json, mode 0600, made and revoked by `vsm-pool auth` without a daemon; the
daemon re-reads the file when it changes, so a revoked token is refused from the next request.
<home>/token, the token the CLI reads, stays the admin token.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "HTTP_LEVELS",
    "Level",
    "RPC_LEVELS",
    "TokenStore",
    "needed_for_http",
    "needed_for_rpc",
    "why_not",
]


class Level(enum.IntEnum):
    READ = 1
    WRITE = 2
    SIGN = 3  # venus-auth's; no method here needs it
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown permission {text!r}: use read, write or admin") from None


READ, WRITE, ADMIN = Level.READ, Level.WRITE, Level.ADMIN
MIN_TOKEN_CHARS = 16

# Manager methods -> the level they need. Reading never changes anything; write changes sector
# state or pieces; admin changes what code runs (plugins) or stops the daemon.
RPC_LEVELS: dict[str, Level] = {
    "status": READ,
    "plugin.list": READ,
    "sinks.status": READ,
    "query": READ,  # confined to reading the sink's tables (plugins/duckdb_sink)
    "query.arrow": READ,
    "sectors.get": READ,
    "sectors.list": READ,
    "sectors.analytics": READ,  # the dashboard's sector charts (queries of the DuckDB sink)
    "sectors.search": READ,  # the dashboard's sector search and a sector's timeline (the same)
    "sectors.history": READ,
    "pieces.stat": READ,
    "pieces.stores": READ,
    "sectors.import": WRITE,
    "sectors.init": WRITE,
    "sectors.update": WRITE,
    "sectors.finalize": WRITE,
    "sectors.restore": WRITE,
    "pieces.delete": WRITE,
    "stores.reserve_space": WRITE,  # damocles' StoreReserveSpace: the sealer's call
    "stores.release_reserved": WRITE,
    "plugin.enable": ADMIN,
    "plugin.disable": ADMIN,
    "plugin.reload": ADMIN,  # loads code from a path
    "plugin.flush": ADMIN,
    "plugin.rescan": ADMIN,
    "config.reload": ADMIN,  # rebuilds pools with the file's settings (issue 26)
    "sinks.rebuild": ADMIN,  # refills a sink from the KV: heavy, an operator's call
    "sinks.forget": ADMIN,  # drops a sink's checkpoint: its backlog is released
    "kv.backup": ADMIN,  # writes the whole KV to a file of the daemon's machine
    "daemon.stop": ADMIN,
}
# A RegisterJsonRpc plugin's methods (`<namespace>.<method>`) may change the plugin's state
# (the limiter's acquire does): write.
PLUGIN_RPC_LEVEL = WRITE

# (verb, first path segment) -> level; /healthz needs no token at all.
HTTP_LEVELS: dict[tuple[str, str], Level] = {
    ("GET", "pieces"): READ,
    ("HEAD", "pieces"): READ,
    ("PUT", "pieces"): WRITE,
    ("DELETE", "pieces"): WRITE,
    ("POST", "sectors"): WRITE,  # /sectors/import: a stream of Arrow batches (imports.py)
    ("GET", "metrics"): READ,  # plugin names, call counts, sink lag: what `status` shows
    ("POST", "rpc"): READ,  # then each method by RPC_LEVELS
}
OPEN_PATHS = frozenset({("GET", "/healthz"), ("HEAD", "/healthz")})


def needed_for_rpc(method: str, known: set[str] | dict[str, Any]) -> Level:
    """The level `method` needs. `known`: the manager's method table; anything else (a plugin
    namespace's method, or no method at all: -32601) needs what plugin methods need, unknown
    names read (so that a read token learns "method not found" and nothing more)."""
    if method in RPC_LEVELS:
        return RPC_LEVELS[method]
    if method in known:
        return ADMIN  # a manager method nobody classified: fail closed
    return PLUGIN_RPC_LEVEL if "." in method else READ


def needed_for_http(verb: str, path: str) -> Level | None:
    """The level an HTTP request needs (None: open). Unknown routes need read (then 404)."""
    if (verb, path) in OPEN_PATHS:
        return None
    head = path.strip("/").split("/", 1)[0]
    return HTTP_LEVELS.get((verb, head), READ)


def why_not(have: Level, need: Level, what: str) -> str | None:
    """None if `have` suffices, else the one-line refusal."""
    if have >= need:
        return None
    article = "an" if need.label[0] in "aeiou" else "a"
    return f"forbidden: {what} needs {article} {need.label} token; this one is {have.label} (vsm-pool auth create-token --perm {need.label})"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class TokenStore:
    """The tokens of one home folder: <home>/token (admin) and <home>/tokens.json (hashed)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.admin_file = self.home / "token"
        self.file = self.home / "tokens.json"
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[int, int, int]] = {}  # file -> (mtime_ns, size, inode) last read
        self._admin = ""
        self._by_hash: dict[str, dict[str, Any]] = {}

    # -- the check (used per request: two stat calls, then dict and digest compares) ---------
    def level(self, credential: str | None) -> Level | None:
        """The level of a presented token, or None when it is not one of this home's."""
        if not credential:
            return None
        self._refresh()
        # a trivial token file (edited by hand to "" or "x") must not let a guess in
        if len(self._admin) >= MIN_TOKEN_CHARS and hmac.compare_digest(credential.encode(), self._admin.encode()):
            return ADMIN
        entry = self._by_hash.get(_digest(credential))
        return Level.parse(entry["perm"]) if entry else None

    def level_of_header(self, header: str | None) -> Level | None:
        """The level for an Authorization header value ("Bearer <token>")."""
        if not header or not header.startswith("Bearer "):
            return None
        return self.level(header[len("Bearer ") :])

    def _refresh(self) -> None:
        with self._lock:
            admin_stamp, tokens_stamp = self._stamp(self.admin_file), self._stamp(self.file)
            if admin_stamp != self._seen.get(self.admin_file):
                try:
                    self._admin = self.admin_file.read_text().strip()
                except FileNotFoundError:
                    self._admin = ""
                self._seen[self.admin_file] = admin_stamp
            if tokens_stamp != self._seen.get(self.file):
                self._by_hash = {e["sha256"]: e for e in self._read()}
                self._seen[self.file] = tokens_stamp

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int]:
        try:
            st = path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # -- managing tokens (the CLI) ---------------------------------------------------------
    def _read(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ValueError(f"{self.file}: unreadable ({e}): fix it or delete it (every token in it is then revoked)") from None
        return list(data.get("tokens", []))

    @contextlib.contextmanager
    def _editing(self) -> Iterator[list[dict[str, Any]]]:
        """The token list under an exclusive lock; written back atomically, mode 0600."""
        self.home.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.home / "tokens.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            tokens = self._read()
            yield tokens
            tmp = self.file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"tokens": tokens}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.file)
        finally:
            os.close(lock_fd)

    def create(self, perm: str, name: str | None = None) -> tuple[str, dict[str, Any]]:
        """A new token (shown once) and its stored entry."""
        level = Level.parse(perm)
        if level is Level.SIGN:
            raise ValueError("no method here needs 'sign': use read, write or admin")
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        with self._editing() as tokens:
            name = name or f"{level.label}-{digest[:6]}"
            if not name.isprintable() or len(name) > 64 or not name.strip():
                raise ValueError(f"token name {name[:80]!r}: use up to 64 printable characters")
            if any(t["name"] == name for t in tokens):
                raise ValueError(f"a token named {name!r} exists: revoke it first or choose another --name")
            entry = {"name": name, "id": digest[:12], "perm": level.label, "created": int(time.time()), "sha256": digest}
            tokens.append(entry)
        return token, entry

    def list(self) -> list[dict[str, Any]]:
        """Every stored token (never the token itself), the admin token file first."""
        out = [{"name": "(token file)", "id": "-", "perm": "admin", "created": None, "file": str(self.admin_file)}]
        return out + [{k: v for k, v in t.items() if k != "sha256"} for t in self._read()]

    def revoke(self, name_or_id: str) -> dict[str, Any]:
        with self._editing() as tokens:
            hits = [t for t in tokens if name_or_id in (t["name"], t["id"])]
            if not hits:
                known = ", ".join(t["name"] for t in tokens) or "none"
                raise ValueError(f"no token named or with id {name_or_id!r} (tokens: {known})")
            tokens[:] = [t for t in tokens if t not in hits]
        return {k: v for k, v in hits[0].items() if k != "sha256"}
