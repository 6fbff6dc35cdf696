"""`vsm-pool plugin dev DIR`: build on save, swap the build into the running manager, rerun the
kit, say what happened in one line per save.

    poll DIR's files (mtime, size) every `interval` --change, quiet for `settle`-->
        build DIR -> <dev dir>/build-<n>/plugin-<name>.vsmp      broken: say why, keep serving
        the manager (the daemon, or one started in-process):
            loaded  -> plugin.reload(name, that artifact)      refused: the old build serves on
            not yet -> the artifact into the plugins dir, plugin.rescan (it is loaded)
        the kit, on that artifact in a pool of its own (vsm.plugin.conformance.runner)
        -> "[12:03:04] build 2 of mydb: reloaded; kit 22 passed, 0 failed"

Each build gets a folder of its own: a pool imports from its zip lazily, so the build a pool
serves must stay as it is until that pool has stopped; the two newest are kept.

Polling, not inotify (watchfiles): a plugin folder holds a few files and a stat of each every
0.3 s costs microseconds; a new dependency would buy nothing here.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import VsmError
from .artifact import ARTIFACT_SUFFIX, artifact_name, build

__all__ = ["DevLoop"]

_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache"}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every source file's (mtime_ns, size): what a save changes."""
    out = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        for n in names:
            if n.startswith(".") or n.endswith((".pyc", ARTIFACT_SUFFIX, "~")):
                continue
            try:
                st = os.stat(os.path.join(root, n))
            except FileNotFoundError:  # removed while we looked: the next poll sees it
                continue
            out[os.path.join(root, n)] = (st.st_mtime_ns, st.st_size)
    return out


class DevLoop:
    """One plugin source folder, built and swapped into `client`'s manager on every save.

    client: what `call(method, params)`s the manager (the daemon's client, or a LocalClient);
    plugins_dir: the manager's, for a plugin it has not loaded yet."""

    def __init__(
        self,
        src_dir: Path,
        client: Any,
        plugins_dir: Path,
        dev_dir: Path,
        *,
        meta: dict[str, str] | None = None,
        kit: bool = True,
        say: Callable[[str], None] = print,
    ) -> None:
        self.src_dir = Path(src_dir).resolve()
        self.client = client
        self.plugins_dir = Path(plugins_dir)
        self.dev_dir = Path(dev_dir)
        self.meta = dict(meta or {})
        self.kit = kit
        self.say = say
        self.builds = 0
        self.serving: int | None = None  # the build number the manager serves

    def run(self, interval: float = 0.3, settle: float = 0.2, stop: Callable[[], bool] = lambda: False) -> None:
        """Build now, then on every save until stop() is true."""
        seen = _snapshot(self.src_dir)
        self.say(self.cycle())
        while not stop():
            time.sleep(interval)
            now = _snapshot(self.src_dir)
            if now == seen:
                continue
            while not stop():  # an editor writes a file in steps: wait until it is quiet
                time.sleep(settle)
                later = _snapshot(self.src_dir)
                if later == now:
                    break
                now = later
            seen = now
            self.say(self.cycle())

    def cycle(self) -> str:
        """One save: build, swap, kit. Returns its summary line."""
        self.builds += 1
        n = self.builds
        stamp = time.strftime("%H:%M:%S")
        out = self.dev_dir / f"build-{n}"
        try:
            artifact, manifest, _ = build(self.src_dir, out)
        except VsmError as e:
            shutil.rmtree(out, ignore_errors=True)
            return f"[{stamp}] build {n}: broken: {e}; {self._still()}"
        head = f"[{stamp}] build {n} of {manifest.name}"
        try:
            swapped = self._swap(manifest.name, artifact)
        except VsmError as e:
            shutil.rmtree(out, ignore_errors=True)
            return f"{head}: refused: {_one_line(e)}; {self._still()}"
        self.serving = n
        self._prune()
        return f"{head}: {swapped}; {self._kit(artifact)}"

    def _still(self) -> str:
        return f"still serving build {self.serving}" if self.serving else "nothing served yet"

    def _swap(self, name: str, artifact: Path) -> str:
        rows = {r["name"]: r for r in self.client.call("plugin.list")}
        row = rows.get(name)
        if row is not None and row.get("state") != "failed" and row.get("kind") != "-":
            got = self.client.call("plugin.reload", {"name": name, "artifact": str(artifact)})
            return "reloaded" + ("" if got.get("state") == "ready" else f" ({got.get('state')}: no pool runs it)")
        # not loaded yet: where the manager looks, then a rescan loads it
        target = self.plugins_dir / artifact_name(name)
        tmp = target.with_name(f".{target.name}.dev")
        shutil.copyfile(artifact, tmp)
        os.replace(tmp, target)
        changes = {c["name"]: c for c in self.client.call("plugin.rescan")}
        change = changes.get(name, {})
        if change.get("change") in ("failed", "refused"):
            raise _Refused(change.get("error", "refused"))
        return f"installed as {target} and loaded"

    def _kit(self, artifact: Path) -> str:
        if not self.kit:
            return "kit not run (--no-kit)"
        from .conformance import summary_line
        from .conformance.runner import run_conformance

        try:
            run = run_conformance(artifact, self.meta)
        except VsmError as e:
            return f"kit could not start: {_one_line(e)}"
        failed = [r for r in run.results if not r.passed]
        first = f" (first: {failed[0].name}: {failed[0].error})" if failed else ""
        return f"kit {summary_line(run.results)}{first}"

    def _prune(self) -> None:
        """Keep the serving build and the one before (its pool may still be draining)."""
        for d in self.dev_dir.glob("build-*"):
            try:
                k = int(d.name.split("-", 1)[1])
            except ValueError:
                continue
            if self.serving is not None and k < self.serving - 1:
                shutil.rmtree(d, ignore_errors=True)


class _Refused(VsmError):
    pass


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
