"""Free space of a path, and whether an error means the disk is full: one place for both.

The manager and the plugins that write files (the KV, the sinks, the piece stores) use it the
same way::

    floor = FreeSpaceFloor(min_free=256 << 20)
    floor.check(journal_dir, what="sector event journal")   # DiskFullError under the floor
    with disk_full_as_error(db_path, what="sqlitekv"):      # ENOSPC & co -> DiskFullError
        write()

Why a floor and not only ENOSPC (etcd's space quota is the model): a write that meets a full
disk can leave its store unable to roll back or to log the refusal itself (SQLite's WAL, DuckDB's
WAL: DuckDB invalidates its database on a failed commit), and the journal needs room to record
what the KV really holds. Refusing new work while some room is left keeps every commit, rollback
and compensation possible; the refusal names the path and its free space and ends by itself as
soon as space comes back (statvfs is asked each time: ~1 us, no cache to go stale).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from typing import Iterator

from .errors import DiskFullError

__all__ = ["DiskFullError", "FreeSpaceFloor", "disk_full_as_error", "disk_full_message", "free_bytes", "human_bytes", "is_disk_full"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# What libraries say instead of an errno: SQLite (SQLITE_FULL), DuckDB and Arrow (strerror text)
_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (its nearest
    existing folder if it does not exist yet); None if that cannot be asked."""
    p = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
        except OSError:
            return None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "? bytes"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def disk_full_message(path: str, free: int | None, floor: int | None = None, what: str = "") -> str:
    """`disk full: PATH (what): X free[, under MinFreeSpace Y]: fix` - DiskFullError's text."""
    who = f" ({what})" if what else ""
    why = f", under MinFreeSpace {human_bytes(floor)} (refused before the disk fills)" if floor else ""
    return (f"disk full: {path}{who}: {human_bytes(free)} free{why}: free space on that filesystem; "
            "writes resume by themselves")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, says the disk (or a quota) is full."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
            return True
        text = str(exc).lower()
        if any(t in text for t in _FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@contextlib.contextmanager
def disk_full_as_error(path: str, what: str = "") -> Iterator[None]:
    """Re-raise an exception that means "disk full" as DiskFullError(path, its free space),
    from the original; anything else passes unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFullError(path, free_bytes(path), None, what) from e
        raise


class FreeSpaceFloor:
    """Refuses new work on a path whose filesystem has less than `min_free` bytes free."""

    def __init__(self, min_free: int | None) -> None:
        self.min_free = min_free or 0

    def short(self, path: str) -> int | None:
        """The free bytes of `path` if under the floor, else None."""
        if not self.min_free:
            return None
        free = free_bytes(path)
        return free if free is not None and free < self.min_free else None

    def check(self, path: str, what: str = "") -> None:
        """Raise DiskFullError if `path`'s filesystem is under the floor."""
        free = self.short(path)
        if free is not None:
            raise DiskFullError(path, free, self.min_free, what)
