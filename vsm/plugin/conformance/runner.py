"""`vsm-pool plugin test ARTIFACT`: the conformance kit of the plugin's kind, run against the
built artifact in its own pool, through the same proxies the manager uses.

    manifest testMeta + --meta ({scratch}, {prefix} filled in) --> the Constructor's Meta
         |
    a scratch folder and a name prefix of this run (kit_<hex>_)
         |
    pool of the artifact (onInit told plugins_dir = the scratch folder)
         |
    the kit's checks, one result each, as they finish (on_result)
         |
    cleanup: every key of the kit's collections, every object it put, the sink's drop();
    then the scratch folder. What could not be removed is said, never left silently.

Nothing is added to the Meta that the manifest (`testMeta`) or the caller (--meta) did not ask
for: a plugin that needs a file says `testMeta = { Path = "{scratch}/kit.db" }`, one that
writes into a shared server says `testMeta = { KeyPrefix = "{prefix}" }`.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from executors import PoolSpec

from ...errors import PluginLoadError
from ...sdk import Config, Kind, Manifest, ObjectNotFoundError
from ..artifact import read_artifact_manifest
from ..blame import describe
from .. import envs
from ..loader import Plugin, Registry, _compatibility_problem
from ..proxies import PooledDB, PooledStore
from . import KVSTORE_CHECKS, OBJSTORE_CHECKS
from ._jsonrpc import JSONRPC_CHECKS, RpcKit
from ._result import CheckResult, run_checks
from ._sectorsync import SinkKit, run_sectorsync_kit
from ._sink_probe import probe_init

__all__ = ["KitRun", "kit_meta", "run_conformance"]

OnResult = Callable[[CheckResult], None]


@dataclasses.dataclass
class KitRun:
    """What `plugin test` reports: the plugin, the Meta it ran with, every result, and what
    the cleanup removed (or could not)."""

    label: str
    meta: dict[str, str]
    results: list[CheckResult]
    cleanup: str = ""

    @property
    def failed(self) -> bool:
        return any(not r.passed for r in self.results)


def kit_meta(manifest: Manifest, given: dict[str, str], scratch: str, prefix: str) -> dict[str, str]:
    """The manifest's testMeta, overridden by the caller's, with {scratch} and {prefix} filled."""
    merged = {**manifest.test_meta, **given}
    return {k: v.replace("{scratch}", scratch).replace("{prefix}", prefix) for k, v in merged.items()}


def run_conformance(
    artifact: Path,
    meta: dict[str, str],
    *,
    workers: int = 1,
    backend: str = "process",
    on_result: OnResult | None = None,
) -> KitRun:
    """Run the kit of the artifact's kind in the artifact's own pool. Raises PluginLoadError
    (one line) when the plugin cannot start or its Constructor fails."""
    manifest, _ = read_artifact_manifest(artifact)
    problem = _compatibility_problem(manifest)
    if problem:
        raise PluginLoadError(f"{artifact}: {problem}")
    plugin = Plugin(manifest, Path(artifact).resolve(), env=envs.plan(manifest))  # its own environment, if any
    scratch = tempfile.mkdtemp(prefix=f"vsm-kit-{manifest.name}-")
    prefix = f"kit_{uuid.uuid4().hex[:10]}_"
    try:
        registry = Registry([plugin], plugins_dir=scratch, adapt_spec=_probe_sinks)
        run_meta = kit_meta(manifest, meta, scratch, prefix)
        if manifest.kind is Kind.SyncSectorState:
            workers = 1  # deliveries are one at a time anyway; the kit's rules are about their order
        pool = registry.start(plugin, backend=backend, workers=workers)
        try:
            kit = _KITS.get(manifest.kind)
            if kit is None:
                raise PluginLoadError(f"{artifact}: no conformance kit for {manifest.kind.value} plugins yet")
            run = KitRun(plugin.label, run_meta, [])
            kit(_Context(plugin, pool, run_meta, scratch, prefix, on_result), run)
            return run
        finally:
            registry.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass
class _Context:
    plugin: Plugin
    pool: Any
    meta: dict[str, str]
    scratch: str
    prefix: str
    on_result: OnResult | None

    def checks(self, checks: Any, subject: Any) -> list[CheckResult]:
        return run_checks(checks, subject, code_path=self.plugin.code_path, on_result=self.on_result)

    def setup_failed(self, what: str, e: BaseException) -> PluginLoadError:
        shown = ", ".join(f"{k}={v}" for k, v in self.meta.items()) or "none"
        return PluginLoadError(
            f"{self.plugin.label}: {what} failed (Meta: {shown}): {describe(e, self.plugin.code_path)}"
        )


# -- KVStore ---------------------------------------------------------------------------------


class _TrackedDB:
    """The DB under test, remembering every collection the kit opens (to empty them after)."""

    def __init__(self, db: PooledDB) -> None:
        self.db = db
        self.names: list[str] = []

    def run(self) -> None:
        self.db.run()

    def close(self) -> None:
        self.db.close()

    def open_collection(self, name: str) -> Any:
        if name not in self.names:
            self.names.append(name)
        return self.db.open_collection(name)

    @property
    def snapshot_scans(self) -> bool:
        return self.db.snapshot_scans

    def backup_file(self) -> str:
        """The DB's own backup, as `vsm-pool backup` makes it (vsm/plugin/host.py KVHost.backup)."""
        return str(self.db.pool.call("backup", timeout=None))

    def check(self) -> list[str] | None:
        return self.db.pool.call("check")  # type: ignore[no-any-return]


