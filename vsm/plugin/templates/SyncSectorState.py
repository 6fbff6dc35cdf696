"""__NAME__: a SyncSectorState sink: every sector-state change, as Arrow batches of full rows.

Each delivery is written to <Path>/part-<first seq>-<last seq>.arrow (a temporary name, then a
rename). Delivery is at least once, so rows at or below the highest seq stored are skipped: a
batch delivered again changes nothing, also after a restart (the highest seq is in the names).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

_PART = re.compile(r"^part-(\d+)-(\d+)\.arrow$")


def make_sink(meta: dict[str, str]) -> Sink:
    """The Constructor: meta is the config's [Common.Plugins.__NAME__.Meta]."""
    if not meta.get("Path"):
        raise ValueError("__NAME__: Meta 'Path' (a folder for the event files) is required")
    return Sink(meta["Path"])


class Sink:
    accepts_tables = True  # a delivery of several journal frames may come as one pa.Table

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # a file half-written when a worker was killed
            if name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))
        self.max_seq = max((int(m.group(2)) for m in map(_PART.match, os.listdir(folder)) if m), default=0)

    def on_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Rows of SECTOR_EVENT_SCHEMA in seq order; those already stored are skipped."""
        batch = batch.filter(pc.greater(batch.column("seq"), pa.scalar(self.max_seq, pa.uint64())))
        if batch.num_rows == 0:
            return
        first, last = batch.column("seq")[0].as_py(), batch.column("seq")[-1].as_py()
        path = os.path.join(self.folder, f"part-{first:020d}-{last:020d}.arrow")
        with pa.OSFile(path + ".tmp", "wb") as f, pa.ipc.new_file(f, SECTOR_EVENT_SCHEMA) as writer:
            writer.write(batch)
        os.replace(path + ".tmp", path)
        self.max_seq = last

    def stored_seqs(self) -> list[int]:
        """Every seq stored (`vsm-pool plugin test` checks that each arrived exactly once)."""
        seqs: list[int] = []
        for name in sorted(os.listdir(self.folder)):
            if _PART.match(name):
                with pa.memory_map(os.path.join(self.folder, name)) as f:
                    seqs += pa.ipc.open_file(f).read_all().column("seq").to_pylist()
        return seqs

    def close(self) -> None:
        """Called when the sink stops or is handed to a new build: release what it holds."""
