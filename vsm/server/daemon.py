"""`vsm-pool start`: the daemon. aiohttp serves JSON-RPC 2.0, piece streams, health and metrics.

    POST /rpc/v0                 JSON-RPC 2.0 (single or batch); plugin namespaces too
    POST /sectors/import         a bulk import: one streamed request of Arrow batches
    PUT  /pieces/{store}/{path}  streaming upload -> the store's pool, through shared memory
    GET  /pieces/{store}/{path}  streaming download; HEAD gives the size; DELETE removes
    GET  /healthz                no token needed
    GET  /metrics                Prometheus text
    GET  /                       the dashboard (dashboard.py): a login form, then a session cookie

Every endpoint but /healthz needs `Authorization: Bearer <token>` of a level the endpoint needs
(auth.py); <home>/token (mode 0600, made on first start) is the admin token. Blocking work (pool calls) runs in a thread pool so one slow
plugin never stalls the event loop or the other requests. A piece transfer whose client stalls
for $VSM_TRANSFER_IDLE_TIMEOUT seconds (default 120) is failed, which frees its worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import faulthandler
import fcntl
import functools
import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from loguru import logger


from ..config import Config
from ..errors import VsmError
from ..home import daemon_info, read_token, token_path
from ..manager import Manager
from ..sectors import op_client
from .auth import MIN_TOKEN_CHARS, Level, TokenStore, needed_for_http, needed_for_rpc, why_not
from .dashboard import CSRF_HEADER, OPEN_PATHS, Sessions, add_dashboard_routes, browser_wants_login
from .jsonrpc import Scrubber, dispatch_rpc
from .methods import METHODS
from .metrics import Metrics
from .history import Figures
from .imports import add_import_route
from .pieces import add_piece_routes

__all__ = ["DaemonAlreadyRunning", "make_app", "run_daemon"]

# A stopping daemon lets in-flight requests finish for this long, then fails them: small calls
# take milliseconds; a piece transfer that needs longer is cut (the client retries it).
SHUTDOWN_GRACE = 10.0
READ_BUFSIZE = 1 << 20


class DaemonAlreadyRunning(VsmError):
    pass




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


def run_daemon(config: Config, home: Path, cli_listen: str = "") -> None:
    """Serve at once, start the manager behind it (clients get 503 `starting` with progress
    meanwhile), serve until SIGTERM/SIGINT or `vsm-pool stop`, then stop everything."""
    # `kill -USR1 <pid>`: every thread's stack into the log, to see where a daemon hangs
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with _single_instance(home):
        sock = _bind(config.api.listen)
        _ensure_token(home)
        manager = Manager(config)
        manager.cli_listen = cli_listen  # `start --listen`: what the file's Listen is compared as
        try:
            asyncio.run(_serve(manager, sock, home))
        finally:
            sock.close()
            manager.close()
            logger.info("vsm-pool stopped")


def _reload_config_on_hup(manager: Manager, startup: "_Startup") -> None:
    """SIGHUP: the config reloaded as `vsm-pool config reload` does; a failure is one log line
    (the running config serves on)."""
    if not startup.ready:
        logger.warning("SIGHUP: the config is not reloaded while the daemon is starting; send it again once it is ready")
        return
    try:
        manager.reload_config()  # it logs what it applied and what needs a restart
    except VsmError as e:
        logger.error("SIGHUP: the config is not reloaded: {}", e)


class _Startup:
    """Whether the manager is ready; what the daemon answers until it is."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.ready = False
        self.error = ""
        self.since = time.monotonic()

    def progress(self) -> dict[str, Any]:
        p = dict(getattr(self.manager, "progress", None) or {})
        starting = [pl.label for pl in self.manager.starting()] if hasattr(self.manager, "starting") else []
        return {
            **p,
            "seconds": round(time.monotonic() - self.since, 1),
            **({"plugins_starting": starting} if starting else {}),
            **({"error": self.error} if self.error else {}),
        }

    def line(self) -> str:
        p = self.progress()
        step = f" {p.get('done', 0)}/{p['total']}" if p.get("total") else ""
        waiting = f" (still starting: {', '.join(p['plugins_starting'])})" if p.get("plugins_starting") else ""
        return f"starting: {p.get('phase', 'loading')}{step}{waiting} ({p['seconds']:.0f} s so far); retry shortly"


