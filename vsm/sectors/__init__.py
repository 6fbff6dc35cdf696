"""Sector state manager: states in the KVStore, changes as Arrow events to SyncSectorState sinks.

    from vsm.sectors import SectorStateManager, SinkHost, read_import_file, query_duckdb

See `_manager.py` for the write-ahead design and its crash argument, `_journal.py` for the
on-disk layout, `_dispatch.py` for per-sink delivery and `sink_host.py` for the worker side.
"""

from __future__ import annotations

from ._dispatch import PoolSink, SinkState
from ._events import JournalBroken, op_client
from ._io import ImportReport, RefusedLine, query_duckdb, read_ahead, read_import_batches, read_import_file, write_import_file
from ._journal import FrameRef, Journal, read_frame
from ._manager import OFFLINE, ONLINE, SectorNotFoundError, SectorStateManager
from .sink_host import SinkHost, ipc_to_table, make_sink_host

__all__ = [
    "FrameRef",
    "ImportReport",
    "Journal",
    "JournalBroken",
    "OFFLINE",
    "ONLINE",
    "PoolSink",
    "RefusedLine",
    "SectorNotFoundError",
    "SectorStateManager",
    "SinkHost",
    "SinkState",
    "ipc_to_table",
    "make_sink_host",
    "op_client",
    "query_duckdb",
    "read_frame",
    "read_ahead",
    "read_import_batches",
    "read_import_file",
    "write_import_file",
]
