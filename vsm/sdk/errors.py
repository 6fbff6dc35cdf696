"""Errors a plugin raises and a caller catches, the same in-process and pooled.

Tree (each is one of Go's sentinel errors; `str(E())` is Go's text)::

    PluginError                      base of everything a plugin reports
    ├── KeyNotFoundError             kvstore: Get/Peek of a missing key (ErrKeyNotFound); Del of one is a no-op
    ├── TransactionConflictError     kvstore: optimistic txn lost; caller retries (ErrTransactionConflict)
    ├── EmptyKeyError                kvstore: an empty key (badger's ErrEmptyKey: damocles' default store refuses it)
    ├── ReadOnlyTransactionError     kvstore: put/delete inside view (badger's ErrReadOnlyTxn)
    ├── ObjectNotFoundError          objstore: no object at that path (ErrObjectNotFound)
    ├── ReadOnlyStoreError           objstore: put/delete on a read-only store (ErrReadOnlyStore)
    ├── InvalidObjectPathError       objstore: path escapes the store (ErrInvalidObjectPath)
    ├── NotRegularFileError          objstore: not a regular file (ErrNotRegularFile)
    ├── NotSeekableError             objstore: a ranged read of what cannot seek (ErrNotSeekable)
    ├── NotOpenedError               objstore: the store is not open (ErrNotOpened)
    ├── InstanceNotFoundError        objstore: no store instance of that name (ErrObjectStoreInstanceNotFound)
    ├── MemoryLimitExceeded          the plugin's worker reached its MemoryLimit (also a MemoryError)
    ├── SandboxDenied                the plugin's sandbox refused a file or a connection (also a PermissionError)
    ├── DiskFullError                a write was refused for want of space: names the path and its free
    │                                space (also an OSError, errno ENOSPC; vsm.sdk.diskspace); JSON-RPC -32006
    └── InvalidRequestError          the caller's request is wrong (bad SQL, an unknown name):
                                     JSON-RPC -32602 instead of a plugin error (-32001)

The kvstore and objstore ones are `manager-plugin/kvstore/kv.go` and `objstore/objstore.go`;
EmptyKeyError and ReadOnlyTransactionError are what damocles' default store (badger) reports.
They carry only their message, so they pickle across a process boundary unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DiskFullError",
    "EmptyKeyError",
    "InstanceNotFoundError",
    "InvalidObjectPathError",
    "InvalidRequestError",
    "KeyNotFoundError",
    "MemoryLimitExceeded",
    "NotOpenedError",
    "NotRegularFileError",
    "NotSeekableError",
    "ObjectNotFoundError",
    "PluginError",
    "ReadOnlyStoreError",
    "ReadOnlyTransactionError",
    "SandboxDenied",
    "TransactionConflictError",
]


class PluginError(Exception):
    """Base of the errors a plugin reports through the SDK."""

    go_text = ""  # Go's error text: the message when none is given

    def __init__(self, *args: Any) -> None:
        super().__init__(*(args or ((self.go_text,) if self.go_text else ())))


class KeyNotFoundError(PluginError, KeyError):
    """The key does not exist in the collection."""

    go_text = "key not found"

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return Exception.__str__(self)


class TransactionConflictError(PluginError):
    """An optimistic transaction lost a race; the manager retries it."""

    go_text = "transaction conflict"


class EmptyKeyError(PluginError, ValueError):
    """get/put/delete of the empty key (badger refuses it; so must a store damocles reads)."""

    go_text = "Key cannot be empty"


class ReadOnlyTransactionError(PluginError, PermissionError):
    """put or delete inside a view transaction."""

    go_text = "No sets or deletes are allowed in a read-only transaction"


class ObjectNotFoundError(PluginError, FileNotFoundError):
    """No object at that path in the store."""

    go_text = "object not found"


class ReadOnlyStoreError(PluginError, PermissionError):
    """The store is read-only: put and delete are refused."""

    go_text = "read only store"


class InvalidObjectPathError(PluginError, ValueError):
    """The object path is absolute or escapes the store's root."""

    go_text = "invalid object path"


class NotRegularFileError(PluginError, OSError):
    """The object is not a regular file (a Strict store refuses to read it)."""

    go_text = "not a regular file"


class NotSeekableError(PluginError, OSError):
    """A ranged read of an object that cannot seek."""

    go_text = "not seekable"


class NotOpenedError(PluginError, OSError):
    """The store is not open."""

    go_text = "not opened"


class InstanceNotFoundError(PluginError, LookupError):
    """No store instance of that name."""

    go_text = "instance not found"


class MemoryLimitExceeded(PluginError, MemoryError):
    """A call ran out of memory under its worker's MemoryLimit; the worker goes on. Raised
    by vsm-pool for the plugin (from the plugin's MemoryError), naming the plugin and the limit."""


class SandboxDenied(PluginError, PermissionError):
    """The plugin's sandbox refused a file or a TCP connection; raised by vsm-pool for the
    plugin, naming it and what was denied."""


class DiskFullError(PluginError, OSError):
    """A write refused for want of space, by the filesystem (ENOSPC, EDQUOT) or before it by a
    free-space floor (MinFreeSpace). Carries `path`, `free` (bytes) and `floor` (bytes, or None
    when the filesystem itself refused); the message is built from them, one line:
    `disk full: /data/journal: 41.2 MiB free, under MinFreeSpace 256 MiB: ...`."""

    def __init__(self, path: str, free: int | None, floor: int | None = None, what: str = "") -> None:
        import errno

        from .diskspace import disk_full_message

        self.path, self.free, self.floor, self.what = path, free, floor, what
        PluginError.__init__(self, disk_full_message(path, free, floor, what))
        self.errno = errno.ENOSPC

    def __reduce__(self) -> Any:  # its facts cross a process boundary, not only its text
        return (type(self), (self.path, self.free, self.floor, self.what))

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidRequestError(PluginError, ValueError):
    """The caller asked something wrong (bad SQL, params a method refuses): its fault, not the
    plugin's. Any other exception a plugin raises reaches a JSON-RPC client as a plugin error."""
