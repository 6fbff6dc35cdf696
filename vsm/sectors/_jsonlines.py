"""Go JSON lines -> Arrow batches of sector states, vectorised, with the strict decoder as referee.

    file --(blocks of `chunk` lines: bounded memory)--> lines
      | candidates: lines that start with `{"ID":{"Miner":`, end with `}` (then \\n or \\r\\n) and
      | are valid UTF-8, as json.Marshal writes every state; the others go to the strict decoder
      v
    pyarrow.json against Go's shape of a state (GO_JSON_SCHEMA; C++)      a part of the block that
      -> SECTOR_STATE_SCHEMA columns (_from_go: renames, `{"/": cid}`,     pyarrow refuses is halved
         base64, `<empty>` addresses)                                     until the parts parse; the
      -> arrow_to_go_json (the import path's own encoder)                 last few lines go to the
      -> == the line's bytes, and a state Go can hold?                    strict decoder
           yes: accepted as parsed
           no:  the strict decoder (decode_state_json, = decode_state_exact) decides: accepted as it
                reads it, or refused with file:line: field: cause
      -> rows in line order: one RecordBatch per block

Why a byte-identical line needs no strict decoding. Let R be the row parsed for line L, S the
SectorState of R (SectorState.from_arrow_row). The encoder writes S.to_go_json() for R (a tested
property of arrow_to_go_json). If L is those bytes, and S is a state Go can hold (its CIDs,
addresses and token amounts in Go's form, labels of at most 256 bytes: check_arrow_states; no
null where Go has a value: a struct value, a [32]byte, the sector ID: _not_go_shaped), then L is
what json.Marshal writes for S, and Go's json.Unmarshal (and decode_state_exact) reads back
exactly S, with no unknown key. What pyarrow made of L does not matter: it is the comparison that
accepts, never the parser; a misparse yields other bytes and the strict decoder.
tests/gojson/test_import_lines.py runs every fixture, odd input, refusal and random mutation
through both paths (each guard above fails it when taken out).

Cost per state of ~1.5 KB (the bench's states, CPU time, best of 5): the strict decoder ~33 us
and conversion to Arrow ~14 us; here ~5 us in pyarrow.json, ~2 us re-encoding, ~1.2 us
check_arrow_states, ~1 us conversion, comparison and reading. (On 2026-12-01's machine, best
of 3 on a 10k-line block: 8.5-9.8, 4.0, 2.4 and 2.0 us; the whole reader 19-31 us over runs.)
pyarrow.json is the fastest parser at hand: polars.read_ndjson took 42 us of CPU a state on
the same block, orjson 16 us for Python dicts alone. A line that differs costs the strict
decoder's time, as before. Two things pyarrow 26 does that the candidates keep away:
it lets invalid UTF-8 through into string columns, and it crashes (SIGSEGV) on a block that
starts with the line `null`.
"""

from __future__ import annotations

import binascii
import dataclasses
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.sectors import (
    SECTOR_STATE_SCHEMA,
    _VALUE_STRUCTS,  # struct fields Go declares as values: never null in its output
    SectorState,
    arrow_to_go_json,
    check_arrow_states,
    states_to_arrow,
)

__all__ = ["GO_JSON_SCHEMA", "read_go_json_lines"]

_PREFIX = np.frombuffer(b'{"ID":{"Miner":', np.uint8)
_READ = 4 << 20  # bytes per read: a block is `chunk` lines, gathered from reads of this size
_EXACT_BELOW = 8  # a refused part of a block this small goes to the strict decoder line by line


# --- Go's shape of a state, as pyarrow.json reads it -----------------------------------------

_GO_SCALAR = {
    "int": pa.int64(), "uint": pa.uint64(), "bool": pa.bool_(), "str": pa.string(), "addr": pa.string(),
    "bigint": pa.string(), "label": pa.string(), "optint": pa.int64(), "optstr": pa.string(),
    "cid": pa.struct([pa.field("/", pa.string())]),  # {"/": "bafy..."}
    "bytes": pa.string(),  # base64
    "bytes32": pa.list_(pa.int64()),  # an array of 32 numbers
    "id": pa.struct([pa.field("Miner", pa.uint64()), pa.field("Number", pa.uint64())]),
}


