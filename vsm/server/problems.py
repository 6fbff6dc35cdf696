"""Every broken or degraded part of the running manager, with its cause and the command that
fixes it: what `vsm-pool status` prints under its tables and /metrics exports as `vsm_problem`.

    disk      disk-full: a path the daemon writes (journal, KV, a sink's files) is under
              [Common] MinFreeSpace, or its disk refused a write: `disk full: PATH ...`
    journal   broken (a write failed; it retries by itself)  |  held (a KV commit's outcome unknown)
              |  stalled (the watermark waits for one ticket while committed events pile up behind it)
    kv        damaged (a call met a damaged page of the DB's file: the KV plugin's `damage`)
    plugin    failed pool (crash loop)  |  failed (its artifact did not load, at start or rescan)
              |  degraded (a worker being replaced)  |  disabled (by `plugin disable`, by the
              config, or its start failed)  |  starting (its pool is starting, e.g. a slow onInit:
              what needs it answers 503)
    store     failed to open
    sink      needs a rebuild (its events left the journal)  |  backoff (deliveries failing)
              |  disabled (its plugin is: its backlog waits in the journal)  |  failed (its
              Constructor failed: nothing is delivered)  |  no plugin (a checkpoint only)

One row: {"part": "sink/parquet", "state": "needs-rebuild", "cause": "...", "fix": "vsm-pool ..."}.
"""

from __future__ import annotations

from typing import Any

__all__ = ["problems"]


