"""Which persist store a sector's sealed files go to: damocles' StoreManager.ReserveSpace and
ReleaseReserved (`damocles-manager/pkg/objstore/mgr.go`), where the stores' miner policies
(`AllowMiners`/`DenyMiners`) are enforced.

    reserve(sector, size, candidates):
      every persist store, in config order
        -> not a candidate, or its policy does not allow the sector's miner: skipped
        -> this sector holds a reservation of this size there already: that store, unchanged
        -> ReadOnly, or Free < reserved + size: skipped
      -> one of the rest at random, by Weight; the reservation is recorded
    release(sector): its reservations are dropped (finalize does this too, as damocles' sealer)

The reservations live where damocles keeps them, so one database serves both: the Go JSON of
StoreReserveSummary under `objstore/StoreReserveSummary` in the `common` collection. Read,
change, write under one lock, as damocles does (one manager per database).
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Sequence

from vsm.sdk.errors import KeyNotFoundError

from ._keys import PrefixedKVStore

__all__ = ["StoreReserver"]

_SUMMARY_KEY = b"StoreReserveSummary"


def _sector_name(miner: int, number: int) -> str:
    return f"s-t0{miner}-{number}"  # Go util.FormatSectorID


class StoreReserver:
    """Args:
    common: the DB's `common` collection.
    stores: (StoreConfig, Store) of every opened persist store, in config order.
    """

    def __init__(self, common: Any, stores: Sequence[tuple[Any, Any]]) -> None:
        self._kv = PrefixedKVStore(common, b"objstore")
        self._stores = list(stores)
        self._lock = threading.Lock()
        self._rand = random.Random()

    def set_stores(self, stores: Sequence[tuple[Any, Any]]) -> None:
        """The persist stores open now (one whose plugin was still starting joins later)."""
        self._stores = list(stores)

    def reserve(self, miner: int, number: int, size: int, candidates: Sequence[str] = ()) -> dict[str, Any] | None:
        """The chosen store's basic info (Go StoreBasicInfo), or None when none fits."""
        by = _sector_name(miner, number)
        with self._lock:
            summary = self._load()
            stats = summary["Stats"]
            choices: list[tuple[Any, Any]] = []
            for cfg, store in self._stores:
                if candidates and cfg.name not in candidates or not cfg.allows(miner):
                    continue
                try:
                    info = store.instance_info()
                except Exception:  # noqa: BLE001 - as damocles: a store that cannot say is skipped
                    continue
                stat = stats.get(cfg.name)
                if stat is not None and stat["Reserved"].get(by, {}).get("Size") == size:
                    return _basic(cfg)  # already reserved before
                reserved = stat["ReservedSize"] if stat is not None else 0
                if cfg.read_only or info.free < reserved + size:
                    continue
                choices.append((cfg, store))
            if not choices:
                return None
            cfg, _ = self._rand.choices(choices, weights=[c.weight or 1 for c, _ in choices])[0]
            stat = stats.setdefault(cfg.name, {"ReservedSize": 0, "Reserved": {}})
            stat["Reserved"][by] = {"By": by, "Size": size, "At": int(time.time())}
            stat["ReservedSize"] += size
            self._save(summary)
            return _basic(cfg)

    def release(self, miner: int, number: int) -> bool:
        """Drop the sector's reservations; True if it held any."""
        by = _sector_name(miner, number)
        with self._lock:
            summary = self._load()
            released = False
            for stat in summary["Stats"].values():
                rev = stat["Reserved"].pop(by, None)
                if rev is not None:
                    stat["ReservedSize"] = max(0, stat["ReservedSize"] - rev["Size"])
                    released = True
            if released:
                self._save(summary)
            return released

    def _load(self) -> dict[str, Any]:
        try:
            summary = json.loads(self._kv.get(_SUMMARY_KEY))
        except KeyNotFoundError:
            return {"Stats": {}}
        summary["Stats"] = summary.get("Stats") or {}
        for stat in summary["Stats"].values():
            stat["Reserved"] = stat.get("Reserved") or {}
        return summary

    def _save(self, summary: dict[str, Any]) -> None:
        self._kv.put(_SUMMARY_KEY, _go_json(summary))


def _basic(cfg: Any) -> dict[str, Any]:
    return {"Name": cfg.name, "Path": cfg.path, "Strict": cfg.strict, "ReadOnly": cfg.read_only, "Weight": cfg.weight, "Meta": dict(cfg.meta)}


def _go_json(summary: dict[str, Any]) -> bytes:
    """json.Marshal(StoreReserveSummary): struct fields in declaration order, map keys sorted,
    <, >, & and U+2028/2029 escaped."""
    stats = {}
    for name in sorted(summary["Stats"]):
        stat = summary["Stats"][name]
        reserved = {by: {"By": r["By"], "Size": r["Size"], "At": r["At"]} for by, r in sorted(stat["Reserved"].items())}
        stats[name] = {"ReservedSize": stat["ReservedSize"], "Reserved": reserved}
    text = json.dumps({"Stats": stats}, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()
