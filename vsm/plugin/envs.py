"""A plugin's own environment: the packages its manifest requires, beside the manager's.

    manifest.requirements
        | plan(): a requirement on vsm-pool's runtime (RUNTIME: pyarrow, numpy, cloudpickle,
        |   multiprocess, dill, vsm-pool) must accept the manager's version, else the plugin is
        |   refused (one line: the package and why). Requirements the manager's environment
        |   already satisfies need no environment (the bundled sinks run as before).
        v
    EnvPlan.key = sha256(requirements, Python + platform, vsm-pool version, RUNTIME versions)[:16]
    <home>/envs/<key>/      env.json present: reused as it is (a second start runs nothing)
        | ensure(): under flock <home>/envs/.<key>.lock (one creator across processes and
        |   threads; plugins with the same key share the result), in .tmp-<key>-<pid>/:
        |   uv pip compile   requirements, constrained to the RUNTIME versions -> lock.txt
        |                    (an artifact built --with-deps: its own deps/lock.txt instead)
        |   uv pip install   the lock minus RUNTIME, --no-deps, --target site/ (--with-deps:
        |                    --offline --no-index --find-links <the artifact's wheels>)
        |   check            no installed package requires another RUNTIME version
        |   env.json         requirements, packages and versions, seconds: written last
        |   rename -> <home>/envs/<key>/
        v
    PoolSpec.site_dirs = (<home>/envs/<key>/site,): each worker puts it in front of sys.path
    after the runtime is imported and before the plugin is (executors/_worker.use_site_dirs);
    the manager itself never imports from it. Ray: the same requirements as runtime_env pip.

Why a package folder run by the manager's own interpreter, not a venv with its own python
(bench `envs` suite, this 2-vCPU VM under load): workers keep forking from the one fork server
that has the runtime imported, so a pool in an environment starts about as fast as one without
(1-worker pool 0.08-0.11 vs 0.07-0.09 s: the difference is the plugin importing its own
packages), whereas a venv's interpreter needs its own fork server per environment: a fresh
python importing the worker runtime took 0.9-1.4 s and holds ~70 MiB. Calls run the very same
code (echo through the pool, alternating rounds: ratios 0.6-1.65 over 4 runs at load average
12-15, i.e. noise either way). And the runtime is
imported before the folder is on sys.path, so a plugin's packages cannot change what the
worker machinery runs on; modules of the folder's packages that the runtime had imported
(e.g. packaging) are dropped and imported afresh from the folder.

Why uv: a first start (resolve + install of packaging==21.3, 2 packages, and the pool) took
0.44-0.63 s with uv's cache warm and 1.0-1.1 s with it empty; pip doing the same resolve and
install --target took 1.2-4.5 s (uv 0.1-0.4x of it), a venv + pip install 10-15 s. pip is
still what downloads wheels for `plugin build --with-deps` (uv has no download command).

Indexes: uv reads its own settings (UV_DEFAULT_INDEX, UV_INDEX_URL, uv.toml...); when none
is set in the environment, pip's (pip.conf files, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
PIP_FIND_LINKS, PIP_NO_INDEX) are passed on, with pip's rule that every index is searched
(--index-strategy unsafe-best-match), so a machine set up for pip installs the same way.

Crash argument: kill -9 at any step leaves at most .tmp-<key>-<pid>/ (removed by the next
creation of that key and by `plugin env prune`), never a half environment under <key>: the
rename is the commit, and env.json is inside it. The flock dies with its holder.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

from loguru import logger
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .. import __version__ as VSM_VERSION
from ..errors import PluginLoadError
from ..sdk import Manifest

__all__ = [
    "DEPS_PREFIX",
    "RUNTIME",
    "EnvPlan",
    "UvFailed",
    "ensure",
    "failure_text",
    "lock_names",
    "list_envs",
    "plan",
    "prune",
    "read_info",
    "requirement_problem",
    "resolve_lock",
    "runtime_versions",
    "wanted_requirements",
]

# What every worker runs on, imported before any plugin: a plugin must accept these versions.
RUNTIME = {
    "vsm-pool": "the SDK that every plugin imports",
    "pyarrow": "sector batches and the SDK's tables are Arrow objects shared with the manager",
    "numpy": "pyarrow is built against it",
    "cloudpickle": "calls ship functions to the workers with it",
    "multiprocess": "it starts and runs the workers",
    "dill": "multiprocess pickles with it",
}
DEPS_PREFIX = "deps/"  # in an artifact built --with-deps: lock.txt and the wheels
INFO = "env.json"
CREATE_TIMEOUT = 1800.0  # seconds for one uv command (a large download on a slow link)


@functools.cache
def runtime_versions() -> dict[str, str]:
    """The manager's version of each RUNTIME package that is installed."""
    found = {"vsm-pool": VSM_VERSION}
    for name in RUNTIME:
        if name != "vsm-pool":
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[name] = importlib.metadata.version(name)
    return found


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


