"""`vsm-pool start`: the daemon. aiohttp serves JSON-RPC 2.0, piece streams, health and metrics.

    POST /rpc/v0                 JSON-RPC 2.0 (single or batch); plugin namespaces too
    POST /sectors/import         a bulk import: one streamed request of Arrow batches
    PUT  /pieces/{store}/{path}  streaming upload -> the store's pool, through shared memory
    GET  /pieces/{store}/{path}  streaming download; HEAD gives the size; DELETE removes
    GET  /healthz                no token needed
    GET  /metrics                Prometheus text
    GET  /                       the dashboard (dashboard.py): a login form, then a session cookie

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
from typing import Any, Callable

from aiohttp import web
from loguru import logger


from ..config import Config
from ..errors import VsmError
from ..home import daemon_info, read_token, token_path
from ..manager import Manager
from .dashboard import CSRF_HEADER, OPEN_PATHS, Sessions, add_dashboard_routes, browser_wants_login
from .jsonrpc import dispatch_rpc
from .methods import METHODS
from .metrics import Metrics
from .imports import add_import_route
from .pieces import add_piece_routes

__all__ = ["DaemonAlreadyRunning", "make_app", "run_daemon"]

# A stopping daemon lets in-flight requests finish for this long, then fails them: small calls
# take milliseconds; a piece transfer that needs longer is cut (the client retries it).
SHUTDOWN_GRACE = 10.0


class DaemonAlreadyRunning(VsmError):
    pass


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
    # read_bufsize: a streamed body (piece, import) is read 1 MiB at a time, not 64 KiB
    runner = web.AppRunner(app, read_bufsize=1 << 20, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
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
    sessions = Sessions(lambda given: "admin" if secrets.compare_digest(given.encode(), token.encode()) else None)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        """A bearer token, or a dashboard session (with its CSRF token on a change); /healthz
        and the login form are open."""
        if (request.path == "/healthz" and request.method in ("GET", "HEAD")) or (request.method, request.path) in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if given:
            if not secrets.compare_digest(given.encode(), expected):
                return web.Response(status=401, text="401: missing or wrong bearer token\n")
            return await handler(request)
        session = sessions.get(request)
        if session is None:
            if browser_wants_login(request):
                raise web.HTTPFound("/login")
            return web.Response(status=401, text="401: missing or wrong bearer token\n")
        if not sessions.csrf_ok(request, session):
            return web.Response(status=403, text=f"403: a change from the dashboard needs its {CSRF_HEADER} header\n")
        request["session"] = session
        return await handler(request)

    app = web.Application(middlewares=[auth], client_max_size=manager.config.api.max_body_bytes)
    app["manager"] = manager
    app["request_stop"] = request_stop
    app["metrics"] = Metrics(manager)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/rpc/v0", _rpc)
    add_piece_routes(app)
    add_import_route(app)
    add_dashboard_routes(app, sessions)
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
    reply = await dispatch_rpc(raw, METHODS, request.app["manager"], request.app["request_stop"])
    if reply is None:  # only notifications
        return web.Response(status=204)
    return web.json_response(reply, dumps=lambda o: json.dumps(o, default=str))
