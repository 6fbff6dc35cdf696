"""Errors a plugin raises and a caller catches, the same in-process and pooled.

Tree::

    PluginError                      base of everything a plugin reports
    ├── KeyNotFoundError             kvstore: Get/Peek of a missing key (Go ErrKeyNotFound); Del of one is a no-op
    ├── TransactionConflictError     kvstore: optimistic txn lost; caller retries (Go ErrTransactionConflict)
    ├── ObjectNotFoundError          objstore: no object at that path (Go ErrObjectNotFound)
    ├── ReadOnlyStoreError           objstore: put/delete on a read-only store (Go ErrReadOnlyStore)
    ├── InvalidObjectPathError       objstore: path escapes the store (Go ErrInvalidObjectPath)
    └── MemoryLimitExceeded          the plugin's worker reached its MemoryLimit (also a MemoryError)

They carry only their message, so they pickle across a process boundary unchanged.
"""

from __future__ import annotations

__all__ = [
    "InvalidObjectPathError",
    "KeyNotFoundError",
    "MemoryLimitExceeded",
    "ObjectNotFoundError",
    "PluginError",
    "ReadOnlyStoreError",
    "TransactionConflictError",
]


class PluginError(Exception):
    """Base of the errors a plugin reports through the SDK."""


class KeyNotFoundError(PluginError, KeyError):
    """The key does not exist in the collection."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return Exception.__str__(self)


class TransactionConflictError(PluginError):
    """An optimistic transaction lost a race; the manager retries it."""


class ObjectNotFoundError(PluginError, FileNotFoundError):
    """No object at that path in the store."""


class ReadOnlyStoreError(PluginError, PermissionError):
    """The store is read-only: put and delete are refused."""


class InvalidObjectPathError(PluginError, ValueError):
    """The object path is absolute or escapes the store's root."""


class MemoryLimitExceeded(PluginError, MemoryError):
    """A call ran out of memory under its worker's MemoryLimit; the worker goes on. Raised
    by vsm-pool for the plugin (from the plugin's MemoryError), naming the plugin and the limit."""