def requirement_problem(manifest: Manifest) -> str:
    """Why the plugin's requirements cannot be met in any environment ("" if they can)."""
    for text in manifest.requirements:
        try:
            clash = _runtime_clash(Requirement(text))
        except InvalidRequirement:
            return f"requirement {text!r} is not a pip requirement"
        if clash:
            return f"requirement {text!r} conflicts with vsm-pool's runtime: {clash}, a plugin cannot bring its own"
    return ""


def _runtime_clash(req: Requirement) -> str:
    """What of the runtime req excludes ("" if nothing): "every worker runs pyarrow 26.0.1 (why)"."""
    runtime = runtime_versions()
    name = canonicalize_name(req.name)
    if name in runtime and _applies(req) and not req.specifier.contains(runtime[name], prereleases=True):
        return f"every worker runs {name} {runtime[name]} ({RUNTIME[name]})"
    return ""


@dataclasses.dataclass(frozen=True)
class EnvPlan:
    """The environment a plugin runs in: `requirements` (as written, runtime ones left out
    when installing) under `<envs dir>/<key>`."""

    key: str
    requirements: tuple[str, ...]

    def path(self, envs_dir: Path) -> Path:
        return Path(envs_dir) / self.key

    def site(self, envs_dir: Path) -> Path:
        return self.path(envs_dir) / "site"

    def pip_requirements(self) -> list[str]:
        """What an installer must add to the manager's packages (Ray's runtime_env pip)."""
        return [r for r in self.requirements if canonicalize_name(Requirement(r).name) not in RUNTIME]


def _manager_satisfies(req: Requirement) -> bool:
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(installed, prereleases=True)


def python_tag() -> str:
    return f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}-{platform.machine()}"


def wanted_requirements(manifest: Manifest) -> list[Requirement]:
    """The manifest's requirements whose markers hold here (call requirement_problem first)."""
    return [r for r in map(Requirement, manifest.requirements) if _applies(r)]


def plan(manifest: Manifest) -> EnvPlan | None:
    """The plugin's environment, or None when the manager's packages satisfy every requirement
    (call requirement_problem first: a refused plugin has no plan)."""
    wanted = wanted_requirements(manifest)
    if all(_manager_satisfies(r) for r in wanted):
        return None
    texts = tuple(sorted(dict.fromkeys(str(r) for r in wanted)))
    runtime = sorted(runtime_versions().items())
    material = json.dumps([texts, python_tag(), VSM_VERSION, runtime])
    return EnvPlan(hashlib.sha256(material.encode()).hexdigest()[:16], texts)


# -- reading what exists --------------------------------------------------------------------


