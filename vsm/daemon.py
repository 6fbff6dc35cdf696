"""`vsm-pool start`: the daemon. aiohttp serves JSON-RPC 2.0, piece streams, health and metrics.

    POST /rpc/v0                 JSON-RPC 2.0 (single or batch); plugin namespaces too
    PUT  /pieces/{store}/{path}  streaming upload -> the store's pool, through shared memory
    GET  /pieces/{store}/{path}  streaming download; HEAD gives the size; DELETE removes
    GET  /healthz                no token needed
    GET  /metrics                Prometheus text

Every endpoint but /healthz needs `Authorization: Bearer <token>`; the token is made on first
start in <home>/token (mode 0600). Blocking work (pool calls) runs in a thread pool so one slow
plugin never stalls the event loop or the other requests. A piece transfer whose client stalls
for $VSM_TRANSFER_IDLE_TIMEOUT seconds (default 120) is failed, which frees its worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web
from loguru import logger

from executors import PoolError

from .config import Config
from .errors import VsmError
from .manager import Manager
from .rpc import RpcError, dispatch_rpc
from .sdk import InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError
from .sdk import errors as sdk_errors

__all__ = ["DaemonAlreadyRunning", "read_token", "run_daemon", "token_path"]

PIECE_CHUNK = 1 << 20
# A stopping daemon lets in-flight requests finish for this long, then fails them: small calls
# take milliseconds; a piece transfer that needs longer is cut (the client retries it).
SHUTDOWN_GRACE = 10.0
# A piece transfer whose client neither sends nor takes a byte for this long is failed: its
# stream holds a worker of the store's pool, which must not wait on a vanished client forever.
TRANSFER_IDLE_TIMEOUT = float(os.environ.get("VSM_TRANSFER_IDLE_TIMEOUT", "120"))


class DaemonAlreadyRunning(VsmError):
    pass


def token_path(home: Path) -> Path:
    return Path(home) / "token"


def read_token(home: Path) -> str:
    return token_path(home).read_text().strip()


MIN_TOKEN_CHARS = 16


def _ensure_token(home: Path) -> str:
    path = token_path(home)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # keep it the owner's only, whatever happened to it since
        token = read_token(home)
        if len(token) >= MIN_TOKEN_CHARS and token.isprintable() and " " not in token:
            return token
        # an empty or trivial token would let "Bearer " (or a guess) in: make a real one
        logger.warning("{}: the token is empty or shorter than {} characters; writing a new one", path, MIN_TOKEN_CHARS)
        path.unlink()
        return _ensure_token(home)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return read_token(home)


@contextlib.contextmanager
def _single_instance(home: Path) -> Any:
    """One daemon per home folder: an flock held for the daemon's life."""
    lock_path = Path(home) / "daemon.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = daemon_info(home) or {}
        raise DaemonAlreadyRunning(
            f"vsm-pool is already running for {home} (pid {info.get('pid', '?')}, listening on {info.get('listen', '?')})"
        ) from None
    try:
        yield
    finally:
        (Path(home) / "daemon.json").unlink(missing_ok=True)
        os.close(fd)


def daemon_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(home) / "daemon.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as e:
        sock.close()
        raise VsmError(f"cannot listen on {listen}: {e.strerror} (is another vsm-pool running? set [Common.Api] Listen)") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run_daemon(config: Config, home: Path) -> None:
    """Start everything, serve until SIGTERM/SIGINT or `vsm-pool stop`, then stop everything."""
    with _single_instance(home):
        sock = _bind(config.api.listen)
        token = _ensure_token(home)
        manager = Manager(config)
        try:
            manager.start()
            asyncio.run(_serve(manager, sock, token, home))
        finally:
            sock.close()
            manager.close()
            logger.info("vsm-pool stopped")


async def _serve(manager: Manager, sock: socket.socket, token: str, home: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="vsm-api")
    loop.set_default_executor(threads)
    app = make_app(manager, token, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    listen = f"{host}:{port}"
    (home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "listen": listen, "started": time.time()}))
    logger.info("vsm-pool serving on http://{} (JSON-RPC at /rpc/v0)", listen)
    await stop.wait()
    logger.info("vsm-pool stopping: finishing in-flight requests")
    await runner.cleanup()  # stops accepting, waits for handlers up to shutdown_timeout
    # Pool calls of cancelled handlers may still run in the threads, and an upload's reader
    # needs this loop to get its bytes (or its end): wait for them without blocking the loop.
    threads.shutdown(wait=False, cancel_futures=True)
    await loop.shutdown_default_executor()


