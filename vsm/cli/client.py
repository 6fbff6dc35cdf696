"""The CLI's client of a running daemon: JSON-RPC calls and piece streams over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
from pathlib import Path
from urllib.parse import quote, urlencode
from typing import Any, BinaryIO, Callable, Iterable

from ..config import resolve_home
from ..errors import VsmError

__all__ = ["Client", "DaemonError", "DaemonStarting", "daemon_client", "pid_alive", "piece_url"]


class DaemonError(VsmError):
    """The daemon answered with an error (its message is shown as it is)."""

    reply: Any = None  # the daemon's JSON answer, when it gave one


class DaemonStarting(DaemonError):
    """The daemon runs but its manager is not ready yet (HTTP 503 `starting`)."""


# `vsm-pool --no-wait ...`: a daemon still starting is an error instead of a wait
WAIT_FOR_START = True


def daemon_client(home: Path | None, config_file: Path | None = None, wait: bool | None = None) -> "Client | None":
    """A client of the daemon serving this home, or None when none runs. A daemon still
    starting (recovering its journal, starting plugins) is waited for, with its progress on
    stderr, unless `--no-wait` (or wait=False: the caller handles DaemonStarting)."""
    from ..home import daemon_info, read_token, token_path

    home_dir = resolve_home(home)
    info = daemon_info(home_dir)
    if not info or not pid_alive(int(info.get("pid", 0))):
        info = _wait_for_start(home_dir, WAIT_FOR_START if wait is None else wait)
        if info is None:
            return None
    token = os.environ.get("VSM_TOKEN", "")  # act with another (e.g. a read-only) token
    token_from = "$VSM_TOKEN"
    if not token:
        token_from = str(token_path(home_dir))
        try:
            token = read_token(home_dir)
        except FileNotFoundError:
            return None
    client = Client(info["listen"], token, token_from=token_from)
    if wait is not False:
        give_up = not (WAIT_FOR_START if wait is None else wait)
        client.wait_ready(give_up=give_up)
        client.wait_for_plugins = not give_up
    return client


def _wait_for_start(home: Path, wait: bool, timeout: float = 300.0) -> dict[str, Any] | None:
    """A `vsm-pool start` that does not serve yet (it loads its config, builds the bundled
    plugins, binds): its daemon.json once it serves, None when none is starting."""
    import sys
    import time

    from ..home import daemon_info, starting_pid

    pid = starting_pid(home)
    if not pid_alive(pid):
        return None
    line = f"the daemon (pid {pid}) is starting: loading its config and plugins"
    if not wait:
        raise DaemonStarting(f"{line}; run again when it is ready (without --no-wait to wait for it)")
    sys.stderr.write(f"waiting: {line}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = daemon_info(home)
        if info and info.get("listen") and pid_alive(int(info.get("pid", 0))):
            return info
        if not pid_alive(pid):
            raise DaemonError(f"the daemon (pid {pid}) exited while starting: its own output says why")
        time.sleep(0.1)
    raise DaemonStarting(f"{line}: not serving after {timeout:.0f} s")


def pid_alive(pid: int) -> bool:
    """True while the process runs; an exited daemon its parent has not reaped yet (a zombie)
    counts as gone. Read from /proc, not psutil: this is on every client command's path."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parens)
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


