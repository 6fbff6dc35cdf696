"""The durable event journal: segmented files of Arrow IPC frames, plus the committed watermark.

Layout under `journal_dir`::

    segments/seg-<first seq, 20 digits>.vsmj   append-only; a new one per open and per segment_bytes
    watermark                                  8 bytes LE: highest seq whose KV change is committed
    sinks/<name>.ckpt                          per-sink checkpoint (vsm/sectors/_dispatch.py)

A frame is a 32-byte header (magic, crc32 of payload, first seq, last seq, rows, payload length)
and a payload padded to 8 bytes: one self-contained Arrow IPC stream (schema + one RecordBatch),
so a reader maps the file (`pa.memory_map`) and decodes a frame by (segment, offset, length)
without copying. A torn tail (short header or payload, bad crc) is cut off at open.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
import threading
import zlib
from typing import Iterator

import pyarrow as pa

__all__ = ["FrameRef", "Journal", "read_frame", "SEGMENT_GLOB"]

_HDR = struct.Struct("<4sIQQII")  # magic, crc32, first_seq, last_seq, nrows, payload_len
_MAGIC = b"VSJ1"
SEGMENT_GLOB = "seg-*.vsmj"


@dataclasses.dataclass(frozen=True)
class FrameRef:
    """Where one frame's Arrow payload lives: what a sink worker maps and decodes."""

    segment: str  # file name under segments/
    offset: int  # payload offset (8-aligned)
    length: int  # payload length
    first_seq: int
    last_seq: int
    rows: int

    def as_tuple(self) -> tuple[str, int, int]:
        return (self.segment, self.offset, self.length)


def _seg_name(first_seq: int) -> str:
    return "seg-%020d.vsmj" % first_seq


def read_frame(path: str, offset: int, length: int, _maps: dict[str, mmap.mmap] | None = None) -> pa.RecordBatch:
    """Decode the frame at (path, offset, length) zero-copy from a memory map of the file.

    `_maps` caches maps per path (a map shorter than offset+length is replaced: segments grow;
    a replaced map is unmapped once no batch read from it is left). The map is Python's mmap
    seen through pa.py_buffer: pyarrow's own memory_map touched every page of a frame when
    decoding it (~55 ms for 100k rows, against ~1 ms), before the sink read any of them.
    """
    mm = None if _maps is None else _maps.get(path)
    if mm is None or len(mm) < offset + length:
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if _maps is not None:
            _maps[path] = mm
    return pa.ipc.open_stream(pa.py_buffer(mm)[offset : offset + length]).read_next_batch()


