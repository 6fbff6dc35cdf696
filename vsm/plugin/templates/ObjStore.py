"""__NAME__: an ObjStore plugin: objects are files under the configured store's Path.

A put streams the reader into a temporary file and renames it over the object, so a failed put
leaves the old object (or none). Paths are confined to the store's folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import BinaryIO

from vsm.sdk import Config, InstanceInfo, InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError, Stat, iter_chunks


def make_store(cfg: Config) -> Store:
    """The Constructor: cfg is one [[Common.PieceStores]] or [[Common.PersistStores]] entry."""
    return Store(cfg)


class Store:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.root = os.path.realpath(cfg.path)
        os.makedirs(self.root, exist_ok=True)

    def type(self) -> str:
        return "__NAME__"

    def version(self) -> str:
        return "0.1.0"

    def instance(self) -> str:
        return self.cfg.name or self.cfg.path

    def instance_config(self) -> Config:
        return self.cfg

    def instance_info(self) -> InstanceInfo:
        disk = shutil.disk_usage(self.root)
        used = disk.total - disk.free
        percent = 100.0 * used / disk.total if disk.total else 0.0
        return InstanceInfo(self.cfg, self.type(), disk.total, disk.free, used, percent)

    def full_path(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self.root, path))
        if os.path.isabs(path) or not full.startswith(self.root + os.sep):
            raise InvalidObjectPathError(f"__NAME__: {path!r} is not inside the store")
        return full

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise ReadOnlyStoreError(f"__NAME__: store {self.instance()!r} is read-only")

    def put(self, path: str, reader: BinaryIO) -> int:
        full = self.full_path(path)
        self._writable()
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".put-")
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in iter_chunks(reader):  # in a pool: views of shared memory, no copy
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, full)
        except BaseException:
            os.unlink(tmp)
            raise
        return size

    def get(self, path: str) -> BinaryIO:
        try:
            return open(self.full_path(path), "rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"__NAME__: no object {path!r}") from None

    def stat(self, path: str) -> Stat:
        try:
            return Stat(os.stat(self.full_path(path)).st_size)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"__NAME__: no object {path!r}") from None

    def delete(self, path: str) -> None:
        full = self.full_path(path)
        self._writable()
        try:
            os.unlink(full)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"__NAME__: no object {path!r}") from None
