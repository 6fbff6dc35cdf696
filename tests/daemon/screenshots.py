"""The README's dashboard screenshots from a realistic home (issue 26 item 8):

    python -m tests.daemon.screenshots [--sectors 100000] [--days 4] [--out docs/screenshots]

1. A daemon on a new home whose sector-event clock is set back: a sector's events carry the
   manager's clock when they are committed, and an import cannot carry past times, so the
   script starts the daemon with a sitecustomize that adds an offset, read from a file, to the
   manager's event clock (vsm.sectors._manager._now_us; nothing else: timeouts and the
   dashboard's own figures stay on the real clock), and moves it to each hour of the last
   `--days` days in turn. (libfaketime was tried first: under it Python's time.sleep(0)
   fails with EINVAL, which broke the import.) Each hour a cohort of sectors is allocated and the
   cohorts of earlier hours move on through the sealing states (ticket after 2 h, pre-commit
   after 8 h, seed after 10 h, proof after 14 h, finalized after 16 h), each hour's
   transitions one override import of realistic states (bench/states.py) with the state set;
   about 3% of sectors fail in PC2 and stay there, 1% are aborted, the newest cohorts are still
   sealing.
2. The same home under a daemon on the real clock, sampling its figures every 2 s, serves a
   varied load for a few minutes (sector reads and updates, a late import, piece uploads),
   so the over-time charts have something to show; then chromium (Playwright) takes each page
   at 1400 px.

Needs chromium; takes ~15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.states import state_batch

from .harness import Daemon, finish, start
from .test_dashboard import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[2]
# the daemon's event clock, `offset` seconds from the real one (the file is re-read twice a second)
PAST_CLOCK = """import os, time
_file = os.environ.pop("VSM_SCREENSHOTS_CLOCK", None)  # the daemon only: its workers do not inherit it
if _file:
    import vsm.sectors._manager as _m
    _real, _seen = _m._now_us, [-1.0, 0]
    def _now_us():
        if time.monotonic() - _seen[0] > 0.5:
            _seen[:] = [time.monotonic(), int(float(open(_file).read()) * 1e6)]
        return _real() + _seen[1]
    _m._now_us = _now_us