def make_app(manager: Manager, token: str, request_stop: Callable[[], None]) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if not (request.path == "/healthz" and request.method in ("GET", "HEAD")):
            given = request.headers.get("Authorization", "").encode()
            if not secrets.compare_digest(given, expected):
                return web.Response(status=401, text="401: missing or wrong bearer token\n")
        return await handler(request)

    app = web.Application(middlewares=[auth], client_max_size=manager.config.api.max_body_bytes)
    app["manager"] = manager
    app["request_stop"] = request_stop
    app["metrics"] = _Metrics(manager)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/rpc/v0", _rpc)
    app.router.add_put("/pieces/{store}/{path:.+}", _piece_put)
    app.router.add_get("/pieces/{store}/{path:.+}", _piece_get, allow_head=False)
    app.router.add_route("HEAD", "/pieces/{store}/{path:.+}", _piece_head)
    app.router.add_delete("/pieces/{store}/{path:.+}", _piece_delete)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    body = await asyncio.get_running_loop().run_in_executor(None, request.app["metrics"].render)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _rpc(request: web.Request) -> web.Response:
    limit = request.app["manager"].config.api.max_body_bytes
    too_large = web.json_response(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": f"request body over {limit} bytes ([Common.Api] MaxBodyBytes)"}},
        status=413,
    )
    if request.content_length is not None and request.content_length > limit:
        too_large.force_close()  # answer on the header: never wait for a body we would refuse
        return too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        too_large.force_close()
        return too_large
    reply = await dispatch_rpc(raw, request.app["manager"], request.app["request_stop"])
    if reply is None:  # only notifications
        return web.Response(status=204)
    return web.json_response(reply, dumps=lambda o: json.dumps(o, default=str))


# --- pieces ------------------------------------------------------------------------------

_PIECE_STATUS: list[tuple[type[BaseException], int]] = [
    (ObjectNotFoundError, 404),
    (InvalidObjectPathError, 400),
    (ReadOnlyStoreError, 403),
    (PoolError, 503),
    (sdk_errors.PluginError, 500),
]


def _piece_error(e: BaseException) -> web.Response:
    for kind, status in _PIECE_STATUS:
        if isinstance(e, kind):
            return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=status)
    raise e


def _store_or_404(request: web.Request) -> Any:
    manager: Manager = request.app["manager"]
    name = request.match_info["store"]
    store = manager.stores.get(name)
    if store is None:
        cause = manager.store_errors.get(name) or f"no store named {name!r} (stores: {', '.join(sorted(manager.stores)) or 'none'})"
        raise web.HTTPNotFound(text=json.dumps({"error": cause}), content_type="application/json")
    return store


