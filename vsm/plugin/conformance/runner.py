"""`vsm-pool plugin test ARTIFACT`: the conformance kit of the plugin's kind, run against the
built artifact in its own pool, through the same proxies the manager uses."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..artifact import read_artifact_manifest
from . import CheckResult, run_kvstore_kit, run_objstore_kit
from ...errors import PluginLoadError
from ..loader import Plugin, Registry, _compatibility_problem
from ..proxies import PooledDB, PooledStore
from ...sdk import Config, Kind

__all__ = ["run_conformance"]


def run_conformance(artifact: Path, meta: dict[str, str], *, workers: int = 1, backend: str = "process") -> list[CheckResult]:
    manifest, _ = read_artifact_manifest(artifact)
    problem = _compatibility_problem(manifest)
    if problem:
        raise PluginLoadError(f"{artifact}: {problem}")
    plugin = Plugin(manifest, Path(artifact).resolve())
    registry = Registry([plugin])
    pool = registry.start(plugin, backend=backend, workers=workers)
    try:
        with tempfile.TemporaryDirectory(prefix=f"vsm-kit-{manifest.name}-") as scratch:
            if manifest.kind is Kind.KVStore:
                meta = dict(meta) or {"Path": str(Path(scratch) / "kit.db")}
                db = PooledDB(pool, meta)
                db.run()
                try:
                    return run_kvstore_kit(db)
                finally:
                    db.close()
            if manifest.kind is Kind.ObjStore:
                location = str(Path(scratch) / "store")
                Path(location).mkdir()

                def make_store(read_only: bool) -> PooledStore:
                    # The kit's contract: every store it asks for sees the same location.
                    name = "kit-read-only" if read_only else "kit"
                    return PooledStore(pool, Config(name=name, path=location, meta=dict(meta), read_only=read_only))

                return run_objstore_kit(make_store)
            raise PluginLoadError(f"{artifact}: no conformance kit for {manifest.kind.value} plugins yet")
    finally:
        registry.close()
