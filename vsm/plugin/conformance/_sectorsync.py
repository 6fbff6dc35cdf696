"""The SyncSectorState kit: a known stream of sector events of every kind, through the real
journal and dispatcher, into the sink in its own pool; then the redeliveries the manager makes
in real life, each of which the sink must absorb.

    kit KV (in memory; fails a commit on request, which journals a "revert")
        <- SectorStateManager (the manager's own) -> journal frames
        -> SinkDispatcher (deliveries of at most 3 rows: one frame or several)
        -> the sink's pool, its worker probed (_sink_probe.py): every hook call recorded

    stream: import x3 (online), import (offline), init x2, update, finalize, restore,
            update whose KV commit fails (+ revert to the state the KV holds),
            init whose KV commit fails (+ revert of a sector that does not exist);
            last, a rebuild of the sink from the KV (rows of kind "rebuild", beside the journal)

What the sink stored is read back through its optional `stored_seqs()` (every seq of its event
history, once per stored row); rules that need it are skipped, saying so, for a sink without it.
`drop()`, if the sink has it, removes what the kit's run stored (`plugin test` calls it last).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator

import pyarrow as pa

from vsm.sdk import KeyNotFoundError
from vsm.sdk.sectors import (
    STATE_FIELDS,
    AllocatedSector,
    DealInfoV2,
    MessageInfo,
    PieceInfoV2,
    PreCommitInfo,
    ProofInfo,
    ReportStateReq,
    SectorID,
    SectorPieceV2,
    SectorState,
    SectorStateChange,
    Seed,
    Ticket,
    WorkerIdentifier,
)

from ._result import CheckFailed, CheckResult, SkipCheck, expect, run_checks

__all__ = ["SECTORSYNC_CHECKS", "SinkKit"]

MINER = 1000
GO_HOOKS = ("OnImport", "OnInit", "OnUpdate", "OnFinalize", "OnRestore")
_MAX_ROWS = 3  # rows per delivery: single-frame and multi-frame deliveries both happen
_GIVE_UP_ERRORS = 8  # failed deliveries in a row before the kit stops waiting (~1 s of back-off)


# -- the kit's KVStore: in memory, a commit fails on request -------------------------------------


class _Iter:
    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._it = iter(items)

    def __iter__(self) -> _Iter:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._it)

    def close(self) -> None:
        pass


class _MemCollection:
    def __init__(self, db: _MemDB) -> None:
        self._db = db
        self.data: dict[bytes, bytes] = {}

    def need_retry_transactions(self) -> bool:
        return False

    def get(self, key: bytes) -> bytes:
        try:
            return self.data[bytes(key)]
        except KeyError:
            raise KeyNotFoundError(repr(key)) from None

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self.data[bytes(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self.data.pop(bytes(key), None)

    def scan(self, prefix: bytes) -> _Iter:
        return _Iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))

    def view(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self)

    def update(self, fn: Callable[[Any], Any]) -> Any:
        if self._db.failures:
            self._db.failures -= 1
            raise RuntimeError("kit: the KV commit fails on purpose (the manager journals a revert)")
        work = _MemCollection(self._db)
        work.data = dict(self.data)
        out = fn(work)
        self.data = work.data
        return out


class _MemDB:
    def __init__(self) -> None:
        self.failures = 0
        self._colls: dict[str, _MemCollection] = {}

    def run(self) -> None:
        pass

    def close(self) -> None:
        pass

    def open_collection(self, name: str) -> _MemCollection:
        return self._colls.setdefault(name, _MemCollection(self))


# -- the stream ------------------------------------------------------------------------------


def _state(number: int) -> SectorState:
    """A sealed-looking state: nested structs, a DDO piece, bytes, escapes and nulls (keyword
    arguments only: the Go structs gain and lose fields over time)."""
    st = SectorState(id=SectorID(MINER, number), sector_type=8)
    st.ticket = Ticket(ticket=number.to_bytes(8, "big") * 4, epoch=2_500_000 + number)
    st.seed = Seed(seed=b"\x01" * 32, epoch=2_500_150 + number)
    st.pre = PreCommitInfo(comm_r="bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb", ticket=Ticket(ticket=b"\x02" * 32, epoch=2_500_000))
    st.proof = ProofInfo(proof=b"\x03" * 192)
    st.message_info = MessageInfo(pre_commit_cid="bafy2bzacedxkkpqwmuf4dnnz4h5djmvjc7zu2bhzbhbkoqqm6npg3zpd5lewu", need_send=True)
    st.latest_state = ReportStateReq(
        worker=WorkerIdentifier(instance="worker-01", location="10.0.0.7"),
        state_change=SectorStateChange(prev="C2Done", next="Persisted", event="Evt"),
    )
    cid = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"
    if number % 2:
        deal = DealInfoV2(
            allocation_id=1000 + number, piece_cid=cid, piece_size=34359738368, client="f03344", provider=f"f0{MINER}",
            length=34359738368, payload_size=3 << 30, start_epoch=2_510_000, end_epoch=5_000_000,
        )
        st.pieces = [SectorPieceV2(piece=PieceInfoV2(size=34359738368, piece_cid=cid), deal_info=deal)]
    st.abort_reason = "kit: <&> \u2028 ünïcode" if number == 3 else ""
    return st


def _stream(m: Any, kv: _MemDB) -> None:
    """Every kind of event, each operation its own journal frame."""
    m.import_states([_state(n) for n in (1, 2, 3)])
    m.import_states([_state(4)], worker_state="offline")
    m.init([AllocatedSector(SectorID(MINER, 10), 8), AllocatedSector(SectorID(MINER, 11), 9)])
    m.update(SectorID(MINER, 1), {"AbortReason": "retry later", "Unsealing": True, "Pieces": None})
    m.finalize(SectorID(MINER, 1))
    m.restore(SectorID(MINER, 1))
    kv.failures = 1  # the KV refuses the commit: the manager journals a revert to what it holds
    with contextlib.suppress(RuntimeError):
        m.update(SectorID(MINER, 2), {"Removed": True})
    kv.failures = 1  # a new sector whose commit fails: reverted to "none" (it does not exist)
    with contextlib.suppress(RuntimeError):
        m.init([AllocatedSector(SectorID(MINER, 12), 8)])


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """The manager logs what the kit causes on purpose (failed commits, a killed worker):
    not the author's news."""
    log = logging.getLogger(name)
    level, log.level = log.level, logging.CRITICAL + 1
    try:
        yield
    finally:
        log.level = level


