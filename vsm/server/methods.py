"""The manager's JSON-RPC methods: status, pieces, sectors, sinks and queries.

Each is a plain function `fn(manager, **params)`; the run-time plugin methods (plugin.enable,
disable, reload, flush, rescan) are in admin.py and join this table at the bottom.
"""

from __future__ import annotations

from typing import Any

from ..errors import VsmError
from .admin import ADMIN_METHODS
from .jsonrpc import MethodTable

__all__ = ["METHODS"]

METHODS = MethodTable()


@METHODS.method("plugin.list")
def plugin_list(manager: Any) -> list[dict[str, Any]]:
    return [p.describe() for p in manager.registry.plugins]


@METHODS.method("status")
def status(manager: Any) -> dict[str, Any]:
    import os

    from .problems import problems

    plugins = plugin_list(manager)
    sectors = manager.sectors.status() if manager.sectors is not None else None
    return {
        "daemon": {"pid": os.getpid(), "home": manager.config.home, "listen": manager.config.api.listen},
        "plugins": plugins,
        "stores": {**{n: {"plugin": s.pool.spec.name, "state": "ready"} for n, s in manager.stores.items()},
                   **{n: {"state": "failed", "error": e} for n, e in manager.store_errors.items()},
                   **{n: {"state": "starting", "error": why} for n, why in manager.stores_starting().items()}},
        "sectors": sectors,
        "problems": problems(manager, sectors, plugins),  # what is broken, why, and the command that fixes it
        "config": manager.config_drift(),  # whether the file on disk differs from the running config
    }


@METHODS.method("pieces.stat")
def pieces_stat(manager: Any, store: str, path: str) -> dict[str, Any]:
    return {"store": store, "path": path, "size": manager.store(store).stat(path).size}


@METHODS.method("pieces.delete")
def pieces_delete(manager: Any, store: str, path: str) -> None:
    manager.store(store).delete(path)


@METHODS.method("pieces.stores")
def pieces_stores(manager: Any) -> list[dict[str, Any]]:
    return [{"name": n, "plugin": s.pool.spec.name, "path": s.cfg.path, "read_only": s.cfg.read_only} for n, s in manager.stores.items()]


# --- sectors -------------------------------------------------------------------------------


def _sid(miner: int, number: int) -> Any:
    from ..sdk.sectors import SectorID

    if not isinstance(miner, int) or not isinstance(number, int) or miner < 0 or number < 0:
        raise ValueError(f"miner and number must be whole numbers >= 0, got {miner!r}, {number!r}")
    return SectorID(miner, number)


def _sectors(manager: Any) -> Any:
    if manager.sectors is None:
        raise VsmError("the sector state manager is not running")
    return manager.sectors


def _state_json(state: Any, worker_state: str | None = None) -> dict[str, Any]:
    out = state.to_go_dict()
    if worker_state:
        out["WorkerState"] = worker_state
    return out


@METHODS.method("sectors.import")
def sectors_import(manager: Any, states: list[dict[str, Any]], override: bool = False, worker_state: str | None = None) -> int:
    """States in damocles' JSON encoding; returns how many were written (existing ones are
    skipped unless override). worker_state null: offline if Finalized, else online (damocles'
    import-json); "online"/"offline": all there."""
    from ..sdk.sectors import SectorState

    if not isinstance(states, list):
        raise ValueError("states must be a list of SectorState objects in damocles' JSON encoding")
    parsed = []
    for i, raw in enumerate(states):
        try:  # as strict as Go's json.Unmarshal; the error names the field path
            parsed.append(SectorState.from_go_dict(raw))
        except ValueError as e:
            raise ValueError(f"states[{i}]: {e}") from None
    return _sectors(manager).import_states(parsed, override=override, worker_state=worker_state)


@METHODS.method("sectors.init")
def sectors_init(manager: Any, sectors: list[dict[str, int]], worker_state: str = "online") -> list[dict[str, Any]]:
    """Allocated sectors [{"miner", "number", "proof_type"}] -> their new states."""
    from ..sdk.sectors import AllocatedSector

    allocated = [AllocatedSector(_sid(s["miner"], s["number"]), int(s.get("proof_type", 0))) for s in sectors]
    return [_state_json(s, worker_state) for s in _sectors(manager).init(allocated, worker_state)]


@METHODS.method("sectors.get")
def sectors_get(manager: Any, miner: int, number: int) -> dict[str, Any]:
    sid = _sid(miner, number)
    sm = _sectors(manager)
    where = sm.locate(sid)
    if where is None:  # the same error as update's, finalize's...
        from ..sectors import SectorNotFoundError

        raise SectorNotFoundError(f"no sector m-{miner}-n-{number} (online or offline)")
    return _state_json(sm.get(sid, where), where)


