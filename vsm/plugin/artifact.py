"""Plugin artifacts: `plugin-<name>.vsmp`, a zip of manifest.json plus the module under src/.

Workers import the module straight from the zip (zipimport), so an artifact is one file to
drop in the plugins dir, like the Go original's `.so`. The manager only ever reads its
manifest.json: building and listing never import plugin code.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ArtifactError, ManifestError
from .manifest import manifest_from_dict, read_source_manifest
from ..sdk import SPI_VERSION, Manifest

__all__ = ["ARTIFACT_SUFFIX", "artifact_name", "build", "code_path", "read_artifact_manifest"]

ARTIFACT_SUFFIX = ".vsmp"
MANIFEST_ENTRY = "manifest.json"
SRC_PREFIX = "src/"
_SKIP_DIRS = {"__pycache__", "tests", ".git"}


def artifact_name(name: str) -> str:
    return f"plugin-{name}{ARTIFACT_SUFFIX}"


def build(src_dir: Path, out_dir: Path) -> tuple[Path, Manifest, list[str]]:
    """Validate src_dir and write its artifact into out_dir; returns (path, manifest, warnings)."""
    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir).resolve()
    manifest, warnings = read_source_manifest(src_dir)
    stamped = Manifest(
        **{
            **manifest.__dict__,
            "build_time": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "spi_version": SPI_VERSION,
            "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / artifact_name(manifest.name)
    # Write beside the target and rename: a reader never sees a half-written artifact.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_ENTRY, json.dumps(stamped.to_toml_dict(), indent=2))
            for path in sorted(_source_files(src_dir, out_dir)):
                zf.write(path, SRC_PREFIX + path.relative_to(src_dir).as_posix())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target, stamped, warnings


def _source_files(src_dir: Path, out_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(src_dir):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        if Path(root).resolve() == out_dir and out_dir != src_dir:
            continue
        for n in names:
            if n.startswith(".") or n.endswith((".pyc", ARTIFACT_SUFFIX)) or n == "manifest.toml":
                continue
            files.append(Path(root) / n)
    return files


def read_artifact_manifest(path: Path) -> tuple[Manifest, list[str]]:
    """Manifest of an artifact, read as data; raises ArtifactError or ManifestError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "no such artifact file")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ArtifactError(path, f"corrupt artifact: entry {bad!r} fails its checksum; rebuild it")
            try:
                raw = zf.read(MANIFEST_ENTRY)
            except KeyError:
                raise ArtifactError(path, "not a vsm-pool plugin artifact: it has no manifest.json") from None
            names = set(zf.namelist())
    except zipfile.BadZipFile:
        raise ArtifactError(path, "not a vsm-pool plugin artifact, or truncated: not a readable zip archive") from None
    except (OSError, EOFError) as e:
        raise ArtifactError(path, f"cannot read artifact: {e}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ArtifactError(path, f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError(path, "manifest.json must hold an object")
    manifest, warnings = manifest_from_dict(data, f"{path}!{MANIFEST_ENTRY}", from_artifact=True)
    module = manifest.module
    if f"{SRC_PREFIX}{module}.py" not in names and f"{SRC_PREFIX}{module}/__init__.py" not in names:
        raise ManifestError(path, "module", f"the artifact holds no module {module!r}")
    return manifest, warnings


def code_path(artifact: Path) -> str:
    """The sys.path entry a worker inserts to import the artifact's module (zipimport)."""
    return f"{Path(artifact).resolve()}/{SRC_PREFIX.rstrip('/')}"
