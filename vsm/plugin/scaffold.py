"""`vsm-pool plugin new`: a ready-to-edit plugin source folder per kind.

The module comes from templates/<kind>.py (real Python: `__NAME__` and `__NAME_UPPER__` are
replaced by the plugin's name). Each Constructor has a name that shadows nothing in the
author's module (not `open`), and every template passes its kind's kit as written
(tests/core/test_scaffold.py builds each one and runs `vsm-pool plugin test` on it).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import ManifestError
from .manifest import NAME_RE, NAME_RULE

__all__ = ["write_plugin_source"]

_EXPORTS = {
    "KVStore": '{extPoint = "Constructor", impl = "make_db"}',
    "ObjStore": '{extPoint = "Constructor", impl = "make_store"}',
    "SyncSectorState": '{extPoint = "Constructor", impl = "make_sink"}',
    "RegisterJsonRpc": '{extPoint = "Handler", impl = "handler"}',
}

# manifest.toml lines that differ per kind: the worker limit and the kit's Meta.
_MANIFEST_EXTRA = {
    "KVStore": "maxWorkers = 1                 # the data lives in one worker's memory\n"
    '# testMeta = { Path = "{scratch}/kit.db" }   # the Meta `vsm-pool plugin test` passes',
    "ObjStore": "maxWorkers = 0                 # files on disk: any number of workers",
    "SyncSectorState": "maxWorkers = 1                 # one writer keeps max_seq\n"
    'testMeta = { Path = "{scratch}/events" }     # the Meta `vsm-pool plugin test` passes',
    "RegisterJsonRpc": "maxWorkers = 1                 # state in one worker's memory sees every call",
}


def template(kind: str, name: str) -> str:
    """The module of a new plugin of that kind."""
    text = (importlib.resources.files(__package__) / "templates" / f"{kind}.py").read_text(encoding="utf-8")
    return text.replace("__NAME_UPPER__", name.upper()).replace("__NAME__", name)


def write_plugin_source(kind: str, name: str, parent: Path) -> Path:
    if not NAME_RE.match(name):
        raise ManifestError(parent / name, "name", f"{name!r} is not a valid plugin name: {NAME_RULE}")
    folder = Path(parent) / name
    if folder.exists():
        raise ManifestError(folder, "", "folder exists already; choose another name or remove it")
    folder.mkdir(parents=True)
    module = name.replace("-", "_")  # concurrent-limiter -> concurrent_limiter.py
    (folder / "manifest.toml").write_text(
        f'''name = "{name}"
description = ""
kind = "{kind}"
module = "{module}"
version = "0.1.0"
{'onInit = "on_init"' if kind == "KVStore" else '# onInit = "on_init"'}
# onShutdown = "on_shutdown"
export = [ {_EXPORTS[kind]} ]
{_MANIFEST_EXTRA[kind]}
# requirements = ["somepackage>=1.0"]  # its own environment (<home>/envs) if the manager lacks them
''',
        encoding="utf-8",
    )
    (folder / f"{module}.py").write_text(template(kind, name), encoding="utf-8")
    return folder