def _kvstore(ctx: _Context, run: KitRun) -> None:
    db = PooledDB(ctx.pool, ctx.meta)
    try:
        db.run()
    except Exception as e:
        raise ctx.setup_failed("Constructor", e) from None
    tracked = _TrackedDB(db)
    try:
        run.results = ctx.checks(KVSTORE_CHECKS, tracked)
    finally:
        try:
            run.cleanup = _empty_collections(tracked)
        finally:
            db.close()


def _empty_collections(tracked: _TrackedDB) -> str:
    """Delete every key of every collection the kit opened, through the plugin's own API."""
    removed, left = 0, []
    for name in tracked.names:
        coll = tracked.db.open_collection(name)
        try:
            keys = [bytes(k) for k, _ in _drain(coll.scan(b""))]
            coll.update(_delete_all(keys))
            removed += len(keys)
        except Exception as e:  # noqa: BLE001 - said in the report, the other collections go on
            left.append(f"{name}: {type(e).__name__}: {e}")
    said = f"removed {removed} keys in {len(tracked.names)} collections"
    return said + ("; could not empty " + "; ".join(left) if left else "")


def _drain(it: Any) -> list[tuple[bytes, bytes]]:
    try:
        return list(it)
    finally:
        it.close()


def _delete_all(keys: list[bytes]) -> Callable[[Any], None]:
    def fn(txn: Any) -> None:
        for k in keys:
            txn.delete(k)

    return fn


# -- ObjStore --------------------------------------------------------------------------------


class _TrackedStore:
    """A store under test, remembering every path the kit puts (to delete them after)."""

    def __init__(self, store: PooledStore, paths: list[str]) -> None:
        self._store = store
        self._paths = paths

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def put(self, path: str, reader: Any) -> int:
        if path not in self._paths:
            self._paths.append(path)
        return self._store.put(path, reader)


def _objstore(ctx: _Context, run: KitRun) -> None:
    location = Path(ctx.scratch) / "store"
    location.mkdir()
    paths: list[str] = []

    def open_store(read_only: bool) -> PooledStore:
        # The kit's contract: every store it asks for sees the same location.
        name = "kit-read-only" if read_only else "kit"
        return PooledStore(ctx.pool, Config(name=name, path=str(location), meta=dict(ctx.meta), read_only=read_only))

    try:
        writable = open_store(False)
    except Exception as e:
        raise ctx.setup_failed("Constructor", e) from None

    def make_store(read_only: bool) -> Any:
        return _TrackedStore(open_store(read_only) if read_only else writable, paths)

    try:
        run.results = ctx.checks(OBJSTORE_CHECKS, make_store)
    finally:
        run.cleanup = _delete_objects(writable, paths)


def _delete_objects(store: PooledStore, paths: list[str]) -> str:
    removed, left = 0, []
    for path in paths:
        try:
            store.delete(path)
            removed += 1
        except (ObjectNotFoundError, ValueError):  # never written, or a path the store refuses
            continue
        except Exception as e:  # noqa: BLE001 - said in the report
            left.append(f"{path}: {type(e).__name__}: {e}")
    return f"removed {removed} objects" + ("; could not remove " + "; ".join(left) if left else "")


# -- SyncSectorState -------------------------------------------------------------------------


def _probe_sinks(plugin: Plugin, spec: PoolSpec) -> PoolSpec:
    """A sink's workers run the plugin as the manager does, probed: every hook call recorded."""
    if plugin.manifest.kind is not Kind.SyncSectorState:
        return spec
    return dataclasses.replace(spec, init=functools.partial(probe_init, spec.init, plugin.code_path))


def _sectorsync(ctx: _Context, run: KitRun) -> None:
    try:
        ctx.pool.broadcast("open_sink", ctx.meta, replay=True)
    except Exception as e:
        raise ctx.setup_failed("Constructor", e) from None
    kit = SinkKit(ctx.pool, ctx.meta, str(Path(ctx.scratch) / "journal"))
    try:
        run.results = run_sectorsync_kit(kit, code_path=ctx.plugin.code_path, on_result=ctx.on_result)
    finally:
        try:
            kit.close()
        finally:
            run.cleanup = _drop_sink(ctx.pool)


def _drop_sink(pool: Any) -> str:
    try:
        dropped = pool.call("kit_drop")
    except Exception as e:  # noqa: BLE001 - said in the report
        return f"drop() failed: {type(e).__name__}: {e}"
    finally:
        try:
            pool.broadcast("close_sink")
        except Exception:  # noqa: BLE001 - the pool is closed next anyway
            pass
    return "dropped the sink's data (drop())" if dropped else "no drop(): only the scratch folder was removed"


# -- RegisterJsonRpc -------------------------------------------------------------------------


def _jsonrpc(ctx: _Context, run: KitRun) -> None:
    run.results = ctx.checks(JSONRPC_CHECKS, RpcKit(ctx.pool))
    run.cleanup = "nothing stored outside the scratch folder (plugins_dir), which was removed"


_KITS: dict[Kind, Callable[[_Context, KitRun], None]] = {
    Kind.KVStore: _kvstore,
    Kind.ObjStore: _objstore,
    Kind.SyncSectorState: _sectorsync,
    Kind.RegisterJsonRpc: _jsonrpc,
}
