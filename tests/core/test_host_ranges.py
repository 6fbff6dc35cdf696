"""A ranged read of a store without get_range (vsm.sdk.objstore: ranges): the worker seeks the
store's reader where it can, else reads and drops the bytes before the range itself."""

from __future__ import annotations

import io
from typing import Any

import pytest

from vsm.plugin.host import _Window

DATA = bytes(range(256)) * 4000  # 1,024,000 bytes


class _Pipe(io.RawIOBase):
    """A reader that cannot seek and returns short reads, as a socket does."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos, self.closed_by_window = data, 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), 4093, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("make", [io.BytesIO, _Pipe], ids=["seekable", "pipe"])
@pytest.mark.parametrize(("offset", "length"), [(0, 10), (5000, 70000), (len(DATA) - 5, 100), (len(DATA), 10), (len(DATA) + 9, 10), (7, 0)])
def test_window_gives_the_range(make: Any, offset: int, length: int) -> None:
    with _Window(make(DATA), offset, length) as w:
        got = b"".join(iter(lambda: w.read(65536), b""))
    assert got == DATA[offset : offset + length]
