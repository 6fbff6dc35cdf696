"""The vsm-pool plugin SDK: everything a plugin author imports, and nothing else.

    from vsm.sdk import kvstore, objstore, errors, Kind, Manifest

A plugin is a folder with manifest.toml and a Python module; `vsm-pool plugin build` turns it
into an artifact. Its code runs only inside its own worker processes, never in the manager.
"""

from __future__ import annotations

from . import diskspace, errors, kvstore, objstore, sectors, sectorsync
from ._kinds import Kind
from ._manifest import SPI_VERSION, Manifest
from .errors import (
    DiskFullError,
    EmptyKeyError,
    InvalidObjectPathError,
    InvalidRequestError,
    KeyNotFoundError,
    MemoryLimitExceeded,
    ObjectNotFoundError,
    PluginError,
    ReadOnlyStoreError,
    ReadOnlyTransactionError,
    SandboxDenied,
    TransactionConflictError,
)
from .objstore import Config, InstanceInfo, Stat, iter_chunks

__all__ = [
    "SPI_VERSION",
    "Config",
    "DiskFullError",
    "EmptyKeyError",
    "InstanceInfo",
    "InvalidObjectPathError",
    "InvalidRequestError",
    "KeyNotFoundError",
    "Kind",
    "Manifest",
    "MemoryLimitExceeded",
    "ObjectNotFoundError",
    "PluginError",
    "ReadOnlyStoreError",
    "ReadOnlyTransactionError",
    "SandboxDenied",
    "Stat",
    "TransactionConflictError",
    "diskspace",
    "errors",
    "iter_chunks",
    "kvstore",
    "objstore",
    "sectors",
    "sectorsync",
]
