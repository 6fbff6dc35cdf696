"""Plugin artifacts: `plugin-<name>.vsmp`, a zip of manifest.json plus the module under src/.

Workers import the module straight from the zip (zipimport), so an artifact is one file to
drop in the plugins dir, like the Go original's `.so`. The manager only ever reads its
manifest.json: building and listing never import plugin code.

`build(..., with_deps=True)` (`plugin build --with-deps`) also bundles what its requirements
resolve to on this machine, for machines without index access:

    requirements --uv pip compile (vsm-pool's runtime held at this manager's versions)--> lock
    lock minus the runtime packages --pip wheel --no-deps--> deps/<name>-<version>-<tags>.whl
    zip: manifest.json, src/..., deps/lock.txt, deps/*.whl

Loading it installs from deps/ with no index (envs.py). The wheels are for this platform and
Python (an sdist is built into a wheel here); build on a machine like the target.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

from . import envs
from ..errors import ArtifactError, ManifestError
from .manifest import manifest_from_dict, read_source_manifest
from ..sdk import SPI_VERSION, Manifest

__all__ = ["ARTIFACT_SUFFIX", "artifact_digest", "artifact_name", "build", "bundled_wheels", "code_path", "read_artifact_manifest", "source_digest"]

ARTIFACT_SUFFIX = ".vsmp"
MANIFEST_ENTRY = "manifest.json"
SRC_PREFIX = "src/"
_SKIP_DIRS = {"__pycache__", "tests", ".git"}


def artifact_name(name: str) -> str:
    return f"plugin-{name}{ARTIFACT_SUFFIX}"


def build(src_dir: Path, out_dir: Path, *, with_deps: bool = False) -> tuple[Path, Manifest, list[str]]:
    """Validate src_dir and write its artifact into out_dir; returns (path, manifest, warnings).
    with_deps: bundle the wheels of its requirements for this platform (raises ManifestError
    naming the requirement when they cannot be resolved or fetched)."""
    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir).resolve()
    manifest, warnings = read_source_manifest(src_dir)
    stamped = _stamped(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / artifact_name(manifest.name)
    # Write beside the target and rename: a reader never sees a half-written artifact.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="vsm-deps-") as scratch, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_ENTRY, json.dumps(stamped.to_toml_dict(), indent=2))
            for path in sorted(_source_files(src_dir, out_dir)):
                zf.write(path, SRC_PREFIX + path.relative_to(src_dir).as_posix())
            if with_deps and manifest.requirements:
                lock, wheels = _fetch_deps(manifest, src_dir / "manifest.toml", Path(scratch))
                zf.writestr(envs.DEPS_PREFIX + "lock.txt", "\n".join(lock) + "\n")
                for wheel in wheels:  # already compressed
                    zf.write(wheel, envs.DEPS_PREFIX + wheel.name, compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target, stamped, warnings


def _stamped(manifest: Manifest) -> Manifest:
    return Manifest(
        **{
            **manifest.__dict__,
            "build_time": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "spi_version": SPI_VERSION,
            "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
    )


# What a build is made of, build time aside: the stamped manifest and the module's files. Equal
# digests of a source folder and an artifact mean the artifact is a build of that source (by
# this vsm-pool, for this Python). Used to refresh a home's bundled builds (home.ensure_home).
def source_digest(src_dir: Path) -> str:
    src_dir = Path(src_dir).resolve()
    manifest, _ = read_source_manifest(src_dir)
    files = {SRC_PREFIX + p.relative_to(src_dir).as_posix(): p.read_bytes() for p in _source_files(src_dir, src_dir)}
    return _digest(_stamped(manifest).to_toml_dict(), files)


def artifact_digest(path: Path) -> str:
    """source_digest of what `path` was built from ("" when it is not a readable artifact)."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST_ENTRY))
            files = {n: zf.read(n) for n in zf.namelist() if n.startswith(SRC_PREFIX) and not n.endswith("/")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""
    return _digest(manifest, files) if isinstance(manifest, dict) else ""


def _digest(manifest: dict[str, Any], files: dict[str, bytes]) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in manifest.items() if k != "buildTime"}, sort_keys=True).encode())
    for name in sorted(files):
        h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def _fetch_deps(manifest: Manifest, file: Path, scratch: Path) -> tuple[list[str], list[Path]]:
    """The pinned lock of the manifest's requirements (runtime packages left out) and a wheel
    for each line, for this platform."""
    problem = envs.requirement_problem(manifest)
    if problem:
        raise ManifestError(file, "requirements", problem)
    texts = [str(r) for r in envs.wanted_requirements(manifest)]
    try:
        lock = envs.resolve_lock(texts, scratch / "resolve")
    except envs.UvFailed as e:
        raise ManifestError(file, "requirements", f"cannot bundle: {envs.failure_text(texts, e.stderr, offline=False)}") from None
    pins = [line for name, line in envs.lock_names(lock) if name not in envs.RUNTIME]
    if not pins:
        return [], []
    (scratch / "pins.txt").write_text("\n".join(pins) + "\n")
    wheel_dir = scratch / "wheels"
    # pip, not uv: uv has no download; `pip wheel` keeps a published wheel as it is and builds
    # one from an sdist
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), "-r", str(scratch / "pins.txt")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.strip()]
        raise ManifestError(file, "requirements", f"cannot bundle the wheels of {', '.join(pins)}: pip wheel: {last[-1] if last else proc.returncode}")
    return pins, sorted(wheel_dir.glob("*.whl"))


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
    except zlib.error as e:  # a garbled deflate stream fails before its CRC is compared (issue 25)
        raise ArtifactError(path, f"corrupt artifact: an entry does not decompress ({e}); rebuild it") from None
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


def bundled_wheels(artifact: Path) -> list[str]:
    """File names of the wheels an artifact built --with-deps carries."""
    with zipfile.ZipFile(artifact) as zf:
        return sorted(Path(n).name for n in zf.namelist() if n.startswith(envs.DEPS_PREFIX) and n.endswith(".whl"))


def code_path(artifact: Path) -> str:
    """The sys.path entry a worker inserts to import the artifact's module (zipimport)."""
    return f"{Path(artifact).resolve()}/{SRC_PREFIX.rstrip('/')}"
