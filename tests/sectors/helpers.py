"""Test helpers: sinks that record, fail or lag; realistic states; plugin loading."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from types import ModuleType
from typing import Callable

import pyarrow as pa

from bench.states import make_state  # noqa: F401  (one generator for tests and benchmarks)

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