def read_info(path: Path) -> dict[str, Any] | None:
    """An environment's env.json, or None when it is not (completely) there."""
    try:
        return json.loads((Path(path) / INFO).read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def list_envs(envs_dir: Path) -> list[dict[str, Any]]:
    """Every complete environment under envs_dir: its env.json plus key, path and size."""
    out = []
    root = Path(envs_dir)
    if not root.is_dir():
        return out
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        info = read_info(entry)
        if info is None:
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        out.append({**info, "key": entry.name, "path": str(entry), "bytes": size})
    return out


def prune(envs_dir: Path, keep: set[str]) -> list[str]:
    """Remove every environment whose key is not in `keep`, and leftovers of creations that
    died (.tmp-*); returns the removed names. A creation in progress holds its key's flock
    and is left alone."""
    root = Path(envs_dir)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if entry.name.endswith(".lock"):
            continue
        key = entry.name.split("-")[1] if entry.name.startswith(".tmp-") else entry.name
        if key in keep and not entry.name.startswith(".tmp-"):
            continue
        with _flock(root / f".{key}.lock", blocking=False) as held:
            if not held:
                continue  # being created right now
            shutil.rmtree(entry, ignore_errors=True)  # its lock file stays: a waiter may hold it open
            removed.append(entry.name)
    return removed


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# -- creating -------------------------------------------------------------------------------


class UvFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def _uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except Exception:
        found = shutil.which("uv")
        if found:
            return found
    raise PluginLoadError("creating plugin environments needs uv: pip install 'uv>=0.5'")


_PROGRESS = re.compile(r"^(Resolved|Prepared|Installed|Downloading|Downloaded|Building|Built) ")


def _uv(*args: str, say: Callable[[str], None] | None = None) -> None:
    """Run uv; its progress lines (Resolved 2 packages in 5ms, Downloading..., Built...) go to
    `say` as they come. Raises UvFailed with its stderr."""
    env = dict(os.environ, UV_NO_PROGRESS="1")  # no bars: lines
    proc = subprocess.Popen([_uv_bin(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    timer = threading.Timer(CREATE_TIMEOUT, proc.kill)
    timer.start()
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if say is not None and _PROGRESS.match(line):
                say(line.strip())
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode == -signal.SIGKILL:
        raise UvFailed(f"error: uv {args[0]} {args[1]} did not finish within {CREATE_TIMEOUT:.0f} s")
    if proc.returncode != 0:
        raise UvFailed("".join(lines))


def _pip_config_files() -> list[Path]:
    """pip's configuration files, lowest precedence first (pip's own order)."""
    if os.environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d] + [Path("/etc/pip.conf")]
    home = Path.home()
    files += [home / ".pip" / "pip.conf", Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "pip" / "pip.conf"]
    files.append(Path(sys.prefix) / "pip.conf")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def pip_index_settings() -> dict[str, str]:
    """index-url, extra-index-url, find-links, no-index and cert as pip would use them for an
    install: files, then [install] over [global], then PIP_* variables."""
    found: dict[str, str] = {}
    keys = ("index-url", "extra-index-url", "find-links", "no-index", "cert")
    for file in _pip_config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(file, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                found.update({k: parser.get(section, k) for k in keys if parser.has_option(section, k)})
    for k in keys:
        value = os.environ.get("PIP_" + k.upper().replace("-", "_"))
        if value is not None:
            found[k] = value
    return found


_UV_INDEX_VARS = ("UV_DEFAULT_INDEX", "UV_INDEX", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX")


def index_args() -> list[str]:
    """uv options for the package indexes: none when uv is configured in the environment,
    else pip's settings translated."""
    if any(os.environ.get(v) for v in _UV_INDEX_VARS):
        return []
    pip = pip_index_settings()
    args: list[str] = []
    if pip.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if pip.get("index-url"):
        args += ["--index-url", pip["index-url"].split()[0]]
    extra = pip.get("extra-index-url", "").split()
    for url in extra:
        args += ["--extra-index-url", url]
    for link in pip.get("find-links", "").split():
        args += ["--find-links", link]
    if extra or pip.get("find-links"):
        args += ["--index-strategy", "unsafe-best-match"]  # pip searches every index
    return args


def lock_names(lines: list[str]) -> list[tuple[str, str]]:
    """(canonical name, line) of every pinned line of a lock."""
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        out.append((canonicalize_name(Requirement(line).name), line))
    return out


def resolve_lock(requirements: tuple[str, ...] | list[str], scratch: Path, say: Callable[[str], None] | None = None) -> list[str]:
    """The exact versions (`name==version` lines) this machine's Python would install for
    requirements, with vsm-pool's runtime held at the manager's versions. Raises UvFailed."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "requirements.in").write_text("\n".join(requirements) + "\n")
    (scratch / "runtime.txt").write_text("".join(f"{n}=={v}\n" for n, v in runtime_versions().items() if n != "vsm-pool"))
    _uv(
        "pip", "compile", "--no-header", "--no-annotate", "--python", sys.executable,
        "--constraints", str(scratch / "runtime.txt"), *index_args(),
        str(scratch / "requirements.in"), "-o", str(scratch / "lock.txt"), say=say,
    )  # fmt: skip
    return (scratch / "lock.txt").read_text().splitlines()


def _bundled_deps(artifact: Path | None, into: Path) -> list[str] | None:
    """The lock of an artifact built --with-deps, its wheels extracted into `into`; None
    when the artifact bundles none."""
    if artifact is None or not Path(artifact).is_file():
        return None
    with zipfile.ZipFile(artifact) as zf:
        names = [n for n in zf.namelist() if n.startswith(DEPS_PREFIX)]
        if DEPS_PREFIX + "lock.txt" not in names:
            return None
        into.mkdir(parents=True, exist_ok=True)
        for n in names:
            if n.endswith(".whl"):
                (into / Path(n).name).write_bytes(zf.read(n))
        return zf.read(DEPS_PREFIX + "lock.txt").decode().splitlines()


def _runtime_conflict(site: Path) -> str:
    """A package in site that requires another version of a RUNTIME package ("" if none):
    possible with a lock made on another machine (--with-deps)."""
    for dist in importlib.metadata.distributions(path=[str(site)]):
        for text in dist.requires or []:
            clash = _runtime_clash(Requirement(text))
            if clash:
                return f"{dist.metadata['Name']} {dist.version} requires {text!r}, which conflicts with vsm-pool's runtime: {clash}"
    return ""


def installed_packages(site: Path) -> dict[str, str]:
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in sorted(importlib.metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower())
    }


def describe_packages(packages: dict[str, str]) -> str:
    return ", ".join(f"{n} {v}" for n, v in packages.items())


def ensure(env: EnvPlan, envs_dir: Path, label: str, artifact: Path | None = None) -> dict[str, Any]:
    """The environment's env.json, creating the environment first if it does not exist.
    Raises PluginLoadError (one line: the plugin, the requirement, the cause)."""
    final = env.path(envs_dir)
    info = read_info(final)
    if info is not None:
        logger.debug("plugin '{}': environment {} reused: {}", label, env.key, describe_packages(info["packages"]))
        return info
    root = Path(envs_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _flock(root / f".{env.key}.lock"):
        info = read_info(final)  # made by another process, or a plugin with the same key
        if info is not None:
            return info
        return _create(env, root, label, artifact)


def _create(env: EnvPlan, root: Path, label: str, artifact: Path | None) -> dict[str, Any]:
    for stale in root.glob(f".tmp-{env.key}-*"):  # a creator killed mid-way (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{env.key}-{os.getpid()}"
    tmp.mkdir()
    t0 = time.monotonic()
    try:
        wheels = tmp / "wheels"
        lock = _bundled_deps(artifact, wheels)
        source = f"wheels bundled in {Path(artifact).name}" if lock is not None and artifact else "the package index"
        logger.info(
            "plugin '{}': creating its environment {} for {} from {} (first load; reused afterwards)...",
            label, env.key, ", ".join(env.requirements), source,
        )  # fmt: skip
        try:
            def say(line: str) -> None:
                logger.info("plugin '{}': environment {}: {}", label, env.key, line)

            if lock is None:
                lock = resolve_lock(env.requirements, tmp / "resolve", say)
            pins = [line for name, line in lock_names(lock) if name not in RUNTIME]
            logger.info("plugin '{}': environment {}: installing {} packages...", label, env.key, len(pins))
            (tmp / "install.txt").write_text("\n".join(pins) + "\n")
            where = ["--offline", "--no-index", "--find-links", str(wheels)] if wheels.is_dir() else index_args()
            _uv(
                "pip", "install", "--no-deps", "--python", sys.executable, "--target", str(tmp / "site"),
                *where, "-r", str(tmp / "install.txt"), say=lambda line: line.startswith("Resolved") or say(line),
            )  # fmt: skip
        except UvFailed as e:
            cause = failure_text(env.requirements, e.stderr, offline=wheels.is_dir())
            raise PluginLoadError(f"plugin '{label}': cannot create its environment: {cause}") from None
        (tmp / "site").mkdir(exist_ok=True)  # nothing to install (only runtime packages)
        conflict = _runtime_conflict(tmp / "site")
        if conflict:
            raise PluginLoadError(f"plugin '{label}': cannot create its environment: {conflict}")
        shutil.rmtree(wheels, ignore_errors=True)
        (tmp / "lock.txt").write_text("\n".join(lock) + "\n")
        packages = installed_packages(tmp / "site")
        seconds = round(time.monotonic() - t0, 3)
        info = {
            "key": env.key,
            "requirements": list(env.requirements),
            "packages": packages,
            "python": python_tag(),
            "vsm_pool": VSM_VERSION,
            "runtime": runtime_versions(),
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": seconds,
        }
        (tmp / INFO).write_text(json.dumps(info, indent=2))
        os.rename(tmp, env.path(root))  # the commit: a complete environment appears at once
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("plugin '{}': environment {} ready in {:.1f} s: {}", label, env.key, seconds, describe_packages(packages) or "(nothing to install)")
    return info


_NETWORK = re.compile(r"failed to fetch|connection refused|tcp connect|dns error|timed out|network|offline", re.I)


def failure_text(requirements: tuple[str, ...] | list[str], stderr: str, offline: bool) -> str:
    """uv's error as one line: which requirement (when the text names one), and the cause."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    head = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("error:")), lines[0] if lines else "uv failed")
    causes = [line.split(":", 1)[1].strip() for line in lines if line.startswith("cause:")]
    text = " ".join(lines)
    lowered = text.lower()
    if "failed to build" in lowered:
        tail = [line for line in lines if not line.startswith(("cause:", "hint:", "error:", "[std"))]
        cause = f"build error: {head}" + (f": {tail[-1]}" if tail else "")
    elif "no solution found" in lowered and _runtime_pin_in(lowered):
        name = _runtime_pin_in(lowered)
        clash = f"every worker runs {name} {runtime_versions()[name]} ({RUNTIME[name]})"
        cause = f"conflicts with vsm-pool's runtime: {clash}: {causes[-1] if causes else head}"
    elif "no solution found" in lowered or "not found in the package registry" in lowered:
        cause = f"no matching version: {causes[-1] if causes else head}"
    elif _NETWORK.search(text):
        last = causes[-1] if causes else head
        cause = f"the package index is unreachable ({head}: {last})"
        if not offline:
            cause += "; for a machine without index access build the plugin with `vsm-pool plugin build --with-deps`"
    else:
        cause = head + (f": {causes[-1]}" if causes else "")
    named = [r for r in requirements if _mentions(lowered, Requirement(r).name)]
    which = f"requirement {named[0]!r}" if named else "requirements " + ", ".join(repr(r) for r in requirements)
    return f"{which}: {cause}"


def _runtime_pin_in(text: str) -> str:
    """The runtime package whose pinned version (the constraint resolve_lock adds) a resolver
    message names, e.g. "cloudpickle==3.1.3"; "" if none."""
    for name, version in runtime_versions().items():
        if name != "vsm-pool" and f"{name}=={version}".lower() in text:
            return name
    return ""


def _mentions(text: str, name: str) -> bool:
    forms = {name.lower(), canonicalize_name(name), canonicalize_name(name).replace("-", "_")}
    return any(re.search(rf"(?<![\w.-]){re.escape(f)}(?![\w-])", text) for f in forms)