@METHODS.method("sectors.list")
def sectors_list(manager: Any, worker_state: str = "online", miner: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    cap = manager.config.api.max_list_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= cap:
        raise ValueError(f"limit must be a whole number from 0 to {cap} ([Common.Api] MaxListLimit), got {limit!r}")
    out = []
    for state in _sectors(manager).list(worker_state, miner):
        if len(out) >= limit:
            break
        out.append(_state_json(state, worker_state))
    return out


@METHODS.method("sectors.update")
def sectors_update(manager: Any, miner: int, number: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Set fields (Go names such as "Finalized", or attribute names) on a sector."""
    if not isinstance(fields, dict) or not fields:
        raise ValueError("fields must be a non-empty object of field name -> value")
    sm = _sectors(manager)
    state = sm.update(_sid(miner, number), fields)
    return _state_json(state, sm.locate(state.id))


@METHODS.method("sectors.finalize")
def sectors_finalize(manager: Any, miner: int, number: int) -> dict[str, Any]:
    state = _sectors(manager).finalize(_sid(miner, number))
    try:  # as damocles' sealer: a finalized sector's persist-store reservation is released
        manager.reserver.release(miner, number)
    except Exception as e:  # noqa: BLE001 - logged, as damocles does; the finalize stands
        from loguru import logger

        logger.error("sector m-{}-n-{}: release reserved: {}", miner, number, e)
    return _state_json(state, "offline")


@METHODS.method("stores.reserve_space")
def stores_reserve_space(manager: Any, miner: int, number: int, size: int, candidates: list[str] | None = None) -> dict[str, Any] | None:
    """damocles' StoreReserveSpace: a persist store for an online sector's sealed files, one
    whose AllowMiners/DenyMiners admit the sector's miner, writable and with `size` bytes
    free beyond what is reserved (chosen by Weight); null when none fits."""
    sid = _sid(miner, number)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a whole number of bytes >= 0, got {size!r}")
    if candidates is not None and not (isinstance(candidates, list) and all(isinstance(c, str) for c in candidates)):
        raise ValueError(f"candidates must be a list of store names, got {candidates!r}")
    _sectors(manager).get(sid, "online")  # as damocles: only a sector being sealed reserves
    return manager.reserver.reserve(miner, number, size, candidates or ())


@METHODS.method("stores.release_reserved")
def stores_release_reserved(manager: Any, miner: int, number: int) -> bool:
    """damocles' StoreReleaseReserved: drop the sector's reservations; true if it held any."""
    _sid(miner, number)
    return bool(manager.reserver.release(miner, number))


@METHODS.method("sectors.restore")
def sectors_restore(manager: Any, miner: int, number: int) -> dict[str, Any]:
    return _state_json(_sectors(manager).restore(_sid(miner, number)), "online")


@METHODS.method("sinks.status")
def sinks_status(manager: Any) -> dict[str, Any]:
    return _sectors(manager).status()


@METHODS.method("sinks.rebuild")
def sinks_rebuild(manager: Any, name: str) -> dict[str, Any]:
    """Refill a sink from the sector states (one "rebuild" row per sector); clears its
    needs-rebuild mark. Returns {sink, rows, first_seq, last_seq, seconds}."""
    return manager.rebuild_sink(name)  # type: ignore[no-any-return]


@METHODS.method("sinks.forget")
def sinks_forget(manager: Any, name: str) -> None:
    """Delete the checkpoint (and any rebuild mark) of a sink that is not attached: it stops
    holding the journal. Refused for an attached sink (disable its plugin first)."""
    manager.forget_sink(name)


@METHODS.method("query.arrow")
def query_arrow(manager: Any, sql: str, sink: str = "duckdb") -> str:
    """SQL over the sink's database; the result as base64 Arrow IPC (exact types)."""
    import base64

    from ..sectors import PoolSink

    pool = manager.sink_pool(sink)
    if pool is None:
        raise ValueError(f"no ready SyncSectorState sink {sink!r} answers queries")
    api = manager.config.api
    return base64.b64encode(PoolSink(pool).query(sql, max_bytes=api.query_max_bytes, timeout=api.query_timeout)).decode()


@METHODS.method("query")
def query(manager: Any, sql: str, sink: str = "duckdb", js_safe: bool = False) -> dict[str, Any]:
    """SQL over the sink's database; {"columns": [...], "rows": [[...], ...]}. js_safe: integers
    beyond 2^53 as decimal strings (what the dashboard asks for: a browser rounds them)."""
    import base64

    from ..sectors import ipc_to_table
    from .analytics import js_safe_rows

    table = ipc_to_table(base64.b64decode(query_arrow(manager, sql, sink)))
    rows = [list(r.values()) for r in table.to_pylist()]
    return {"columns": table.column_names, "rows": js_safe_rows(rows) if js_safe else rows}


@METHODS.method("sectors.analytics")
def sectors_analytics(manager: Any, sink: str = "duckdb") -> dict[str, Any]:
    """The dashboard's sector charts (vsm/server/analytics.py), each {"columns", "rows"}."""
    from .analytics import sector_analytics

    return sector_analytics(lambda sql: query(manager, sql, sink, js_safe=True))


@METHODS.method("sectors.search")
def sectors_search(manager: Any, miner: Any = None, number: Any = None, state: str | None = None, limit: int = 100,
                   sink: str = "duckdb") -> dict[str, Any]:
    """The dashboard's sector search over the DuckDB sink: any of miner, number, state."""
    from .analytics import sector_search_sql

    return query(manager, sector_search_sql(miner, number, state, limit), sink, js_safe=True)


@METHODS.method("sectors.history")
def sectors_history(manager: Any, miner: Any, number: Any, sink: str = "duckdb") -> dict[str, Any]:
    """Every event of one sector from the DuckDB sink, oldest first (the dashboard's timeline)."""
    from .analytics import sector_history_sql

    return query(manager, sector_history_sql(miner, number), sink, js_safe=True)


METHODS.update(ADMIN_METHODS)
