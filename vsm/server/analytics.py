"""Sector analytics for the dashboard: fixed SQL over the DuckDB sink's tables, answered by the
sink's own pool through the same path as `vsm-pool query` (`sectors.analytics`).

Each query reads `sectors` (the current state per sector) or `sector_events` (every event);
a sector's state is its LatestState.StateChange.Next, or a flag that ends its life (Removed,
Finalized, aborted). Time spent in a state is the time from an event to the sector's next
event, summed per state.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["ANALYTICS", "js_safe_rows", "sector_analytics", "sector_history_sql", "sector_search_sql"]

_STATE = """case when removed then 'Removed' when finalized then 'Finalized'
    when coalesce(abort_reason, '') <> '' then 'Aborted'
    else coalesce(nullif(latest_state.state_change.next, ''), 'Unknown') end"""

ANALYTICS: dict[str, str] = {
    "by_state": f"select {_STATE} as state, count(*) as sectors from sectors group by 1 order by 2 desc, 1",
    "by_miner": """select miner, count(*) as sectors, count(*) filter (where finalized) as finalized
        from sectors group by miner order by miner""",
    # the last 72 hours that have events (not the wall clock: an imported history shows too);
    # hour as unix seconds, which the page shows in the browser's time zone
    "events_per_hour": """select epoch(date_trunc('hour', time))::bigint as hour, count(*) as events
        from sector_events where time >= (select max(time) from sector_events) - interval 72 hour
        group by 1 order by 1""",
    "time_in_state": f"""with e as (
            select {_STATE} as state, time,
                   lead(time) over (partition by miner, number order by seq) as next_time
            from sector_events)
        select state, count(*) as visits,
               round(avg(epoch(next_time) - epoch(time)), 3) as avg_seconds,
               round(sum(epoch(next_time) - epoch(time)), 3) as total_seconds
        from e where next_time is not null group by state order by total_seconds desc limit 30""",
    "slowest": f"""select miner, number, arg_max({_STATE}, seq) as state, count(*) as events,
               min(time) as first_event, max(time) as last_event,
               round(epoch(max(time)) - epoch(min(time)), 3) as seconds
        from sector_events group by miner, number order by seconds desc, miner, number limit 10""",
}


_MAX_JS_INT = 2**53 - 1


def js_safe_rows(rows: list[list[Any]]) -> list[list[Any]]:
    """Integers a browser cannot hold exactly (beyond 2^53: a miner id or seq above it) as
    decimal strings; JSON.parse would round 18446744073709551615 to ...552000."""
    def safe(v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_JS_INT else v

    return [[safe(v) for v in row] for row in rows]


def _uint64(name: str, value: Any) -> int:
    """A miner id or sector number from a request (a string when beyond 2^53)."""
    try:
        n = int(str(value).strip().removeprefix("f0").removeprefix("t0"))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if not 0 <= n < 2**64:
        raise ValueError(f"{name}: {n} is outside 0 .. 2^64-1")
    return n


def sector_search_sql(miner: Any = None, number: Any = None, state: str | None = None, limit: int = 100) -> str:
    """The sectors matching every given filter (a miner, a number, a state as by_state names
    it), with their state, events and last event's time."""
    where = []
    if miner not in (None, ""):
        where.append(f"miner = {_uint64('miner', miner)}")
    if number not in (None, ""):
        where.append(f"number = {_uint64('number', number)}")
    if state:
        where.append(f"state = '{str(state).replace(chr(39), chr(39) * 2)}'")
    return f"""with s as (select miner, number, {_STATE} as state, time from sectors)
        select miner, number, state, time as last_event from s {"where " + " and ".join(where) if where else ""}
        order by last_event desc, miner, number limit {max(1, min(int(limit), 1000))}"""


def sector_history_sql(miner: Any, number: Any) -> str:
    """Every event of one sector, oldest first: the state it left the sector in, when, and
    its failure or abort reason."""
    return f"""select seq, kind, time, {_STATE} as state, worker_state,
               nullif(coalesce(nullif(abort_reason, ''), latest_state.failure."desc"), '') as reason,
               array_to_string(changed_fields, ', ') as changed
        from sector_events where miner = {_uint64('miner', miner)} and number = {_uint64('number', number)} order by seq"""


def sector_analytics(query: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Every ANALYTICS query through `query(sql) -> {"columns", "rows"}`; a query that fails
    (an empty database has no tables yet) gives {"error": ...} for that chart alone."""
    out: dict[str, Any] = {}
    for name, sql in ANALYTICS.items():
        try:
            out[name] = query(sql)
        except Exception as e:  # noqa: BLE001 - one chart's failure is shown on that chart
            out[name] = {"columns": [], "rows": [], "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return out
