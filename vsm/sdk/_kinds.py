"""Plugin kinds as data: the manifest string is the value (Go's managerplugin.Kind)."""

from __future__ import annotations

import enum

__all__ = ["Kind", "EXT_POINTS"]


class Kind(str, enum.Enum):
    """What a plugin extends. The value is the exact string of manifest.toml's `kind`."""

    KVStore = "KVStore"
    ObjStore = "ObjStore"
    SyncSectorState = "SyncSectorState"
    RegisterJsonRpc = "RegisterJsonRpc"

    def __str__(self) -> str:  # the Go original forgot RegisterJsonRpc here; one table, no gap
        return self.value


# extPoint -> (required?, parameter names the impl must accept). One table per kind, read
# by manifest validation (vsm.manifest) and by the worker that binds the impls.
EXT_POINTS: dict[Kind, dict[str, tuple[bool, tuple[str, ...]]]] = {
    Kind.KVStore: {"Constructor": (True, ("meta",))},
    Kind.ObjStore: {"Constructor": (True, ("cfg",))},
    Kind.SyncSectorState: {
        # Go-style hooks with typed arguments; a sink exports any of them, at least one.
        "OnImport": (False, ("worker_state", "state", "override")),
        "OnInit": (False, ("sectors", "worker_state")),
        "OnUpdate": (False, ("sector_id", "worker_state", "fields")),
        "OnFinalize": (False, ("sector_id",)),
        "OnRestore": (False, ("sector_id",)),
        # vsm-pool addition: one Arrow RecordBatch of full rows per call (vectorised sinks).
        "OnBatch": (False, ("batch",)),
        # vsm-pool addition: Constructor(meta) -> sink object; hooks are then its methods.
        "Constructor": (False, ("meta",)),
    },
    Kind.RegisterJsonRpc: {"Handler": (True, ())},
}
