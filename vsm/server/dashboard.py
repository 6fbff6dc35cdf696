"""The dashboard: `GET /` serves a page that reads the same JSON-RPC API as the CLI.

    GET  /login            the login form (open: it is how a browser gets in)
    POST /login            token -> a session cookie (HttpOnly, SameSite=Strict), then /
    POST /logout           drops the session
    GET  /                 the dashboard (overview, sectors, sector search, query, plugins); /login without a session
    GET  /ui/{asset}       its script, style and Chart.js (shipped in the wheel: no CDN)
    GET  /dashboard/export?sql=&format=csv|parquet   a query's result as a download
    GET  /dashboard/history  the figures of the last hours, sampled in the daemon (history.py)

A browser logs in once with a token; the session keeps that token's permission level, so a
session sees and does what the token may. The page then calls /rpc/v0 with its cookie and
the session's CSRF token in `X-VSM-CSRF`: a request that came with the cookie alone (a form
or a script on another site) is refused before it reaches a method, and SameSite=Strict keeps
the cookie off cross-site requests in the first place. Sessions live in the daemon's memory:
a restart logs everyone out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import secrets
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from aiohttp import web

from .history import Figures

__all__ = ["COOKIE", "CSRF_HEADER", "OPEN_PATHS", "Session", "Sessions", "add_dashboard_routes", "browser_wants_login"]

COOKIE = "vsm_session"
CSRF_HEADER = "X-VSM-CSRF"
SESSION_TTL = 12 * 3600.0
UI_DIR = Path(__file__).resolve().parent / "ui"
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "vendor/chart.umd.min.js": "text/javascript"}
# paths a browser without a session may reach (everything else: token or session)
OPEN_PATHS = {("GET", "/login"), ("POST", "/login")}


@dataclasses.dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    level: str  # the permission level of the token it logged in with, as of this request
    expires: float
    token: str = dataclasses.field(repr=False, default="")  # kept in memory only: re-checked per request


class Sessions:
    """Logged-in browsers: an opaque id (the cookie) -> the level it logged in with and a CSRF
    token. `check_token(token) -> level | None` decides what a token is worth."""

    def __init__(self, check_token: Callable[[str], str | None], ttl: float = SESSION_TTL) -> None:
        self._check_token, self._ttl = check_token, ttl
        self._by_id: dict[str, Session] = {}

    def login(self, token: str) -> Session | None:
        level = self._check_token(token)
        if level is None:
            return None
        now = time.time()
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}  # forget expired ones
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), level, now + self._ttl, token)
        self._by_id[session.id] = session
        return session

    def get(self, request: web.Request) -> Session | None:
        """The request's session, with its token's level now: a revoked token ends its
        sessions at their next request, not when they expire."""
        session = self._by_id.get(request.cookies.get(COOKIE, ""))
        if session is None or session.expires <= time.time():
            return None
        level = self._check_token(session.token)
        if level is None:
            self._by_id.pop(session.id, None)
            return None
        return session if level == session.level else dataclasses.replace(session, level=level)

    def logout(self, request: web.Request) -> None:
        self._by_id.pop(request.cookies.get(COOKIE, ""), None)

    @staticmethod
    def csrf_ok(request: web.Request, session: Session) -> bool:
        """A request that changes something must carry the session's CSRF token (the logout
        form carries it as a field, checked by its handler)."""
        if request.method in ("GET", "HEAD", "OPTIONS") or (request.method, request.path) == ("POST", "/logout"):
            return True
        return secrets.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf)


def add_dashboard_routes(app: web.Application, sessions: Sessions, figures: Figures) -> None:
    app["sessions"] = sessions
    app["figures"] = figures
    app.cleanup_ctx.append(_sample_figures)
    app.router.add_get("/", _index)
    app.router.add_get("/login", _login_form)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/ui/{asset:.+}", _asset)
    app.router.add_get("/dashboard/export", _export)
    app.router.add_get("/dashboard/history", _history)


async def _sample_figures(app: web.Application) -> AsyncIterator[None]:
    """The figures' sampler runs as long as the daemon serves."""
    task = asyncio.create_task(app["figures"].run(), name="dashboard-figures")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _history(request: web.Request) -> web.Response:
    return web.json_response(request.app["figures"].history(), headers=_NO_STORE)


