"""The CLI's client of a running daemon: JSON-RPC calls and piece streams over HTTP."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .config import resolve_home
from .errors import VsmError

__all__ = ["Client", "DaemonError", "daemon_client", "pid_alive"]


class DaemonError(VsmError):
    """The daemon answered with an error (its message is shown as it is)."""


def daemon_client(home: Path | None, config_file: Path | None = None) -> "Client | None":
    """A client of the daemon serving this home, or None when none runs."""
    from .daemon import daemon_info, read_token

    home_dir = resolve_home(home)
    info = daemon_info(home_dir)
    if not info or not pid_alive(int(info.get("pid", 0))):
        return None
    try:
        token = read_token(home_dir)
    except FileNotFoundError:
        return None
    return Client(info["listen"], token)


def pid_alive(pid: int) -> bool:
    """True while the process runs; an exited daemon its parent has not reaped yet (a zombie)
    counts as gone."""
    import psutil

    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class Client:
    def __init__(self, listen: str, token: str, timeout: float = 600.0) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port, self.token, self.timeout = host.strip("[]"), int(port), token, timeout
        self._ids = 0

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def call(self, method: str, params: Any = None) -> Any:
        self._ids += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params if params is not None else {}})
        conn = self._conn()
        try:
            conn.request("POST", "/rpc/v0", body=body, headers=self._headers({"Content-Type": "application/json"}))
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise DaemonError(f"cannot reach the daemon at {self.host}:{self.port}: {e}") from None
        finally:
            conn.close()
        if resp.status == 401:
            raise DaemonError("the daemon refused the token (401): is <home>/token the one of this daemon?")
        reply = json.loads(raw)
        if "error" in reply:
            raise DaemonError(f"{method}: {reply['error']['message']}")
        return reply["result"]

    def put_piece(self, store: str, path: str, source: BinaryIO, size: int, progress: Callable[[int], None] | None = None) -> Any:
        conn = self._conn()
        try:
            conn.putrequest("PUT", f"/pieces/{store}/{path}")
            for k, v in self._headers({"Content-Length": str(size), "Content-Type": "application/octet-stream"}).items():
                conn.putheader(k, v)
            conn.endheaders()
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = source.readinto(buf)
                if not n:
                    break
                conn.send(view[:n])
                if progress:
                    progress(n)
            resp = conn.getresponse()
            body = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status >= 400:
            raise DaemonError(f"put {store}/{path}: {resp.status}: {body.get('error', body)}")
        return body

    def get_piece(self, store: str, path: str, sink: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
        conn = self._conn()
        try:
            conn.request("GET", f"/pieces/{store}/{path}", headers=self._headers())
            resp = conn.getresponse()
            if resp.status >= 400:
                body = resp.read()
                raise DaemonError(f"get {store}/{path}: {resp.status}: {json.loads(body or b'{}').get('error', body)}")
            total = 0
            buf = bytearray(1 << 20)
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                sink.write(memoryview(buf)[:n])
                total += n
                if progress:
                    progress(n)
            return total
        finally:
            conn.close()

    def piece_request(self, verb: str, store: str, path: str) -> http.client.HTTPResponse:
        conn = self._conn()
        conn.request(verb, f"/pieces/{store}/{path}", headers=self._headers())
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp
