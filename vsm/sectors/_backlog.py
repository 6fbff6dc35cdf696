"""What the journal keeps for each sink, and what becomes of a sink that falls too far behind.

    every sink with a checkpoint: attached (its dispatcher's) or not (disabled, failed to
    start, plugin removed: sinks/<name>.ckpt) ... within MaxBacklog events of the watermark
        |  holds = their checkpoints (+ pins of a rebuild in progress)
        v
    compaction (Journal.compact) deletes the segments every hold has passed
        |  a sink whose next event is no longer in the journal (it was past MaxBacklog, or is
        |  new to a compacted journal) cannot catch up from it:
        v
    sinks/<name>.rebuild  (JSON: cause, the seqs lost, when): the sink "needs a rebuild"; it is
    shown in `status`, /metrics and the log, and its dispatcher delivers nothing (never past the
    gap) until `vsm-pool sinks rebuild NAME` refills it from the KV state (_rebuild.py)

A disabled sink used to hold nothing: compaction went by the attached sinks only, so `plugin
enable` resumed at the first frame left, past a gap, and reported lag 0 (issue 13, item 1).

Crash argument: a mark is written (temp file, fsync, rename) before anything the sink needs is
deleted, and only the end of a rebuild removes it; a checkpoint file is never moved forward
by anything but a delivery or a finished rebuild. So a kill -9 anywhere leaves the sink either
able to catch up from the journal, or marked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ._journal import Journal, _fsync_dir

__all__ = ["clear_mark", "find_gap", "gap_cause", "read_mark", "stored_checkpoints", "write_mark"]

log = logging.getLogger("vsm.sectors")

_CKPT, _MARK = ".ckpt", ".rebuild"


def stored_checkpoints(ckpt_dir: str) -> dict[str, int]:
    """Every sink's checkpoint file: name -> seq (attached or not)."""
    out: dict[str, int] = {}
    for entry in os.listdir(ckpt_dir):
        if entry.endswith(_CKPT):
            try:
                with open(os.path.join(ckpt_dir, entry)) as f:
                    out[entry[: -len(_CKPT)]] = int(f.read().strip() or 0)
            except (OSError, ValueError):
                continue  # vanished or being rewritten; the next pass reads it
    return out


def find_gap(journal: Journal, checkpoint: int, watermark: int) -> tuple[int, int] | None:
    """The seqs (first, last) after `checkpoint` that are no longer in the journal, if any: the
    sink cannot catch up from it. None when the next event it needs is there (or not yet due)."""
    if watermark <= checkpoint:
        return None
    nxt = journal.first_seq_after(checkpoint)
    if nxt is None:  # every frame past the checkpoint up to the watermark was deleted
        return checkpoint + 1, watermark
    return (checkpoint + 1, nxt - 1) if nxt > checkpoint + 1 else None


def gap_cause(gap: tuple[int, int], checkpoint: int, watermark: int, max_backlog: int | None) -> str:
    lost = f"events {gap[0]}-{gap[1]} are no longer in the journal"
    if checkpoint == 0:
        return f"{lost} (they were compacted before this sink was first attached)"
    if max_backlog is not None and watermark - checkpoint > max_backlog:
        return f"{lost}: its backlog passed [Common.Journal] MaxBacklog = {max_backlog} events"
    return lost


def read_mark(ckpt_dir: str, name: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(ckpt_dir, name + _MARK)) as f:
            mark = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a torn mark is still a mark: never resume past a gap
        return {"cause": f"unreadable rebuild mark ({e})"}
    return mark if isinstance(mark, dict) else {"cause": str(mark)}


def write_mark(ckpt_dir: str, name: str, cause: str, gap: tuple[int, int] | None = None) -> dict[str, Any]:
    """Mark the sink as needing a rebuild (durably, before what it needs is deleted); logged."""
    mark = {"cause": cause, "lost": list(gap) if gap else None, "since": time.time()}
    path = os.path.join(ckpt_dir, name + _MARK)
    with open(path + ".tmp", "w") as f:
        json.dump(mark, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    _fsync_dir(ckpt_dir)
    log.error("sink %r needs a rebuild: %s; it delivers nothing until `vsm-pool sinks rebuild %s`", name, cause, name)
    return mark


def clear_mark(ckpt_dir: str, name: str) -> None:
    try:
        os.unlink(os.path.join(ckpt_dir, name + _MARK))
    except FileNotFoundError:
        return
    _fsync_dir(ckpt_dir)
