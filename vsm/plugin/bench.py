"""`vsm-pool plugin bench ARTIFACT`: what running in its own pool costs a plugin.

The same artifact is started twice, with the same host code (vsm/plugin/host.py) and the same
proxies the manager uses: once in a pool of worker processes, once in-process (executors'
InlinePool: direct calls, no process boundary). Each workload runs on both, in one run, and the
ratio pool/in-process is printed (1.0: isolation is free; 0.1: a tenth of the in-process rate).

    KVStore           put and get of 100 B one call at a time, a scan, an update of many puts
    ObjStore          put and get of one object (streamed through the ring vs a plain reader), stat
    SyncSectorState   deliveries of journal frames of full rows (the manager's real path)
    RegisterJsonRpc   each method, called with arguments made from its signature

Meta and cleanup are the kit's: the manifest's testMeta plus --meta, each side with its own
{scratch} and {prefix}; what a workload wrote is removed afterwards.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import PluginLoadError
from ..sdk import Config, Kind
from .artifact import read_artifact_manifest
from .blame import describe
from .loader import Plugin, Registry, _compatibility_problem
from .proxies import PooledDB, PooledStore

__all__ = ["BenchRow", "run_bench"]

_MiB = 1 << 20


@dataclasses.dataclass
class BenchRow:
    workload: str
    unit: str  # "calls/s", "rows/s", "MB/s"
    pool: float
    inline: float | None  # None: the in-process side could not run it
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.inline else self.pool / self.inline

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ratio": self.ratio}


def _rate(n: float, fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return n / max(time.perf_counter() - t, 1e-9)


@dataclasses.dataclass
class _Side:
    """One start of the plugin: its pool (process or inline), its Meta and scratch."""

    pool: Any
    meta: dict[str, str]
    scratch: str


def run_bench(
    artifact: Path, meta: dict[str, str], *, workers: int = 1, quick: bool = False, on_row: Callable[[BenchRow], None] | None = None
) -> tuple[str, list[BenchRow]]:
    """(the plugin's label, one row per workload). Raises PluginLoadError (one line) if the
    plugin cannot start in its pool."""
    from .conformance.runner import kit_meta

    manifest, _ = read_artifact_manifest(artifact)
    problem = _compatibility_problem(manifest)
    if problem:
        raise PluginLoadError(f"{artifact}: {problem}")
    bench = _BENCHES.get(manifest.kind)
    if bench is None:
        raise PluginLoadError(f"{artifact}: no benchmark for {manifest.kind.value} plugins")
    scratch = tempfile.mkdtemp(prefix=f"vsm-bench-{manifest.name}-")
    plugins = {side: Plugin(manifest, Path(artifact).resolve()) for side in ("process", "inline")}
    registry = Registry(list(plugins.values()), plugins_dir=scratch)
    try:
        sides: dict[str, _Side | None] = {}
        for side, plugin in plugins.items():
            folder = Path(scratch) / side
            folder.mkdir()
            side_meta = kit_meta(manifest, meta, str(folder), f"bench_{uuid.uuid4().hex[:8]}_")
            try:
                pool = registry.start(plugin, backend=side, workers=workers if side == "process" else 1)
            except PluginLoadError:
                if side == "process":
                    raise
                sides[side] = None  # e.g. its requirements live only in its own environment
                continue
            sides[side] = _Side(pool, side_meta, str(folder))
        rows: list[BenchRow] = []

        def add(row: BenchRow) -> None:
            rows.append(row)
            if on_row is not None:
                on_row(row)

        bench(sides["process"], sides["inline"], quick, add, plugins["process"].code_path)  # type: ignore[arg-type]
        return plugins["process"].label, rows
    finally:
        registry.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _both(
    process: _Side, inline: _Side | None, add: Callable[[BenchRow], None], workload: str, unit: str, measure: Callable[[_Side], float]
) -> None:
    """Each side twice, alternating (the first pass also warms caches, pages and the worker), the
    better pass counted: on a shared machine the worse one mostly measures the neighbours."""
    best: dict[str, float] = {}
    for _ in range(2):
        for name, side in (("pool", process), ("inline", inline)):
            if side is not None:
                best[name] = max(best.get(name, 0.0), measure(side))
    add(BenchRow(workload, unit, best["pool"], best.get("inline")))


# -- KVStore ---------------------------------------------------------------------------------


def _kvstore(process: _Side, inline: _Side | None, quick: bool, add: Callable[[BenchRow], None], code_path: str) -> None:
    from .conformance.runner import _empty_collections, _TrackedDB

    n = 500 if quick else 5000
    scan_n = 2000 if quick else 20000
    dbs: dict[int, _TrackedDB] = {}
    for side in (process, inline):
        if side is not None:
            db = PooledDB(side.pool, side.meta)
            try:
                db.run()
            except Exception as e:
                raise PluginLoadError(f"the Constructor failed (Meta: {side.meta}): {describe(e, code_path)}") from None
            dbs[id(side)] = _TrackedDB(db)
    coll_name = f"bench-{uuid.uuid4().hex[:8]}"
    value = b"v" * 100

    def coll(side: _Side) -> Any:
        return dbs[id(side)].open_collection(coll_name)

    def puts(side: _Side) -> float:
        c = coll(side)
        return _rate(n, lambda: [c.put(b"k%08d" % i, value) for i in range(n)])

    def gets(side: _Side) -> float:
        c = coll(side)
        return _rate(n, lambda: [c.get(b"k%08d" % i) for i in range(n)])

    def scans(side: _Side) -> float:
        c = coll(side)
        keys = [(b"s%08d" % i, value) for i in range(scan_n)]
        c.update(lambda txn: [txn.put(k, v) for k, v in keys] and None)

        def scan() -> None:
            it = c.scan(b"s")
            try:
                sum(1 for _ in it)
            finally:
                it.close()

        return _rate(scan_n, scan)

    def updates(side: _Side) -> float:
        c = coll(side)
        rounds = 20 if quick else 100
        batch = [(b"u%04d" % i, value) for i in range(100)]
        return _rate(rounds, lambda: [c.update(lambda txn: [txn.put(k, v) for k, v in batch] and None) for _ in range(rounds)])

    try:
        _both(process, inline, add, "put 100 B, one call at a time", "calls/s", puts)
        _both(process, inline, add, "get 100 B, one call at a time", "calls/s", gets)
        _both(process, inline, add, f"scan {scan_n} keys", "keys/s", scans)
        _both(process, inline, add, "update of 100 puts (fn shipped by value)", "updates/s", updates)
    finally:
        for tracked in dbs.values():
            _empty_collections(tracked)
            tracked.close()


# -- ObjStore --------------------------------------------------------------------------------


class _Zeros(io.RawIOBase):
    """size bytes of a reused buffer: a source that costs nothing to read."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        self.left -= n
        return n


def _objstore(process: _Side, inline: _Side | None, quick: bool, add: Callable[[BenchRow], None], code_path: str) -> None:
    size = (64 if quick else 512) * _MiB
    stores: dict[int, Any] = {}
    for side in (process, inline):
        if side is not None:
            location = Path(side.scratch) / "store"
            location.mkdir()
            try:
                stores[id(side)] = PooledStore(side.pool, Config(name="bench", path=str(location), meta=dict(side.meta)))
            except Exception as e:
                raise PluginLoadError(f"the Constructor failed (Meta: {side.meta}): {describe(e, code_path)}") from None
    path = f"bench-{uuid.uuid4().hex[:8]}/object"

    def put(side: _Side) -> float:
        store = stores[id(side)]
        return _rate(size / 1e6, lambda: store.put(path, _Zeros(size)))

    def get(side: _Side) -> float:
        store = stores[id(side)]

        def read() -> None:
            reader = store.get(path)
            try:
                buf = bytearray(8 * _MiB)
                while reader.readinto(buf):
                    pass
            finally:
                reader.close()

        return _rate(size / 1e6, read)

    def stat(side: _Side) -> float:
        store = stores[id(side)]
        n = 200 if quick else 2000
        return _rate(n, lambda: [store.stat(path) for _ in range(n)])

    try:
        _both(process, inline, add, f"put {size // _MiB} MiB", "MB/s", put)
        _both(process, inline, add, f"get {size // _MiB} MiB", "MB/s", get)
        _both(process, inline, add, "stat, one call at a time", "calls/s", stat)
    finally:
        for store in stores.values():
            try:
                store.delete(path)
            except Exception:  # noqa: BLE001 - best effort; the scratch folder goes anyway
                pass


# -- SyncSectorState -------------------------------------------------------------------------


def _sectorsync(process: _Side, inline: _Side | None, quick: bool, add: Callable[[BenchRow], None], code_path: str) -> None:
    from ..sectors import PoolSink, SectorStateManager
    from .conformance._sectorsync import _MemDB, _state

    rows, per_delivery = (20_000, 5_000) if quick else (100_000, 10_000)
    journal_dir = Path(process.scratch) / "journal"
    manager = SectorStateManager(_MemDB(), str(journal_dir), fsync=False, flush_rows=per_delivery, import_chunk=per_delivery, compact_interval=3600)
    try:
        template = [_state(n) for n in range(1, 101)]
        states = []
        for n in range(rows):
            st = dataclasses.replace(template[n % 100], id=dataclasses.replace(template[n % 100].id, number=n + 1))
            states.append(st)
        manager.import_states(states)
        frames = manager.journal.frames_between(0, manager.status()["journal"]["head"])
        endpoints: dict[int, Any] = {}
        for side in (process, inline):
            if side is not None:
                try:
                    side.pool.broadcast("open_sink", side.meta, replay=True)
                except Exception as e:
                    raise PluginLoadError(f"the Constructor failed (Meta: {side.meta}): {describe(e, code_path)}") from None
                endpoints[id(side)] = PoolSink(side.pool, timeout=600)

        def deliver(side: _Side) -> float:
            ep = endpoints[id(side)]
            seg_dir = manager.journal.seg_dir

            def run() -> None:
                after = 0
                for f in frames:
                    ep.deliver(seg_dir, [f.as_tuple()], after)
                    after = f.last_seq

            return _rate(rows, run)

        try:
            _both(process, inline, add, f"{rows} rows in deliveries of {per_delivery}", "rows/s", deliver)
        finally:
            for side in (process, inline):
                if side is not None:
                    try:
                        side.pool.call("drop")  # what it stored in a shared server, if it can
                    finally:
                        side.pool.broadcast("close_sink")
    finally:
        manager.close()


# -- RegisterJsonRpc -------------------------------------------------------------------------


def _jsonrpc(process: _Side, inline: _Side | None, quick: bool, add: Callable[[BenchRow], None], code_path: str) -> None:
    from .conformance._jsonrpc import sample

    namespace, methods = process.pool.call("describe")
    signatures = process.pool.call("signatures")
    n = 500 if quick else 5000
    for method in sorted(methods)[:5]:
        args = {p: sample(ann) for p, kind, has_default, ann in signatures.get(method, []) if not has_default and kind not in ("VAR_POSITIONAL", "VAR_KEYWORD")}

        def calls(side: _Side, method: str = method, args: dict[str, Any] = args) -> float:
            def run() -> None:
                for _ in range(n):
                    try:
                        side.pool.call("invoke", method, args)
                    except Exception:  # noqa: BLE001 - an error reply is a reply: it is timed too
                        pass

            return _rate(n, run)

        _both(process, inline, add, f"{namespace}.{method}({', '.join(args)})", "calls/s", calls)


_BENCHES: dict[Kind, Callable[..., None]] = {
    Kind.KVStore: _kvstore,
    Kind.ObjStore: _objstore,
    Kind.SyncSectorState: _sectorsync,
    Kind.RegisterJsonRpc: _jsonrpc,
}
