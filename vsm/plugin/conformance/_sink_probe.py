"""Worker side of the SyncSectorState kit: the plugin's own sink, served as the manager serves it,
with every hook call recorded and, on request, a failure after the sink took a delivery.

    pool init = probe_init(the plugin's real init)      (vsm/plugin/host.py worker_init)
        open_sink(meta)  -> the real _SinkWorker.open_sink, then SinkHost.wrap_hooks(record)
        deliver(...)     -> the real SinkHost: frames decoded, hooks called, each call recorded
        kit_*            -> what the kit asks in the worker (calls, stored seqs, drop, pid)

Recorded per call: (extPoint, arguments, error). OnBatch records what it was handed (its
type, whether its schema is SECTOR_EVENT_SCHEMA, its seqs), not the rows themselves.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from vsm.sdk.sectors import SECTOR_EVENT_SCHEMA

from ..blame import describe

__all__ = ["KitInjectedFailure", "SinkProbe", "probe_init"]


class KitInjectedFailure(RuntimeError):
    """Raised by the kit after the sink's hook returned: a delivery whose acknowledgement was
    lost, which the manager must redeliver and the sink must absorb."""


def probe_init(inner: Callable[[], Any], code_path: str) -> SinkProbe:
    """PoolSpec.init of the kit's sink pool: the plugin's real worker, probed."""
    return SinkProbe(inner(), code_path)


class SinkProbe:
    def __init__(self, worker: Any, code_path: str) -> None:
        self._worker = worker
        self._code_path = code_path
        self._calls: list[tuple[str, Any, str]] = []
        self._fail_after = -1  # hook calls to let through before raising once; -1: never

    def __getattr__(self, name: str) -> Any:  # deliver, close_sink, shutdown, ping, ...
        return getattr(self._worker, name)

    def open_sink(self, meta: dict[str, str]) -> None:
        opened = self._worker.host is None
        self._worker.open_sink(meta)
        if opened and self._worker.host is not None:
            self._worker.host.wrap_hooks(self._record)

    def _record(self, ext: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def hook(*args: Any) -> Any:
            shown = _shown(ext, args)
            try:
                out = fn(*args)
            except Exception as e:
                self._calls.append((ext, shown, describe(e, self._code_path)))
                raise
            self._calls.append((ext, shown, ""))
            if self._fail_after == 0:
                self._fail_after = -1
                raise KitInjectedFailure("kit: this delivery fails after the sink took it (a lost acknowledgement)")
            if self._fail_after > 0:
                self._fail_after -= 1
            return out

        return hook

    # -- what the kit asks ----------------------------------------------------------------
    def kit_calls(self, clear: bool = True) -> list[tuple[str, Any, str]]:
        calls = list(self._calls)
        if clear:
            self._calls.clear()
        return calls

    def kit_fail_after(self, calls: int) -> None:
        """Raise once, after this many more hook calls have returned (0: after the next)."""
        self._fail_after = calls

    def kit_hooks(self) -> list[str]:
        host = self._worker.host
        return [] if host is None else host.hooks

    def kit_attributes(self) -> dict[str, Any]:
        sink = getattr(self._worker.host, "sink", None)
        return {
            "accepts_tables": bool(getattr(sink, "accepts_tables", False)),
            "stored_seqs": callable(getattr(sink, "stored_seqs", None)),
            "drop": callable(getattr(sink, "drop", None)),
        }

    def kit_stored_seqs(self) -> list[int] | None:
        """The sink's stored_seqs() as a list of ints; None if it has none."""
        sink = getattr(self._worker.host, "sink", None)
        fn = getattr(sink, "stored_seqs", None)
        if fn is None:
            return None
        got = fn()
        if hasattr(got, "to_pylist"):
            got = got.to_pylist()
        return [int(s) for s in got]

    def kit_drop(self) -> bool:
        sink = getattr(self._worker.host, "sink", None)
        fn = getattr(sink, "drop", None)
        if fn is None:
            return False
        fn()
        return True

    def kit_pid(self) -> int:
        return os.getpid()


def _shown(ext: str, args: tuple[Any, ...]) -> Any:
    if ext != "OnBatch":
        return args  # typed values (SectorID, SectorState, AllocatedSector...): they pickle
    batch = args[0]
    schema = getattr(batch, "schema", None)
    seqs = batch.column("seq").to_pylist() if schema is not None and "seq" in schema.names else []
    return (type(batch).__name__, schema is not None and schema.equals(SECTOR_EVENT_SCHEMA), seqs)
