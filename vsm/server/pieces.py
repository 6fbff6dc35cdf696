"""Piece streams over HTTP: PUT, GET, HEAD and DELETE of /pieces/{store}/{path}.

Two paths, chosen per request by what the store offers (vsm.sdk.objstore FileStore):

    files (fsstore):  GET  store's worker: open_for_read under its rules --fd (SCM_RIGHTS)-->
                           daemon: loop.sendfile(socket, fd) in 16 MiB steps (no byte in
                           Python, no worker busy while the client reads)
                      PUT  worker: open_for_write (O_TMPFILE) --fd--> daemon: body chunks
                           written into it as they arrive --> worker: commit (fsync, link)
    ring (others):    PUT  body chunks --one thread hop per 1 MiB slot--> store's put(reader)
                      GET  store's get(reader) --ring--> a thread reads 1 MiB --> response

A GET with one `Range` (RFC 9110 sec. 14, _range_answer) sends [start, end) of the piece: the
file path hands that span to sendfile; the ring path asks store.get_range, which the worker
serves with the plugin's get_range, or its get seeked or skipped in the worker (only the range
crosses the ring). ETag and Last-Modified are the store's Stat (fsstore: Stat.of_file).

The store's worker decides everything but the byte moving: confinement, ReadOnly, atomic
visibility, fsync. Numbers (bench/bench_operator.py, 1 GiB, this 2-vCPU VM): the ring path
measured 0.5-0.9 GiB/s down and 0.2-0.5 up (issue 14), below `cat` (5-9 GiB/s) and `cp` +
sync (1.3 GiB/s); the file path is what curl sees beside cat / cp + fsync in the same run.

Crash argument for a PUT on the file path (kill -9):
- the daemon, before commit: its fd dies with it; the worker's copy goes when the pool's
  workers exit with their manager. O_TMPFILE has no name: nothing is visible, the old object
  is untouched (fsstore's docstring: its fallback without O_TMPFILE leaves a dot-temp file).
- the worker, before commit: the commit call fails (WorkerCrashed), the upload answers 503,
  the daemon closes its fd: the nameless inode is freed.
- either, during commit: fsstore's link is atomic (old object or whole new one).
A client that cuts the body short or stalls for $VSM_TRANSFER_IDLE_TIMEOUT seconds (default
120) gets its upload aborted (nothing visible); a download whose client takes no byte for as
long (16 MiB per that time on the file path) is dropped, which frees its worker on the ring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import errno
import json
import os
import re
from typing import Any, AsyncIterator

from aiohttp import web
from loguru import logger

from executors import PoolError

from ..errors import StoreBusy
from ..plugin.proxies import object_path_refusal
from ..sdk import InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError
from ..sdk import errors as sdk_errors
from ..sdk.diskspace import human_bytes

__all__ = ["add_piece_routes"]

PIECE_CHUNK = 1 << 20
SENDFILE_STEP = 16 << 20  # one loop.sendfile per step: the idle timeout is checked between steps
# A piece transfer whose client neither sends nor takes a byte for this long is failed: its
# stream holds a worker of the store's pool, which must not wait on a vanished client forever.
TRANSFER_IDLE_TIMEOUT = float(os.environ.get("VSM_TRANSFER_IDLE_TIMEOUT", "120"))


def add_piece_routes(app: web.Application) -> None:
    app.router.add_put("/pieces/{store}/{path:.+}", _piece_put, expect_handler=_continue_later)
    app.router.add_get("/pieces/{store}/{path:.+}", _piece_get, allow_head=False)
    app.router.add_route("HEAD", "/pieces/{store}/{path:.+}", _piece_head)
    app.router.add_delete("/pieces/{store}/{path:.+}", _piece_delete)


async def _continue_later(request: web.Request) -> None:
    """aiohttp answers `Expect: 100-continue` before any check; a PUT says it only once the
    token, store, path and free space are checked (_send_continue), so a refused client never
    sends its body (curl waits for it on every upload over 1 MiB: a refused 32 GiB piece)."""


async def _send_continue(request: web.Request) -> None:
    expect = request.headers.get("Expect", "")
    if not expect:
        return
    if expect.lower() != "100-continue" or request.version != (1, 1):
        raise web.HTTPExpectationFailed(text=json.dumps({"error": f"unknown Expect: {expect}"}), content_type="application/json")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own handler: the response starts after it


_PIECE_STATUS: list[tuple[type[BaseException], int]] = [
    (StoreBusy, 503),  # too many streams on the store's pool at once: retry
    (ObjectNotFoundError, 404),
    (InvalidObjectPathError, 400),
    (ReadOnlyStoreError, 403),
    (PoolError, 503),
    (sdk_errors.PluginError, 500),
]


def _piece_error(request: web.Request, e: BaseException) -> web.Response:
    """The store's failure as one JSON line (no trace, no server path); 500 only for what is
    neither the client's mistake nor a pool failure (the log has it, once)."""
    status = next((s for kind, s in _PIECE_STATUS if isinstance(e, kind)), 500)
    text = request.app["scrub"](f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    log = logger.warning if status >= 500 else logger.info
    log("{} {} -> {} {}", request.method, request.path, status, text)
    return web.json_response({"error": text}, status=status)


def _store_or_404(request: web.Request) -> Any:
    refused = object_path_refusal(request.match_info["path"])  # before any store sees it
    if refused:
        raise web.HTTPBadRequest(text=json.dumps({"error": refused}), content_type="application/json")
    manager = request.app["manager"]
    name = request.match_info["store"]
    store = manager.stores.get(name)
    starting = manager.stores_starting().get(name) if store is None else None
    if starting:  # its plugin's pool is starting: the client retries
        raise web.HTTPServiceUnavailable(text=json.dumps({"error": f"starting: {starting}"}), content_type="application/json", headers={"Retry-After": "1"})
    if store is None:
        cause = manager.store_errors.get(name) or f"no store named {name!r} (stores: {', '.join(sorted(manager.stores)) or 'none'})"
        on_disk = manager.config_on_disk()[0]  # issue 26: a store added to the file since the start
        if name not in manager.store_errors and on_disk is not None and any(s.name == name for s in (*on_disk.piece_stores, *on_disk.persist_stores)):
            cause += f"; {on_disk.file} names it since the daemon started: `vsm-pool config reload` opens it"
        raise web.HTTPNotFound(text=json.dumps({"error": cause}), content_type="application/json")
    return store


class _Body:
    """The request body as chunks, in the event loop, with the transfer rules: a stall of
    TRANSFER_IDLE_TIMEOUT fails the read (one watchdog, not a timer per chunk), a body short
    of its Content-Length fails it too. Failures are ConnectionError with the reason."""

    def __init__(self, request: web.Request) -> None:
        self._content = request.content
        self._loop = asyncio.get_running_loop()
        self.received = 0
        self.expected = request.content_length
        self._last = self._loop.time()
        self._watch: asyncio.TimerHandle | None = None

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last
        if idle >= TRANSFER_IDLE_TIMEOUT:
            self._content.set_exception(
                ConnectionError(f"upload stalled: no byte for {TRANSFER_IDLE_TIMEOUT:.0f}s after {self.received} bytes")
            )
        else:
            self._watch = self._loop.call_later(TRANSFER_IDLE_TIMEOUT - idle, self._check_idle)

    async def chunk(self) -> bytes:
        """The next bytes of the body (b"" at its end)."""
        if self._watch is None:
            self._watch = self._loop.call_later(TRANSFER_IDLE_TIMEOUT, self._check_idle)
        try:
            data = await self._content.readany()
        except ConnectionError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the connection broke: aiohttp fails the payload
            raise ConnectionError(f"upload cut off after {self.received} of {self.expected} bytes: {e or type(e).__name__}") from None
        self._last = self._loop.time()
        if not data and self.expected is not None and self.received < self.expected:
            raise ConnectionError(f"upload cut off after {self.received} of {self.expected} bytes")
        self.received += len(data)
        return data

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


class _BodyReader:
    """A blocking reader over the request body, for the store's pool to readinto shared memory
    (the ring path). It runs in a worker thread; each readinto is one hop to the event loop,
    which fills the whole slot from the body's chunks."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self._body = _Body(request)
        self._loop = loop
        self._pending = memoryview(b"")
        self._cancelled = ""

    @property
    def received(self) -> int:
        return self._body.received

    def cancel(self, why: str) -> None:
        """Fail the next read (the handler is gone): the store drops its partial object."""
        self._cancelled = why

    def readable(self) -> bool:
        return True

    async def _fill(self, view: memoryview) -> int:
        n = 0
        while n < len(view):
            if not self._pending:
                if n and self._body._content.total_bytes <= self.received:
                    break  # nothing buffered: hand over what we have rather than wait
                self._pending = memoryview(await self._body.chunk())
                if not self._pending:
                    break
            k = min(len(view) - n, len(self._pending))
            view[n : n + k] = self._pending[:k]
            self._pending = self._pending[k:]
            n += k
        return n

    def readinto(self, buf: Any) -> int:
        if self._cancelled:
            raise ConnectionError(f"upload cancelled after {self.received} bytes: {self._cancelled}")
        fut = asyncio.run_coroutine_threadsafe(self._fill(memoryview(buf).cast("B")), self._loop)
        while True:
            try:
                return fut.result(0.5)
            except concurrent.futures.TimeoutError:
                if self._cancelled:
                    fut.cancel()
                    raise ConnectionError(f"upload cancelled after {self.received} bytes: {self._cancelled}") from None
            except concurrent.futures.CancelledError:  # aiohttp cancels the payload on shutdown
                raise ConnectionError(f"upload cancelled after {self.received} bytes: the daemon is stopping") from None

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size > 0 else PIECE_CHUNK)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def close(self) -> None:
        self._body.close()


def _upload_failed(request: web.Request, store: Any, path: str, e: BaseException) -> web.Response:
    """The body's own failure (cut off, stalled, cancelled) as 400; a store error as its status."""
    if not isinstance(e, ConnectionError) and not isinstance(e.__cause__, ConnectionError) and not str(e).startswith("upload "):
        return _piece_error(request, e)
    logger.warning("upload {}/{} failed, nothing stored: {}", store.name, path, e)
    return web.json_response({"error": f"{store.name}/{path}: {e}"}, status=400)


def _disk_full(e: BaseException | None) -> OSError | None:
    """The filesystem's "full" (ENOSPC, EDQUOT) in e or what it was raised from, or None."""
    for _ in range(8):
        if e is None:
            return None
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        e = e.__cause__ or e.__context__
    return None


async def _space_refused(request: web.Request, store: Any, path: str, incoming: int | None, failed: OSError | None = None) -> web.Response | None:
    """507 before a PUT that would go under the store's MinFreeSpace (PooledStore.space_refusal),
    or after one the filesystem refused (`failed`: ENOSPC, EDQUOT); None otherwise."""
    loop = asyncio.get_running_loop()
    if failed is None:
        try:
            text = await loop.run_in_executor(None, store.space_refusal, path, incoming)
        except Exception as e:  # the PUT itself will say what is wrong with the store
            logger.debug("{}: no free-space check: {}", store.name, e)
            text = None
        if text is None:
            return None
    else:  # the size was not known up front, or another writer took the space
        try:
            info = await loop.run_in_executor(None, store.instance_info)
        except Exception:
            info = None
        where = info.config.path if info is not None else f"store {store.name!r}"
        free = f"; {human_bytes(info.free)} free once it was dropped" if info is not None else ""
        text = (f"disk full: PUT {store.name}/{path} failed, nothing stored: the disk of {where} filled "
                f"during the upload ({failed.strerror or 'No space left on device'}){free}: free space there (a PUT that sends its "
                "Content-Length is refused before a byte is written); PUTs resume by themselves")
    logger.warning("{} -> 507 {}", request.method, text)
    response = web.json_response({"error": request.app["scrub"](text)}, status=507)
    response.force_close()  # no 10 s of reading and dropping the rest of a refused body
    return response


async def _piece_put(request: web.Request) -> web.Response:
    store = _store_or_404(request)
    path = request.match_info["path"]
    loop = asyncio.get_running_loop()
    if not store.cfg.read_only:  # a read-only store answers 403 whatever its disk
        refused = await _space_refused(request, store, path, request.content_length)
        if refused is not None:
            return refused
    pending = None
    opener = getattr(store, "open_write", None)
    if opener is not None:
        try:
            pending = await loop.run_in_executor(None, opener, path)
        except Exception as e:
            return _piece_error(request, e)
    try:
        await _send_continue(request)  # accepted: the client may send the body now
    except BaseException:
        if pending is not None:
            await loop.run_in_executor(None, pending.abort)
        raise
    if pending is not None:
        return await _put_into_file(request, store, path, pending)
    reader = _BodyReader(request, loop)
    try:
        size = await loop.run_in_executor(None, store.put, path, reader)
    except asyncio.CancelledError:
        reader.cancel("the daemon is stopping")
        logger.warning("upload {}/{} cancelled after {} bytes, nothing stored: the daemon is stopping", store.name, path, reader.received)
        raise
    except Exception as e:
        if full := _disk_full(e):
            return await _space_refused(request, store, path, None, failed=full)  # type: ignore[return-value]
        return _upload_failed(request, store, path, e)
    finally:
        reader.close()
    return web.json_response({"store": store.name, "path": path, "size": size}, status=201)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _put_into_file(request: web.Request, store: Any, path: str, pending: Any) -> web.Response:
    """The file path of a PUT: the body into the store's new file, then the store commits."""
    loop = asyncio.get_running_loop()
    body = _Body(request)
    try:
        # writes go to the page cache in the loop thread (~50 us per 1 MiB chunk): no thread
        # hop. Measured worse here: 4 MiB pwritev batches in a thread beside the receiving
        # loop, 0.35-0.38 of cp + sync in every round against 0.68-0.79 in the better ones
        while chunk := await body.chunk():
            _write_all(pending.fd, chunk)
        size = await loop.run_in_executor(None, pending.commit)
    except asyncio.CancelledError:
        try:
            loop.run_in_executor(None, pending.abort)
        except RuntimeError:  # the executor is gone: the worker's file goes with the pool
            pass
        logger.warning("upload {}/{} cancelled after {} bytes, nothing stored: the daemon is stopping", store.name, path, body.received)
        raise
    except BaseException as e:
        await loop.run_in_executor(None, pending.abort)
        if full := _disk_full(e):
            return await _space_refused(request, store, path, None, failed=full)  # type: ignore[return-value]
        return _upload_failed(request, store, path, e)
    finally:
        body.close()
    return web.json_response({"store": store.name, "path": path, "size": size}, status=201)


async def _piece_get(request: web.Request) -> web.StreamResponse:
    store = _store_or_404(request)
    path = request.match_info["path"]
    loop = asyncio.get_running_loop()
    try:
        opened = await loop.run_in_executor(None, store.open_read, path) if hasattr(store, "open_read") else None
    except Exception as e:
        return _piece_error(request, e)
    if opened is not None:
        stat, fd = opened
        try:
            start, end, headers = _range_answer(request, stat)
        except web.HTTPException:
            os.close(fd)
            raise
        return await _send_file(request, store, path, fd, start, end, headers)
    try:
        stat = await loop.run_in_executor(None, store.stat, path)
        start, end, headers = _range_answer(request, stat)
        if (start, end) == (0, stat.size):
            reader = await loop.run_in_executor(None, store.get, path)
        else:  # only the range crosses the ring (vsm.sdk.objstore: ranges)
            reader = await loop.run_in_executor(None, store.get_range, path, start, end - start)
    except web.HTTPException:
        raise
    except Exception as e:
        return _piece_error(request, e)
    response = web.StreamResponse(status=headers.pop("status"), headers=headers)
    try:
        await response.prepare(request)
        async for chunk in _chunks(reader, loop):
            # a client that takes nothing for this long holds a worker of the store: drop it
            await asyncio.wait_for(response.write(chunk), TRANSFER_IDLE_TIMEOUT)
        await response.write_eof()
    except asyncio.TimeoutError:
        _drop_stalled(request, store, path)
    except (ConnectionError, asyncio.CancelledError) as e:
        logger.debug("download {}/{} ended early: {}", store.name, path, type(e).__name__)
        raise
    finally:
        await loop.run_in_executor(None, reader.close)  # early close cancels the stream
    return response


def _validators(stat: Any) -> dict[str, str]:
    """Accept-Ranges, and the ETag and Last-Modified the store knows (vsm.sdk Stat)."""
    headers = {"Accept-Ranges": "bytes"}
    etag = getattr(stat, "etag", None)
    if etag and all(0x21 <= ord(c) <= 0x7E and c != '"' for c in etag):  # RFC 9110 etagc
        headers["ETag"] = f'"{etag}"'
    modified = getattr(stat, "modified", None)
    if modified is not None:
        headers["Last-Modified"] = email.utils.formatdate(modified, usegmt=True)
    return headers


def _range_answer(request: web.Request, stat: Any) -> tuple[int, int, dict[str, Any]]:
    """(start, end, headers) of a piece GET: the whole piece (200), or the one range asked
    for (206), per RFC 9110 sec. 14; an unsatisfiable range raises 416. Served: one range,
    `bytes=a-b`, `a-`, `-n`; a header we cannot parse, several ranges, or an If-Range that
    does not match the piece is ignored: the whole piece (200), as the RFC allows."""
    size = stat.size
    headers: dict[str, Any] = _validators(stat)
    whole = (0, size, {**headers, "status": 200, "Content-Type": "application/octet-stream", "Content-Length": str(size)})
    wanted = _parse_range(request.headers.get("Range", ""))
    if wanted is None or not _if_range_holds(request.headers.get("If-Range"), headers):
        return whole
    first, last = wanted
    if first is None:  # the last `last` bytes
        start, end = max(0, size - last), size
        satisfiable = last > 0 and size > 0
    else:
        start, end = first, size if last is None else min(last + 1, size)
        satisfiable = first < size
    if not satisfiable:
        raise web.HTTPRequestRangeNotSatisfiable(
            headers={**headers, "Content-Range": f"bytes */{size}"},
            text=json.dumps({"error": f"range {request.headers['Range']!r} is outside the piece's {size} bytes"}),
            content_type="application/json",
        )
    return start, end, {
        **headers, "status": 206, "Content-Type": "application/octet-stream",
        "Content-Length": str(end - start), "Content-Range": f"bytes {start}-{end - 1}/{size}",
    }


_RANGE_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def _parse_range(header: str) -> tuple[int | None, int | None] | None:
    """(first, last) of a single `bytes=` range (first None: a suffix of `last` bytes; last
    None: to the end), or None for no header, another unit, several ranges, or bad syntax."""
    unit, eq, specs = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = [p for p in specs.split(",") if p.strip()]
    match = _RANGE_SPEC.fullmatch(parts[0]) if len(parts) == 1 else None
    if match is None or not (match[1] or match[2]):
        return None
    first = int(match[1]) if match[1] else None
    last = int(match[2]) if match[2] else None
    if first is not None and last is not None and last < first:
        return None  # invalid: the header is ignored (RFC 9110 sec. 14.1.1)
    return first, last


def _if_range_holds(if_range: str | None, headers: dict[str, Any]) -> bool:
    """Whether a Range may be served: no If-Range, or one equal to the piece's strong ETag or
    its Last-Modified date (RFC 9110 sec. 13.1.5; a weak tag never matches)."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith(('"', "W/")):
        return "ETag" in headers and if_range == headers["ETag"]
    return "Last-Modified" in headers and if_range == headers["Last-Modified"]


def _drop_stalled(request: web.Request, store: Any, path: str) -> None:
    logger.warning("download {}/{} dropped: the client took no byte for {:.0f}s", store.name, path, TRANSFER_IDLE_TIMEOUT)
    if request.transport is not None:
        request.transport.close()  # the body is incomplete: the client sees a short read


async def _send_file(request: web.Request, store: Any, path: str, fd: int, start: int, end: int, headers: dict[str, Any]) -> web.StreamResponse:
    """The file path of a GET: the kernel copies [start, end) of the store's file to the socket."""
    loop = asyncio.get_running_loop()
    with open(fd, "rb", buffering=0) as f:
        response = web.StreamResponse(status=headers.pop("status"), headers=headers)
        await response.prepare(request)
        transport = request.transport
        sent = start
        try:
            while sent < end and transport is not None:
                step = min(SENDFILE_STEP, end - sent)
                n = await asyncio.wait_for(loop.sendfile(transport, f, sent, step), TRANSFER_IDLE_TIMEOUT)
                sent += n
                if n < step:  # the file shrank under us (not fsstore's way: it replaces)
                    logger.warning("download {}/{}: the file ended after {} of {} bytes", store.name, path, sent, end)
                    transport.close()
                    return response
            await response.write_eof()
        except asyncio.TimeoutError:
            _drop_stalled(request, store, path)
        except (ConnectionError, asyncio.CancelledError) as e:
            logger.debug("download {}/{} ended early: {}", store.name, path, type(e).__name__)
            raise
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
        return web.Response(status=_piece_error(request, e).status)
    return web.Response(headers={"Content-Length": str(stat.size), **_validators(stat)})


async def _piece_delete(request: web.Request) -> web.Response:
    store = _store_or_404(request)
    try:
        await asyncio.get_running_loop().run_in_executor(None, store.delete, request.match_info["path"])
    except Exception as e:
        return _piece_error(request, e)
    return web.Response(status=204)