class _BodyReader:
    """A blocking reader over the request body, for the store's pool to readinto shared memory.
    It runs in a worker thread and pulls chunks from the event loop."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self._content = request.content
        self._loop = loop
        self._pending = memoryview(b"")
        self._cancelled = ""
        self.received = 0
        self.expected = request.content_length

    def cancel(self, why: str) -> None:
        """Fail the next read (the handler is gone): the store drops its partial object."""
        self._cancelled = why

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        fut = asyncio.run_coroutine_threadsafe(self._content.readany(), self._loop)
        idle = 0.0
        while True:
            if self._cancelled:
                fut.cancel()
                raise ConnectionError(f"upload cancelled after {self.received} bytes: {self._cancelled}")
            try:
                return fut.result(0.5)
            except concurrent.futures.TimeoutError:
                idle += 0.5
                if idle >= TRANSFER_IDLE_TIMEOUT:
                    fut.cancel()
                    raise ConnectionError(f"upload stalled: no byte for {TRANSFER_IDLE_TIMEOUT:.0f}s after {self.received} bytes") from None
            except concurrent.futures.CancelledError:  # aiohttp cancels the payload on shutdown
                raise ConnectionError(f"upload cancelled after {self.received} bytes: the daemon is stopping") from None
            except Exception as e:  # the connection broke: aiohttp fails the payload
                raise ConnectionError(f"upload cut off after {self.received} of {self.expected} bytes: {e or type(e).__name__}") from None

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if not self._pending:
            chunk = self._next_chunk()
            if not chunk:
                if self.expected is not None and self.received < self.expected:
                    raise ConnectionError(f"upload cut off after {self.received} of {self.expected} bytes")
                return 0
            self._pending = memoryview(chunk)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.received += n
        return n

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else PIECE_CHUNK)
        n = self.readinto(buf)
        return bytes(buf[:n])


async def _piece_put(request: web.Request) -> web.Response:
    store = _store_or_404(request)
    path = request.match_info["path"]
    loop = asyncio.get_running_loop()
    reader = _BodyReader(request, loop)
    try:
        size = await loop.run_in_executor(None, store.put, path, reader)
    except asyncio.CancelledError:
        reader.cancel("the daemon is stopping")
        logger.warning("upload {}/{} cancelled after {} bytes, nothing stored: the daemon is stopping", store.name, path, reader.received)
        raise
    except Exception as e:
        # the body's own failure (cut off, stalled, cancelled) comes back as it is, or as the cause
        if not isinstance(e, ConnectionError) and not isinstance(e.__cause__, ConnectionError) and not str(e).startswith("upload "):
            return _piece_error(e)
        logger.warning("upload {}/{} failed, nothing stored: {}", store.name, path, e)
        return web.json_response({"error": f"{store.name}/{path}: {e}"}, status=400)
    return web.json_response({"store": store.name, "path": path, "size": size}, status=201)


async def _piece_get(request: web.Request) -> web.StreamResponse:
    store = _store_or_404(request)
    path = request.match_info["path"]
    loop = asyncio.get_running_loop()
    try:
        size = (await loop.run_in_executor(None, store.stat, path)).size
        reader = await loop.run_in_executor(None, store.get, path)
    except Exception as e:
        return _piece_error(e)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
    try:
        await response.prepare(request)
        async for chunk in _chunks(reader, loop):
            # a client that takes nothing for this long holds a worker of the store: drop it
            await asyncio.wait_for(response.write(chunk), TRANSFER_IDLE_TIMEOUT)
        await response.write_eof()
    except asyncio.TimeoutError:
        logger.warning("download {}/{} dropped: the client took no byte for {:.0f}s", store.name, path, TRANSFER_IDLE_TIMEOUT)
        if request.transport is not None:
            request.transport.close()  # the body is incomplete: the client sees a short read
    except (ConnectionError, asyncio.CancelledError) as e:
        logger.debug("download {}/{} ended early: {}", store.name, path, type(e).__name__)
        raise
    finally:
        await loop.run_in_executor(None, reader.close)  # early close cancels the stream
    return response


async def _chunks(reader: Any, loop: asyncio.AbstractEventLoop) -> AsyncIterator[bytes]:
    while True:
        chunk = await loop.run_in_executor(None, reader.read, PIECE_CHUNK)
        if not chunk:
            return
        yield chunk


async def _piece_head(request: web.Request) -> web.Response:
    store = _store_or_404(request)
    try:
        stat = await asyncio.get_running_loop().run_in_executor(None, store.stat, request.match_info["path"])
    except Exception as e:
        return web.Response(status=_piece_error(e).status)
    return web.Response(headers={"Content-Length": str(stat.size)})


async def _piece_delete(request: web.Request) -> web.Response:
    store = _store_or_404(request)
    try:
        await asyncio.get_running_loop().run_in_executor(None, store.delete, request.match_info["path"])
    except Exception as e:
        return _piece_error(e)
    return web.Response(status=204)


# --- metrics -----------------------------------------------------------------------------


class _Metrics:
    """Prometheus text from the pools' and sinks' own status: nothing counted twice."""

    def __init__(self, manager: Manager) -> None:
        from prometheus_client import CollectorRegistry

        self.manager = manager
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["kind", "plugin"]
        calls = CounterMetricFamily("vsm_plugin_calls", "Calls served by the plugin's pool", labels=labels)
        errors = CounterMetricFamily("vsm_plugin_errors", "Calls that failed", labels=labels)
        latency = CounterMetricFamily("vsm_plugin_call_seconds", "Total time spent in calls", labels=labels)
        restarts = CounterMetricFamily("vsm_plugin_worker_restarts", "Workers replaced after a crash or timeout", labels=labels)
        workers = GaugeMetricFamily("vsm_plugin_workers", "Live worker processes", labels=labels)
        lag = GaugeMetricFamily("vsm_sink_lag_rows", "Sector-state events not yet delivered to the sink", labels=["sink"])
        registry = self.manager.registry
        for plugin in registry.plugins if registry else []:
            if plugin.pool is None:
                continue
            s = plugin.pool.status()
            key = [plugin.manifest.kind.value, plugin.manifest.name]
            calls.add_metric(key, s.get("calls", 0))
            errors.add_metric(key, s.get("errors", 0))
            latency.add_metric(key, s.get("latency_sum", 0.0))
            restarts.add_metric(key, s.get("restarts", 0))
            workers.add_metric(key, sum(1 for w in s.get("workers", []) if w.get("alive", True)))
        if self.manager.sectors is not None:
            for name, sink in self.manager.sectors.status().get("sinks", {}).items():
                lag.add_metric([name], sink.get("lag", 0))
        yield from (calls, errors, latency, restarts, workers, lag)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


__all__ += ["RpcError", "daemon_info", "make_app"]
