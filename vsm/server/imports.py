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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Iterator

from aiohttp import web
from loguru import logger

from ..sdk import DiskFullError
from ..sectors import read_ahead
from .pieces import TRANSFER_IDLE_TIMEOUT

__all__ = ["add_import_route"]

_READ_HOP = 1 << 20  # bytes the import thread takes from the event loop per hop
# Batches read off the socket ahead of the import: the pipeline never waits for the client to
# be scheduled and push the next batch (on a loaded 2-core machine it did: 0.5-0.7 of the
# in-process import), and memory stays bounded (a 10k-state batch is a few MB).
_READ_AHEAD = 3


def add_import_route(app: web.Application) -> None:
    app.router.add_post("/sectors/import", _import)


class _BlockingBody:
    """The request body as a blocking file for pyarrow's stream reader, in the import thread:
    each hop to the event loop brings up to 1 MiB, and small reads are served from it."""

    def __init__(self, request: web.Request, loop: asyncio.AbstractEventLoop) -> None:
        self._content = request.content
        self._loop = loop
        self._buf = bytearray()
        self._eof = False
        self.received = 0
        self.closed = False

    async def _take(self, want: int) -> bytes:
        parts, n = [], 0
        while n < want:
            chunk = await asyncio.wait_for(self._content.readany(), TRANSFER_IDLE_TIMEOUT)
            if not chunk:
                break
            parts.append(chunk)
            n += len(chunk)
            if self._content.total_bytes <= self.received + n:
                break  # nothing more buffered: go with what we have
        return b"".join(parts)

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


def _run_import(manager: Any, body: _BlockingBody, override: bool, worker_state: str | None) -> dict[str, int]:
    import pyarrow as pa

    from ..errors import VsmError

    if manager.sectors is None:
        raise VsmError("the sector state manager is not running")
    received = [0]
    reader = pa.ipc.open_stream(pa.PythonFile(body, mode="r"))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in read_ahead(reader, _READ_AHEAD):
            received[0] += batch.num_rows
            yield batch

    written = manager.sectors.import_arrow(batches(), override=override, worker_state=worker_state)
    return {"written": written, "received": received[0]}


async def _import(request: web.Request) -> web.Response:
    override = request.query.get("override", "0") in ("1", "true")
    worker_state = request.query.get("worker_state") or None
    if worker_state not in (None, "online", "offline"):
        return web.json_response({"error": f"worker_state must be online or offline, not {worker_state!r}"}, status=400)
    loop = asyncio.get_running_loop()
    body = _BlockingBody(request, loop)
    try:
        result = await loop.run_in_executor(None, _run_import, request.app["manager"], body, override, worker_state)
    except DiskFullError as e:  # one line, the path and its free space; what landed before it
        logger.warning("sectors import refused after {} bytes: {}", body.received, e)
        return web.json_response({"error": str(e), "written": getattr(e, "written", 0), "received": getattr(e, "received", 0)}, status=507)
    except Exception as e:
        logger.warning("sectors import failed after {} bytes: {}: {}", body.received, type(e).__name__, e)
        return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=400 if isinstance(e, (ValueError, TypeError, ConnectionError)) else 500)
    return web.json_response(result)
