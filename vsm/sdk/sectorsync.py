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
    """What a SyncSectorState Constructor returns; every method is optional."""

    def on_batch(self, batch: Any) -> None: ...
    def on_import(self, worker_state: WorkerState, state: SectorState, override: bool) -> None: ...
    def on_init(self, sectors: Sequence[AllocatedSector], worker_state: WorkerState) -> None: ...
    def on_update(self, sector_id: SectorID, worker_state: WorkerState, fields: dict[str, Any]) -> None: ...
    def on_finalize(self, sector_id: SectorID) -> None: ...
    def on_restore(self, sector_id: SectorID) -> None: ...
    def close(self) -> None: ...
