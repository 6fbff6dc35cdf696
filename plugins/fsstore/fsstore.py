"""fsstore: an ObjStore on a local folder (damocles' `filestore`, loaded as a plugin).

Object paths are relative to cfg.path and must stay inside it, symlinks included. A put
writes a temp file next to its target and renames it into place only when the reader is
exhausted, so readers never see a partial object. Meta:
    Fsync   "true" (default) | "false": fsync each object before the rename
"""

from __future__ import annotations

import builtins
import dataclasses
import os
import shutil
import stat as stat_mode
import tempfile
from typing import BinaryIO

from vsm.sdk import (
    Config,
    InstanceInfo,
    InvalidObjectPathError,
    ObjectNotFoundError,
    ReadOnlyStoreError,
    Stat,
    iter_chunks,
)

__all__ = ["open"]

VERSION = "0.1.0"


def open(cfg: Config) -> FsStore:  # noqa: A001 - the exported Constructor's name
    """Constructor: a store over the existing folder cfg.path."""
    root = os.path.realpath(cfg.path)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"fsstore: store path {cfg.path!r} is not an existing folder; create it first")
    fsync = cfg.meta.get("Fsync", "true").lower()
    if fsync not in ("true", "false"):
        raise ValueError(f"fsstore: Meta 'Fsync' = {cfg.meta['Fsync']!r}; use \"true\" or \"false\"")
    # As Go's filestore.Open: the path made absolute, and the name defaulting to it.
    return FsStore(dataclasses.replace(cfg, path=root, name=cfg.name or root), fsync == "true")


class FsStore:
    """A folder of objects (the ObjStore protocol)."""

    def __init__(self, cfg: Config, fsync: bool) -> None:
        self._cfg = cfg
        self._root = cfg.path
        self._fsync = fsync

    def type(self) -> str:
        return "plugin-fs"

    def version(self) -> str:
        return VERSION

    def instance(self) -> str:
        return self._cfg.name

    def instance_config(self) -> Config:
        return self._cfg

    def instance_info(self) -> InstanceInfo:
        usage = shutil.disk_usage(self._root)
        return InstanceInfo(
            config=self._cfg,
            type=self.type(),  # Go reports the filesystem type; the stdlib does not expose it
            total=usage.total,
            free=usage.free,
            used=usage.used,
            used_percent=100.0 * usage.used / usage.total if usage.total else 0.0,
        )

    def get(self, path: str) -> BinaryIO:
        full = self._resolve(path)
        try:
            return builtins.open(full, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None

    def put(self, path: str, reader: BinaryIO) -> int:
        self._check_writable()
        full = self._resolve(path)
        folder = os.path.dirname(full)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(full)}.", suffix=".tmp")
        try:
            written = 0
            with builtins.open(fd, "wb", buffering=0, closefd=True) as out:
                os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide objects from other readers
                for chunk in iter_chunks(reader):
                    view = memoryview(chunk)
                    while view.nbytes:  # raw writes may be short
                        n = out.write(view)
                        written += n
                        view = view[n:]
                if self._fsync:
                    os.fsync(out.fileno())
            os.replace(tmp, full)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return written

    def delete(self, path: str) -> None:
        self._check_writable()
        full = self._resolve(path)
        try:
            os.remove(full)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None

    def stat(self, path: str) -> Stat:
        full = self._resolve(path)
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(f"object not found: {path!r} in store {self.instance()!r}") from None
        if not stat_mode.S_ISREG(st.st_mode):
            raise ObjectNotFoundError(f"not an object (a folder?): {path!r} in store {self.instance()!r}")
        return Stat(size=st.st_size)

    def full_path(self, path: str) -> str:
        return self._resolve(path, follow_links=False)

    def _resolve(self, path: str, follow_links: bool = True) -> str:
        """The absolute file path of an object; InvalidObjectPathError if it leaves the root."""
        if not path or os.path.isabs(path):
            raise InvalidObjectPathError(f"invalid object path {path!r}: must be relative to the store")
        full = os.path.normpath(os.path.join(self._root, path))
        # realpath follows symlinks in every existing component, so a link can't lead out either.
        checked = os.path.realpath(full) if follow_links else full
        if os.path.commonpath([self._root, checked]) != self._root or checked == self._root:
            raise InvalidObjectPathError(f"invalid object path {path!r}: outside of store {self._root!r}")
        return full

    def _check_writable(self) -> None:
        if self._cfg.read_only:
            raise ReadOnlyStoreError(f"read only store: {self.instance()!r}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
