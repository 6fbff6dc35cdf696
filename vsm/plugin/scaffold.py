"""`vsm-pool plugin new`: a ready-to-edit plugin source folder per kind."""

from __future__ import annotations

from pathlib import Path

from ..errors import ManifestError
from .manifest import NAME_RE

__all__ = ["write_plugin_source"]

_EXPORTS = {
    "KVStore": '{extPoint = "Constructor", impl = "open"}',
    "ObjStore": '{extPoint = "Constructor", impl = "open"}',
    "SyncSectorState": '{extPoint = "Constructor", impl = "open"}',
    "RegisterJsonRpc": '{extPoint = "Handler", impl = "handler"}',
}

_MODULES = {
    "KVStore": '''\
"""{name}: a KVStore plugin. Keys and values are bytes; each collection is one namespace."""

from vsm.sdk import KeyNotFoundError, Manifest


def on_init(plugins_dir: str, manifest: Manifest) -> None:
    """Runs in every worker before any call; raising disables the plugin."""


def open(meta: dict[str, str]) -> "DB":
    return DB(meta)


class Collection:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {{}}

    def need_retry_transactions(self) -> bool:
        return False

    def get(self, key: bytes) -> bytes:
        try:
            return self.data[key]
        except KeyError:
            raise KeyNotFoundError(f"key not found: {{key!r}}") from None

    def peek(self, key, fn):
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self.data[key] = bytes(val)

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def scan(self, prefix: bytes):
        return iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))

    def view(self, fn):
        return fn(self)

    def update(self, fn):  # TODO: make this atomic for your database
        return fn(self)


class DB:
    def __init__(self, meta: dict[str, str]) -> None:
        self.collections: dict[str, Collection] = {{}}

    def run(self) -> None:
        pass

    def close(self) -> None:
        pass

    def open_collection(self, name: str) -> Collection:
        return self.collections.setdefault(name, Collection())
''',
    "ObjStore": '''\
"""{name}: an ObjStore plugin. Objects stream in (put) and out (get)."""

import io

from vsm.sdk import Config, InstanceInfo, ObjectNotFoundError, Stat, iter_chunks


def open(cfg: Config) -> "Store":
    return Store(cfg)


class Store:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.objects: dict[str, bytes] = {{}}

    def type(self) -> str:
        return "{name}"

    def version(self) -> str:
        return "0.1.0"

    def instance(self) -> str:
        return self.cfg.name or self.cfg.path

    def instance_config(self) -> Config:
        return self.cfg

    def instance_info(self) -> InstanceInfo:
        used = sum(map(len, self.objects.values()))
        return InstanceInfo(self.cfg, self.type(), 0, 0, used, 0.0)

    def put(self, path: str, reader) -> int:
        data = b"".join(bytes(c) for c in iter_chunks(reader))
        self.objects[path] = data
        return len(data)

    def get(self, path: str):
        try:
            return io.BytesIO(self.objects[path])
        except KeyError:
            raise ObjectNotFoundError(f"object not found: {{path}}") from None

    def stat(self, path: str) -> Stat:
        return Stat(len(self.get(path).getbuffer()))

    def delete(self, path: str) -> None:
        self.objects.pop(path, None)

    def full_path(self, path: str) -> str:
        return f"{{self.cfg.path}}/{{path}}"
''',
    "SyncSectorState": '''\
"""{name}: a SyncSectorState sink. It receives every sector-state change, as Arrow batches."""


def open(meta: dict[str, str]) -> "Sink":
    return Sink(meta)


class Sink:
    def __init__(self, meta: dict[str, str]) -> None:
        self.last_seq = 0

    def on_batch(self, batch) -> None:
        """batch: pyarrow.RecordBatch of full rows; deduplicate by its seq column."""
        seqs = batch.column("seq").to_pylist()
        self.last_seq = max([self.last_seq, *seqs])

    def close(self) -> None:
        pass
''',
    "RegisterJsonRpc": '''\
"""{name}: a JSON-RPC namespace served by the daemon at /rpc/v0 as {name}.<method>."""


class Handler:
    def echo(self, text: str) -> str:
        return text


def handler():
    return "{name}", Handler()
''',
}


def write_plugin_source(kind: str, name: str, parent: Path) -> Path:
    if not NAME_RE.match(name):
        raise ManifestError(parent / name, "name", f"{name!r} is not a valid plugin name: use lowercase letters, digits and _")
    folder = Path(parent) / name
    if folder.exists():
        raise ManifestError(folder, "", "folder exists already; choose another name or remove it")
    folder.mkdir(parents=True)
    (folder / "manifest.toml").write_text(
        f'''name = "{name}"
description = ""
kind = "{kind}"
module = "{name}"
version = "0.1.0"
{'onInit = "on_init"' if kind == "KVStore" else '# onInit = "on_init"'}
# onShutdown = "on_shutdown"
export = [ {_EXPORTS[kind]} ]
{"maxWorkers = 1  # an in-memory store: one worker holds the data" if kind in ("KVStore", "ObjStore") else "# maxWorkers = 1"}
# requirements = ["somepackage>=1.0"]  # its own environment (<home>/envs) if the manager lacks them
''',
        encoding="utf-8",
    )
    (folder / f"{name}.py").write_text(_MODULES[kind].format(name=name), encoding="utf-8")
    return folder
