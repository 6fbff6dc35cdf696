"""The import readers' work grows with the number of states, not with its square (issue 24).

Counted, not timed: every Arrow kernel the readers call from Python (`pc.*` in the modules of
the import path) is counted with the length of the arrays it is given. A pass over a column per
distinct value (the CID check that grouped by the first 16 characters: every real CID a group
of its own) makes the elements per state grow with the file; linear code keeps them flat.
bench/bench_operator.py measures the same paths in time at 100k-5M states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vsm.sdk.sectors
import vsm.sectors._jsonlines
from bench.states import state_batches
from vsm.sdk.sectors import SECTOR_STATE_SCHEMA, arrow_to_go_json
from vsm.sectors import ImportReport, read_import_batches

pytestmark = pytest.mark.timeout(300)

_MODULES = (vsm.sdk.sectors, vsm.sectors._jsonlines)  # the modules the import path calls pc from


class _CountedCompute:
    """pyarrow.compute, counting the elements of every array a kernel is given."""

    def __init__(self, real: Any) -> None:
        self.real, self.elements = real, 0

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.real, name)
        if not callable(fn):
            return fn

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.elements += sum(len(a) for a in (*args, *kwargs.values()) if isinstance(a, (pa.Array, pa.ChunkedArray)))
            return fn(*args, **kwargs)

        return counted


def _elements_per_state(monkeypatch: pytest.MonkeyPatch, path: Path, n: int) -> float:
    counter = _CountedCompute(pa.compute)
    with monkeypatch.context() as mp:
        for module in _MODULES:
            mp.setattr(module, "pc", counter)
        report = ImportReport()
        rows = sum(b.num_rows for b in read_import_batches(str(path), report=report))
    assert rows == n and not report.refused
    return counter.elements / n


def _files(tmp_path: Path, n: int) -> dict[str, Path]:
    out = {"parquet": tmp_path / f"{n}.parquet", "jsonl": tmp_path / f"{n}.jsonl"}
    with pq.ParquetWriter(out["parquet"], SECTOR_STATE_SCHEMA) as w, open(out["jsonl"], "wb") as f:
        for batch in state_batches(77, n, batch_size=n):
            w.write_batch(batch)
            f.write(b"\n".join(arrow_to_go_json(batch).to_pylist()) + b"\n")
    return out


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_import_readers_do_the_same_work_per_state_at_four_times_the_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    small, large = 1000, 4000  # one block each (the readers' chunk is 10k lines)
    per_state = {n: _elements_per_state(monkeypatch, _files(tmp_path, n)[kind], n) for n in (small, large)}
    assert per_state[small] > 10  # the kernels were counted at all
    assert per_state[large] <= 1.3 * per_state[small], per_state


def test_parquet_import_holds_one_row_group_not_the_file(tmp_path: Path) -> None:
    """Reading a Parquet file to import holds one row group at a time: Arrow's allocation while
    the batches flow stays under two row groups' worth, whatever the file's size
    (ParquetFile.iter_batches kept about the whole file allocated: the CLI's peak grew to
    3.5 GiB for 5M states)."""
    path = tmp_path / "states.parquet"
    groups, per_group = 8, 4000
    with pq.ParquetWriter(path, SECTOR_STATE_SCHEMA) as w:
        for g in range(groups):
            for batch in state_batches(7, per_group, first=g * per_group, batch_size=per_group):
                w.write_table(pa.Table.from_batches([batch]).cast(SECTOR_STATE_SCHEMA), row_group_size=per_group)
    one_group = pq.ParquetFile(path).read_row_group(0).nbytes
    base, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in read_import_batches(str(path), 1000, ImportReport()):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert rows == groups * per_group
    assert peak < 2 * one_group, (peak, one_group)
