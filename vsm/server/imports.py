"""POST /sectors/import: a bulk import as one streamed request of Arrow record batches.

    CLI (vsm-pool sectors import FILE)                    daemon
    -----------------------------------                   ------
    Parquet: iter_batches  |  Go JSON lines: parsed  -->  aiohttp body --(thread, 1 MiB reads)-->
    column-wise, the strict decoder for lines that        pa.ipc stream reader --> batches -->
    are not Go's bytes (sectors/_jsonlines.py);           SectorStateManager.import_arrow
    refused lines reported file:line and left out
    -> Arrow IPC stream (schema, batch, ..., EOS)         (journal, KV, sinks: the engine's path)
       over one chunked HTTP request                      <-- {"written", "received"}
                                                          <-- 507 {"error": "disk full: PATH ...",
                                                              "written"}: what landed before it

Query: override=1 replaces existing sectors; worker_state=online|offline puts every state
there (default: offline if Finalized, as damocles' import-json). Columns are those of
SECTOR_STATE_SCHEMA (missing ones null). Memory stays flat on both sides: batches are read as
the import takes them and TCP holds the client back (the JSON-RPC `sectors.import` took a
whole list of states in one body, 2.8k sectors/s in issue 14).

An import that breaks off (the client closed or was killed, its body stalled for
$VSM_TRANSFER_IDLE_TIMEOUT seconds, the daemon is stopping) ends after the chunks it journaled
are written (SectorStateManager._import_pipelined): the answer, when the client is still there
to read it, is {"error", "written", "received"}, what was stored before it broke off. The same
import sent again skips those states (they exist), so no sector gets a second import event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Iterator

from aiohttp import web
from loguru import logger

from ..sdk import DiskFullError
from ..sectors import read_ahead
from .pieces import TRANSFER_IDLE_TIMEOUT

__all__ = ["ImportProgress", "add_import_route"]

_READ_HOP = 1 << 20  # bytes the import thread takes from the event loop per hop
# Batches read off the socket ahead of the import: the pipeline never waits for the client to
# be scheduled and push the next batch (on a loaded 2-core machine it did: 0.5-0.7 of the
# in-process import), and memory stays bounded (a 10k-state batch is a few MB).
_READ_AHEAD = 3


# set when the daemon stops: imports end at their next batch and answer what they stored
_STOPPING = web.AppKey("import_stopping", threading.Event)


class ImportProgress:
    """States received by bulk imports since the daemon started (the dashboard's import rate)."""

    def __init__(self) -> None:
        self.received = 0


def add_import_route(app: web.Application) -> None:
    app["imports"] = ImportProgress()
    app.router.add_post("/sectors/import", _import)
    app[_STOPPING] = threading.Event()

    async def stopping(app: web.Application) -> None:  # before the daemon waits for its handlers
        app[_STOPPING].set()

    app.on_shutdown.append(stopping)


class ImportStopped(ConnectionError):
    """The daemon is stopping: the import ends at the next batch, with what it stored."""


class _BlockingBody:
    """The request body as a blocking file for pyarrow's stream reader, in the import thread:
    each hop to the event loop brings up to 1 MiB, and small reads are served from it."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self._content = request.content
        self._stopping = request.app.get(_STOPPING) or threading.Event()
        self._loop = loop
        self._buf = bytearray()
        self._eof = False
        self.received = 0
        self.closed = False

    async def _take(self, want: int) -> bytes:
        parts, n = [], 0
        while n < want:
            chunk = await self._read_any()
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
            if self._content.total_bytes <= self.received + n:
                break  # nothing more buffered: go with what we have
        return b"".join(parts)

    async def _read_any(self) -> bytes:
        """The next bytes of the body; ImportStopped once the daemon is stopping (checked every
        second while waiting), TimeoutError after TRANSFER_IDLE_TIMEOUT without a byte."""
        reading = asyncio.ensure_future(self._content.readany())
        deadline = self._loop.time() + TRANSFER_IDLE_TIMEOUT
        try:
            while not reading.done():
                if self._stopping.is_set():
                    raise ImportStopped("the daemon is stopping")
                left = deadline - self._loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait({reading}, timeout=min(left, 1.0))
        finally:
            if not reading.done():
                reading.cancel()
        return reading.result()

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buf) < size):
            fut = asyncio.run_coroutine_threadsafe(self._take(max(_READ_HOP, size)), self._loop)
            try:
                chunk = fut.result()
            except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
                raise ConnectionError(f"import stalled: no byte for {TRANSFER_IDLE_TIMEOUT:.0f}s after {self.received} bytes") from None
            if not chunk:
                self._eof = True
            self.received += len(chunk)
            self._buf += chunk
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def _run_import(manager: Any, body: _BlockingBody, override: bool, worker_state: str | None,
                progress: ImportProgress, client: str) -> dict[str, int]:
    import pyarrow as pa

    from ..errors import VsmError

    if manager.sectors is None:
        raise VsmError("the sector state manager is not running")
    received = [0]
    reader = pa.ipc.open_stream(pa.PythonFile(body, mode="r"))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in read_ahead(reader, _READ_AHEAD):
            received[0] += batch.num_rows
            progress.received += batch.num_rows
            yield batch

    try:
        written = manager.sectors.import_arrow(batches(), override=override, worker_state=worker_state, client=client)
    except Exception as e:
        e.received = received[0]  # type: ignore[attr-defined]
        raise
    return {"written": written, "received": received[0]}


async def _import(request: web.Request) -> web.Response:
    override = request.query.get("override", "0") in ("1", "true")
    worker_state = request.query.get("worker_state") or None
    if worker_state not in (None, "online", "offline"):
        return web.json_response({"error": f"worker_state must be online or offline, not {worker_state!r}"}, status=400)
    loop = asyncio.get_running_loop()
    body = _BlockingBody(request, loop)
    client = f"sectors import from {request.remote or '?'} (POST /sectors/import)"
    try:
        result = await loop.run_in_executor(None, _run_import, request.app["manager"], body, override, worker_state,
                                                request.app["imports"], client)
    except DiskFullError as e:  # one line, the path and its free space; what landed before it
        logger.warning("sectors import refused after {} bytes: {}", body.received, e)
        return web.json_response({"error": request.app["scrub"](str(e)), "written": getattr(e, "written", 0),
                                  "received": getattr(e, "received", 0)}, status=507)
    except Exception as e:
        written, received = getattr(e, "written", 0), getattr(e, "received", 0)
        logger.warning("sectors import from {} broke off after {} bytes, {} states stored: {}: {}",
                       request.remote, body.received, written, type(e).__name__, e)
        status = 503 if isinstance(e, ImportStopped) else 400 if isinstance(e, (ValueError, TypeError, ConnectionError)) else 500
        return web.json_response({"error": f"{type(e).__name__}: {e}", "written": written, "received": received}, status=status)
    return web.json_response(result)