def problems(manager: Any, sectors: dict[str, Any] | None = None, plugins: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """The problems of `manager` now (sectors / plugins: its status and plugin rows, if the
    caller has them already)."""
    out: list[dict[str, str]] = []

    def add(part: str, state: str, cause: str, fix: str) -> None:
        out.append({"part": part, "state": state, "cause": cause, "fix": fix})

    if sectors is None and manager.sectors is not None:
        sectors = manager.sectors.status()
    if plugins is None:
        plugins = [p.describe() for p in manager.registry.plugins] if manager.registry is not None else []
    journal = (sectors or {}).get("journal") or {}
    full = {d["part"]: d["message"] for d in journal.get("disk_full") or ()}
    for name, s in ((sectors or {}).get("sinks") or {}).items():
        if s.get("disk_full") and f"sink/{name}" not in full:  # its own disk refused a write
            full[f"sink/{name}"] = s["disk_full"]
    for part, message in full.items():
        add(part, "disk-full", message, "free space on that filesystem (or lower [Common] MinFreeSpace): writes and "
            "sinks resume by themselves within seconds; sector changes are refused meanwhile, reads and queries go on")
    if journal.get("broken") and "journal" not in full:
        add("journal", "broken", journal["broken"],
            f"free space or fix the disk under {manager.config.sector_sync.journal_dir}: the journal retries by itself; "
            "sector changes are refused meanwhile")
    if journal.get("held"):
        add("journal", "held", journal["held"], "none if the KVStore answers again (its pool restarts a crashed worker); "
            f"a failed KVStore pool: `vsm-pool plugin reload {manager.config.db.plugin_name}`")
    if journal.get("stalled"):
        add("journal", "stalled", journal["stalled"], "none if its op ends (a KVStore call ends at its pool's timeout); "
            "else restart the daemon (`vsm-pool stop`, `vsm-pool start`): recovery keeps what the KV holds and drops the rest")
    damage = _kv_damage(manager)
    if damage:
        add("kv", "damaged", damage, "stop the daemon and restore the home from a backup: `vsm-pool restore BACKUP --home NEWDIR` "
            "(`vsm-pool doctor` lists every damaged file)")
    sinks = (sectors or {}).get("sinks") or {}
    # by name; an artifact that failed to load never hides the running plugin of its name
    loaded = {p["name"]: p for p in sorted(plugins, key=lambda p: p["state"] != "failed" or bool(p.get("pool")))}
    for p in plugins:
        name, pool, state = p["name"], p.get("pool") or {}, p["state"]
        if state == "failed" and pool:
            add(f"plugin/{name}", "failed", p.get("error") or pool.get("last_error") or "", f"`vsm-pool plugin reload {name}` (or enable)")
        elif state == "failed":
            add(f"plugin/{name}", "failed", p.get("error") or "", "rebuild, replace or remove the artifact it names, then `vsm-pool plugin rescan`")
        elif state == "starting":
            since = p.get("starting") or {}
            add(f"plugin/{name}", "starting", f"its workers are starting (importing it, onInit) for {since.get('seconds', 0):.0f} s",
                f"none: it serves once ready; past StartTimeout ({since.get('start_timeout', 60):g} s) it is disabled with the cause")
        elif pool.get("state") == "degraded":
            add(f"plugin/{name}", "degraded", pool.get("last_error") or "", "none: its worker is being replaced")
        elif state == "disabled" and not (sinks.get(name) or {}).get("needs_rebuild"):  # (a sink's needs-rebuild row says enable)
            sink = p["kind"] == "SyncSectorState"
            add(f"sink/{name}" if sink else f"plugin/{name}", "disabled", _disabled_cause(p, sinks.get(name), journal), _enable_fix(name, p.get("error") or ""))
        elif state == "ready" and p.get("error") and p["kind"] == "SyncSectorState":  # its open (Constructor) failed: nothing reaches it
            add(f"sink/{name}", "failed", p["error"], f"fix what it names (its file or folder), then `vsm-pool plugin reload {name}` "
                f"(a change to [Common.Plugins.{name}.Meta] in config.toml needs a restart)")
    for store, cause in sorted(getattr(manager, "store_errors", {}).items()):
        plugin = next((s.plugin_name for s in (*manager.config.piece_stores, *manager.config.persist_stores) if s.name == store), "?")
        add(f"store/{store}", "failed", cause, f"fix the store (or its config.toml entry), then `vsm-pool plugin reload {plugin}`")
    for name, s in ((sectors or {}).get("sinks") or {}).items():
        if f"sink/{name}" in full and not s.get("needs_rebuild"):
            continue
        if s.get("needs_rebuild"):
            fix = f"`vsm-pool sinks rebuild {name}`" if s.get("attached") else f"`vsm-pool plugin enable {name}`, then `vsm-pool sinks rebuild {name}`"
            add(f"sink/{name}", "needs-rebuild", s["needs_rebuild"], fix)
        elif s.get("state") == "backoff":
            add(f"sink/{name}", "backoff", s.get("last_error") or "", f"it retries by itself; after fixing the sink: `vsm-pool plugin reload {name}`")
        elif not s.get("attached") and s.get("lag"):
            behind = _behind(s, journal)
            if name in loaded and (loaded[name]["state"] == "disabled" or (loaded[name]["state"] == "ready" and loaded[name].get("error"))):
                continue  # listed with its plugin's cause above
            if name in loaded:
                add(f"sink/{name}", loaded[name]["state"], behind, f"`vsm-pool plugin enable {name}`")
            else:
                add(f"sink/{name}", "no plugin", behind + "; no plugin of that name is loaded",
                    f"put its plugin back in the plugins folder and `vsm-pool plugin rescan`, or `vsm-pool sinks forget {name}`")
    return out


def _kv_damage(manager: Any) -> str | None:
    """The damage the DB's plugin met while serving (sqlitekv: a damaged page), asked of its
    worker: a call that meets it fails alone, and the status must not stay green (issue 25)."""
    db = getattr(manager, "db", None)
    if db is None:
        return None
    try:
        return db.pool.call("damage", timeout=5)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a pool that cannot answer has its own row (failed, degraded)
        return None


def _behind(sink: dict[str, Any], journal: dict[str, Any]) -> str:
    return f"{sink['lag']} events behind, kept in the journal (up to [Common.Journal] MaxBacklog = {journal.get('max_backlog')})"


def _disabled_cause(plugin: dict[str, Any], sink: dict[str, Any] | None, journal: dict[str, Any]) -> str:
    """Why a plugin is disabled; for a sink, what it is missing meanwhile."""
    why = plugin.get("error") or "disabled"
    if sink and sink.get("lag"):
        return f"{_behind(sink, journal)}; {why}"
    if plugin["kind"] == "SyncSectorState":
        return f"{why}; new sector events wait for it in the journal"
    return why


def _enable_fix(name: str, error: str) -> str:
    if error.startswith("disabled by `vsm-pool plugin disable`") or not error:
        return f"`vsm-pool plugin enable {name}`"
    if error == "disabled in config":
        return f"`vsm-pool plugin enable {name}` (for good: remove `Disabled = true` from [Common.Plugins.{name}] in config.toml)"
    return f"fix it, then `vsm-pool plugin enable {name}`"