def expected_go_calls(frames: list[pa.RecordBatch]) -> list[tuple[str, tuple[Any, ...]]]:
    """The Go hook calls a stream's frames make, event by event (consecutive inits of one
    worker state in one frame are one OnInit, as damocles allocates them)."""
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for frame in frames:
        rows = frame.to_pylist()
        i = 0
        while i < len(rows):
            r = rows[i]
            kind, ws, sid = r["kind"], r["worker_state"], SectorID(r["miner"], r["number"])
            if kind == "init":
                group = []
                while i < len(rows) and rows[i]["kind"] == "init" and rows[i]["worker_state"] == ws:
                    group.append(AllocatedSector(SectorID(rows[i]["miner"], rows[i]["number"]), rows[i]["sector_type"]))
                    i += 1
                calls.append(("OnInit", (group, ws)))
                continue
            if kind == "import":
                calls.append(("OnImport", (ws, SectorState.from_arrow_row(r), False)))
            elif kind == "revert" and ws != "none":
                calls.append(("OnImport", (ws, SectorState.from_arrow_row(r), True)))
            elif kind == "update":
                st = SectorState.from_arrow_row(r)
                calls.append(("OnUpdate", (sid, ws, {go: getattr(st, STATE_FIELDS[go]) for go in r["changed_fields"] or []})))
            elif kind == "finalize":
                calls.append(("OnFinalize", (sid,)))
            elif kind == "restore":
                calls.append(("OnRestore", (sid,)))
            i += 1
    return calls


# -- the subject of the checks ---------------------------------------------------------------


