"""Errors the manager reports to operators. Each renders as one line naming the file, key or
plugin, and the cause.

Tree::

    VsmError
    ├── ManifestError      manifest.toml (or an artifact's manifest) is wrong: file, key, cause
    ├── ArtifactError      an artifact file is missing, truncated or not an artifact
    ├── ConfigError        the config file is wrong: file, key path, cause
    ├── PluginLoadError    a plugin can't be loaded (duplicate name, SPI/Python mismatch,
    │   │                  missing requirement, OnInit failed)
    │   └── PluginStarting a plugin (or its store, sink, RPC namespace) is still starting:
    │                      JSON-RPC -32004, HTTP 503 with Retry-After; try again shortly
    ├── NotFoundError      the caller named a plugin (store, sink) that does not exist
    │                      (also a LookupError: JSON-RPC -32602, the caller's params)
    └── StoreBusy          a store's pool runs as many byte streams as it may (HTTP 503)
"""

from __future__ import annotations

__all__ = ["ArtifactError", "ConfigError", "ManifestError", "NotFoundError", "PluginLoadError", "PluginStarting", "StoreBusy", "VsmError"]


class VsmError(Exception):
    """Base of the manager's own errors."""


class ManifestError(VsmError):
    def __init__(self, file: object, key: str, cause: str) -> None:
        self.file, self.key, self.cause = str(file), key, cause
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {cause}")


class ArtifactError(VsmError):
    def __init__(self, file: object, cause: str) -> None:
        self.file, self.cause = str(file), cause
        super().__init__(f"{self.file}: {cause}")


class ConfigError(VsmError):
    def __init__(self, file: object, key: str, cause: str) -> None:
        self.file, self.key, self.cause = str(file), key, cause
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"{where}: {cause}")


class PluginLoadError(VsmError):
    pass


class PluginStarting(PluginLoadError):
    pass


class NotFoundError(VsmError, LookupError):
    pass


class StoreBusy(VsmError):
    pass
