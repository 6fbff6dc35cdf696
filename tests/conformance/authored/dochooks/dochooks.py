"""Where every sector is (online/offline), and how many updates it had, from the Go hooks."""

from __future__ import annotations

from typing import Any, Sequence

from vsm.sdk.sectors import AllocatedSector, SectorID, SectorState

WHERE: dict[SectorID, str] = {}
FIELDS: dict[SectorID, set[str]] = {}


def imported(worker_state: str, state: SectorState, override: bool) -> None:
    WHERE[state.id] = worker_state


def allocated(sectors: Sequence[AllocatedSector], worker_state: str) -> None:
    for sector in sectors:
        WHERE[sector.id] = worker_state


def updated(sector_id: SectorID, worker_state: str, fields: dict[str, Any]) -> None:
    WHERE[sector_id] = worker_state
    FIELDS.setdefault(sector_id, set()).update(fields)


def finalized(sector_id: SectorID) -> None:
    WHERE[sector_id] = "offline"


def restored(sector_id: SectorID) -> None:
    WHERE[sector_id] = "online"
