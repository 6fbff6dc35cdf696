"""Sector events into a SQLite file: (seq, kind, miner, number, worker_state)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pyarrow as pa


class EventTable:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, kind TEXT, miner INTEGER, number INTEGER, worker_state TEXT)"
        )

    def on_batch(self, batch: pa.RecordBatch) -> None:
        cols = [batch.column(name).to_pylist() for name in ("seq", "kind", "miner", "number", "worker_state")]
        with self.db:  # one transaction per delivery; seqs stored before are ignored
            self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", zip(*cols))

    def stored_seqs(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT seq FROM events")]

    def drop(self) -> None:
        with self.db:
            self.db.execute("DROP TABLE IF EXISTS events")

    def query(self, sql: str) -> Any:
        cur = self.db.execute(sql)
        names = [d[0] for d in cur.description or []]
        rows = cur.fetchall()
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    def close(self) -> None:
        self.db.close()


def attach(meta: dict[str, str]) -> EventTable:
    if "Path" not in meta:
        raise ValueError("docsink: Meta 'Path' (the SQLite file) is required")
    return EventTable(meta["Path"])
