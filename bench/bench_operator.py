"""The operator's own paths (issue 14), each beside its peer in the same run:

    what the operator runs                          peer
    ---------------------------------------------   ----------------------------------------
    vsm-pool status|query|sectors get|pieces stat   python -c pass        (fresh interpreter)
    curl GET /pieces/<store>/<path> > /dev/null     cat FILE > /dev/null; a bare sendfile
                                                    server + the same curl (the transport)
    curl -T FILE PUT /pieces/<store>/<path>         cp FILE + sync of the copy (fsync)
    vsm-pool sectors import FILE (daemon running)   the same states imported in-process by
      Parquet and Go JSON lines                     the engine on the same kind of home

    python -m bench.bench_operator [--quick]        (or: vsm-pool bench --suite operator)

Everything runs on the default home (`vsm-pool config init`: sqlitekv KV, fsstore pieces, the
duckdb and parquet sinks, fsync on), made fresh in a temp folder: the real daemon as a
subprocess, the real CLI as subprocesses, real curl. A second store on the same folder
with OpenFiles = false measures the shared-memory ring path beside the file path.
$VSM_BENCH_IMPORT_STATES sets the import size (default 1M, --quick 50k; 5M for the memory
check of issue 14 item 5). RSS: peak of the CLI process, and of the daemon (its own process;
its pools' workers are separate processes, summed in `daemon_tree_peak_rss`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psutil  # noqa: E402

MiB = 1 << 20


def _row(workload: str, variant: str, value: float, unit: str, ratio_vs: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "variant": variant, "value": value, "unit": unit,
            "ratio_vs": {k: round(v, 3) for k, v in (ratio_vs or {}).items()}, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, VSM_HOME=str(home))
    env.pop("COLUMNS", None)
    return env


def _cli(home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "vsm", *args], env=_env(home), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"vsm-pool {' '.join(args)} -> exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


class _Peak:
    """Peak RSS of a process (and optionally its descendants), sampled every 50 ms."""

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.proc, self.tree, self.peak, self._stop = psutil.Process(pid), tree, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _rss(self) -> int:
        procs = [self.proc] + (self.proc.children(recursive=True) if self.tree else [])
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self._rss())
            except psutil.Error:
                return

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return round(self.peak / MiB, 1)


class Home:
    """A fresh default home with a running daemon (started and stopped by this suite)."""

    def __init__(self, root: Path, name: str) -> None:
        self.home = root / name
        _cli(self.home, "config", "init")
        store = self.home / "data" / "pieces"
        with open(self.home / "config.toml", "a") as f:  # the same folder, through the ring
            f.write(f'\n[[Common.PieceStores]]\nName = "ring"\nPath = "{store}"\n[Common.PieceStores.Meta]\nOpenFiles = "false"\n')
        self.port = _free_port()
        self.log = open(root / f"{name}-daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vsm", "start", "--listen", f"127.0.0.1:{self.port}"],
            env=_env(self.home), stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not (self.home / "daemon.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start; see {root / (name + '-daemon.log')}")
            time.sleep(0.1)
        self.token = (self.home / "token").read_text().strip()
        self.store_dir = store

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _median_wall(cmd: list[str], env: dict[str, str] | None, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=120)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -- 1. CLI start ---------------------------------------------------------------------------


def bench_cli(h: Home, quick: bool) -> list[dict[str, Any]]:
    n = 3 if quick else 7
    piece = h.store_dir / "cli" / "p.bin"
    piece.parent.mkdir(parents=True, exist_ok=True)
    piece.write_bytes(b"x" * 1000)
    base = _median_wall([sys.executable, "-c", "pass"], None, n)
    rows = [_row("cli start (daemon running)", "python -c pass", round(base, 4), "s")]
    py = [sys.executable, "-m", "vsm"]
    for label, args in (("status", ["status"]), ("query", ["query", "select count(*) from sectors"]),
                        ("sectors get", ["sectors", "get", "1", "1"]), ("pieces stat", ["pieces", "stat", "pieces/cli/p.bin"])):
        wall = _median_wall(py + args, _env(h.home), n)
        rows.append(_row("cli start (daemon running)", f"vsm-pool {label}", round(wall, 4), "s",
                         {"python -c pass": wall / base}, target_s=0.25, meets_target=wall <= 0.25))
    return rows


# -- 2. pieces over HTTP --------------------------------------------------------------------


def _timed(cmd: list[str] | str, shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - t


def _sendfile_server(path: Path, conns: int) -> tuple[int, threading.Thread]:
    """A bare HTTP server that answers each GET with os.sendfile of path: the transport's limit."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    size = path.stat().st_size

    def serve() -> None:
        with srv:
            for _ in range(conns):
                c, _ = srv.accept()
                with c:
                    c.recv(65536)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
                    fd = os.open(path, os.O_RDONLY)
                    off = 0
                    while off < size:
                        off += os.sendfile(c.fileno(), fd, off, size - off)
                    os.close(fd)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def bench_pieces(h: Home, root: Path, quick: bool) -> list[dict[str, Any]]:
    curl = shutil.which("curl")
    if curl is None:
        return [_row("pieces over HTTP", "skipped: no curl (apt-get install curl)", 0, "")]
    size = (256 * MiB) if quick else (1 << 30)
    rounds = 2 if quick else 3
    src = root / "piece.bin"
    with open(src, "wb") as f:
        block = os.urandom(8 * MiB)
        for _ in range(size // len(block)):
            f.write(block)
    wl = f"piece {size >> 20} MiB, fsstore on disk, Fsync on"
    auth = ["-H", f"Authorization: Bearer {h.token}"]
    put: dict[str, list[float]] = {"file": [], "ring": [], "cp": []}
    get: dict[str, list[float]] = {"file": [], "ring": [], "cat": [], "bare": []}
    stored = h.store_dir / "bench" / "p.bin"
    copy = h.store_dir / "bench" / "cp.bin"
    for _ in range(rounds):  # alternating, so that load changes hit every variant alike
        for store, key in (("pieces", "file"), ("ring", "ring")):
            put[key].append(_timed([curl, "-sfS", "-o", "/dev/null", "-T", str(src), *auth, h.url(f"/pieces/{store}/bench/p.bin")]))
        put["cp"].append(_timed(f"cp '{src}' '{copy}' && sync '{copy}'", shell=True))
        for store, key in (("pieces", "file"), ("ring", "ring")):
            get[key].append(_timed([curl, "-sfS", "-o", "/dev/null", *auth, h.url(f"/pieces/{store}/bench/p.bin")]))
        get["cat"].append(_timed(f"cat '{stored}' > /dev/null", shell=True))
        port, t = _sendfile_server(stored, 1)
        get["bare"].append(_timed([curl, "-sfS", "-o", "/dev/null", f"http://127.0.0.1:{port}/x"]))
        t.join(10)
    copy.unlink(missing_ok=True)
    src.unlink()

    def rate(ts: list[float]) -> float:
        return round(size / min(ts) / 2**30, 3)  # GiB/s of the best round

    def spread(a: list[float], b: list[float]) -> list[float]:
        return sorted(round(y / x, 3) for x, y in zip(a, b))  # per-round ratio rate(a)/rate(b)

    return [
        _row(wl, "PUT curl -T, file path (fd + O_TMPFILE)", rate(put["file"]), "GiB/s",
             {"cp + sync": rate(put["file"]) / rate(put["cp"])}, ratio_per_round=spread(put["file"], put["cp"]), target=0.8),
        _row(wl, "PUT curl -T, ring path (OpenFiles=false)", rate(put["ring"]), "GiB/s",
             {"cp + sync": rate(put["ring"]) / rate(put["cp"])}, ratio_per_round=spread(put["ring"], put["cp"])),
        _row(wl, "cp + sync", rate(put["cp"]), "GiB/s"),
        _row(wl, "GET curl > /dev/null, file path (sendfile)", rate(get["file"]), "GiB/s",
             {"cat": rate(get["file"]) / rate(get["cat"]), "bare sendfile server": rate(get["file"]) / rate(get["bare"])},
             ratio_per_round_vs_cat=spread(get["file"], get["cat"]), ratio_per_round_vs_bare=spread(get["file"], get["bare"]), target=0.8),
        _row(wl, "GET curl > /dev/null, ring path", rate(get["ring"]), "GiB/s",
             {"cat": rate(get["ring"]) / rate(get["cat"]), "bare sendfile server": rate(get["ring"]) / rate(get["bare"])}),
        _row(wl, "cat FILE > /dev/null", rate(get["cat"]), "GiB/s"),
        _row(wl, "bare sendfile server + curl", rate(get["bare"]), "GiB/s", {"cat": rate(get["bare"]) / rate(get["cat"])}),
    ]


# -- 3. bulk import -------------------------------------------------------------------------


def _inputs(root: Path, n: int) -> Path:
    """The sector bench's states (bench_sectors._parquet_input), as Parquet."""
    from bench.bench_sectors import _parquet_input

    pq_path = root / "states.parquet"
    _parquet_input(str(pq_path), n)
    return pq_path


def _renumbered(src: Path, dst: Path, miner: int) -> Path:
    """The same states under another miner (a second import into one home finds no duplicates)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src)
    with pq.ParquetWriter(dst, pf.schema_arrow) as w:
        for b in pf.iter_batches(batch_size=10_000):
            i = b.schema.get_field_index("miner")
            w.write_batch(b.set_column(i, b.schema.field(i), pa.array([miner] * b.num_rows, b.schema.field(i).type)))
    return dst


def _in_process_import(root: Path, pq_path: Path) -> tuple[float, float]:
    """The engine on a fresh default home, in this process: import_arrow of the file's batches
    until every sink has them (what `sectors import` does without a daemon). (rate, peak MiB)"""
    import pyarrow.parquet as pq

    from vsm.config import load_config
    from vsm.home import ensure_home
    from vsm.manager import Manager

    home = root / "inproc"
    ensure_home(home)
    cfg, _ = load_config(None, home)
    m = Manager(cfg).start()
    try:
        peak = _Peak(os.getpid())
        t = time.perf_counter()
        n = m.sectors.import_arrow(pq.ParquetFile(pq_path).iter_batches(batch_size=10_000))
        assert m.sectors.wait_delivered(3600)
        rate = n / (time.perf_counter() - t)
        return rate, peak.stop()
    finally:
        m.close()


def _cli_import(h: Home, path: Path, expect: int) -> tuple[float, float, float, float]:
    """`vsm-pool sectors import FILE` as a subprocess, until the daemon's sinks have it all.
    (rate, CLI peak MiB, daemon process peak MiB, daemon + workers peak MiB)"""
    head0 = _rpc(h, "sinks.status")["journal"]["head"]
    daemon_peak = _Peak(h.proc.pid)
    tree_peak = _Peak(h.proc.pid, tree=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vsm", "sectors", "import", str(path)], env=_env(h.home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli_peak = _Peak(proc.pid)
    out, err = proc.communicate(timeout=7200)
    if proc.returncode != 0 or f"imported {expect} of {expect}" not in out:
        raise RuntimeError(f"sectors import {path.name}: exit {proc.returncode}: {out.strip()} {err.strip()[-500:]}")
    while True:  # every sink delivered
        st = _rpc(h, "sinks.status")
        if st["journal"]["head"] >= head0 + expect and all(s["checkpoint"] >= st["journal"]["head"] for s in st["sinks"].values()):
            break
        time.sleep(0.05)
    rate = expect / (time.perf_counter() - t)
    return rate, cli_peak.stop(), daemon_peak.stop(), tree_peak.stop()


def _rpc(h: Home, method: str) -> Any:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=600)
    try:
        conn.request("POST", "/rpc/v0", json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}),
                     {"Authorization": f"Bearer {h.token}", "Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())["result"]
    finally:
        conn.close()


def bench_import(h: Home, root: Path, quick: bool) -> list[dict[str, Any]]:
    n = int(os.environ.get("VSM_BENCH_IMPORT_STATES", 50_000 if quick else 1_000_000))
    # $VSM_BENCH_IMPORT_ONLY: some of engine,parquet,jsonl (a 5M memory run needs no jsonl)
    only = set(os.environ.get("VSM_BENCH_IMPORT_ONLY", "engine,parquet,jsonl").split(","))
    pq_path = _inputs(root, n)
    wl = f"sectors import {n} states, default home (sqlitekv + duckdb + parquet, fsync)"
    # Every variant starts after a sync: the dirty pages one leaves (GBs of journal, DuckDB,
    # Parquet, SQLite) would otherwise slow the next one's fsyncs (measured: the second of two
    # imports ran 0.5-0.7 of the first; with a sync between, 0.96-1.04 either way round).
    rows, engine = [], 0.0
    cli_rows = []
    variants = [("parquet", "vsm-pool sectors import x.parquet (daemon)", lambda: pq_path),
                ("engine", "", None),
                ("jsonl", "vsm-pool sectors import x.jsonl (daemon)", lambda: _jsonl(root, pq_path))]
    for key, label, path in variants:
        if key not in only:
            continue
        os.sync()
        if path is None:
            engine, engine_rss = _in_process_import(root, pq_path)
            rows.append(_row(wl, "engine in-process, import_arrow (Parquet)", round(engine), "sectors/s", manager_peak_rss_mib=engine_rss))
            continue
        rate, cli, daemon, tree = _cli_import(h, path(), n)
        cli_rows.append((label, rate, dict(cli_peak_rss_mib=cli, daemon_peak_rss_mib=daemon, daemon_and_workers_peak_rss_mib=tree, target=0.9)))
    for label, rate, extra in cli_rows:
        rows.append(_row(wl, label, round(rate), "sectors/s", {"engine in-process": rate / engine} if engine else {}, **extra))
    return rows


def _jsonl(root: Path, pq_path: Path) -> Path:
    """The same states as Go JSON lines, under another miner (so that they are new to the home)."""
    js_path = root / "states2.jsonl"
    _inputs_json(_renumbered(pq_path, root / "states2.parquet", 2001), js_path)
    return js_path


def _inputs_json(pq_path: Path, js_path: Path) -> None:
    import pyarrow.parquet as pq

    from vsm.sdk.sectors import arrow_to_go_json

    with open(js_path, "wb") as f:
        for batch in pq.ParquetFile(pq_path).iter_batches(batch_size=10_000):
            f.write(b"\n".join(arrow_to_go_json(batch).to_pylist()) + b"\n")


BENCHES: dict[str, Callable[..., list[dict[str, Any]]]] = {"cli": bench_cli, "pieces": bench_pieces, "import": bench_import}


def run(quick: bool, only: list[str] | None = None) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="bench_operator_", dir=os.environ.get("VSM_BENCH_DIR")))
    h = None
    try:
        h = Home(root, "home")
        rows: list[dict[str, Any]] = []
        if not only or "cli" in only:
            rows += bench_cli(h, quick)
        if not only or "pieces" in only:
            rows += bench_pieces(h, root, quick)
        if not only or "import" in only:
            rows += bench_import(h, root, quick)
        return rows
    finally:
        if h is not None:
            h.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these (repeatable)")
    args = ap.parse_args()
    for row in run(args.quick, args.only):
        print(json.dumps(row), flush=True)
