"""Test helpers: sinks that record, fail or lag; realistic states; plugin loading."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import pyarrow as pa

if TYPE_CHECKING:
    from vsm.sectors import SectorStateManager

from bench.states import make_state  # one generator for tests and benchmarks
from vsm.sdk.sectors import (
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


def constant_state(miner: int, number: int) -> SectorState:
    """A sealed state of fixed, known values and one DDO piece: for the tests that edit its
    exact bytes (the JSON lines reader's odd variants). Everything else takes make_state's
    realistic states; no benchmark runs on this one (issue 24)."""
    st = SectorState(SectorID(miner, number), 8)
    st.ticket = Ticket(number.to_bytes(8, "big") * 4, 2_500_000 + number)
    st.seed = Seed(b"\x01" * 32, 2_500_150 + number)
    st.pre = PreCommitInfo("bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb", "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli", Ticket(b"\x02" * 32, 2_500_000))
    st.proof = ProofInfo(b"\x03" * 192)
    st.message_info = MessageInfo("bafy2bzacedxkkpqwmuf4dnnz4h5djmvjc7zu2bhzbhbkoqqm6npg3zpd5lewu", None, True)
    st.latest_state = ReportStateReq(WorkerIdentifier("worker-01", "10.0.0.7"), SectorStateChange("C2Done", "Persisted", "Evt"), None)
    cid = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"
    st.pieces = [SectorPieceV2(PieceInfoV2(34359738368, cid), DealInfoV2(0, None, 1000 + number, cid, 34359738368, "f03344", "f0%d" % miner, 0, 34359738368, 3 << 30, 2_510_000, 5_000_000, False, False))]
    return st


def sealing_state(miner: int, number: int, with_piece: bool | None = None) -> SectorState:
    """make_state's realistic state of a sector still sealing: online (not Finalized) and not
    Removed. For the tests of the online collection's mechanics (update, finalize, revert,
    counts of what they changed), which import into `meta` and then act on every sector."""
    st = make_state(miner, number, with_piece)
    st.finalized = st.removed = False
    return st


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_plugin(name: str, module: str) -> ModuleType:
    path = os.path.join(ROOT, "plugins", name, module + ".py")
    spec = importlib.util.spec_from_file_location(f"_test_plugin_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class RecordingSink:
    """on_batch sink: keeps every row's seq; optional failures, delay, and a gate (each batch
    waits until it is set, 60 s at most)."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seqs: list[int] = []
        self.batches = 0
        self.fail_left = fail_first
        self.delay = delay
        self.gate = gate
        self.lock = threading.Lock()
        self.tables: list[pa.Table] = []

    def on_batch(self, batch: pa.RecordBatch) -> None:
        if self.fail_left > 0:
            self.fail_left -= 1
            raise RuntimeError("sink down (injected)")
        if self.delay:
            time.sleep(self.delay)
        if self.gate is not None:
            self.gate.wait(60)
        with self.lock:
            self.seqs.extend(batch.column("seq").to_pylist())
            self.batches += 1
            self.tables.append(pa.Table.from_batches([batch]))


def wait_until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll cond until it holds; AssertionError after timeout (a bound for a hang, not a speed)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.01)


def assert_no_gaps(seqs: list[int]) -> None:
    s = sorted(set(seqs))
    assert s == list(range(1, len(s) + 1)), f"gap or duplicate in seqs: first={s[:3]} last={s[-3:]} n={len(s)}"


def fail_journal_appends(m: SectorStateManager) -> list[bool]:
    """Make m's journal appends fail with ENOSPC (a full disk) while the returned flag's one
    item is True; set it False to let them through again."""
    real, failing = m.journal.append, [True]

    def append(*a: Any, **k: Any) -> Any:
        if failing[0]:
            raise OSError(28, "No space left on device (injected)")
        return real(*a, **k)

    m.journal.append = append  # type: ignore[method-assign]
    return failing
