"""Sector analytics for the dashboard: fixed SQL over the DuckDB sink's tables, answered by the
sink's own pool through the same path as `vsm-pool query` (`sectors.analytics`).

Each query reads `sectors` (the current state per sector) or `sector_events` (every event);
a sector's state is its LatestState.StateChange.Next, or a flag that ends its life (Removed,
Finalized, aborted). Time spent in a state is the time from an event to the sector's next
event, summed per state.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["ANALYTICS", "sector_analytics"]

_STATE = """case when removed then 'Removed' when finalized then 'Finalized'
    when coalesce(abort_reason, '') <> '' then 'Aborted'
    else coalesce(nullif(latest_state.state_change.next, ''), 'Unknown') end"""

ANALYTICS: dict[str, str] = {
    "by_state": f"select {_STATE} as state, count(*) as sectors from sectors group by 1 order by 2 desc, 1",
    "by_miner": """select miner, count(*) as sectors, count(*) filter (where finalized) as finalized
        from sectors group by miner order by miner""",
    # the last 72 hours that have events (not the wall clock: an imported history shows too)
    "events_per_hour": """select strftime(date_trunc('hour', time), '%Y-%m-%d %H:00') as hour, count(*) as events
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