class _GuardedHandler(RequestHandler):  # type: ignore[misc]
    """aiohttp's connection handler with a deadline for each request's line and headers: a
    client that sends them slowly (slowloris) is cut off after [Common.Api] HeaderTimeout.
    aiohttp bounds only the idle time between requests (keep-alive). A body is not a head:
    its bytes arrive under the handler's own timeouts (BodyTimeout, the transfer idle timeout)."""

    def __init__(self, manager: web.Server, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = header_timeout
        self._head_since: float | None = None
        self._last_payload: Any = None

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        # data: aiohttp calls this with b"" too (resuming a paused read), which starts no head:
        # taken for one, it dropped every request still running HeaderTimeout later (a slow update)
        if data and self._head_since is None and (self._last_payload is None or self._last_payload.is_eof()):
            since = self._head_since = loop.time()  # the first bytes of a new request's head
            loop.call_at(since + self._head_timeout, self._head_deadline, since)
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head was parsed
            self._head_since = None
            self._last_payload = self._messages[-1][1] if self._messages else None

    def _head_deadline(self, since: float) -> None:
        if self._head_since == since and self.transport is not None:
            logger.info("dropped a connection whose request headers did not arrive within {:g} s ([Common.Api] HeaderTimeout)", self._head_timeout)
            transport = self.transport
            self.force_close()  # may close it and forget it already
            transport.close()


async def _serve(manager: Manager, sock: socket.socket, home: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="vsm-api")
    loop.set_default_executor(threads)
    startup = _Startup(manager)
    # `kill -HUP <pid>`: `vsm-pool config reload` (off the loop: a reload swaps pools)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_config_on_hup, manager, startup))
    app = make_app(manager, TokenStore(home), stop.set, startup)
    # read_bufsize: a streamed body (piece, import) is read 1 MiB at a time, not 64 KiB
    runner = web.AppRunner(app, read_bufsize=READ_BUFSIZE, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    server, header_timeout = runner.server, manager.config.api.header_timeout
    listener = await loop.create_server(
        lambda: _GuardedHandler(server, header_timeout, loop=loop, read_bufsize=READ_BUFSIZE), sock=sock
    )
    host, port = sock.getsockname()[:2]
    listen = f"{host}:{port}"
    (home / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "listen": listen, "started": time.time()}))
    logger.info("vsm-pool serving on http://{} (JSON-RPC at /rpc/v0); starting the manager", listen)
    failure: BaseException | None = None
    # ready once the sector state manager runs; plugins still starting join when ready
    starting = loop.run_in_executor(None, functools.partial(manager.start, wait=False))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        logger.info("vsm-pool asked to stop while starting: stopping once the start-up step running ends")
    try:
        await starting
        startup.ready = True
        still = [p.label for p in manager.starting()]
        logger.info("vsm-pool ready ({:.1f} s){}", time.monotonic() - startup.since, f"; still starting: {', '.join(still)}" if still else "")
    except BaseException as e:  # noqa: BLE001 - reported after the listener is closed
        failure, startup.error = e, str(e)
    if failure is None:
        settling = asyncio.ensure_future(_settle(manager, startup))
        await asyncio.wait({settling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if settling.done() and settling.exception() is not None:  # Strict: a plugin failed to start
            failure = settling.exception()
            logger.error("vsm-pool stopping: {} ([Common.Plugins] Strict = true)", failure)
        else:
            await stop.wait()
            logger.info("vsm-pool stopping: finishing in-flight requests")
        settling.cancel()
    stopping.cancel()
    listener.close()
    await runner.cleanup()  # waits for handlers up to shutdown_timeout
    # Pool calls of cancelled handlers may still run in the threads, and an upload's reader
    # needs this loop to get its bytes (or its end): wait for them without blocking the loop.
    threads.shutdown(wait=False, cancel_futures=True)
    await loop.shutdown_default_executor()
    if failure is not None:
        raise failure


async def _settle(manager: Manager, startup: _Startup) -> None:
    """Until every plugin the start began is ready or disabled; raises a failure under Strict."""
    starts = list(manager.starts.values())
    if not starts or all(s.done() for s in starts):
        manager.settled(0)
        return
    await asyncio.gather(*(asyncio.wrap_future(s) for s in starts), return_exceptions=True)
    manager.settled(0)
    logger.info("vsm-pool: every plugin started or disabled ({:.1f} s)", time.monotonic() - startup.since)


def make_app(manager: Manager, tokens: TokenStore, request_stop: Callable[[], None], startup: _Startup | None = None) -> web.Application:
    def token_level(given: str) -> str | None:  # what a token is worth, for the dashboard's login
        level = tokens.level(given)
        return None if level is None else level.label

    sessions = Sessions(token_level)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        """A bearer token, or a dashboard session (with its CSRF token on a change), of the
        level the endpoint needs (auth.py); /healthz and the login form are open."""
        if startup is not None and not startup.ready and request.path != "/healthz":
            return _starting(request, startup)
        need = needed_for_http(request.method, request.path)
        if need is None or (request.method, request.path) in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if given:
            level = tokens.level_of_header(given)
            if level is None:
                return web.Response(status=401, text="401: missing or wrong bearer token\n")
        else:
            session = sessions.get(request)
            if session is None:
                if browser_wants_login(request):
                    raise web.HTTPFound("/login")
                return web.Response(status=401, text="401: missing or wrong bearer token\n")
            if not sessions.csrf_ok(request, session):
                return web.Response(status=403, text=f"403: a change from the dashboard needs its {CSRF_HEADER} header\n")
            request["session"] = session
            level = Level.parse(session.level)
        refusal = why_not(level, need, f"{request.method} /{request.path.strip('/').split('/', 1)[0]}")
        if refusal is not None:
            logger.info("{} {} -> 403 {}", request.method, request.path, refusal)
            return web.json_response({"error": refusal}, status=403)
        request["level"] = level
        return await handler(request)

    app = web.Application(middlewares=[auth], client_max_size=manager.config.api.max_body_bytes)
    app["tokens"] = tokens
    app["startup"] = startup
    app["manager"] = manager
    app["request_stop"] = request_stop
    app["metrics"] = Metrics(manager)
    app["scrub"] = Scrubber(manager)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/rpc/v0", _rpc)
    add_piece_routes(app)
    add_import_route(app)
    add_dashboard_routes(app, sessions, Figures(manager, lambda: app["imports"].received))
    return app


def _starting(request: web.Request, startup: _Startup) -> web.Response:
    """503 until the manager is ready: what it is doing and how far, so a client can wait."""
    progress = startup.progress()
    if request.path == "/rpc/v0":
        error = {"code": -32004, "message": startup.line(), "data": progress}
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": None, "error": error}
    else:
        body = {"error": startup.line(), "progress": progress}
    return web.json_response(body, status=503, headers={"Retry-After": "1"})


async def _healthz(request: web.Request) -> web.Response:
    startup = request.app["startup"]
    if startup is not None and not startup.ready:
        state = "failed" if startup.error else "starting"
        return web.json_response({"status": state, "progress": startup.progress()}, status=503, headers={"Retry-After": "1"})
    starting = [p.label for p in request.app["manager"].starting()]  # ready; what needs these answers 503
    return web.json_response({"status": "ok", **({"plugins_starting": starting} if starting else {})})


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
    body_timeout = request.app["manager"].config.api.body_timeout
    try:
        raw = await asyncio.wait_for(request.read(), body_timeout)
    except web.HTTPRequestEntityTooLarge:
        too_large.force_close()
        return too_large
    except asyncio.TimeoutError:
        slow = web.json_response(
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": f"the request body did not arrive within {body_timeout:g} s ([Common.Api] BodyTimeout)"}},
            status=408,
        )
        slow.force_close()
        return slow
    manager = request.app["manager"]
    level = request["level"]
    op_client.set(f"JSON-RPC from {request.remote or '?'}")  # this request's task only: tickets name it
    reply = await dispatch_rpc(
        raw, METHODS, manager, request.app["request_stop"],
        allowed=lambda method: why_not(level, needed_for_rpc(method, METHODS), method),
        scrub=request.app["scrub"], max_response_bytes=manager.config.api.max_response_bytes, log_errors=True,
    )
    if reply is None:  # only notifications
        return web.Response(status=204)
    return web.json_response(reply, dumps=lambda o: json.dumps(o, default=str))