class Journal:
    """Append frames, list them by seq, read them, cut the tail, drop old segments.

    One writer (the manager's flusher thread) appends; readers only look at frames the writer
    has published. `fsync=False` is for tests and benchmarks that model a fast disk.
    """

    def __init__(self, journal_dir: str, *, segment_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.dir = journal_dir
        self.seg_dir = os.path.join(journal_dir, "segments")
        os.makedirs(self.seg_dir, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self.frames: list[FrameRef] = []
        self._fd: int | None = None
        self._seg: str | None = None
        self._seg_size = 0
        self._buf: pa.Buffer | None = None  # reused by _serialize
        self._scan()

    # -- open --------------------------------------------------------------------------
    def _scan(self) -> None:
        for name in sorted(os.listdir(self.seg_dir)):
            if name.endswith(".tmp"):
                continue
            if not (name.startswith("seg-") and name.endswith(".vsmj")):
                continue
            path = os.path.join(self.seg_dir, name)
            size = os.path.getsize(path)
            good = 0
            with open(path, "rb") as f:
                while good + _HDR.size <= size:
                    f.seek(good)
                    magic, crc, first, last, nrows, plen = _HDR.unpack(f.read(_HDR.size))
                    end = good + _HDR.size + _pad8(plen)
                    if magic != _MAGIC or end > size:
                        break
                    payload = f.read(plen)
                    if zlib.crc32(payload) != crc:
                        break
                    self.frames.append(FrameRef(name, good + _HDR.size, plen, first, last, nrows))
                    good = end
            if good < size:  # torn tail of a killed writer
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())

    @property
    def last_seq(self) -> int:
        return self.frames[-1].last_seq if self.frames else self._base_seq()

    def _base_seq(self) -> int:
        # No frames left (all compacted): the newest segment name carries the next first seq.
        names = sorted(n for n in os.listdir(self.seg_dir) if n.endswith(".vsmj"))
        return int(names[-1][4:24]) - 1 if names else 0

    # -- write -------------------------------------------------------------------------
    def append(self, batch: pa.RecordBatch, first_seq: int, last_seq: int) -> FrameRef:
        """Write one frame (and fsync it); returns where it lives."""
        payload = self._serialize(batch)
        plen = payload.size
        hdr = _HDR.pack(_MAGIC, zlib.crc32(payload), first_seq, last_seq, batch.num_rows, plen)
        pad = b"\0" * (_pad8(plen) - plen)
        with self._lock:
            if self._fd is None or self._seg_size >= self.segment_bytes:
                self._roll(first_seq)
            assert self._fd is not None and self._seg is not None
            off = self._seg_size
            try:
                os.writev(self._fd, [hdr, payload, pad])  # type: ignore[list-item]
                if self.fsync:
                    os.fdatasync(self._fd)
            except BaseException:
                self._cut(off)  # no torn frame left behind a later good one
                raise
            self._seg_size = off + _HDR.size + plen + len(pad)
            ref = FrameRef(self._seg, off + _HDR.size, plen, first_seq, last_seq, batch.num_rows)
            self.frames.append(ref)
            return ref

    def _cut(self, off: int) -> None:
        """(lock held) A write failed: cut the segment back to `off`; if even that fails, the
        next append starts a new segment (a torn tail is cut off at the next open anyway)."""
        try:
            os.ftruncate(self._fd, off)  # type: ignore[arg-type]
        except OSError:
            os.close(self._fd)  # type: ignore[arg-type]
            self._fd = None

    @property
    def oldest_seq(self) -> int:
        """The first seq still in the journal (last_seq + 1 when every frame was compacted)."""
        with self._lock:
            return self.frames[0].first_seq if self.frames else self.last_seq + 1

    def first_seq_after(self, after_seq: int) -> int | None:
        """first_seq of the first frame holding a seq > after_seq (None: no such frame)."""
        frames = self.frames_between(after_seq, 1 << 63, 1)
        return frames[0].first_seq if frames else None

    def _serialize(self, batch: pa.RecordBatch) -> pa.Buffer:
        """The frame's IPC stream, in a buffer reused from frame to frame (one writer: the
        flusher). A fresh growing buffer per 8 MB frame cost its page faults and regrowth
        copies each time."""
        mock = pa.MockOutputStream()
        with pa.ipc.new_stream(mock, batch.schema) as w:
            w.write_batch(batch)
        size = mock.size()
        if self._buf is None or self._buf.size < size:
            self._buf = pa.allocate_buffer(size + size // 4, resizable=False)
        out = pa.FixedSizeBufferWriter(self._buf)
        with pa.ipc.new_stream(out, batch.schema) as w:
            w.write_batch(batch)
        assert out.tell() == size
        return self._buf.slice(0, size)

    def _roll(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._seg = _seg_name(first_seq)
        path = os.path.join(self.seg_dir, self._seg)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seg_size = os.fstat(self._fd).st_size
        if self.fsync:
            _fsync_dir(self.seg_dir)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # -- read --------------------------------------------------------------------------
    def path(self, ref: FrameRef) -> str:
        return os.path.join(self.seg_dir, ref.segment)

    def frames_between(self, after_seq: int, upto_seq: int, max_rows: int = 1 << 62) -> list[FrameRef]:
        """Frames holding seqs in (after_seq, upto_seq], whole frames only, at most ~max_rows rows."""
        with self._lock:
            frames = self.frames
            lo, hi = 0, len(frames)
            while lo < hi:  # first frame with last_seq > after_seq
                mid = (lo + hi) // 2
                if frames[mid].last_seq <= after_seq:
                    lo = mid + 1
                else:
                    hi = mid
            out: list[FrameRef] = []
            rows = 0
            for ref in frames[lo:]:
                if ref.last_seq > upto_seq or (out and rows + ref.rows > max_rows):
                    break
                out.append(ref)
                rows += ref.rows
            return out

    def read(self, ref: FrameRef) -> pa.RecordBatch:
        return read_frame(self.path(ref), ref.offset, ref.length)

    def iter_after(self, after_seq: int) -> Iterator[tuple[FrameRef, pa.RecordBatch]]:
        for ref in self.frames_between(after_seq, 1 << 63):
            yield ref, self.read(ref)

    # -- maintenance ---------------------------------------------------------------------
    def compact(self, upto_seq: int) -> list[str]:
        """Delete whole segments whose every frame has seq <= upto_seq (never the open one)."""
        removed: list[str] = []
        with self._lock:
            by_seg: dict[str, int] = {}
            for ref in self.frames:
                by_seg[ref.segment] = max(by_seg.get(ref.segment, 0), ref.last_seq)
            for seg, last in by_seg.items():
                if last <= upto_seq and seg != self._seg:
                    os.unlink(os.path.join(self.seg_dir, seg))
                    removed.append(seg)
            if removed:
                gone = set(removed)
                self.frames = [r for r in self.frames if r.segment not in gone]
        return removed

    def replace_tail(self, from_index: int, batches: list[tuple[pa.RecordBatch, int, int]]) -> None:
        """Crash-safe rewrite of frames[from_index:] by `batches` (recovery only, before any reader).

        The new tail goes to a temp segment first; an intent file names what to cut, so a crash
        at any step is redone at the next open (`redo_intent`).
        """
        assert self._fd is None, "replace_tail runs before the first append"
        old = self.frames[from_index:]
        if not old:
            return
        first_seq = old[0].first_seq
        cut_seg, cut_off = old[0].segment, old[0].offset - _HDR.size
        drop = sorted({r.segment for r in old} - {cut_seg})
        tmp_name = _seg_name(first_seq) + ".new"
        tmp = os.path.join(self.seg_dir, tmp_name)
        with open(tmp, "wb") as f:
            for batch, a, b in batches:
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, batch.schema) as w:
                    w.write_batch(batch)
                payload = sink.getvalue()
                f.write(_HDR.pack(_MAGIC, zlib.crc32(payload), a, b, batch.num_rows, payload.size))
                f.write(payload)
                f.write(b"\0" * (_pad8(payload.size) - payload.size))
            f.flush()
            os.fsync(f.fileno())
        intent = os.path.join(self.dir, "recovery.intent")
        with open(intent + ".tmp", "w") as f:
            f.write("%s\n%d\n%s\n%s\n" % (cut_seg, cut_off, tmp_name, ",".join(drop)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(intent + ".tmp", intent)
        _fsync_dir(self.dir)
        self.redo_intent()

    def redo_intent(self) -> bool:
        """Finish an interrupted replace_tail; True if there was one. Idempotent."""
        intent = os.path.join(self.dir, "recovery.intent")
        if not os.path.exists(intent):
            for n in os.listdir(self.seg_dir):  # a rewrite that crashed before its intent
                if n.endswith(".new"):
                    os.unlink(os.path.join(self.seg_dir, n))
            return False
        with open(intent) as f:
            cut_seg, cut_off_s, tmp_name, drop_s = (f.read().split("\n") + ["", "", "", ""])[:4]
        cut_off = int(cut_off_s)
        tmp = os.path.join(self.seg_dir, tmp_name)
        final = os.path.join(self.seg_dir, tmp_name[: -len(".new")])
        cut_path = os.path.join(self.seg_dir, cut_seg)
        if os.path.exists(tmp):
            if os.path.exists(cut_path):
                with open(cut_path, "r+b") as f:
                    f.truncate(cut_off)
                    os.fsync(f.fileno())
                if cut_off == 0 and cut_path != final:
                    os.unlink(cut_path)
            for n in filter(None, drop_s.split(",")):
                p = os.path.join(self.seg_dir, n)
                if os.path.exists(p) and p != final:
                    os.unlink(p)
            os.replace(tmp, final)
        _fsync_dir(self.seg_dir)
        os.unlink(intent)
        _fsync_dir(self.dir)
        self.frames = []
        self._scan()
        return True


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Watermark:
    """The durable committed watermark: 8 bytes, rewritten in place and fdatasync'd."""

    def __init__(self, journal_dir: str, fsync: bool = True) -> None:
        self.path = os.path.join(journal_dir, "watermark")
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        data = os.pread(self._fd, 8, 0)
        self.value = struct.unpack("<Q", data)[0] if len(data) == 8 else 0

    def store(self, seq: int) -> None:
        os.pwrite(self._fd, struct.pack("<Q", seq), 0)
        if self.fsync:
            os.fdatasync(self._fd)
        self.value = seq

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