def _go_type(enc: Any) -> pa.DataType:
    if isinstance(enc, type):
        return pa.struct([pa.field(f.metadata["go"], _go_type(f.metadata["enc"])) for f in dataclasses.fields(enc)])
    if isinstance(enc, tuple):
        return pa.list_(_go_type(enc[1]))
    return _GO_SCALAR[enc]


GO_JSON_SCHEMA: pa.Schema = pa.schema([pa.field(f.metadata["go"], _go_type(f.metadata["enc"])) for f in dataclasses.fields(SectorState)])


# --- Go's shape -> SECTOR_STATE_SCHEMA ---------------------------------------------------------


def _from_go(table: pa.Table) -> pa.RecordBatch:
    """The state columns of rows parsed in Go's shape. Values no state holds (bad base64, a
    [32]byte of another length) become null: the re-encoded line then differs from the input."""
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    ident = batch.column("ID").flatten()
    cols = [ident[0].fill_null(0), ident[1].fill_null(0)]  # a null ID: _not_go_shaped refuses the row
    for f in dataclasses.fields(SectorState):
        if f.metadata["enc"] != "id":
            cols.append(_convert(batch.column(f.metadata["go"]), f.metadata["enc"]))
    return pa.RecordBatch.from_arrays(cols, schema=SECTOR_STATE_SCHEMA)


def _convert(arr: pa.Array, enc: Any) -> pa.Array:
    if isinstance(enc, type):
        fields = dataclasses.fields(enc)
        children = [_convert(arr.field(f.metadata["go"]), f.metadata["enc"]) for f in fields]
        mask = pc.is_null(arr) if arr.null_count else None
        return pa.StructArray.from_arrays(children, fields=list(SECTOR_STATE_TYPES[enc]), mask=mask)
    if isinstance(enc, tuple):
        offsets = arr.offsets.to_numpy(zero_copy_only=False)
        first = int(offsets[0])
        values = _convert(arr.values.slice(first, int(offsets[-1]) - first), enc[1])
        mask = pc.is_null(arr) if arr.null_count else None
        return pa.ListArray.from_arrays(pa.array(offsets - first, pa.int32()), values, mask=mask)
    if enc == "addr":  # the undefined address: Go writes "<empty>", the state holds ""
        return pc.if_else(pc.equal(arr, "<empty>"), "", arr) if len(arr) else arr
    if enc == "cid":
        return arr.flatten()[0]  # null where the object or its "/" is null
    if enc == "bytes":
        return _unbase64(arr)
    if enc == "bytes32":
        return _bytes32(arr)
    return arr


SECTOR_STATE_TYPES: dict[type, pa.StructType] = {}


def _state_types(enc: Any, arrow: pa.DataType) -> None:
    """Struct types of SECTOR_STATE_SCHEMA by dataclass, for _convert."""
    if isinstance(enc, type):
        SECTOR_STATE_TYPES[enc] = arrow
        for f in dataclasses.fields(enc):
            _state_types(f.metadata["enc"], arrow.field(f.name).type)
    elif isinstance(enc, tuple):
        _state_types(enc[1], arrow.value_type)


for _f in dataclasses.fields(SectorState):
    if _f.metadata["enc"] != "id":
        _state_types(_f.metadata["enc"], SECTOR_STATE_SCHEMA.field(_f.name).type)


