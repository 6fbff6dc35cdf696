"""`vsm-pool util migrate`: copy every KV collection from one KVStore plugin to another, as
damocles-manager's `util migrate` does, each side in its own pool with its own Meta.

Which collections: the ones the source holds, when its DB can list them (an optional
`collections()`: the bundled sqlitekv, memdb and redis do); otherwise every collection
damocles keeps, the empty ones skipped. damocles' own tool copies a fixed list
(`common, meta, offline_meta, sector-index, snapup, worker`), leaving out `rebuild`,
`unseal` and `prover`."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from executors import make_pool

from ..errors import PluginLoadError
from .loader import Registry
from .proxies import PooledDB
from ..sdk import Kind

__all__ = ["COLLECTIONS", "CollectionCopy", "migrate"]

# Every collection damocles-manager opens (dep/sealer_constructor.go, dep/prover.go).
COLLECTIONS = ("common", "meta", "offline_meta", "sector-index", "snapup", "worker", "rebuild", "unseal", "prover")
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
    collections: Iterable[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[CollectionCopy]:
    """Copy each collection (default: every one present, see the module doc) in key order, in
    batches; then count both sides."""
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
        names = list(collections) if collections else _present(src_db)
        report = []
        for coll in names:
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


def _present(db: PooledDB) -> list[str]:
    listed = db.collections()
    if listed is not None:
        return listed
    return [name for name in COLLECTIONS if _has_keys(db.open_collection(name))]


def _has_keys(coll: object) -> bool:
    it = coll.scan(b"")  # type: ignore[attr-defined]
    try:
        return next(iter(it), None) is not None
    finally:
        it.close()


def _count(coll: object) -> int:
    return sum(1 for _ in coll.scan(b""))  # type: ignore[attr-defined]