"""
MINERS = (1000, 2000)  # the second one smaller: a newer miner
# sealing: (hours after allocation, LatestState.StateChange prev, next, event)
STAGES = ((0, "Empty", "Allocated", "SectorAllocated"), (2, "TreeDBuilt", "TicketAssigned", "SectorTicket"),
          (8, "PC2Done", "PCSubmitted", "SectorPreCommitted"), (10, "PCLanded", "SeedAssigned", "SectorSeed"),
          (14, "C2Done", "ProofSubmitted", "SectorProofReady"), (16, "Persisted", "Finished", "SectorFinalized"))
FAIL_AT = 2  # stage a failing sector stops at (PC2 failed: pre-commit never landed)
PC2_FAILURE = "pc2 failed: cache dir /mnt/nvme0/cache/s-t0{miner}-{number} missing p_aux"


def at_stage(batch: pa.RecordBatch, stage: int, failed: np.ndarray, aborted: np.ndarray) -> pa.RecordBatch:
    """The batch's sectors at `stage` of STAGES: their latest state change, finalized only at
    the last stage; failed ones carry a permanent failure, aborted ones an abort reason."""
    n = batch.num_rows
    _, prev, nxt, event = STAGES[stage]
    latest = batch.column("latest_state")
    change_t = latest.type.field("state_change").type
    failure_t = latest.type.field("failure").type
    change = pa.StructArray.from_arrays([pa.array([prev] * n), pa.array([nxt] * n), pa.array([event] * n)],
                                        fields=list(change_t))
    miners, numbers = batch.column("miner").to_pylist(), batch.column("number").to_pylist()
    desc = [PC2_FAILURE.format(miner=m, number=k) if f else "" for m, k, f in zip(miners, numbers, failed)]
    failure = pa.StructArray.from_arrays([pa.array(["permanent" if f else "" for f in failed]), pa.array(desc)],
                                         fields=list(failure_t), mask=pa.array(~failed))
    worker = latest.field("worker")
    latest = pa.StructArray.from_arrays([worker, change, failure], fields=list(latest.type))
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["latest_state"] = latest
    last = stage == len(STAGES) - 1
    columns["finalized"] = pa.array(np.full(n, last))
    columns["removed"] = pa.array(np.zeros(n, bool))
    columns["upgraded"] = pa.array(np.zeros(n, bool))
    columns["abort_reason"] = pa.array(np.where(aborted, "ticket expired: sector not pre-committed within 31 hours", ""))
    return pa.RecordBatch.from_arrays([columns[f.name] for f in batch.schema], schema=batch.schema)


def set_clock(clock: Path, offset_seconds: float) -> None:
    clock.write_text(f"{offset_seconds}\n")
    time.sleep(0.6)


def build(home: Path, sectors: int, days: int) -> None:
    from vsm.cli.client import Client

    clock = home.parent / "clock"
    set_clock(clock, -days * 86400)
    site = home.parent / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(PAST_CLOCK)
    d = start(home, env={"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "VSM_SCREENSHOTS_CLOCK": str(clock)})
    try:
        client = Client(f"127.0.0.1:{d.port}", d.token)
        hours = days * 24
        last_cohort = hours - 6  # the last hours allocate little: a home winding down for the night
        shares = {MINERS[0]: 0.8, MINERS[1]: 0.2}
        rng = np.random.default_rng(7)
        # sectors allocated per hour: more by day than by night (sealing follows cheap power and
        # an operator's shifts), with noise; cohort c's sectors are numbers first[c] ...
        day = 1 + 0.6 * np.sin(2 * np.pi * (np.arange(last_cohort + 1) - 9) / 24) * rng.uniform(0.7, 1.3, last_cohort + 1)
        sizes = {m: np.maximum(1, (sectors * share * day / day.sum()).astype(int)) for m, share in shares.items()}
        first = {m: np.concatenate([[0], np.cumsum(sizes[m])]) for m in MINERS}
        fate = {}  # (miner, cohort) -> (failed, aborted) masks
        for hour in range(hours + 1):
            set_clock(clock, -(hours - hour) * 3600 + rng.integers(0, 1800))
            batches = []
            for miner in MINERS:
                for cohort in range(max(0, hour - STAGES[-1][0]), min(hour, last_cohort) + 1):
                    stage = next((i for i in range(len(STAGES)) if STAGES[i][0] == hour - cohort), None)
                    if stage is None:
                        continue
                    n = int(sizes[miner][cohort])
                    if (miner, cohort) not in fate:
                        fate[miner, cohort] = (rng.random(n) < 0.03, rng.random(n) < 0.01)
                    failed, aborted = fate[miner, cohort]
                    base = state_batch(miner, int(first[miner][cohort]), n, seed=1)
                    if stage > FAIL_AT:  # failed and aborted sectors stop where they failed
                        base = base.filter(pa.array(~(failed | aborted)))
                    none = np.zeros(base.num_rows, bool)
                    batches.append(at_stage(base, stage, failed if stage == FAIL_AT else none, aborted if stage == FAIL_AT else none))
            if batches:
                result = client.import_batches(batches, override=True, worker_state=None)
                print(f"hour {hour}/{hours}: {result['written']} sectors", file=sys.stderr)
        d.wait_delivered(timeout=600)
    finally:
        finish(d)


def load(d: Daemon, seconds: float) -> None:
    """A few minutes of an operator's day: reads at a rate that changes, a cohort of new
    sectors allocated every 10 s or so, piece uploads, so each over-time chart moves."""
    from vsm.cli.client import Client

    client = Client(f"127.0.0.1:{d.port}", d.token)
    top = {m: n for m, n in d.rpc("query", {"sql": "select miner, max(number) from sectors group by miner"})["rows"]}
    end = time.monotonic() + seconds
    rng = random.Random(3)
    stop = threading.Event()

    def pieces() -> None:
        while not stop.is_set():
            body = os.urandom(rng.choice((64 << 10, 1 << 20, 4 << 20)))
            client.put_piece("pieces", f"piece-{rng.randrange(1 << 30)}", io.BytesIO(body), len(body))
            time.sleep(rng.uniform(0.5, 3))

    uploader = threading.Thread(target=pieces, daemon=True)
    uploader.start()
    phase, miner = 0, MINERS[1]
    while time.monotonic() < end:
        phase += 1
        for _ in range(300 if phase % 8 in (3, 4, 5) else 30):
            client.call("sectors.get", {"miner": MINERS[0], "number": rng.randrange(top[MINERS[0]])})
        if phase % 8 == 0:
            n = rng.randrange(20, 150)
            batch = state_batch(miner, top[miner] + 1, n, seed=3)
            client.import_batches([at_stage(batch, 0, np.zeros(n, bool), np.zeros(n, bool))], override=False, worker_state=None)
            top[miner] += n
        time.sleep(1)
    stop.set()
    uploader.join(timeout=30)


def shoot(d: Daemon, out: Path, victim: tuple[int, int]) -> None:
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{d.port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(base + "/login")
            page.screenshot(path=str(out / "login.png"))
            page.fill("#token", d.token)
            page.click("button[type=submit]")
            page.wait_for_selector("#trends[data-samples]")
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / "overview.png"), full_page=True)
            page.goto(base + "/#sectors")
            page.wait_for_selector("[data-chart=slowest] tbody tr", timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "sectors.png"), full_page=True)
            page.goto(base + f"/#sector/{victim[0]}/{victim[1]}")
            page.wait_for_selector("#history-title", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "sector.png"), full_page=True)
            page.goto(base + "/#query")
            page.fill("#sql", "select state, count(*) as sectors, round(avg(epoch(now() - time)) / 3600, 1) as hours_since_last_event\n"
                              "from (select latest_state.state_change.next as state, time from sectors)\ngroup by state order by sectors desc")
            page.click("#run")
            page.wait_for_selector("#qcount, #qerror", timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "query.png"), full_page=True)
            page.goto(base + "/#plugins")
            page.wait_for_selector("tr[data-plugin]")
            page.screenshot(path=str(out / "plugins.png"), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sectors", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--load-seconds", type=float, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM}: missing (apt-get install chromium, or set VSM_CHROMIUM)")
    work = Path(tempfile.mkdtemp(prefix="vsm-screens-"))
    home = work / "home"
    try:
        build(home, args.sectors, args.days)
        d = start(home, env={"VSM_DASHBOARD_SAMPLE_SECONDS": "2"})
        try:
            load(d, args.load_seconds)
            failed = d.rpc("query", {"sql": "select miner, number from sectors where latest_state.failure.level = 'permanent' limit 1"})["rows"]
            args.out.mkdir(parents=True, exist_ok=True)
            shoot(d, args.out, tuple(failed[0]) if failed else (MINERS[0], 1))
        finally:
            finish(d)
    except BaseException:
        print(f"kept for a look: {work} (the daemons' logs beside the home)", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