class SinkKit:
    """The sink in its pool (opened with the kit's Meta, its worker probed), the manager that
    fed it the stream, and what the sink was given."""

    def __init__(self, pool: Any, meta: dict[str, str], journal_dir: str) -> None:
        from vsm.sectors import PoolSink, SectorStateManager

        self.pool = pool
        self.meta = meta
        self.kv = _MemDB()
        self.manager = SectorStateManager(
            self.kv, journal_dir, fsync=False, sink_max_rows=_MAX_ROWS, sink_backoff=(0.01, 0.1), commit_retries=1, compact_interval=3600
        )
        self.endpoint = PoolSink(pool, timeout=60.0)
        self.hooks = set(pool.call("kit_hooks"))
        self.attributes = pool.call("kit_attributes")
        self.calls: list[tuple[str, Any, str]] = []  # what the stream's deliveries gave the sink
        self.extra_seqs: set[int] = set()  # rows delivered outside the journal (a rebuild's)
        self.stream_error = ""

    @property
    def batches(self) -> bool:
        """The sink takes batches (on_batch); the Go hooks are then never called."""
        return "OnBatch" in self.hooks

    def run_stream(self) -> None:
        with _quiet("vsm.sectors"):
            _stream(self.manager, self.kv)
        self.manager.add_sink("kit", self.endpoint)
        self.stream_error = self.wait()
        self.calls = self.pool.call("kit_calls")

    def wait(self, timeout: float = 60.0) -> str:
        """Until the sink's checkpoint reaches the journal's head: "" , or why it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.manager.wait_delivered(timeout=0.2):
                return ""
            status = self.manager.status()["sinks"]["kit"]
            if status["errors"] >= _GIVE_UP_ERRORS and status["state"] == "backoff":
                break
        status = self.manager.status()["sinks"]["kit"]
        raised = [c[2] for c in self.pool.call("kit_calls", False) if c[2]]
        why = raised[-1] if raised else status["last_error"] or "no delivery came back"
        return f"delivery stopped at seq {status['checkpoint']} of {self.head}: {why}"

    @property
    def head(self) -> int:
        return int(self.manager.status()["journal"]["head"])

    def frames(self) -> list[Any]:
        return self.manager.journal.frames_between(0, self.head)

    def truth(self) -> list[pa.RecordBatch]:
        """The journal's frames: the events the sink must have been given, in order."""
        return [self.manager.journal.read(f) for f in self.frames()]

    def all_seqs(self) -> set[int]:
        """Every seq the sink was given: the journal's rows, and rows sent beside it (a rebuild)."""
        seqs = {s for batch in self.truth() for s in batch.column("seq").to_pylist()}
        return seqs | self.extra_seqs

    def deliver(self, frames: list[Any], after_seq: int) -> None:
        """One delivery, as the dispatcher makes it (frame references, the sink's checkpoint)."""
        self.endpoint.deliver(self.manager.journal.seg_dir, [f.as_tuple() for f in frames], after_seq)

    def stored(self) -> list[int]:
        seqs = self.pool.call("kit_stored_seqs")
        if seqs is None:
            raise SkipCheck("taken without an error, but what the sink stored cannot be read back: it has no stored_seqs()")
        return seqs  # type: ignore[no-any-return]

    def require_stream(self) -> None:
        if self.stream_error:
            raise CheckFailed(f"the stream was not delivered: {self.stream_error}")

    def close(self) -> None:
        self.manager.close()


def _expect_stored_once(kit: SinkKit, want: set[int], since: set[int] | None = None) -> None:
    """stored_seqs() holds each seq of want exactly once. since: seqs delivered since the sink
    last lost its memory (an in-memory sink holds only those)."""
    seqs = kit.stored()
    counts = collections.Counter(seqs)
    twice = sorted(s for s, n in counts.items() if n > 1)
    expect(not twice, f"stored_seqs() holds seqs {twice[:10]} more than once: a redelivery was stored again")
    held = set(counts)
    if since is not None and held <= since and held != want:
        want = since  # it keeps nothing across a restart (in memory): what it was given since
    missing = sorted(want - held)
    expect(not missing, f"stored_seqs() lacks seqs {missing[:10]} ({len(missing)} of {len(want)})")


# -- the rules ---------------------------------------------------------------------------------


def every_event_arrives(kit: SinkKit) -> None:
    """Every event of a stream of every kind (import, init, update, finalize, restore, revert) reaches the sink through the journal and its pool, and the sink's checkpoint passes the last one."""
    kit.require_stream()
    raised = [c for c in kit.calls if c[2]]
    expect(not raised, f"{raised[0][0]} raised: {raised[0][2]}" if raised else "")
    if kit.batches:
        given = {s for ext, shown, _ in kit.calls if ext == "OnBatch" for s in shown[2]}
        missing = sorted(kit.all_seqs() - given)
        expect(not missing, f"on_batch was never given seqs {missing[:10]}")
    else:
        expect(bool(kit.calls), "no hook was called for the whole stream")


def on_batch_or_go_hooks(kit: SinkKit) -> None:
    """A sink takes on_batch or the Go hooks, not both: with on_batch, the Go hooks are never called."""
    both = sorted(kit.hooks & set(GO_HOOKS))
    expect(not (kit.batches and both), f"the sink has on_batch and {', '.join(both)}: only on_batch is called; remove one")


