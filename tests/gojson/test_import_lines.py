"""The vectorised reader of Go JSON lines (vsm/sectors/_jsonlines.py) decides as the strict decoder.

    lines --read_import_batches (pyarrow.json, re-encode, compare; the rest strict)--> rows, refusals
    lines --decode_state_exact, one line at a time (the reference)-------------------> rows, refusals
                                                                     the same, in the same order

Every input goes through both: Go's fixtures, vsm's own states, the odd inputs Go accepts and
refuses, states Go never writes but whose bytes the encoder could (null struct values), text
oddities (blank and CRLF lines, a `null` line, two objects on a line, invalid UTF-8), and
random mutations of Go's fixtures; in blocks small enough that a refused line falls inside a
block pyarrow parses, at its edges and across block ends.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from vsm.sdk.sectors import SECTOR_STATE_SCHEMA, GoJSONError, SectorState, decode_state_exact, states_to_arrow
from vsm.sectors import ImportReport, read_import_batches
from vsm.sectors import _jsonlines

from ..sectors.helpers import constant_state, make_state
from .conftest import GoJSON
from .test_gojson import ACCEPTED, REFUSED, REFUSED_BY_VSM_ONLY, _dump, _mutate, _pairs, _vsm_states

pytestmark = pytest.mark.timeout(120)


def _reference(lines: list[bytes], name: str) -> tuple[pa.Table, list[str], dict[str, int]]:
    """What decode_state_exact makes of each line, as `sectors import` reports it."""
    states, refused, unknown_count = [], [], {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip(b" \t\r\n")
        if not line:
            continue
        unknown: list[str] = []
        try:
            states.append(decode_state_exact(line, unknown))
        except GoJSONError as e:
            refused.append(f"{name}:{lineno}: {e}")
            continue
        for k in unknown:
            unknown_count[k] = unknown_count.get(k, 0) + 1
    return pa.Table.from_batches([states_to_arrow(states)], schema=SECTOR_STATE_SCHEMA), refused, unknown_count


def _fast(path: Path, chunk: int) -> tuple[pa.Table, list[str], dict[str, int]]:
    report = ImportReport()
    batches = list(read_import_batches(str(path), chunk=chunk, report=report))
    assert all(b.schema == SECTOR_STATE_SCHEMA for b in batches)
    assert all(b.num_rows <= chunk for b in batches)
    return pa.Table.from_batches(batches, schema=SECTOR_STATE_SCHEMA), [str(r) for r in report.refused], dict(report.unknown)


def _same(tmp_path: Path, lines: list[bytes], chunks: tuple[int, ...] = (1, 3, 64, 10_000), end: bytes = b"\n") -> pa.Table:
    path = tmp_path / "states.jsonl"
    path.write_bytes(b"\n".join(lines) + end)
    want = _reference(path.read_bytes().split(b"\n"), str(path))
    for chunk in chunks:
        got = _fast(path, chunk)
        assert got[1] == want[1], chunk  # the same lines refused, with the same messages, in order
        assert got[2] == want[2], chunk  # the same unknown keys counted
        assert got[0].equals(want[0]), chunk  # the same rows, in line order
    return want[0]


def _strict_calls(path: Path, chunk: int = 10_000) -> int:
    """How many lines the vectorised reader left to the strict decoder."""
    calls = 0

    def decode(line: bytes, lineno: int) -> SectorState | None:
        nonlocal calls
        calls += 1
        try:
            return decode_state_exact(line.strip())
        except GoJSONError:
            return None

    with open(path, "rb") as f:
        for _ in _jsonlines.read_go_json_lines(f, chunk, decode):
            pass
    return calls


def test_canonical_lines_are_taken_without_the_strict_decoder(go_json: GoJSON, tmp_path: Path) -> None:
    lines = list(go_json.fixtures().values()) + [s.to_go_json() for s in _vsm_states()]
    lines += [make_state(9, n, with_piece=n % 2 == 0).to_go_json() for n in range(200)]
    _same(tmp_path, lines)
    path = tmp_path / "states.jsonl"
    assert _strict_calls(path) == 0  # every line is what json.Marshal writes: none needs it
    assert _strict_calls(path, chunk=7) == 0
    _same(tmp_path, lines[:50] + [line + b"\r" for line in lines[50:]])  # CRLF line ends, some
    assert _strict_calls(path, chunk=20) == 0


def test_odd_inputs_decided_as_the_strict_decoder(go_json: GoJSON, tmp_path: Path) -> None:
    good = [s.to_go_json() for s in _vsm_states()]
    odd = [line for _, line in ACCEPTED] + [line for _, line, _ in REFUSED + REFUSED_BY_VSM_ONLY]
    lines = [x for pair in zip(good * 20, odd) for x in pair] + good  # a refused line inside blocks pyarrow parses
    table = _same(tmp_path, lines)
    assert table.num_rows == len(odd) + len(good) + len(ACCEPTED)  # every good line, each one Go accepts
    # refused lines cost the strict decoder only for themselves and a few neighbours
    assert _strict_calls(tmp_path / "states.jsonl") < len(odd) * 8


CANONICAL = constant_state(5, 1).to_go_json()  # the variants below edit its known bytes


def _variant(old: bytes, new: bytes) -> bytes:
    assert old in CANONICAL
    return CANONICAL.replace(old, new, 1)


# Bytes the encoder could write for a row, that Go never writes for any state: Go reads a zero
# value where the line says null, so the row as parsed is not the line's state.
NOT_GO_SHAPED = [
    _variant(b'"MessageInfo":{"PreCommitCid":{"/":"bafy2bzacedxkkpqwmuf4dnnz4h5djmvjc7zu2bhzbhbkoqqm6npg3zpd5lewu"},"CommitCid":null,"NeedSend":true}', b'"MessageInfo":null'),
    _variant(b'"TerminateInfo":{"TerminateCid":null,"TerminatedAt":0,"AddedHeight":0}', b'"TerminateInfo":null'),
    _variant(b'"Piece":{"Size":34359738368,', b'"Piece":null,"X":{"Size":34359738368,'),
    _variant(b'"Pieces":[{', b'"Pieces":[null,{'),
    _variant(b'"Pieces":[', b'"Pieces":[null]').split(b",\"Pre\"")[0] + b"}",
    _variant(b'"Worker":{"Instance":"worker-01","Location":"10.0.0.7"}', b'"Worker":null'),
    _variant(b'"StateChange":{"Prev":"C2Done","Next":"Persisted","Event":"Evt"}', b'"StateChange":null'),
    _variant(b'"Ticket":{"Ticket":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","Epoch":2500000}}', b'"Ticket":null}'),
    _variant(b'"UpgradePublic":null', b'"UpgradePublic":{"CommR":null,"SealedCID":null,"Activation":0,"Expiration":0}'),
    _variant(b'"UpgradePublic":null', b'"UpgradePublic":{"CommR":[1,2],"SealedCID":null,"Activation":0,"Expiration":0}'),
    _variant(b'"UpgradePublic":null', b'"UpgradePublic":{"CommR":[' + b",".join(b"%d" % i for i in range(32)) + b'],"SealedCID":null,"Activation":0,"Expiration":0}'),
    _variant(b'"ID":{"Miner":5,"Number":1}', b'"ID":null'),
    _variant(b'"ID":{"Miner":5,"Number":1}', b'"ID":{"Miner":5}'),
    _variant(b'"Client":"f03344"', b'"Client":"\\u003cempty\\u003e"'),
    _variant(b'"Client":"f03344"', b'"Client":""'),
    _variant(b'"Client":"f03344"', b'"Client":"t03344"'),
    _variant(b'"Client":"f03344"', b'"Client":null'),
    _variant(b'"PublishCid":null', b'"PublishCid":{"/":"bafyinvalid"}'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAF=",'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAA!QAAAAAAAAABAAAAAAAAAAE=",'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":"",'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":null,'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":"AQ==",'),
    _variant(b'"Ticket":{"Ticket":"AAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAE=",', b'"Ticket":{"Ticket":"AQI=",'),
    _variant(b'"AbortReason":""', b'"AbortReason":"a\xffb"'),
    _variant(b'"AbortReason":""', b'"AbortReason":"\\ud800"'),
    _variant(b'"AbortReason":""', b'"AbortReason":"<&>\\u2028"'),
    _variant(b'"AbortReason":""', b'"AbortReason":"\\u003c\\u0026\\u003e\\u2028 \\b\\f\\n\\u0000 \xc3\xa9 \\\\ \\""'),
    _variant(b'"SectorType":8', b'"SectorType":-0'),
    _variant(b'"SectorType":8', b'"SectorType":8.0'),
    _variant(b'"SectorType":8', b'"SectorType":null'),
    _variant(b'"SectorType":8', b'"SectorType":8,"SectorType":9'),
    _variant(b'"SectorType":8', b'"sectorType":8'),
    _variant(b'"Finalized":false', b'"Finalized":true'),
    _variant(b'"UpgradeMessageID":null', b'"UpgradeMessageID":""'),
    _variant(b'"Deals":null', b'"Deals":[]'),
]

TEXT_ODDITIES = [
    b"", b"   ", b"null", b"[]", b"{}", b"{" , CANONICAL + b" ", b" " + CANONICAL, CANONICAL + b"\r", CANONICAL + b" " + CANONICAL,
    CANONICAL + b" null", CANONICAL + b"}", CANONICAL[:-1], b"\xef\xbb\xbf" + CANONICAL, CANONICAL.replace(b'"ID":{"Miner":5', b'"ID":{"Miner":5 ', 1),
]


def test_rows_go_never_writes_and_text_oddities(tmp_path: Path) -> None:
    lines = []
    for odd in NOT_GO_SHAPED + TEXT_ODDITIES:
        lines += [CANONICAL, odd]
    _same(tmp_path, lines + [CANONICAL])
    _same(tmp_path, [CANONICAL] * 3, end=b"")  # no newline at the end
    _same(tmp_path, [b"null", CANONICAL, b"null"])  # pyarrow 26 crashes on a block that starts with null
    _same(tmp_path, [b"", b""])
    assert not list(read_import_batches(str(tmp_path / "states.jsonl")))


def test_random_mutations_decided_as_the_strict_decoder(go_json: GoJSON, tmp_path: Path) -> None:
    rng = random.Random(14)
    bases = [_pairs(json.loads(js)) for js in go_json.fixtures().values()]
    bases += [_pairs(json.loads(s.to_go_json())) for s in _vsm_states()]
    lines = [make_state(7, 0).to_go_json()]  # (a first line `[...`  would make it a JSON array file)
    for _ in range(3000):
        v = rng.choice(bases)
        for _ in range(rng.randint(1, 2)):
            v = _mutate(v, rng)
        lines.append(_dump(v).encode())
        if rng.random() < 0.5:  # canonical neighbours: mutated lines inside blocks pyarrow parses
            lines.append(rng.choice(lines[:1] + [make_state(7, rng.randrange(100)).to_go_json()]))
    table = _same(tmp_path, lines, chunks=(5, 200, 10_000))
    assert table.num_rows > 1000


def test_states_through_the_reencoding_are_the_strict_decoders(tmp_path: Path) -> None:
    # a wide sample of states (every field set, unset, empty) read back: the rows are equal,
    # and each state taken by the comparison is the one the strict decoder reads
    states = _vsm_states() + [make_state(3, n, with_piece=True) for n in range(3)]
    for i, st in enumerate(states):
        st.abort_reason = "x" * i
    lines = [s.to_go_json() for s in states]
    _same(tmp_path, lines)
    assert _strict_calls(tmp_path / "states.jsonl") == 0
