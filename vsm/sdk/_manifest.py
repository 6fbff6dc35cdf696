"""The manifest of a plugin, as data (Go `managerplugin.Manifest` plus what Python needs)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._kinds import Kind

__all__ = ["Manifest", "SPI_VERSION"]

# Major version of this SDK surface. An artifact built against another major is refused at load,
# with the fix ("rebuild the plugin with vsm-pool plugin build").
SPI_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What manifest.toml declares; `build_time` and `spi_version` are stamped by the build."""

    name: str
    kind: Kind
    description: str = ""
    module: str = ""
    version: str = "0.0.0"
    on_init: str = ""
    on_shutdown: str = ""
    validate: str = ""  # TiDB's Validate: (manifest, loaded) before onInit; raising refuses the plugin
    on_flush: str = ""  # TiDB's OnFlush: (manifest) when an operator asks to re-read settings
    exports: dict[str, str] = dataclasses.field(default_factory=dict)
    requirements: tuple[str, ...] = ()
    requires_python: str = ""
    max_workers: int = 0  # 0: no limit; 1: an in-memory or single-writer plugin
    # Meta that `vsm-pool plugin test` passes to the Constructor; "{scratch}" becomes a folder
    # and "{prefix}" a name prefix of the run's own, both removed afterwards.
    test_meta: dict[str, str] = dataclasses.field(default_factory=dict)
    # The sandbox (issue 16): `sandbox = true` says the plugin runs confined with what the
    # keys below and its config give it (so vsm-pool confines it unless the operator says no).
    sandbox: bool = False
    path_meta: tuple[str, ...] = ()  # Meta keys naming a folder (or a file: its folder) it writes
    read_path_meta: tuple[str, ...] = ()  # Meta keys naming a file or folder it only reads
    address_meta: dict[str, str] = dataclasses.field(default_factory=dict)  # Meta key -> default address: TCP it connects to
    path_is_name: bool = False  # an ObjStore whose store Path only names the instance (s3store): not a folder it writes
    # it keeps `<name>.toml` and `.<name>/` in the plugins dir, as damocles' examples do: the two
    # things of the plugins dir it may write (never another plugin's artifact)
    plugins_dir_files: bool = False
    build_time: str = ""
    spi_version: int = SPI_VERSION
    python_version: str = ""

    def to_toml_dict(self) -> dict[str, Any]:
        """The manifest with manifest.toml's key names (what the build prints as JSON)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "kind": self.kind.value,
            "module": self.module,
            "version": self.version,
            "onInit": self.on_init,
            "onShutdown": self.on_shutdown,
            "validate": self.validate,
            "onFlush": self.on_flush,
            "export": [{"extPoint": k, "impl": v} for k, v in self.exports.items()],
            "requirements": list(self.requirements),
            "requiresPython": self.requires_python,
            "maxWorkers": self.max_workers,
            "testMeta": dict(self.test_meta),
            "sandbox": self.sandbox,
            "pathMeta": list(self.path_meta),
            "readPathMeta": list(self.read_path_meta),
            "addressMeta": dict(self.address_meta),
            "pathIsName": self.path_is_name,
            "pluginsDirFiles": self.plugins_dir_files,
            "buildTime": self.build_time,
            "spiVersion": self.spi_version,
            "pythonVersion": self.python_version,
        }
        return out