def batches_have_the_event_schema(kit: SinkKit) -> None:
    """on_batch is given a pyarrow.RecordBatch (a pyarrow.Table for a delivery of several journal frames when the sink sets accepts_tables) with exactly SECTOR_EVENT_SCHEMA, rows in seq order."""
    if not kit.batches:
        raise SkipCheck("the sink takes the Go hooks, not on_batch")
    kit.require_stream()
    for ext, (kind, schema_ok, seqs), _ in kit.calls:
        if ext != "OnBatch":
            continue
        allowed = ("RecordBatch", "Table") if kit.attributes["accepts_tables"] else ("RecordBatch",)
        expect(kind in allowed, f"on_batch was given a {kind}, expected {' or '.join(allowed)}")
        expect(schema_ok, f"on_batch was given a batch whose schema is not SECTOR_EVENT_SCHEMA (seqs {seqs[:5]})")
        expect(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"on_batch was given seqs out of order or twice: {seqs[:10]}")


def deliveries_of_one_frame_and_of_several(kit: SinkKit) -> None:
    """Where a delivery ends does not matter: the stream comes in deliveries of one journal frame and of several (at most 3 rows each), and every one is taken."""
    kit.require_stream()
    if not kit.batches:
        raise SkipCheck("the Go hooks are called event by event, whatever the delivery")
    sizes = [len(shown[2]) for ext, shown, _ in kit.calls if ext == "OnBatch"]
    expect(len(sizes) >= 4 and max(sizes) <= _MAX_ROWS, f"deliveries of {sizes} rows: the kit meant at most {_MAX_ROWS} rows each")
    multi = [shown for ext, shown, _ in kit.calls if ext == "OnBatch" and shown[0] == "Table"]
    if kit.attributes["accepts_tables"]:
        expect(bool(multi), "accepts_tables is set but no delivery came as a pyarrow.Table")


def go_hooks_get_typed_arguments(kit: SinkKit) -> None:
    """OnImport(worker_state, SectorState, override), OnInit(list of AllocatedSector, worker_state), OnUpdate(SectorID, worker_state, {GoName: typed value}), OnFinalize(SectorID) and OnRestore(SectorID) are called once per event, in order, with the event's values; a revert to a state the KV holds is OnImport(worker_state, SectorState, True)."""
    if kit.batches or not (kit.hooks & set(GO_HOOKS)):
        raise SkipCheck("the sink takes on_batch, not the Go hooks")
    kit.require_stream()
    want = [(ext, args) for ext, args in expected_go_calls(kit.truth()) if ext in kit.hooks]
    got = [(ext, tuple(args)) for ext, args, _ in kit.calls]
    for i, (w, g) in enumerate(zip(want, got)):
        expect(w[0] == g[0], f"call {i + 1}: {g[0]} was called, expected {w[0]}")
        expect(w[1] == g[1], f"call {i + 1}: {w[0]} got {_short(g[1])}, expected {_short(w[1])}")
    expect(len(got) == len(want), f"{len(got)} hook calls for the stream, expected {len(want)}")


def _short(args: tuple[Any, ...]) -> str:
    return ", ".join(f"{type(a).__name__}({a!r:.60})" for a in args)


def stored_once_per_seq(kit: SinkKit) -> None:
    """stored_seqs() holds every seq of the stream exactly once."""
    kit.require_stream()
    _expect_stored_once(kit, kit.all_seqs())


def failed_delivery_is_retried(kit: SinkKit) -> None:
    """A delivery that raises (here: after the sink took it, as when its acknowledgement is lost) is retried with back-off until it succeeds, and stored_seqs() still holds each seq once."""
    kit.require_stream()
    errors = kit.manager.status()["sinks"]["kit"]["errors"]
    kit.pool.call("kit_fail_after", 0)
    kit.manager.update(SectorID(MINER, 3), {"AbortReason": "after a failed delivery"})
    kit.manager.update(SectorID(MINER, 10), {"Unsealing": True})
    why = kit.wait()
    expect(not why, f"after one failed delivery, {why}")
    calls = kit.pool.call("kit_calls")
    raised = [c for c in calls if c[2]]
    expect(not raised, f"{raised[0][0]} raised: {raised[0][2]}" if raised else "")
    expect(kit.manager.status()["sinks"]["kit"]["errors"] > errors, "the injected failure was not seen by the manager")
    _expect_stored_once(kit, kit.all_seqs())


def redelivery_is_absorbed(kit: SinkKit) -> None:
    """Events delivered again (delivery is at least once: a crash between a delivery and its checkpoint repeats it) are absorbed: after the whole journal is delivered a second time, stored_seqs() holds each seq once."""
    kit.require_stream()
    kit.deliver(kit.frames(), 0)
    raised = [c for c in kit.pool.call("kit_calls") if c[2]]
    expect(not raised, f"on a redelivery {raised[0][0]} raised: {raised[0][2]}" if raised else "")
    _expect_stored_once(kit, kit.all_seqs())


