"""A piece PUT on a full disk (issue 25, the piece-store part), on a real 16 MiB tmpfs through
the real daemon, on both byte paths: refused with 507 in one line naming the store's folder and
its free space, before the disk fills when the size is known (MinFreeSpace), after the
filesystem's ENOSPC when it is not; no temp file or partial object left; PUTs work again as
soon as space is back, without a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from .harness import Daemon, cli_env, prepare_home

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        why = "mounting a tmpfs needs root and mount(8)"
        if os.environ.get("VSM_REQUIRE_SERVERS") == "1":
            pytest.fail(f"{why} (VSM_REQUIRE_SERVERS=1)")
        pytest.skip(why)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _objects(store: Path) -> list[str]:
    """Every file in the store: objects, and any temp file a failed PUT left."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def _put(d: Daemon, path: str, data: bytes, chunked: bool = False) -> tuple[int, str]:
    """`vsm-pool pieces put` into the small store: from a file (Content-Length), or from stdin
    (chunked: the size is not known up front)."""
    src = d.home.parent / "src.bin"
    src.write_bytes(data)
    try:
        with open(src, "rb") as stdin:
            proc = subprocess.run(
                [sys.executable, "-m", "vsm", "pieces", "put", "--json", "-" if chunked else str(src), f"small/{path}"],
                env=cli_env(d.home), stdin=stdin if chunked else subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
            )
    finally:
        src.unlink()
    return proc.returncode, (proc.stdout if proc.returncode == 0 else proc.stderr).strip()


@pytest.mark.parametrize("open_files", ["true", "false"], ids=["sendfile", "ring"])
def test_full_disk_refuses_puts_cleanly_and_recovers(start_daemon: Any, tmp_path: Path, tmpfs: Path, open_files: str) -> None:
    store = tmpfs / "pieces"
    store.mkdir()
    home = prepare_home(tmp_path / "home", append=(
        f'[[Common.PieceStores]]\nName = "small"\nPath = "{store}"\nMinFreeSpace = "4MiB"\n'
        f'[Common.PieceStores.Meta]\nOpenFiles = "{open_files}"\n'
    ))
    text = (home / "config.toml").read_text()  # the default store "pieces" makes way for the small one
    (home / "config.toml").write_text(text.replace('[[Common.PieceStores]]\nName = "pieces"', '[[Common.PieceStores]]\nName = "unused"', 1))
    d: Daemon = start_daemon(home)

    def put(path: str, data: bytes, chunked: bool = False) -> tuple[int, str]:
        return _put(d, path, data, chunked)

    assert put("a.bin", os.urandom(2 * MiB))[0] == 0

    # the size is known: refused before a byte is written, the floor and the size named
    code, err = put("big.bin", os.urandom(20 * MiB))
    assert code != 0 and "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert "disk full: PUT small/big.bin refused" in line and "MinFreeSpace 4.0 MiB" in line and "20.0 MiB" in line, line
    assert "<store small> has" in line and "MiB free" in line, line  # the store's folder, as clients see it
    assert "resume by themselves" in line

    # curl asks `Expect: 100-continue` first: refused, it sends no byte of the body
    if shutil.which("curl"):
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(20 * MiB))
        out = subprocess.run(["curl", "-sS", "-T", str(big), "-w", "\n%{http_code} %{size_upload}", "-H", f"Authorization: Bearer {d.token}",
                              f"http://127.0.0.1:{d.port}/pieces/small/curl.bin"], capture_output=True, text=True, timeout=60)
        body, _, tail = out.stdout.rpartition("\n")
        assert tail.split() == ["507", "0"], (out.stdout, out.stderr)
        assert "disk full: PUT small/curl.bin refused" in json.loads(body)["error"]
        assert d.request("PUT", "/pieces/small/ok.bin", b"ok", {"Expect": "100-continue"})[0] == 201  # accepted: 100, then the body
        assert d.request("DELETE", "/pieces/small/ok.bin")[0] == 204

    # the size is not known (chunked): the filesystem's ENOSPC, nothing kept
    code, err = put("chunked.bin", os.urandom(20 * MiB), chunked=True)
    assert code != 0 and "Traceback" not in err, err
    assert "disk full: PUT small/chunked.bin failed, nothing stored" in err.splitlines()[-1], err
    assert _objects(store) == ["a.bin"], _objects(store)  # no temp file, no partial object
    assert _free(tmpfs) > 12 * MiB  # the space the refused bodies took is free again

    # under the floor (another writer filled the disk): even a small PUT is refused...
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (_free(tmpfs) - 2 * MiB))
    code, err = put("small.bin", b"x" * 1000)
    assert code != 0 and "refused" in err and "MinFreeSpace 4.0 MiB" in err, err
    status, _, body = d.request("PUT", "/pieces/small/raw.bin", b"x" * 1000)
    assert status == 507 and "disk full" in json.loads(body)["error"], (status, body)
    # ...and accepted again as soon as the space is back, without a restart
    filler.unlink()
    assert put("small.bin", b"x" * 1000) == (0, '{"store": "small", "path": "small.bin", "size": 1000}')
    assert _objects(store) == ["a.bin", "small.bin"]
    assert d.request("GET", "/pieces/small/small.bin")[::2] == (200, b"x" * 1000)
    assert d.healthy()
    assert "Traceback" not in d.log_text()


def test_min_free_space_config(tmp_path: Path) -> None:
    from vsm.config import DEFAULT_PIECE_MIN_FREE_SPACE, ConfigError, load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text('[[Common.PieceStores]]\nName = "a"\nPath = "a"\n[[Common.PieceStores]]\nName = "b"\nPath = "b"\nMinFreeSpace = "0"\n'
                   '[[Common.PieceStores]]\nName = "c"\nPath = "c"\nMinFreeSpace = "2GiB"\n')
    stores = load_config(cfg, tmp_path)[0].piece_stores
    assert [s.min_free_space for s in stores] == [DEFAULT_PIECE_MIN_FREE_SPACE, 0, 2 << 30]
    cfg.write_text('[[Common.PieceStores]]\nName = "a"\nPath = "a"\nMinFreeSpace = "lots"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg, tmp_path)
    assert "Common.PieceStores[0].MinFreeSpace: must be a size" in str(e.value) and "'lots'" in str(e.value)


def test_full_disk_without_a_daemon_is_one_line(tmp_path: Path, tmpfs: Path) -> None:
    """`vsm-pool pieces put` with no daemon (the manager in-process) keeps the same rule: a
    piece of known size that does not fit is refused before a byte is written; one that meets
    ENOSPC (stdin: size unknown) is fsstore's DiskFullError; one line each, nothing left."""
    store = tmpfs / "pieces"
    store.mkdir()
    home = prepare_home(tmp_path / "home", append=f'[[Common.PieceStores]]\nName = "small"\nPath = "{store}"\nMinFreeSpace = "0"\n')
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * MiB))
    for stdin, want in ((False, f"put small/big.bin: disk full: PUT small/big.bin refused: {store} has 16.0 MiB free, too little for this piece's 20.0 MiB"),
                        (True, f"put small/big.bin: disk full: {store} (store 'small'): ")):
        with open(src, "rb") as f:
            proc = subprocess.run([sys.executable, "-m", "vsm", "pieces", "put", "-" if stdin else str(src), "small/big.bin"],
                                  env=cli_env(home), stdin=f if stdin else subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert want in last, (want, last)
        assert _objects(store) == [], _objects(store)