def _unbase64(arr: pa.Array) -> pa.Array:
    """Standard base64 (padded) strings -> bytes; null where the string is null or not base64.
    Values of one (length, padding) are decoded together in one binascii call (the padding of
    each set to 'A' and its bytes cut off after), then put back in order with one take."""
    n = len(arr)
    if n == 0 or arr.null_count == n:
        return pa.nulls(n, pa.binary())
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4).astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    ok = arr.is_valid().to_numpy(zero_copy_only=False) & (lengths % 4 == 0) & (lengths > 0)
    ends = offsets[1:]
    pad = np.zeros(n, np.int64)
    eq = ord("=")
    pad[ok] = (data[ends[ok] - 1] == eq).astype(np.int64) + (data[ends[ok] - 2] == eq)
    keys = np.where(ok, lengths * 4 + pad, -1)
    keys[(lengths == 0) & arr.is_valid().to_numpy(zero_copy_only=False)] = 0  # "" is the empty, non-nil []byte
    groups: list[pa.Array] = []
    where = np.empty(n, np.int64)  # row -> its place in the groups' concatenation
    done = 0
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        m = len(rows)
        where[rows] = np.arange(done, done + m)
        done += m
        if key < 0:
            groups.append(pa.nulls(m, pa.binary()))
            continue
        L, p = int(key) // 4, int(key) % 4
        if L == 0:
            groups.append(pa.array([b""] * m, pa.binary()))
            continue
        start = int(offsets[rows[0]])
        if int(offsets[rows[-1]]) - start == (m - 1) * L and (m == 1 or (np.diff(offsets[rows]) == L).all()):
            src = data[start : start + m * L].reshape(m, L).copy()  # the usual case: one slice
        else:
            src = data[offsets[rows][:, None] + np.arange(L)]
        if p:
            src[:, L - p :] = ord("A")
        keep = L // 4 * 3 - p
        try:
            raw = np.frombuffer(binascii.a2b_base64(src.data, strict_mode=True), np.uint8).reshape(m, L // 4 * 3)
            good = None
        except binascii.Error:  # some value of the group is not base64 (rare): one at a time
            raw = np.zeros((m, L // 4 * 3), np.uint8)
            good = np.ones(m, bool)
            for j in range(m):
                try:
                    raw[j] = np.frombuffer(binascii.a2b_base64(src[j].data, strict_mode=True), np.uint8)
                except binascii.Error:
                    good[j] = False
        values = np.ascontiguousarray(raw[:, :keep]).reshape(-1)
        validity = None if good is None or good.all() else pa.array(good).buffers()[1]
        groups.append(pa.BinaryArray.from_buffers(pa.binary(), m, [validity, pa.py_buffer((np.arange(m + 1) * keep).astype(np.int32)), pa.py_buffer(values)]))
    if len(groups) == 1:
        return groups[0]
    return pa.concat_arrays(groups).take(pa.array(where))


def _bytes32(arr: pa.Array) -> pa.Array:
    """[32]byte as arrays of 32 numbers in 0..255 -> fixed_size_binary(32); null otherwise."""
    n = len(arr)
    lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False)
    ok = lengths == 32
    data = np.zeros((n, 32), np.uint8)
    if ok.any():
        vals = pc.list_flatten(arr.filter(pa.array(ok))).fill_null(-1).to_numpy(zero_copy_only=False).reshape(-1, 32)
        good = ((vals >= 0) & (vals <= 255)).all(axis=1)
        idx = np.flatnonzero(ok)
        ok[idx[~good]] = False
        data[idx[good]] = vals[good]
    validity = None if ok.all() else pa.array(ok).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [validity, pa.py_buffer(data.reshape(-1))])


# --- rows no Go state has, though their bytes may look right ----------------------------------


def _not_go_shaped(batch: pa.RecordBatch, ident_null: np.ndarray) -> np.ndarray:
    """Rows holding a null where Go always writes a value: a struct value (MessageInfo...), a
    [32]byte, a list element; or no sector ID. The encoder writes `null` there, which Go would
    read as a zero value: such a row is no state of its line."""
    bad = ident_null.copy()
    rows = np.arange(batch.num_rows)
    for f in dataclasses.fields(SectorState):
        if f.metadata["enc"] != "id":
            _nulls_where_go_has_values(batch.column(f.name), f.metadata["enc"], ("SectorState", f.metadata["go"]), rows, bad)
    return bad


def _nulls_where_go_has_values(arr: pa.Array, enc: Any, where: tuple[str, str], rows: np.ndarray, bad: np.ndarray) -> None:
    value = where in _VALUE_STRUCTS or enc == "bytes32"
    if arr.null_count:
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        if value:
            bad[rows[~valid]] = True
        if not isinstance(enc, (type, tuple)):
            return
        arr, rows = arr.filter(pa.array(valid)), rows[valid]
    if isinstance(enc, type):
        for f in dataclasses.fields(enc):
            _nulls_where_go_has_values(arr.field(f.name), f.metadata["enc"], (enc.__name__, f.metadata["go"]), rows, bad)
    elif isinstance(enc, tuple):
        parent = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        elems = arr.flatten()
        if elems.null_count:  # Go writes no null element in a list of structs
            bad[rows[parent[~elems.is_valid().to_numpy(zero_copy_only=False)]]] = True
        _nulls_where_go_has_values(elems, enc[1], ("", ""), rows[parent], bad)


# --- the reader ---------------------------------------------------------------------------------


def _blocks(f: BinaryIO, chunk: int) -> Iterator[tuple[int, bytes, np.ndarray]]:
    """(number of the first line, bytes of up to `chunk` whole lines each ending in \\n, the
    positions of those \\n): one pass over every byte to find them."""
    carry, carry_nl = b"", np.zeros(0, np.int64)
    lineno = 1
    eof = False
    while True:
        parts, nls, size = [carry], [carry_nl], len(carry)
        count = len(carry_nl)
        while count < chunk and not eof:
            data = f.read(_READ)
            if not data:
                eof = True
                break
            nl = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + size
            parts.append(data)
            nls.append(nl)
            size += len(data)
            count += len(nl)
        if not size:
            return
        buf = b"".join(parts)
        ends = np.concatenate(nls)
        if count >= chunk:
            cut = int(ends[chunk - 1]) + 1
            block, carry = buf[:cut], buf[cut:]
            ends, carry_nl = ends[:chunk], ends[chunk:] - cut
        else:  # the end of the file
            block, carry, carry_nl = buf, b"", np.zeros(0, np.int64)
            if not block.endswith(b"\n"):
                block += b"\n"
                ends = np.append(ends, len(block) - 1)
        yield lineno, block, ends
        lineno += len(ends)
        if eof and not carry:
            return


def _parse(data: bytes, offsets: np.ndarray) -> list[tuple[int, int, pa.Table | None]]:
    """pyarrow.json over the lines data[offsets[i]:offsets[i+1]]: (first, end, table) for runs
    of lines it parsed one row each, (first, end, None) for the lines it would not, in order.
    (A loop, not a recursive closure: that is a reference cycle, and the tables it held waited
    for the garbage collector: +8 MB a block.)"""
    import pyarrow.json as pj

    out: list[tuple[int, int, pa.Table | None]] = []
    todo = [(0, len(offsets) - 1)] if len(offsets) > 1 else []
    while todo:
        a, b = todo.pop()
        lo, hi = int(offsets[a]), int(offsets[b])
        try:
            t = pj.read_json(
                pa.BufferReader(pa.py_buffer(data)[lo:hi]),
                read_options=pj.ReadOptions(use_threads=False, block_size=max(hi - lo, 1 << 16) + 1),
                parse_options=pj.ParseOptions(explicit_schema=GO_JSON_SCHEMA, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, UnicodeDecodeError):
            t = None
        if t is not None and t.num_rows == b - a:
            out.append((a, b, t))
        elif b - a <= _EXACT_BELOW:
            out.append((a, b, None))
        else:  # halve it: the second half is taken after the first
            mid = (a + b) // 2
            todo += [(mid, b), (a, mid)]
    return out


def read_go_json_lines(f: BinaryIO, chunk: int, decode: Callable[[bytes, int], SectorState | None]) -> Iterator[pa.RecordBatch]:
    """Batches (SECTOR_STATE_SCHEMA) of the states of `f`'s lines, in line order, a block of
    `chunk` lines at a time. `decode(line, lineno)` is the strict decoder for the lines that are
    not byte-identical to their parsed row's encoding: a SectorState, or None (refused, or blank)."""
    for first, block, ends in _blocks(f, chunk):
        batch = _block_states(block, ends, first, decode)
        if batch.num_rows:
            yield batch


def _candidates(block: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, ends in \\r\\n) for each line: a candidate starts with `{"ID":{"Miner":`, ends
    with `}` before its line end and is valid UTF-8 (pyarrow.json passes invalid UTF-8 through)."""
    buf = np.frombuffer(block, np.uint8)
    crlf = np.zeros(len(ends), bool)
    some = ends > starts
    crlf[some] = buf[ends[some] - 1] == 13
    body_end = ends - crlf
    cand = body_end - starts > len(_PREFIX)
    cand[cand] = buf[body_end[cand] - 1] == ord("}")
    for k, ch in enumerate(_PREFIX):
        cand[cand] = buf[starts[cand] + k] == ch
    if not block.isascii():
        for i in np.flatnonzero(cand):
            line = block[int(starts[i]) : int(ends[i])]
            if not line.isascii():
                try:
                    line.decode()
                except UnicodeDecodeError:
                    cand[i] = False
    return cand, crlf


def _block_states(block: bytes, ends: np.ndarray, first: int, decode: Callable[[bytes, int], SectorState | None]) -> pa.RecordBatch:
    """The states of one block's lines (ends: the position of each line's \\n), in line order."""
    starts = np.zeros(len(ends), np.int64)
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    cand, crlf = _candidates(block, starts, ends)
    idx = np.flatnonzero(cand)
    if len(idx) == len(ends):
        data = block
    else:  # only the candidates, each with its line end
        data = np.frombuffer(block, np.uint8)[np.repeat(cand, lengths + 1)].tobytes()
    offsets = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lengths[idx] + 1, out=offsets[1:])
    line_end = pa.array(np.where(crlf[idx], b"\r\n", b"\n").tolist(), pa.binary()) if crlf[idx].any() else None

    accepted = np.zeros(len(idx), bool)
    parts = []
    for a, b, table in _parse(data, offsets):
        if table is None:
            continue
        ident_null = pc.is_null(table.column("ID").combine_chunks().flatten()[0]).to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0, bool)
        rows = _from_go(table)
        enc = pc.binary_join_element_wise(arrow_to_go_json(rows), b"\n" if line_end is None else line_end[a:b], b"")
        lines = pa.BinaryArray.from_buffers(pa.binary(), b - a, [None, pa.py_buffer((offsets[a : b + 1] - offsets[a]).astype(np.int32)),
                                                                 pa.py_buffer(data)[int(offsets[a]) : int(offsets[b])]])
        ok = pc.equal(enc, lines).to_numpy(zero_copy_only=False) & ~_not_go_shaped(rows, ident_null)
        for row, _ in check_arrow_states(rows):
            ok[row] = False
        accepted[a:b] = ok
        if ok.any():
            parts.append(rows if ok.all() else rows.filter(pa.array(ok)))
    fast_lines = idx[accepted]
    slow = np.ones(len(ends), bool)
    slow[fast_lines] = False
    slow_lines, slow_states = [], []
    for i in np.flatnonzero(slow):
        st = decode(block[int(starts[i]) : int(ends[i])], first + int(i))
        if st is not None:
            slow_lines.append(int(i))
            slow_states.append(st)
    if not slow_states:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return pa.RecordBatch.from_pylist([], schema=SECTOR_STATE_SCHEMA)
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
    table = pa.Table.from_batches([*parts, states_to_arrow(slow_states)], schema=SECTOR_STATE_SCHEMA)
    order = np.argsort(np.concatenate([fast_lines, np.array(slow_lines, np.int64)]), kind="stable")
    return table.take(pa.array(order)).combine_chunks().to_batches()[0]
