"""Piece streams over HTTP: PUT, GET, HEAD and DELETE of /pieces/{store}/{path}.

An upload's body is read by the store's pool through a blocking reader that pulls chunks from
the event loop; a download is read from the pool in a thread and written by the loop. A transfer
whose client stalls for $VSM_TRANSFER_IDLE_TIMEOUT seconds (default 120) is failed, which frees
its worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
from typing import Any, AsyncIterator

from aiohttp import web
from loguru import logger

from executors import PoolError

from ..sdk import InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError
from ..sdk import errors as sdk_errors

__all__ = ["add_piece_routes"]

PIECE_CHUNK = 1 << 20
# A piece transfer whose client neither sends nor takes a byte for this long is failed: its
# stream holds a worker of the store's pool, which must not wait on a vanished client forever.
TRANSFER_IDLE_TIMEOUT = float(os.environ.get("VSM_TRANSFER_IDLE_TIMEOUT", "120"))


def add_piece_routes(app: web.Application) -> None:
    app.router.add_put("/pieces/{store}/{path:.+}", _piece_put)
    app.router.add_get("/pieces/{store}/{path:.+}", _piece_get, allow_head=False)
    app.router.add_route("HEAD", "/pieces/{store}/{path:.+}", _piece_head)
    app.router.add_delete("/pieces/{store}/{path:.+}", _piece_delete)


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
    manager = request.app["manager"]
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