def reopened_sink_takes_over(kit: SinkKit) -> None:
    """A sink closed and opened again with the same Meta (a reload hands a sink over like this) finds what it stored, and the last batch delivered to it again, twice, lands once."""
    kit.require_stream()
    kit.pool.broadcast("close_sink")
    kit.pool.broadcast("open_sink", kit.meta)
    last = kit.frames()[-1]
    for _ in range(2):
        kit.deliver([last], last.first_seq - 1)
    _expect_stored_once(kit, kit.all_seqs(), since=set(range(last.first_seq, last.last_seq + 1)))


def worker_kill_loses_nothing(kit: SinkKit) -> None:
    """After its worker is killed (kill -9), the sink is opened again in the replacement worker (its setup replayed) and the last batches, delivered again twice, land once: stored_seqs() holds each seq once (an in-memory sink: those delivered since)."""
    kit.require_stream()
    pid = kit.pool.call("kit_pid")
    with _quiet("executors"):  # the pool's own warning of the death the kit causes
        os.kill(pid, signal.SIGKILL)
        _await_replacement(kit.pool, pid)
    frames = kit.frames()[-2:]
    for _ in range(2):
        kit.deliver(frames, frames[0].first_seq - 1)
    _expect_stored_once(kit, kit.all_seqs(), since=set(range(frames[0].first_seq, frames[-1].last_seq + 1)))


def _await_replacement(pool: Any, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pool.call("kit_pid") != pid:
                return
        except Exception:  # noqa: BLE001 - the call may meet the dying worker; ask again
            pass
        time.sleep(0.02)
    raise CheckFailed(f"no replacement worker answered within {timeout:.0f}s of the kill: {pool.status().get('last_error')}")


def rebuilt_sink_gets_one_row_per_sector(kit: SinkKit) -> None:
    """A sink rebuilt from the KV (`vsm-pool sinks rebuild`) gets one "rebuild" row per sector, above every seq it holds (Go hooks: OnImport(worker_state, SectorState, True) each), then goes on from the journal; stored_seqs() holds each seq once."""
    kit.require_stream()
    kit.pool.call("kit_calls")  # what came before is not this rule's
    before = kit.all_seqs()
    try:
        held: set[int] | None = set(kit.stored())  # an in-memory sink lost some at the kill
    except SkipCheck:
        held = None
    with _quiet("vsm.sectors"):
        done = kit.manager.rebuild_sink("kit", kit.endpoint)
    sectors = sum(len(c.data) for c in kit.kv._colls.values())
    expect(done["rows"] == sectors, f"the rebuild sent {done['rows']} rows for {sectors} sectors")
    rebuilt = set(range(done["first_seq"], done["first_seq"] + done["rows"]))
    kit.extra_seqs |= rebuilt
    calls = kit.pool.call("kit_calls")
    raised = [c for c in calls if c[2]]
    expect(not raised, f"on a rebuild {raised[0][0]} raised: {raised[0][2]}" if raised else "")
    if kit.batches:
        given = {s for ext, shown, _ in calls if ext == "OnBatch" for s in shown[2]}
        expect(rebuilt <= given, f"on_batch was not given the rebuild's seqs {sorted(rebuilt - given)[:10]}")
    elif "OnImport" in kit.hooks:
        overrides = [args for ext, args, _ in calls if ext == "OnImport" and args[2] is True]
        expect(len(overrides) == sectors, f"{len(overrides)} OnImport(..., True) calls for {sectors} sectors rebuilt")
    kit.manager.update(SectorID(MINER, 3), {"AbortReason": "after a rebuild"})
    why = kit.wait()
    expect(not why, f"after the rebuild, {why}")
    _expect_stored_once(kit, (held or set()) | (kit.all_seqs() - before))


SECTORSYNC_CHECKS: tuple[Callable[[SinkKit], None], ...] = (
    every_event_arrives,
    on_batch_or_go_hooks,
    batches_have_the_event_schema,
    deliveries_of_one_frame_and_of_several,
    go_hooks_get_typed_arguments,
    stored_once_per_seq,
    failed_delivery_is_retried,
    redelivery_is_absorbed,
    reopened_sink_takes_over,
    worker_kill_loses_nothing,
    rebuilt_sink_gets_one_row_per_sector,
)


def run_sectorsync_kit(kit: SinkKit, checks: tuple[Callable[[SinkKit], None], ...] = SECTORSYNC_CHECKS, **kw: Any) -> list[CheckResult]:
    """Feed the stream (once), then run the checks (all by default)."""
    kit.run_stream()
    return run_checks(checks, kit, **kw)
