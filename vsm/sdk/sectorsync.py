"""SyncSectorState plugin interfaces: sinks of sector-state changes.

A sink exports any of these hooks as module functions (Go style), or `Constructor(meta)`
returning an object with the same hooks as methods (`on_batch`, `on_import`, ...):

- `OnBatch(batch: pyarrow.RecordBatch)`: a batch of full rows (schema: `SECTOR_EVENT_SCHEMA`);
  vectorised sinks use only this. Rows carry a `seq` number: deduplicate by it, since
  delivery is at-least-once.
- `OnImport(worker_state, state, override)`, `OnInit(sectors, worker_state)`,
  `OnUpdate(sector_id, worker_state, fields)`, `OnFinalize(sector_id)`, `OnRestore(sector_id)`:
  the Go original's hooks with typed arguments, called row by row by the executor.

Raising from a hook makes the manager retry the batch with back-off; nothing is dropped.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence

from .sectors import AllocatedSector, SectorID, SectorState

__all__ = ["Sink", "WorkerState"]

WorkerState = Literal["online", "offline"]


class Sink(Protocol):
    """What a SyncSectorState Constructor returns; every method and attribute is optional."""

    accepts_tables: bool  # True: a delivery of several journal frames comes to on_batch as one pyarrow.Table
    batch_linger: float  # seconds a delivery may wait for more rows (rows wait in the journal)

    def on_batch(self, batch: Any) -> None:
        """Rows of SECTOR_EVENT_SCHEMA in seq order; a seq may come again: skip what is stored."""
        ...

    def on_import(self, worker_state: WorkerState, state: SectorState, override: bool) -> None:
        """A state imported (override: it replaced one), or reverted/rebuilt to what the KV holds (True)."""
        ...

    def on_init(self, sectors: Sequence[AllocatedSector], worker_state: WorkerState) -> None:
        """Sectors allocated: new states with ID and SectorType."""
        ...

    def on_update(self, sector_id: SectorID, worker_state: WorkerState, fields: dict[str, Any]) -> None:
        """Fields set on a state: {Go field name: typed value}."""
        ...

    def on_finalize(self, sector_id: SectorID) -> None:
        """The state moved offline (finalized)."""
        ...

    def on_restore(self, sector_id: SectorID) -> None:
        """The state moved back online."""
        ...

    def stored_seqs(self) -> Sequence[int]:
        """The seq of every event row the sink holds (`vsm-pool plugin test` reads it back)."""
        ...

    def drop(self) -> None:
        """Remove everything this instance stored (only `vsm-pool plugin test` calls it)."""
        ...

    def query(self, sql: str) -> Any:
        """A pyarrow.Table for sql over what the sink stored (`vsm-pool query`)."""
        ...

    def close(self) -> None:
        """Release what the sink holds (files, connections): it stops or a reload hands it over."""
        ...
