"""Loose input from a user each gives one clear line (issue 13, items 6 and 10): pieces put from a
pipe, a FIFO, /dev/stdin and "-"; the "no daemon" message names the home folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .harness import ROOT, Daemon, cli_env, run_cli

pytestmark = pytest.mark.timeout(180)


def _cli_with_stdin(home: Path, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vsm", *args], cwd=ROOT, env=cli_env(home), input=data, capture_output=True, timeout=120)


def _stored(d: Daemon, path: str) -> bytes:
    status, _, body = d.request("GET", f"/pieces/pieces/{path}")
    assert status == 200, (status, body)
    return body


@pytest.mark.parametrize("how", ["dash", "dev-stdin"])
def test_put_from_standard_input(daemon: Daemon, how: str) -> None:
    data = os.urandom(3 << 20) + b"tail"
    arg = "-" if how == "dash" else "/dev/stdin"
    proc = _cli_with_stdin(daemon.home, data, "pieces", "put", arg, f"pieces/stdin/{how}.bin")
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"stored {len(data)} bytes".encode() in proc.stdout, proc.stdout
    assert hashlib.sha256(_stored(daemon, f"stdin/{how}.bin")).hexdigest() == hashlib.sha256(data).hexdigest()


def test_put_from_a_pipe_and_a_fifo(daemon: Daemon, tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    (tmp_path / "src").write_bytes(data)
    # a shell pipe into /dev/stdin's file: the size is unknown until the writer closes
    proc = subprocess.run(
        f"cat {tmp_path / 'src'} | {sys.executable} -m vsm pieces put /dev/stdin pieces/pipe/a.bin",
        shell=True, cwd=ROOT, env=cli_env(daemon.home), capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert _stored(daemon, "pipe/a.bin") == data
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 1 << 20):
                f.write(data[i : i + (1 << 20)])

    writer = threading.Thread(target=feed)
    writer.start()
    proc2 = run_cli(daemon.home, "pieces", "put", str(fifo), "pieces/pipe/fifo.bin")
    writer.join(30)
    assert f"stored {len(data)} bytes" in proc2.stdout
    assert _stored(daemon, "pipe/fifo.bin") == data


def test_no_daemon_names_the_home_and_how_to_choose(tmp_path: Path) -> None:
    home = tmp_path / "nohome"
    home.mkdir()
    for args in (["status"], ["stop"], ["plugin", "disable", "x"]):
        proc = run_cli(home, *args, check=False)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert str(home) in last and "--home" in last and "$VSM_HOME" in last, proc.stderr
        assert "Traceback" not in proc.stderr


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_bad_values_fail_their_own_call_naming_the_field(daemon: Daemon) -> None:
    """Items 2 and 10: a value that cannot be typed fails that one call, naming the field,
    before anything is journaled; every later write goes on; the status stays honest."""
    daemon.rpc("sectors.init", {"sectors": [{"miner": 88, "number": n, "proof_type": 8} for n in range(3)]})
    head = daemon.rpc("sinks.status")["journal"]["head"]
    cases = {
        "SectorType=abc": "SectorType",
        'Pieces=[{"x":1}]': "SectorPieceV2.x",
        "Seed=123": "Seed",
    }
    for arg, field in cases.items():
        last = _one_line_error(daemon.cli("sectors", "update", "88", "0", arg, check=False))
        assert field in last, (arg, last)
    assert daemon.rpc("sinks.status")["journal"]["head"] == head  # nothing journaled
    out = daemon.cli("sectors", "update", "--json", "88", "1", "SectorType=9").stdout
    assert '"SectorType": 9' in out
    daemon.cli("sectors", "finalize", "88", "2")
    status = daemon.cli("status").stdout
    assert "journal" not in status.split("problems")[-1] and "broken" not in status, status


def test_missing_sector_reads_the_same_for_get_and_update(daemon: Daemon) -> None:
    get = _one_line_error(daemon.cli("sectors", "get", "88", "424242", check=False))
    update = _one_line_error(daemon.cli("sectors", "update", "88", "424242", "Removed=true", check=False))
    assert "no sector m-88-n-424242 (online or offline)" in get and "no sector m-88-n-424242 (online or offline)" in update
    assert get.split("no sector")[0].replace("sectors.get", "") == update.split("no sector")[0].replace("sectors.update", "")


def test_a_caller_mistake_without_a_daemon_reads_as_with_one(daemon: Daemon, tmp_path: Path) -> None:
    """With no daemon running, the CLI runs the call on an in-process manager: the same
    mistake gets the same one line and exit code there (it printed the manager's traceback)."""
    with_daemon = daemon.cli("sectors", "get", "88", "424242", check=False)
    alone = run_cli(tmp_path / "home", "sectors", "get", "88", "424242", check=False)
    assert _one_line_error(alone) == _one_line_error(with_daemon)
    assert alone.returncode == with_daemon.returncode
    for args in (("pieces", "get", "nostore/x", "-"), ("pieces", "get", "pieces/nothere", "-")):
        line = _one_line_error(run_cli(tmp_path / "home", *args, check=False))
        assert line.startswith(f"vsm-pool: error: get {args[2]}: ") and ("no store named 'nostore'" in line or "'nothere'" in line), line
