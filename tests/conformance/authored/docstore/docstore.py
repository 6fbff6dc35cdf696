"""An in-memory ObjStore: objects by path, per store location."""

from __future__ import annotations

import io
import posixpath
from typing import BinaryIO

from vsm.sdk import Config, InstanceInfo, InvalidObjectPathError, ObjectNotFoundError, ReadOnlyStoreError, Stat, iter_chunks

CAPACITY = 1 << 40
_LOCATIONS: dict[str, dict[str, bytes]] = {}


class MemoryStore:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.objects = _LOCATIONS.setdefault(cfg.path, {})

    def _key(self, path: str) -> str:
        norm = posixpath.normpath(path)
        if path.startswith("/") or norm == ".." or norm.startswith("../"):
            raise InvalidObjectPathError(f"docstore: {path!r} leaves the store")
        return norm

    def _check_writable(self) -> None:
        if self.cfg.read_only:
            raise ReadOnlyStoreError(f"docstore: {self.instance()} is read-only")

    def type(self) -> str:
        return "docstore"

    def version(self) -> str:
        return "1.0.0"

    def instance(self) -> str:
        return self.cfg.name or self.cfg.path

    def instance_config(self) -> Config:
        return self.cfg

    def instance_info(self) -> InstanceInfo:
        used = sum(len(v) for v in self.objects.values())
        return InstanceInfo(self.cfg, self.type(), CAPACITY, CAPACITY - used, used, 100.0 * used / CAPACITY)

    def put(self, path: str, reader: BinaryIO) -> int:
        key = self._key(path)
        self._check_writable()
        data = b"".join(bytes(chunk) for chunk in iter_chunks(reader))
        self.objects[key] = data
        return len(data)

    def get(self, path: str) -> BinaryIO:
        key = self._key(path)
        if key not in self.objects:
            raise ObjectNotFoundError(f"docstore: no {path!r}")
        return io.BytesIO(self.objects[key])

    def stat(self, path: str) -> Stat:
        key = self._key(path)
        if key not in self.objects:
            raise ObjectNotFoundError(f"docstore: no {path!r}")
        return Stat(len(self.objects[key]))

    def delete(self, path: str) -> None:
        key = self._key(path)
        self._check_writable()
        if self.objects.pop(key, None) is None:
            raise ObjectNotFoundError(f"docstore: no {path!r}")

    def full_path(self, path: str) -> str:
        return posixpath.join(self.cfg.path, self._key(path))


def new_store(cfg: Config) -> MemoryStore:
    return MemoryStore(cfg)
