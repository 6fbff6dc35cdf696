"""`vsm-pool util migrate`: copy every KV collection from one KVStore plugin to another, as
damocles-manager's `util migrate` does, each side in its own pool with its own Meta."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from executors import make_pool

from ..errors import PluginLoadError
from .loader import Registry
from .proxies import PooledDB
from ..sdk import Kind

__all__ = ["COLLECTIONS", "CollectionCopy", "migrate"]

# The collections damocles-manager keeps (its migrate tool copies these).
COLLECTIONS = ("common", "meta", "offline_meta", "sector-index", "snapup", "worker", "rebuild")
BATCH = 2000


@dataclasses.dataclass(frozen=True)
class CollectionCopy:
    name: str
    copied: int
    source_count: int
    target_count: int

    @property
    def ok(self) -> bool:
        return self.copied == self.source_count and self.target_count >= self.source_count


def migrate(
    registry: Registry,
    source: tuple[str, dict[str, str]],
    target: tuple[str, dict[str, str]],
    collections: Iterable[str] = COLLECTIONS,
    progress: Callable[[str, int], None] | None = None,
) -> list[CollectionCopy]:
    """Copy each collection in key order, in batches; then count both sides."""
    dbs = []
    try:
        for name, meta in (source, target):
            plugin = registry.get(Kind.KVStore, name)
            if plugin is None:
                loaded = ", ".join(p.manifest.name for p in registry.of_kind(Kind.KVStore)) or "none"
                raise PluginLoadError(f"no loaded KVStore plugin {name!r} (loaded: {loaded})")
            # Each side gets a pool of its own, so one plugin can be both source and target.
            pool = make_pool(registry.pool_spec(plugin))
            pool.start()
            db = PooledDB(pool, meta)
            dbs.append(db)
            db.run()
        src_db, dst_db = dbs
        report = []
        for coll in collections:
            src, dst = src_db.open_collection(coll), dst_db.open_collection(coll)
            copied = 0
            batch: list[tuple[bytes, bytes]] = []
            for item in src.scan(b""):
                batch.append(item)
                if len(batch) >= BATCH:
                    copied += dst.put_many(batch)
                    if progress:
                        progress(coll, len(batch))
                    batch = []
            if batch:
                copied += dst.put_many(batch)
                if progress:
                    progress(coll, len(batch))
            report.append(CollectionCopy(coll, copied, _count(src), _count(dst)))
        return report
    finally:
        for db in dbs:
            try:
                db.close()
            finally:
                db.pool.close()


def _count(coll: object) -> int:
    return sum(1 for _ in coll.scan(b""))  # type: ignore[attr-defined]
