"""Faults through the real daemon under load, and the proof that nothing was lost: what the
CI fault suite (tests/faults/) and `vsm-pool bench --suite soak` (bench/bench_soak.py) run.

    Daemon (a `vsm-pool start` subprocess) <-- Load: threads that import sector states, update
      |                                         them (one field, a counter per sector) and PUT /
      |                                         GET pieces, recording what the daemon acknowledged
      +-- faults: kill -9 the workers of a pool (KVStore, ObjStore, SyncSectorState,
      |   RegisterJsonRpc), kill -9 the daemon (whole tree or the daemon alone) and start it
      |   again, disable/enable a sink, crash-loop a sink's pool and reload it, updates with a
      |   value that cannot be typed; each reports its recovery time
      v
    verify(): after a clean stop, from the files themselves
      - the journal's event seqs = every sink's seqs, each exactly once (duckdb's sector_events,
        the parquet files): "events lost" and "duplicates" per sink
      - every acknowledged update is in the final state (its counter, or a later one's)
      - every acknowledged import is a sector in the final state
      - every acknowledged piece reads back with its sha256; an unacknowledged piece that is
        visible is whole (no partial object); no temp file in the store
      - no process of any daemon left, no /dev/shm entry left
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["Daemon", "Load", "free_port", "prepare_home", "verify"]

MiB = 1 << 20
_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding vsm/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if not n.startswith(("sem.", "PostgreSQL."))}
    except FileNotFoundError:
        return set()


RPC_PLUGIN = "faultrpc"  # a RegisterJsonRpc plugin of the run's own: namespace faultrpc, method echo
VERIFY_HOLD = "verify-hold"  # a detached sink's checkpoint that keeps the whole journal


def prepare_home(home: Path) -> Path:
    """The default home, with a journal that keeps every event of the run (verify() reads them
    back) and a RegisterJsonRpc plugin whose namespace the load calls."""
    import tempfile

    from vsm.home import ensure_home
    from vsm.plugin.artifact import build
    from vsm.plugin.scaffold import write_plugin_source

    ensure_home(home)
    # a checkpoint at 0 of a sink that is never attached: the journal keeps every event (as it
    # keeps a disabled sink's), so verify() can read them all back
    ckpts = home / "data" / "journal" / "sinks"
    ckpts.mkdir(parents=True, exist_ok=True)
    (ckpts / f"{VERIFY_HOLD}.ckpt").write_text("0" * 20)
    with tempfile.TemporaryDirectory() as src:
        folder = write_plugin_source("RegisterJsonRpc", RPC_PLUGIN, Path(src))
        (folder / f"{RPC_PLUGIN}.py").write_text(
            f"class Handler:\n    def echo(self, text):\n        return text\n\n\ndef handler():\n    return {RPC_PLUGIN!r}, Handler()\n"
        )
        build(folder, home / "plugins")
    return home


class Daemon:
    """A `vsm-pool start` subprocess on `home`, with raw HTTP/JSON-RPC and its process tree."""

    def __init__(self, home: Path, port: int | None = None, log: Path | None = None) -> None:
        self.home, self.port = home, port or free_port()
        self.log = log or home.parent / f"{home.name}-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.trees: list[Any] = []  # every process any incarnation ran (checked at the end)

    # -- life ------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> float:
        """Start it; seconds until /healthz answers."""
        env = dict(os.environ, VSM_HOME=str(self.home))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vsm", "start", "--home", str(self.home), "--listen", f"127.0.0.1:{self.port}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if self.healthy() and (self.home / "token").exists():
                break
            if time.monotonic() - started > timeout:
                self.kill9()
                raise RuntimeError(f"the daemon did not answer /healthz within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.token = (self.home / "token").read_text().strip()
        self.trees.extend(self.tree())
        return time.monotonic() - started

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def tree(self) -> list[Any]:
        import psutil

        if self.proc is None:
            return []
        try:
            return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9(whole_tree=True)
            raise RuntimeError(f"the daemon did not stop within {timeout}s:\n{self.log_tail()}") from None

    def kill9(self, whole_tree: bool = False) -> None:
        """SIGKILL the daemon (its workers exit by themselves: parent-death signal), or its
        whole tree at once (an OOM killer, a power cut: nothing gets to clean up)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        for p in self.tree() if whole_tree else self.tree()[:1]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc.wait(30)
        (self.home / "daemon.json").unlink(missing_ok=True)

    def healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    # -- HTTP ------------------------------------------------------------------------------
    def request(self, verb: str, path: str, body: bytes | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(verb, path, body=body, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def rpc(self, method: str, params: Any = None, timeout: float = 120.0) -> Any:
        """The result; RuntimeError with the daemon's message otherwise (OSError if it is down)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params if params is not None else {}}).encode()
        status, raw = self.request("POST", "/rpc/v0", body, timeout)
        reply = json.loads(raw) if raw else {}
        if status != 200 or "error" in reply:
            raise RuntimeError(f"{method}: {status} {reply.get('error', raw[:300])}")
        return reply["result"]

    def plugin(self, name: str) -> dict[str, Any]:
        return next(p for p in self.rpc("plugin.list") if p["name"] == name)

    def workers(self, name: str) -> list[int]:
        pool = self.plugin(name).get("pool") or {}
        return [w["pid"] for w in pool.get("workers", []) if w.get("alive") and w.get("pid")]

    # -- faults ----------------------------------------------------------------------------
    def kill_workers(self, name: str, n: int = 1, timeout: float = 60.0) -> float:
        """SIGKILL n live workers of a plugin's pool; seconds until it is ready with all again."""
        import psutil

        before = self.plugin(name)["pool"]
        want = len(before["workers"])
        victims = self.workers(name)[:n]
        started = time.monotonic()
        for pid in victims:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        return _until(lambda: (st := self.plugin(name)["pool"])["state"] == "ready" and len(
            [w for w in st["workers"] if w.get("alive") and w.get("pid") not in victims]) == want, timeout, started,
            f"pool {name} back", lambda: self.dump_stacks(name))

    def dump_stacks(self, name: str) -> dict[str, Any]:
        """The plugin's status, after asking the daemon and each of the pool's workers (the one
        starting too) to write every thread's stack into the daemon's log (SIGUSR1)."""
        seen = self.plugin(name)
        ours = {p.pid for p in self.tree()}  # never signal a pid reused by another process
        pids = [w["pid"] for w in (seen.get("pool") or {}).get("workers", []) if w.get("pid") in ours]
        for pid in [self.proc.pid, *pids] if self.proc is not None and ours else []:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(1.0)
        return {**seen, "stacks": f"in {self.log}"}

    def crash_loop_and_reload(self, name: str, timeout: float = 60.0) -> float:
        """SIGKILL a pool's workers until the breaker fails it, then `plugin reload`; seconds
        from the reload to a ready pool."""
        import psutil

        deadline = time.monotonic() + timeout
        while self.plugin(name)["state"] != "failed":
            if time.monotonic() > deadline:
                raise RuntimeError(f"pool {name} never failed")
            for pid in self.workers(name):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            time.sleep(0.05)
        started = time.monotonic()
        self.rpc("plugin.reload", {"name": name})
        return _until(lambda: self.plugin(name)["state"] == "ready", timeout, started, f"{name} reloaded")

    def caught_up(self, timeout: float = 120.0) -> float:
        """Seconds until every attached sink has every durable event (the head then)."""
        started = time.monotonic()
        head = self.rpc("sinks.status")["journal"]["head"]

        def done() -> bool:
            st = self.rpc("sinks.status")
            return st["journal"]["watermark"] >= head and all(s["checkpoint"] >= head for s in st["sinks"].values() if s.get("attached"))

        return _until(done, timeout, started, "sinks caught up")


def _until(cond: Callable[[], bool], timeout: float, started: float, what: str, show: Callable[[], Any] | None = None) -> float:
    while True:
        try:
            if cond():
                return time.monotonic() - started
        except (OSError, RuntimeError, StopIteration, KeyError):
            pass  # the daemon is busy or still starting: ask again
        if time.monotonic() - started > timeout:
            try:
                seen = show() if show is not None else ""
            except Exception as e:  # noqa: BLE001 - the message says what could be seen
                seen = repr(e)
            raise RuntimeError(f"timed out after {timeout}s waiting for: {what} {seen}")
        time.sleep(0.05)


class Load:
    """Client threads against a Daemon: sector imports, updates (and finalizes), piece PUTs
    and GETs. Every call may fail while a fault is injected (the client is told; that is the
    point); only what the daemon acknowledged is recorded as promised."""

    def __init__(
        self, d: Daemon, *, miner: int = 7000, chunk: int = 200, piece_sizes: tuple[int, int] = (64 << 10, 4 * MiB),
        pause: float = 0.02, seed: int = 13,  # pause: between import chunks
    ) -> None:
        self.d, self.pause = d, pause
        self.miner, self.chunk, self.piece_sizes = miner, chunk, piece_sizes
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.mu = threading.Lock()
        self.imported: set[tuple[int, int]] = set()  # acknowledged
        self.next_number = 0
        self.updates: dict[tuple[int, int], int] = {}  # sector -> last acknowledged counter
        self.counter = 0
        self.finalized: set[tuple[int, int]] = set()
        self.pieces: dict[str, str] = {}  # acknowledged path -> sha256
        self.tried: dict[str, tuple[str, int]] = {}  # unacknowledged path -> (sha256, size)
        self.bad_reads = 0
        self.ok = {"import": 0, "update": 0, "finalize": 0, "put": 0, "get": 0, "rpc": 0}
        self.failed = {k: 0 for k in self.ok}

    def start(self, importers: int = 1, updaters: int = 1, pieces: int = 1) -> "Load":
        for fn, n in ((self._import_loop, importers), (self._update_loop, updaters), (self._piece_loop, pieces), (self._rpc_loop, 1)):
            for i in range(n):
                t = threading.Thread(target=fn, name=f"load-{fn.__name__}-{i}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def __enter__(self) -> "Load":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _pause(self) -> None:
        self._stop.wait(self.pause)

    def _count(self, what: str, ok: bool) -> None:
        with self.mu:
            (self.ok if ok else self.failed)[what] += 1
        if not ok:
            self._stop.wait(0.2)  # the daemon is down or recovering: do not spin

    def _import_loop(self) -> None:
        from bench.states import make_state

        while not self._stop.is_set():
            with self.mu:
                first = self.next_number
                self.next_number += self.chunk
            states = [make_state(self.miner, n).to_go_dict() for n in range(first, first + self.chunk)]
            try:
                self.d.rpc("sectors.import", {"states": states})
            except (OSError, RuntimeError, http.client.HTTPException):
                self._count("import", False)
                continue
            with self.mu:
                self.imported.update((self.miner, n) for n in range(first, first + self.chunk))
                # realistic states: the finalized ones are imported offline, never finalized again
                self.finalized.update((self.miner, st["ID"]["Number"]) for st in states if st["Finalized"])
            self._count("import", True)
            self._pause()

    def _update_loop(self) -> None:
        while not self._stop.is_set():
            with self.mu:
                sectors = list(self.imported)
                self.counter += 1
                counter = self.counter
            if not sectors:
                self._stop.wait(0.1)
                continue
            sid = self.rng.choice(sectors)
            if counter % 40 == 0 and sid not in self.finalized:
                try:
                    self.d.rpc("sectors.finalize", {"miner": sid[0], "number": sid[1]})
                except (OSError, RuntimeError, http.client.HTTPException):
                    self._count("finalize", False)
                    continue
                with self.mu:
                    self.finalized.add(sid)
                self._count("finalize", True)
                continue
            try:
                self.d.rpc("sectors.update", {"miner": sid[0], "number": sid[1], "fields": {"AbortReason": f"u{counter:09d}"}})
            except (OSError, RuntimeError, http.client.HTTPException):
                self._count("update", False)
                continue
            with self.mu:
                self.updates[sid] = counter
            self._count("update", True)
            self._stop.wait(0.02)

    def _piece_loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            if n % 3 == 0 and self.pieces:
                self._get_one()
                continue
            size = self.rng.randint(*self.piece_sizes)
            data = self.rng.randbytes(size)
            path = f"faults/{threading.get_ident() % 1000}-{n}.bin"
            sha = hashlib.sha256(data).hexdigest()
            try:
                status, body = self.d.request("PUT", f"/pieces/pieces/{path}", data)
            except (OSError, http.client.HTTPException):
                status, body = 0, b""
            with self.mu:
                if status == 201:
                    self.pieces[path] = sha
                else:
                    self.tried[path] = (sha, size)
            self._count("put", status == 201)

    def _get_one(self) -> None:
        with self.mu:
            path, sha = self.rng.choice(list(self.pieces.items()))
        try:
            status, body = self.d.request("GET", f"/pieces/pieces/{path}")
        except (OSError, http.client.HTTPException):
            self._count("get", False)
            return
        if status == 200 and hashlib.sha256(body).hexdigest() != sha:
            with self.mu:
                self.bad_reads += 1
        self._count("get", status == 200)

    def _rpc_loop(self) -> None:
        """A RegisterJsonRpc plugin's namespace in use (its pool is killed too)."""
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                ok = self.d.rpc(f"{RPC_PLUGIN}.echo", {"text": f"t{n}"}) == f"t{n}"
            except (OSError, RuntimeError, http.client.HTTPException):
                ok = False
            self._count("rpc", ok)
            self._stop.wait(0.05)


def verify(d: Daemon, load: Load, shm_before: set[str]) -> dict[str, Any]:
    """After the daemon was stopped cleanly: what was lost, duplicated, broken or left behind
    (see the module docstring). Every count is 0 / every flag True in a good run."""
    import duckdb
    import pyarrow.dataset as ds

    from vsm.sectors._journal import Journal

    assert d.proc is not None and d.proc.poll() is not None, "verify() reads the files of a stopped daemon"
    data = d.home / "data"
    journal = Journal(str(data / "journal"), fsync=False)
    seqs: set[int] = set()
    last: dict[tuple[int, int], dict[str, Any]] = {}
    for ref in journal.frames:
        if not ref.rows:
            continue
        batch = journal.read(ref)
        rows = batch.select(["seq", "kind", "worker_state", "miner", "number", "abort_reason"]).to_pylist()
        for r in rows:
            seqs.add(r["seq"])
            last[(r["miner"], r["number"])] = r
    journal.close()
    report: dict[str, Any] = {"events": len(seqs), "journal_first_seq": min(seqs) if seqs else None}
    con = duckdb.connect(_meta_path(d.home, "duckdb"), read_only=True)
    try:
        duck = [r[0] for r in con.execute("select seq from sector_events").fetchall()]
        heads = {(m, n): (ab, ws) for m, n, ab, ws in con.execute("select miner, number, abort_reason, worker_state from sectors").fetchall()}
    finally:
        con.close()
    parquet_root = Path(_meta_path(d.home, "parquet"))
    pq_seqs = ds.dataset(str(parquet_root), format="parquet", partitioning="hive").to_table(columns=["seq"]).column("seq").to_pylist() if any(parquet_root.rglob("*.parquet")) else []
    for name, got in (("duckdb", duck), ("parquet", pq_seqs)):
        report[f"{name}_lost"] = len(seqs - set(got))
        report[f"{name}_duplicates"] = len(got) - len(set(got))
        report[f"{name}_unknown"] = len(set(got) - seqs)
    # the final states: the last journaled event of each sector, which the sink's `sectors` shows too
    lost_updates = sum(1 for sid, c in load.updates.items() if sid not in last or int((last[sid]["abort_reason"] or "u0")[1:]) < c)
    lost_imports = sum(1 for sid in load.imported if sid not in last)
    mismatched = sum(1 for sid, r in last.items() if r["worker_state"] != "none" and heads.get(sid) != (r["abort_reason"], r["worker_state"]))
    report.update(updates_lost=lost_updates, imports_lost=lost_imports, sink_state_mismatches=mismatched)
    store = data / "pieces"
    intact = 0
    for path, sha in load.pieces.items():
        f = store / path
        if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() == sha:
            intact += 1
    partial = 0
    for path, (sha, size) in load.tried.items():
        f = store / path
        if f.exists() and hashlib.sha256(f.read_bytes()).hexdigest() != sha:
            partial += 1  # visible but not the whole object
    temps = [str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or ".vsm-tmp" in p.parts)]
    deadline = time.monotonic() + 10
    while (alive := [p.pid for p in d.trees if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    report.update(
        pieces_acked=len(load.pieces), pieces_intact=intact, partial_objects=partial, temp_files=len(temps),
        bad_reads=load.bad_reads, processes_left=len(alive), shm_left=len(shm_entries() - shm_before),
        ops_ok=dict(load.ok), ops_failed=dict(load.failed),
    )
    return report


def _meta_path(home: Path, plugin: str) -> str:
    """The sink's Meta Path, as the daemon read it from the home's config."""
    from vsm.config import load_config

    cfg, _ = load_config(None, home)
    return str(Path(home, cfg.settings(plugin).meta["Path"]))


def _running(p: Any) -> bool:
    import psutil

    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
