"""`vsm-pool pieces put|get|stat|del`: pieces in a configured store."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import click

from ._common import config_option, home_option, json_option, open_client

__all__ = ["pieces"]


@click.group()
def pieces() -> None:
    """Put, get, stat and delete pieces in a configured store."""


def _split(target: str) -> tuple[str, str]:
    store, sep, path = target.partition("/")
    if not sep or not path:
        raise click.BadParameter(f"{target!r}: expected STORE/PATH, e.g. pieces/baga6ea4sea...")
    return store, path


def _bar(total: int | None, label: str) -> Any:
    from tqdm import tqdm  # imported when a transfer needs it: not on `pieces stat`

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr, disable=None)


@pieces.command("put")
@home_option
@config_option
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.argument("target")
def pieces_put(home: Path | None, config_file: Path | None, as_json: bool, file: Path, target: str) -> None:
    """Upload FILE to STORE/PATH (FILE may be a pipe, a FIFO, or "-" for standard input)."""
    store, path = _split(target)
    with open_client(home, config_file) as client, _source(file) as (source, size), _bar(size, path) as bar:
        result = client.put_piece(store, path, source, size, bar.update)
    click.echo(json.dumps(result) if as_json else f"stored {result['size']} bytes at {store}/{path}")


@contextlib.contextmanager
def _source(file: Path) -> Iterator[tuple[BinaryIO, int | None]]:
    """The bytes to upload and their size: None (sent chunked, read to the end) for standard
    input, a pipe, a FIFO or a character device, whose size stat() does not know."""
    dash = str(file) == "-"
    with open(sys.stdin.fileno() if dash else file, "rb", buffering=0, closefd=not dash) as source:
        st = os.fstat(source.fileno())
        yield source, st.st_size if stat.S_ISREG(st.st_mode) and not dash else None  # type: ignore[misc]


@pieces.command("get")
@home_option
@config_option
@click.argument("target")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def pieces_get(home: Path | None, config_file: Path | None, target: str, file: Path) -> None:
    """Download STORE/PATH into FILE ("-" for standard output)."""
    store, path = _split(target)
    with open_client(home, config_file) as client:
        if str(file) == "-":
            n = client.get_piece(store, path, sys.stdout.buffer)
            return
        tmp = file.with_name(f".{file.name}.part")
        try:
            with open(tmp, "wb") as sink, _bar(None, path) as bar:
                n = client.get_piece(store, path, sink, bar.update)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
    click.echo(f"wrote {n} bytes to {file}", err=True)


@pieces.command("stat")
@home_option
@config_option
@json_option
@click.argument("target")
def pieces_stat(home: Path | None, config_file: Path | None, as_json: bool, target: str) -> None:
    """Size of STORE/PATH."""
    store, path = _split(target)
    with open_client(home, config_file) as client:
        result = client.call("pieces.stat", {"store": store, "path": path})
    click.echo(json.dumps(result) if as_json else f"{store}/{path}: {result['size']} bytes")


@pieces.command("del")
@home_option
@config_option
@click.argument("target")
def pieces_del(home: Path | None, config_file: Path | None, target: str) -> None:
    """Delete STORE/PATH."""
    store, path = _split(target)
    with open_client(home, config_file) as client:
        client.call("pieces.delete", {"store": store, "path": path})
    click.echo(f"deleted {store}/{path}")