class Client:
    def __init__(self, listen: str, token: str, timeout: float = 600.0, token_from: str = "") -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port, self.token, self.timeout = host.strip("[]"), int(port), token, timeout
        self.token_from = token_from  # "$VSM_TOKEN" or the token file: named when it is refused
        self._ids = 0
        # a call whose plugin (its store, sink, namespace) is still starting (-32004, nothing
        # ran) is sent again until it is ready, with the reason on stderr; False: DaemonStarting
        self.wait_for_plugins = False

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def _where(self) -> str:
        return f"the daemon at {self.host}:{self.port}"

    def _exchange(self, verb: str, path: str, what: str, body: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request on its own connection: (HTTP status, body). `what` prefixes the error
        when the daemon cannot be reached."""
        conn = self._conn()
        try:
            conn.request(verb, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise DaemonError(f"{what}cannot reach {self._where()}: {e}") from None
        finally:
            conn.close()

    def _error_text(self, status: int, raw: bytes) -> str:
        """The daemon's own message out of an error body (JSON {"error": ...} or text)."""
        if status == 401:
            if self.token_from == "$VSM_TOKEN":
                return (
                    f"{self._where()} refused the token in $VSM_TOKEN (401): it is none of this daemon's tokens "
                    "(revoked, mistyped, or another home's); see `vsm-pool auth list`, or unset VSM_TOKEN to use <home>/token"
                )
            return f"{self._where()} refused the token in {self.token_from or '<home>/token'} (401): is it this daemon's home?"
        try:
            body = json.loads(raw)
        except ValueError:
            return f"{status}: {raw.decode(errors='replace').strip()[:300]}"
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):  # a JSON-RPC error object
            err = err.get("message", err)
        return f"{status}: {err}"

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of /healthz: 200 ready, 503 starting (with progress)."""
        status, raw = self._exchange("GET", "/healthz", "")
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return status, body if isinstance(body, dict) else {}

    def wait_ready(self, give_up: bool = False, timeout: float = 3600.0) -> None:
        """Until the daemon is ready, show what it is doing (one updated line on a terminal,
        a line per step otherwise). give_up: raise DaemonStarting instead of waiting."""
        import sys
        import time

        deadline = time.monotonic() + timeout
        shown = ""
        while True:
            status, body = self.health()
            if status != 503 or body.get("status") not in ("starting", "failed"):  # ready (or not one to wait for)
                if shown and sys.stderr.isatty():
                    sys.stderr.write("\n")
                return
            progress = body.get("progress") or {}
            if body.get("status") == "failed":
                raise DaemonError(f"the daemon failed to start: {progress.get('error', '?')}")
            step = f" {progress.get('done', 0)}/{progress['total']}" if progress.get("total") else ""
            line = f"the daemon is starting: {progress.get('phase', '...')}{step} ({progress.get('seconds', 0):.0f} s)"
            if give_up:
                raise DaemonStarting(f"{line}; run again when it is ready (without --no-wait to wait for it)")
            if time.monotonic() > deadline:
                raise DaemonStarting(f"{line}: not ready after {timeout:.0f} s")
            if sys.stderr.isatty():
                sys.stderr.write("\r" + line.ljust(len(shown)))
                sys.stderr.flush()
            elif line.split(" (")[0] != shown.split(" (")[0]:
                sys.stderr.write(line + "\n")
            shown = line
            time.sleep(0.2)

    def call(self, method: str, params: Any = None, *, wait_timeout: float = 3600.0) -> Any:
        """One JSON-RPC call; while its plugin is starting and wait_for_plugins, sent again."""
        import sys
        import time

        deadline, shown = time.monotonic() + wait_timeout, ""
        while True:
            try:
                return self._call_once(method, params)
            except DaemonStarting as e:
                if not self.wait_for_plugins or time.monotonic() > deadline:
                    raise
                line = str(e).split(" (")[0]
                if line != shown:
                    sys.stderr.write(f"waiting: {e}\n")
                    shown = line
                time.sleep(0.5)

    def _call_once(self, method: str, params: Any = None) -> Any:
        self._ids += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params if params is not None else {}})
        status, raw = self._exchange("POST", "/rpc/v0", f"{method}: ", body, self._headers({"Content-Type": "application/json"}))
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            if reply["error"].get("code") == -32004:
                raise DaemonStarting(f"{method}: the daemon is {reply['error'].get('message', 'starting')}")
            raise DaemonError(f"{method}: {reply['error'].get('message', reply['error'])}")
        if status != 200 or not isinstance(reply, dict) or "result" not in reply:
            raise DaemonError(f"{method}: {self._error_text(status, raw)}")
        return reply["result"]

    def _upload(self, verb: str, url: str, headers: dict[str, str], what: str, send_body: Callable[[http.client.HTTPConnection], None]) -> Any:
        """One request whose body send_body streams; the daemon's JSON answer, or DaemonError
        with its message (a daemon that stops reading, refusing the body, is heard out)."""
        conn = self._conn()
        try:
            conn.putrequest(verb, url)
            for k, v in self._headers(headers).items():
                conn.putheader(k, v)
            conn.endheaders()
            try:
                send_body(conn)
            except OSError:
                pass  # the daemon stopped reading (it refused the body): its answer says why
            try:
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise DaemonError(f"{what}: the upload broke off ({self._where()}): {e}") from None
        except OSError as e:
            raise DaemonError(f"{what}: cannot reach {self._where()}: {e}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            err = DaemonError(f"{what}: {self._error_text(resp.status, raw)}")
            with contextlib.suppress(ValueError):
                err.reply = json.loads(raw)  # what else the daemon said (an import: what it stored)
            raise err
        return json.loads(raw or b"{}")

    def import_batches(self, batches: Iterable[Any], override: bool, worker_state: str | None) -> dict[str, int]:
        """Stream Arrow record batches to POST /sectors/import as one chunked request (an
        Arrow IPC stream: the schema, each batch, the end marker); {"written", "received"}."""
        params = {"override": "1" if override else "0", **({"worker_state": worker_state} if worker_state else {})}
        it = iter(batches)
        first = next(it, None)
        if first is None:
            return {"written": 0, "received": 0}

        def send(conn: http.client.HTTPConnection) -> None:
            _send_chunk(conn, first.schema.serialize())
            for batch in itertools.chain([first], it):
                _send_chunk(conn, batch.serialize())
            _send_chunk(conn, b"\xff\xff\xff\xff\x00\x00\x00\x00")  # end of the stream
            conn.send(b"0\r\n\r\n")

        headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/vnd.apache.arrow.stream"}
        return self._upload("POST", "/sectors/import?" + urlencode(params), headers, "sectors import", send)  # type: ignore[no-any-return]

    def put_piece(self, store: str, path: str, source: BinaryIO, size: int | None, progress: Callable[[int], None] | None = None) -> Any:
        """Stream source to the store. size None (a pipe, stdin): sent chunked, to its end."""
        length = {"Content-Length": str(size)} if size is not None else {"Transfer-Encoding": "chunked"}

        def send(conn: http.client.HTTPConnection) -> None:
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = source.readinto(buf)
                if not n:
                    break
                conn.send(view[:n] if size is not None else b"%x\r\n%s\r\n" % (n, view[:n]))
                if progress:
                    progress(n)
            if size is None:
                conn.send(b"0\r\n\r\n")

        headers = {**length, "Content-Type": "application/octet-stream"}
        return self._upload("PUT", piece_url(store, path), headers, f"put {store}/{path}", send)

    def get_piece(self, store: str, path: str, sink: BinaryIO, progress: Callable[[int], None] | None = None) -> int:
        conn = self._conn()
        what = f"get {store}/{path}"
        total = 0
        try:
            conn.request("GET", piece_url(store, path), headers=self._headers())
            resp = conn.getresponse()
            if resp.status >= 400:
                raise DaemonError(f"{what}: {self._error_text(resp.status, resp.read())}")
            buf = bytearray(1 << 20)
            while True:
                n = resp.readinto(buf)
                if not n:
                    break
                sink.write(memoryview(buf)[:n])
                total += n
                if progress:
                    progress(n)
            short = resp.length  # bytes the Content-Length still promised (None: not given)
        except (OSError, http.client.HTTPException) as e:
            raise DaemonError(f"{what}: the download broke off after {total} bytes ({self._where()}): {e}") from None
        finally:
            conn.close()
        if short:
            raise DaemonError(f"{what}: the download broke off after {total} bytes, {short} short")
        return total


def _send_chunk(conn: http.client.HTTPConnection, data: Any) -> None:
    """One chunk of a chunked request body (the data is sent as it is, not copied)."""
    conn.send(b"%x\r\n" % data.size if hasattr(data, "size") else b"%x\r\n" % len(data))
    conn.send(memoryview(data))
    conn.send(b"\r\n")


def piece_url(store: str, path: str) -> str:
    """/pieces/<store>/<path>, percent-encoded: a name may hold spaces, '?', '#' or '%'."""
    return f"/pieces/{quote(store, safe='')}/{quote(path, safe='/')}"