def _page(title: str, body: str, head: str = "") -> web.Response:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>{head}</head><body>{body}</body></html>"""
    return web.Response(text=doc, content_type="text/html", headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


async def _index(request: web.Request) -> web.StreamResponse:
    session = request.get("session")
    if session is None:  # came with a bearer token: the page needs a session of its own
        raise web.HTTPFound("/login")
    manager = request.app["manager"]
    head = (
        f'<meta name="vsm-csrf" content="{html.escape(session.csrf)}">'
        f'<meta name="vsm-level" content="{html.escape(session.level)}">'
        '<link rel="stylesheet" href="/ui/app.css">'
        '<script src="/ui/vendor/chart.umd.min.js" defer></script><script src="/ui/app.js" defer></script>'
    )
    body = f"""<header><h1>vsm-pool</h1><span id="health" class="badge">loading</span>
<nav><a href="#overview">Overview</a><a href="#sectors">Sectors</a><a href="#sector">Sector search</a><a href="#query">Query</a><a href="#plugins">Plugins</a></nav>
<span class="who">{html.escape(str(manager.config.home))}</span>
<form method="post" action="/logout" id="logout"><input type="hidden" name="csrf" value="{html.escape(session.csrf)}"><button>Log out</button></form></header>
<main id="main"></main>"""
    return _page("vsm-pool", body, head)


_LOGIN_STYLE = """<style>body{font:15px system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;padding-top:12vh}
form{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002;min-width:22em}
input{width:100%;box-sizing:border-box;padding:.5em;margin:.5em 0 1em;font:inherit}button{padding:.5em 1.2em;font:inherit}
.error{color:#b00020}</style>"""


async def _login_form(request: web.Request, error: str = "") -> web.Response:
    message = f'<p class="error" id="login-error">{html.escape(error)}</p>' if error else ""
    body = f"""<form method="post" action="/login"><h2>vsm-pool</h2>{message}
<label for="token">API token</label><input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<p><small>The daemon's admin token is in <code>&lt;home&gt;/token</code>.</small></p><button type="submit">Log in</button></form>"""
    return _page("vsm-pool: log in", body, _LOGIN_STYLE)


async def _login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    session = request.app["sessions"].login(token) if token else None
    if session is None:
        response = await _login_form(request, "That token is not valid for this daemon.")
        response.set_status(401)
        return response
    response = web.HTTPFound("/")
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/", max_age=int(SESSION_TTL),
                        secure=request.secure)
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    sessions: Sessions = request.app["sessions"]
    session = sessions.get(request)
    form = await request.post()
    if session is not None and secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
        sessions.logout(request)
    response = web.HTTPFound("/login")
    response.del_cookie(COOKIE, path="/")
    return response


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    if name not in _ASSETS:  # a fixed list: no path from the request reaches the file system
        raise web.HTTPNotFound()
    return web.FileResponse(UI_DIR / name, headers={"Content-Type": _ASSETS[name], "Cache-Control": "no-cache"})


async def _export(request: web.Request) -> web.StreamResponse:
    """A query's result as CSV or Parquet, computed by the sink as `vsm-pool query` is."""
    import base64
    import io

    from ..sectors import ipc_to_table
    from .methods import query_arrow

    sql, fmt, sink = request.query.get("sql", ""), request.query.get("format", "csv"), request.query.get("sink", "duckdb")
    if not sql.strip():
        raise web.HTTPBadRequest(text="sql: empty query\n")
    if fmt not in ("csv", "parquet"):
        raise web.HTTPBadRequest(text=f"format: {fmt!r} is not csv or parquet\n")
    loop = asyncio.get_running_loop()
    try:
        data = await loop.run_in_executor(None, query_arrow, request.app["manager"], sql, sink)
    except Exception as e:  # noqa: BLE001 - the query's own error, one line, as the CLI shows it
        raise web.HTTPBadRequest(text=f"query failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n") from None

    def encode() -> bytes:
        table = ipc_to_table(base64.b64decode(data))
        buf = io.BytesIO()
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, buf)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, buf)
        return buf.getvalue()

    body = await loop.run_in_executor(None, encode)
    return web.Response(
        body=body,
        headers={**_NO_STORE, "Content-Type": "text/csv" if fmt == "csv" else "application/vnd.apache.parquet",
                 "Content-Disposition": f'attachment; filename="query.{fmt}"'},
    )


def browser_wants_login(request: web.Request) -> bool:
    """A browser asking for the dashboard without a session is sent to the login form; every
    other request without credentials gets 401."""
    return request.method == "GET" and request.path == "/" and "text/html" in request.headers.get("Accept", "")
