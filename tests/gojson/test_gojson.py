"""vsm-pool's Go JSON codec against Go's encoding/json, both directions, byte for byte.

    Go fixture --vsm decode--> SectorState --vsm encode / Arrow encode--> == Go's bytes
    vsm state  --vsm encode--> bytes --Go decode, Go encode--> == the same bytes
    odd input  --Go--> accepted: vsm re-encodes it to Go's bytes | refused: vsm refuses too,
                                                                    naming the field path
"""

from __future__ import annotations

import json

import pytest

from vsm.sdk.sectors import (
    DealInfoV2,
    GoJSONError,
    PieceInfoV2,
    SectorID,
    SectorPieceV2,
    SectorState,
    arrow_to_go_json,
    decode_state_json,
    states_to_arrow,
)

from ..sectors.conftest import SAMPLE_GO_JSON
from ..sectors.helpers import make_state
from .conftest import GoJSON

pytestmark = pytest.mark.timeout(120)


def _arrow_bytes(states: list[SectorState]) -> list[bytes]:
    return arrow_to_go_json(states_to_arrow(states)).to_pylist()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- Go -> vsm


def test_go_fixtures_decode_and_reencode_byte_exact(go_json: GoJSON) -> None:
    fixtures = go_json.fixtures()
    assert {"empty", "fresh_init", "legacy_deals", "ddo_pieces", "snap_up", "finalized", "limits",
            "escapes_everywhere", "empty_not_nil", "undefined_everything", "address_kinds"} <= set(fixtures)
    states = {}
    for name, want in fixtures.items():
        st = SectorState.from_go_json(want)
        assert st.to_go_json() == want, name
        states[name] = st
    # the column-wise encoder of the import path, all fixtures in one batch and one by one
    assert _arrow_bytes(list(states.values())) == list(fixtures.values())
    for name, st in states.items():
        assert _arrow_bytes([st]) == [fixtures[name]], name


def test_go_fixture_details(go_json: GoJSON) -> None:
    fx = go_json.fixtures()
    ddo = SectorState.from_go_json(fx["ddo_pieces"])
    assert ddo.pieces is not None
    assert ddo.pieces[3].deal_info is not None and ddo.pieces[3].deal_info.deal_id is None  # embedded nil
    assert ddo.pieces[2].deal_info is None
    assert b'"DealInfo":{"IsBuiltinMarket":false,"IsCompatible":true}' in fx["ddo_pieces"]
    assert b'"Client":"\\u003cempty\\u003e"' in fx["undefined_everything"]
    assert b'\\b ff\\f' in fx["aborted"]  # Go >= 1.22, as damocles is built
    assert b'"Deals":null}' not in fx["legacy_deals"]  # no Pre.Deals since 2024-04
    empty = SectorState.from_go_json(fx["empty_not_nil"])
    assert empty.deals == [] and empty.pieces == [] and empty.proof is not None and empty.proof.proof == b""
    assert b'"Deals":[],"Pieces":[]' in fx["empty_not_nil"] and b'"Proof":{"Proof":""}' in fx["empty_not_nil"]


# ---------------------------------------------------------------- vsm -> Go


def _vsm_states() -> list[SectorState]:
    out = [make_state(1000, n) for n in range(6)]
    out.append(SectorState(SectorID(1, 2), 8))
    sample = SectorState.from_go_json(SAMPLE_GO_JSON)
    out.append(sample)
    odd = SectorState.from_go_json(SAMPLE_GO_JSON)
    assert odd.ticket is not None and odd.proof is not None and odd.latest_state is not None
    odd.deals, odd.pieces = [], []
    odd.ticket.ticket, odd.proof.proof = b"", bytes(range(256))
    odd.abort_reason = "tab\there \"quoted\" \\ \x01 \x08 \x0c \\u0008 \u2029 <x> & \x7f \U0001f600"
    odd.latest_state.worker.instance = "\\\\b"
    out.append(odd)
    nil_market = make_state(1000, 99, with_piece=True)
    nil_market.pieces = [SectorPieceV2(PieceInfoV2(2048, None), DealInfoV2(*[None] * 12, True, True))]
    out.append(nil_market)
    return out


def test_vsm_bytes_survive_go_unchanged(go_json: GoJSON) -> None:
    states = _vsm_states()
    ours = [s.to_go_json() for s in states]
    assert _arrow_bytes(states) == ours
    back = go_json.roundtrip(ours)
    for mine, (kind, theirs) in zip(ours, back):
        assert kind == "ok", theirs
        assert theirs == mine


# ---------------------------------------------------------------- odd input, both decoders

ID = b'"ID":{"Miner":1001,"Number":7}'
CID = b"baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"
CID_UPPER = CID.upper()
CID_V0 = b"QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
SECP = b"f15ihq5ibzwki2b4ep2f46avlkrqzhpqgtga7pdrq"


def _st(*parts: bytes) -> bytes:
    return b"{" + b",".join((ID, *parts)) + b"}"


def _deal(*parts: bytes) -> bytes:
    return _st(b'"Pieces":[{"Piece":{"Size":2048},"DealInfo":{' + b",".join(parts) + b"}}]")


def _proposal(*parts: bytes) -> bytes:
    return _st(b'"Deals":[{"ID":1,"Proposal":{' + b",".join(parts) + b"}}]")


# Accepted by Go: vsm must decode them and re-encode exactly what Go re-encodes.
ACCEPTED: list[tuple[str, bytes]] = [
    ("pre-2024 Pre.Deals and no Pieces", b"{" + ID + b',"SectorType":3,"Deals":[{"ID":5,"PayloadSize":9,"Piece":{"Size":2048,"Offset":0,"Cid":{"/":"' + CID + b'"}},"Proposal":null,"IsCompatible":false}],"Pre":{"CommR":{"/":"' + CID + b'"},"CommD":null,"Ticket":{"Ticket":"AQID","Epoch":9},"Deals":[5]},"Finalized":true}'),
    ("unknown fields anywhere", _st(b'"Foo":{"x":[1,2.5,-0,1e400,99999999999999999999999]}', b'"Pre":{"Bar":null}', b'"MessageInfo":{"Baz":true}')),
    ("keys in any case", b'{"id":{"miner":1,"NUMBER":2},"sectortype":3,"ticket":{"TICKET":"AQ==","epoch":4}}'),
    ("keys with long s and Kelvin sign", _st('"\u017fectorType":3,"Tic\u212aet":{"Epoch":5}'.encode())),
    ("key written with escapes", b'{"\\u0049D":{"Miner":1,"Number":2}}'),
    ("repeated scalar: last wins", _st(b'"SectorType":1', b'"SectorType":2')),
    ("repeated scalar then null: kept", _st(b'"SectorType":5', b'"SectorType":null')),
    ("repeated struct: merged", _st(b'"Ticket":{"Epoch":1}', b'"Ticket":{"Ticket":"AQ=="}')),
    ("repeated pointer then null: nil", _st(b'"Ticket":{"Epoch":1}', b'"Ticket":null')),
    ("repeated list: elements decoded into the old ones", _st(b'"Deals":[{"ID":1,"PayloadSize":5}]', b'"Deals":[{"ID":2},{"ID":3}]')),
    ("repeated ID merged", _st(b'"ID":{"Number":3}')),
    ("nulls leave zero values", _st(b'"SectorType":null', b'"MessageInfo":null', b'"TerminateInfo":{"TerminatedAt":null}', b'"AbortReason":null', b'"Finalized":null', b'"Pre":{"Ticket":null,"CommR":null}')),
    ("null list element is a zero struct", _st(b'"Deals":[null,{"ID":2}]', b'"Pieces":[null]')),
    ("negative zero into int64", _st(b'"SectorType":-0', b'"Ticket":{"Epoch":-0}')),
    ("int64 and uint64 limits", b'{"ID":{"Miner":18446744073709551615,"Number":0},"SectorType":-9223372036854775808,"Ticket":{"Epoch":9223372036854775807},"UpgradeLandedEpoch":-9223372036854775808}'),
    ("bytes as an array of numbers", _st(b'"Ticket":{"Ticket":[1,2,255,null]}', b'"Seed":{"Seed":[]}')),
    ("base64 with spare bits and an escaped newline", _st(b'"Ticket":{"Ticket":"AB=="}', b'"Proof":{"Proof":"AQ\\n\\r=="}', b'"Seed":{"Seed":""}')),
    ("[32]byte short, long and null", _st(b'"UpgradePublic":{"CommR":[1,2],"SealedCID":null}', b'"UpgradePublic":{"Activation":1}')),
    ("[32]byte longer than 32: the rest is skipped unread", _st(b'"UpgradePublic":{"CommR":[' + b",".join(b"%d" % i for i in range(32)) + b',"x",{"y":1}]}')),
    ("CIDs in other bases are re-encoded in base32", _st(b'"Pre":{"CommR":{"/":"' + CID_UPPER + b'"},"CommD":{"/":"F01551220' + b"aB" * 32 + b'"}}', b'"MessageInfo":{"PreCommitCid":{"/":"zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA"}}')),
    ("CID v0 and extra keys in a CID object", _st(b'"Pre":{"CommR":{"/":"' + CID_V0 + b'","x":1},"CommD":{"/":"bad","/":"' + CID + b'"}}', b'"TerminateInfo":{"TerminateCid":{"/":"' + CID + b'","/":null}}')),
    ("undefined CID pointer", _st(b'"MessageInfo":{"PreCommitCid":null,"CommitCid":null}')),
    ("addresses: t network, leading zeros, undefined forms", _deal(b'"Client":"t01234"', b'"Provider":"f0001001"')),
    ("addresses: undefined, null, secp on t", _deal(b'"Client":"\\u003cempty\\u003e"', b'"Provider":null', b'"PieceCID":null') .replace(b"]}", b',{"DealInfo":{"Client":"","Provider":"t' + SECP[1:] + b'"}}]}')),
    ("deal info: a null embedded key allocates it", _deal(b'"DealID":null')),
    ("deal info: only its own fields or unknown keys: embedded nil", _deal(b'"IsCompatible":true').replace(b"]}", b',{"DealInfo":{"Foo":1}}]}')),
    ("big integers in their odd forms", _proposal(b'"StoragePricePerEpoch":"+5"', b'"ProviderCollateral":"-0"', b'"ClientCollateral":"007"')),
    ("big integers huge", _proposal(b'"StoragePricePerEpoch":"-' + b"9" * 80 + b'"')),
    ("deal labels: 256 bytes, null, escapes", _proposal(b'"Label":"' + "é".encode() * 128 + b'"')),
    ("deal label null", _proposal(b'"Label":null', b'"Client":null')),
    ("strings: escapes of every kind", _st(b'"AbortReason":"\\u003c\\u003e\\u0026 \\u2028\\u2029 \\b\\f\\n\\r\\t \\u0000\\u001f \\/ \\"\\\\ \\ud83d\\ude00 \\u00e9"')),
    ("strings: lone surrogates become U+FFFD", _st(b'"AbortReason":"\\ud800 x \\udc00\\ud800 \\ud800\\u0041"')),
    ("strings: invalid UTF-8 bytes become U+FFFD", _st(b'"AbortReason":"a\xff b\xe2\x82 c\xed\xa0\x80 d\xc3"')),
    ("optional string and epoch: empty and zero", _st(b'"UpgradeMessageID":""', b'"UpgradeLandedEpoch":0')),
    ("whitespace around and inside", b' \t{ "ID" : { "Miner" : 1 , "Number" : 2 } , "Deals" : [ ] }\t '),
]

# Refused by Go: vsm must refuse them too, naming this field path ("" = the line as a whole).
REFUSED: list[tuple[str, bytes, str]] = [
    ("empty CID", _st(b'"Pre":{"CommR":{"/":""}}'), "Pre.CommR"),
    ("CID object without /", _st(b'"Pre":{"CommD":{}}'), "Pre.CommD"),
    ("CID as a plain string", _st(b'"Pre":{"CommR":"' + CID + b'"}'), "Pre.CommR"),
    ("CID / not a string", _st(b'"Pre":{"CommR":{"/":5}}'), "Pre.CommR"),
    ("CID / null only", _st(b'"Pieces":[{"Piece":{"PieceCID":{"/":null}}}]'), "Pieces[0].Piece.PieceCID"),
    ("CID garbage", _st(b'"MessageInfo":{"CommitCid":{"/":"bafyinvalid"}}'), "MessageInfo.CommitCid"),
    ("CID too short", _st(b'"Pre":{"CommR":{"/":"b"}}'), "Pre.CommR"),
    ("CID with trailing bytes", _st(b'"Pre":{"CommR":{"/":"' + CID + b'a"}}'), "Pre.CommR"),
    ("CID v0 with a bad hash", _st(b'"Pre":{"CommR":{"/":"Qm' + b"1" * 44 + b'"}}'), "Pre.CommR"),
    ("CID in base36 (not in vsm-pool or the stand-in)", _st(b'"Pre":{"CommR":{"/":"k2jmtxw8rjh1z69c6not1ibnjaqz1bdd3o4kqhjndtmjy2xq6pj4xa4qg"}}'), "Pre.CommR"),
    ("epoch 1.5", _st(b'"Pre":{"Ticket":{"Epoch":1.5}}'), "Pre.Ticket.Epoch"),
    ("epoch 1e3", _st(b'"Ticket":{"Epoch":1e3}'), "Ticket.Epoch"),
    ("epoch 1.0", _st(b'"Seed":{"Epoch":1.0}'), "Seed.Epoch"),
    ("epoch past int64", _st(b'"Ticket":{"Epoch":9223372036854775808}'), "Ticket.Epoch"),
    ("epoch as a string", _st(b'"Ticket":{"Epoch":"5"}'), "Ticket.Epoch"),
    ("negative uint64", b'{"ID":{"Miner":-1,"Number":2}}', "ID.Miner"),
    ("-0 into uint64", b'{"ID":{"Miner":1,"Number":-0}}', "ID.Number"),
    ("uint64 overflow", _st(b'"Deals":[{"ID":18446744073709551616}]'), "Deals[0].ID"),
    ("bool as a number", _st(b'"Finalized":1'), "Finalized"),
    ("bool as a string", _st(b'"Removed":"true"'), "Removed"),
    ("int as a bool", _st(b'"SectorType":true'), "SectorType"),
    ("string as a number", _st(b'"AbortReason":5'), "AbortReason"),
    ("string as an object", _st(b'"LatestState":{"Worker":{"Instance":{}}}'), "LatestState.Worker.Instance"),
    ("bad base64: padding", _st(b'"Ticket":{"Ticket":"AQ="}'), "Ticket.Ticket"),
    ("bad base64: length", _st(b'"Seed":{"Seed":"A"}'), "Seed.Seed"),
    ("bad base64: alphabet", _st(b'"Proof":{"Proof":"!!!!"}'), "Proof.Proof"),
    ("bad base64: url alphabet", _st(b'"Proof":{"Proof":"-_-_"}'), "Proof.Proof"),
    ("bad base64: data after padding", _st(b'"UpgradedInfo":{"Proof":"AQ==AQ=="}'), "UpgradedInfo.Proof"),
    ("byte array element past 255", _st(b'"Ticket":{"Ticket":[1,256]}'), "Ticket.Ticket[1]"),
    ("byte array element negative", _st(b'"UpgradePublic":{"CommR":[-1]}'), "UpgradePublic.CommR[0]"),
    ("[32]byte as base64", _st(b'"UpgradePublic":{"CommR":"AQ=="}'), "UpgradePublic.CommR"),
    ("bytes as an object", _st(b'"Ticket":{"Ticket":{}}'), "Ticket.Ticket"),
    ("struct as an array", _st(b'"Ticket":[]'), "Ticket"),
    ("struct value as a string", _st(b'"MessageInfo":"x"'), "MessageInfo"),
    ("list as an object", _st(b'"Deals":{}'), "Deals"),
    ("list element as a number", _st(b'"Pieces":[{"Piece":{"Size":1}},5]'), "Pieces[1]"),
    ("address with a bad checksum", _deal(b'"Client":"f15ihq5ibzwki2b4ep2f46avlkrqzhpqgtga7pdra"'), "Pieces[0].DealInfo.Client"),
    ("address not a number", _deal(b'"Provider":"f0abc"'), "Pieces[0].DealInfo.Provider"),
    ("address of an unknown network", _proposal(b'"Client":"x01234"'), "Deals[0].Proposal.Client"),
    ("address in upper case", _deal(b'"Client":"' + SECP.upper() + b'"'), "Pieces[0].DealInfo.Client"),
    ("address as a number", _deal(b'"Client":1234'), "Pieces[0].DealInfo.Client"),
    ("ID address past 2^63", _deal(b'"Client":"f09223372036854775808"'), "Pieces[0].DealInfo.Client"),
    ("token amount as a number", _proposal(b'"StoragePricePerEpoch":5'), "Deals[0].Proposal.StoragePricePerEpoch"),
    ("token amount null", _proposal(b'"ProviderCollateral":null'), "Deals[0].Proposal.ProviderCollateral"),
    ("token amount 1.5", _proposal(b'"ClientCollateral":"1.5"'), "Deals[0].Proposal.ClientCollateral"),
    ("token amount with underscores", _proposal(b'"ClientCollateral":"1_000"'), "Deals[0].Proposal.ClientCollateral"),
    ("token amount empty", _proposal(b'"ClientCollateral":""'), "Deals[0].Proposal.ClientCollateral"),
    ("token amount with a space", _proposal(b'"ClientCollateral":" 1"'), "Deals[0].Proposal.ClientCollateral"),
    ("deal label of 257 bytes", _proposal(b'"Label":"' + b"x" * 257 + b'"'), "Deals[0].Proposal.Label"),
    ("deal label as a number", _proposal(b'"Label":5'), "Deals[0].Proposal.Label"),
    ("optional string as a number", _st(b'"UpgradeMessageID":5'), "UpgradeMessageID"),
    ("optional epoch as a string", _st(b'"UpgradeLandedEpoch":"5"'), "UpgradeLandedEpoch"),
    ("not JSON: trailing comma", b'{"ID":{"Miner":1,"Number":2},}', ""),
    ("not JSON: NaN", _st(b'"SectorType":NaN'), ""),
    ("not JSON: leading zero", _st(b'"SectorType":01'), ""),
    ("not JSON: trailing data", _st() + b" {}", ""),
    ("not JSON: single quotes", b"{'ID':{}}", ""),
    ("not JSON: truncated", _st()[:-3], ""),
    ("not JSON: control character in a string", _st(b'"AbortReason":"a\x01b"'), ""),
    ("not JSON: invalid byte outside a string", _st() + b"\xff", ""),
    ("not JSON: UTF-8 byte order mark", b"\xef\xbb\xbf" + _st(), ""),
    ("a state that is an array", b"[" + _st() + b"]", ""),
    ("a state that is a string", b'"state"', ""),
]

# Accepted by Go, refused by vsm-pool on purpose: damocles would store m-0-n-0 or crash.
REFUSED_BY_VSM_ONLY: list[tuple[str, bytes, str]] = [
    ("no ID", b'{"SectorType":8}', "ID"),
    ("ID null", b'{"ID":null,"SectorType":8}', "ID"),
    ("ID without Miner", b'{"ID":{"Number":2}}', "ID.Miner"),
    ("ID with Number null", b'{"ID":{"Miner":1,"Number":null}}', "ID.Number"),
    ("the line null", b"null", ""),
]


def test_inputs_go_accepts(go_json: GoJSON) -> None:
    lines = [line for _, line in ACCEPTED]
    for (name, line), (kind, theirs) in zip(ACCEPTED, go_json.roundtrip(lines)):
        assert kind == "ok", f"{name}: Go refused it: {theirs!r}"
        st = decode_state_json(line)
        assert st.to_go_json() == theirs, name
        assert _arrow_bytes([st]) == [theirs], name


def test_inputs_go_refuses(go_json: GoJSON) -> None:
    lines = [line for _, line, _ in REFUSED]
    for (name, line, path), (kind, theirs) in zip(REFUSED, go_json.roundtrip(lines)):
        assert kind == "err", f"{name}: Go accepted it: {theirs!r}"
        with pytest.raises(GoJSONError) as e:
            decode_state_json(line)
        assert e.value.path == path, f"{name}: {e.value} (Go: {theirs.decode(errors='replace')})"
        assert e.value.reason


def test_inputs_refused_on_purpose(go_json: GoJSON) -> None:
    lines = [line for _, line, _ in REFUSED_BY_VSM_ONLY]
    for (name, line, path), (kind, theirs) in zip(REFUSED_BY_VSM_ONLY, go_json.roundtrip(lines)):
        assert kind in ("ok", "null"), f"{name}: {kind} {theirs!r}"
        if kind == "ok":
            assert b'"ID":{"Miner":' in theirs  # Go fills in zeros: damocles would store that
        with pytest.raises(GoJSONError) as e:
            decode_state_json(line)
        assert e.value.path == path, f"{name}: {e.value}"


def test_unknown_fields_are_counted_and_named() -> None:
    line = ACCEPTED[0][1]
    unknown: list[str] = []
    st = decode_state_json(line, unknown)
    assert unknown == ["PreCommitInfo.Deals"]
    assert st.pre is not None and b'"Deals":[5]' not in st.to_go_json()
    unknown = []
    decode_state_json(dict(ACCEPTED)["unknown fields anywhere"], unknown)
    assert sorted(unknown) == ["MessageInfo.Baz", "PreCommitInfo.Bar", "SectorState.Foo"]


def test_error_text_names_path_and_cause() -> None:
    with pytest.raises(GoJSONError) as e:
        decode_state_json(_st(b'"Pre":{"CommR":{"/":""}}'))
    assert str(e.value).startswith("Pre.CommR: not a CID: ")
    with pytest.raises(GoJSONError) as e:
        decode_state_json(_st(b'"Deals":[{"Proposal":{"Client":"f0x"}}]'))
    assert str(e.value) == "Deals[0].Proposal.Client: not an address: 'f0x': invalid address payload"
    # a plain dict (JSON-RPC) is held to the same rules
    with pytest.raises(GoJSONError, match=r"^Ticket.Epoch: not an int64: number 1.5$"):
        SectorState.from_go_dict(json.loads(_st(b'"Ticket":{"Epoch":1.5}')))


# ---------------------------------------------------------------- through the state manager


def test_manager_stores_go_bytes(go_json: GoJSON, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Go-written states imported (the pipelined, column-wise path) and updated: the KV holds
    # exactly what damocles-manager's json.Marshal would write
    from vsm.sectors import SectorStateManager

    from ..sectors.conftest import DictDB

    fixtures = go_json.fixtures()
    states = {}
    for name, js in fixtures.items():
        st = SectorState.from_go_json(js)
        st.id = SectorID(77, len(states))  # distinct keys ("empty" has ID 0/0)
        states[name] = st
    db = DictDB()
    with SectorStateManager(db, str(tmp_path / "journal"), fsync=False, import_chunk=5) as m:
        assert m.import_states(list(states.values())) == len(states)
        # (finalized ones go offline, as damocles routes them)
        stored = {v for c in ("meta", "offline_meta") for v in db.open_collection(c).data.values()}
        assert stored == {st.to_go_json() for st in states.values()}
        back = go_json.roundtrip(sorted(stored))
        assert all(kind == "ok" and theirs == mine for (kind, theirs), mine in zip(back, sorted(stored)))
        st = states["ddo_pieces"]
        m.update(st.id, {"AbortReason": "<x> & \x08"})
        (value,) = [v for v in db.open_collection("meta").data.values() if b'"AbortReason":"\\u003cx\\u003e' in v]
        (kind, theirs), = go_json.roundtrip([value])
        assert kind == "ok" and theirs == value


# ---------------------------------------------------------------- the fast path = the exact path


def _outcome(fn, line: bytes) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    try:
        return "ok", fn(line)
    except GoJSONError as e:
        return "err", (e.path, e.reason)


def test_fast_path_decodes_as_the_exact_path(go_json: GoJSON) -> None:
    from vsm.sdk.sectors import _decode_state_fast, decode_state_exact

    lines = list(go_json.fixtures().values()) + [s.to_go_json() for s in _vsm_states()]
    lines += [line for _, line in ACCEPTED] + [line for _, line, _ in REFUSED + REFUSED_BY_VSM_ONLY]
    fast_taken = 0
    for line in lines:
        assert _outcome(decode_state_json, line) == _outcome(decode_state_exact, line), line
        try:
            st = _decode_state_fast(line)
        except Exception:
            continue
        fast_taken += 1
        assert st == decode_state_exact(line), line
    assert fast_taken >= 30  # the states damocles writes take it
    # a repeated key is seen (Go decodes both: a dict would keep only the second)
    with pytest.raises(ValueError, match="repeated key"):
        _decode_state_fast(dict(ACCEPTED)["repeated struct: merged"])
    # a string holding "-0" is no number -0
    _decode_state_fast(_st(b'"LatestState":{"Worker":{"Instance":"worker-01","Location":"rack-0 b"}}'))


# ---------------------------------------------------------------- random odd input, Go decides

_ODD_VALUES: list[object] = [
    None, True, False, 0, -1, 1.5, 1e3, 2**63, 2**64, -(2**63) - 1, "", "x", "AQ==", "AQ=", "f01234", "t01234",
    "<empty>", "-5", "\u2028<&>", [], [1, 2], [300], {}, {"/": ""}, {"/": CID.decode()}, {"/": 5}, {"x": 1},
]


def _dump(v: object) -> str:
    """JSON text with repeated keys kept (objects as lists of pairs marked by a tuple)."""
    if isinstance(v, tuple):
        return "{" + ",".join(json.dumps(k) + ":" + _dump(x) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def _pairs(v: object) -> object:
    if isinstance(v, dict):
        return tuple((k, _pairs(x)) for k, x in v.items())
    if isinstance(v, list):
        return [_pairs(x) for x in v]
    return v


def _mutate(v: object, rng: "random.Random") -> object:  # type: ignore[name-defined]  # noqa: F821
    """v with one random change somewhere: a value replaced, a key dropped, repeated or
    recased, an unknown key added."""
    if isinstance(v, tuple) and v and rng.random() < 0.7:
        i = rng.randrange(len(v))
        k, x = v[i]
        op = rng.random()
        if op < 0.45 and isinstance(x, (tuple, list)) and x:
            return v[:i] + ((k, _mutate(x, rng)),) + v[i + 1 :]
        if op < 0.7:
            return v[:i] + ((k, rng.choice(_ODD_VALUES)),) + v[i + 1 :]
        if op < 0.8:
            return v[:i] + v[i + 1 :]
        if op < 0.88:
            return v + ((k, rng.choice([x, rng.choice(_ODD_VALUES)])),)
        if op < 0.95:
            return v[:i] + ((k.lower(), x),) + v[i + 1 :]
        return v + (("Unknown" + k, x),)
    if isinstance(v, list) and v:
        i = rng.randrange(len(v))
        return v[:i] + [_mutate(v[i], rng) if rng.random() < 0.7 else rng.choice(_ODD_VALUES)] + v[i + 1 :]
    return rng.choice(_ODD_VALUES)


def test_random_odd_inputs_go_decides(go_json: GoJSON) -> None:
    import random

    rng = random.Random(12)
    bases = [_pairs(json.loads(js)) for js in go_json.fixtures().values()]
    lines = []
    for _ in range(1500):
        v = rng.choice(bases)
        for _ in range(rng.randint(1, 2)):
            v = _mutate(v, rng)
        lines.append(_dump(v).encode())
    accepted = refused = 0
    for line, (kind, theirs) in zip(lines, go_json.roundtrip(lines)):
        mine = _outcome(decode_state_json, line)
        if kind == "ok":
            if mine[0] == "err":  # only where vsm-pool refuses on purpose: no sector ID
                path, reason = mine[1]  # type: ignore[misc]
                assert path.startswith("ID") and reason.startswith("missing"), (line, mine, theirs)
                continue
            assert mine[1].to_go_json() == theirs, line  # type: ignore[union-attr]
            accepted += 1
        else:
            assert mine[0] == "err", (line, theirs)
            refused += 1
    assert accepted > 200 and refused > 200, (accepted, refused)


# ---------------------------------------------------------------- Arrow rows Go could not hold


def test_check_arrow_states_flags_what_go_would_not_write(go_json: GoJSON) -> None:
    from vsm.sdk.sectors import check_arrow_states

    good = [SectorState.from_go_json(js) for js in go_json.fixtures().values()] + _vsm_states()
    assert check_arrow_states(states_to_arrow(good)) == []
    bad = [make_state(3, n, with_piece=True) for n in range(8)]
    assert bad[0].pre is not None and bad[4].pre is not None and bad[7].pre is not None
    bad[0].pre.comm_r = bad[0].pre.comm_r.upper()  # type: ignore[union-attr]
    bad[1].message_info.pre_commit_cid = "bafyinvalid"
    bad[2].pieces[0].deal_info.client = "t01234"  # type: ignore[index,union-attr]
    bad[3].deals = [SectorState.from_go_json(go_json.fixtures()["legacy_deals"]).deals[0]]  # type: ignore[index]
    bad[3].deals[0].proposal.storage_price_per_epoch = "+5"  # type: ignore[index,union-attr]
    bad[4].pre.comm_d = bad[4].pre.comm_d[:-1] + "b"  # type: ignore[index]  # spare bits set
    bad[5].pieces[0].deal_info.provider = "f15ihq5ibzwki2b4ep2f46avlkrqzhpqgtga7pdra"  # type: ignore[index,union-attr]
    bad[6].latest_state.worker.instance = "not checked: any string"  # type: ignore[union-attr]
    bad[7].pre.comm_r = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"  # v0: valid
    found = check_arrow_states(states_to_arrow(bad))
    assert [(row, e.path) for row, e in found] == [
        (0, "Pre.CommR"), (1, "MessageInfo.PreCommitCid"), (2, "Pieces[0].DealInfo.Client"),
        (3, "Deals[0].Proposal.StoragePricePerEpoch"), (4, "Pre.CommD"), (5, "Pieces[0].DealInfo.Provider"),
    ]
    assert "Go writes it 'f01234'" in str(found[2][1])
    # Go agrees: what is flagged Go refuses or would write otherwise; the rest it keeps as is
    ours = [s.to_go_json() for s in bad]
    flagged = {row for row, _ in found}
    for i, (kind, theirs) in enumerate(go_json.roundtrip(ours)):
        assert (kind == "ok" and theirs == ours[i]) == (i not in flagged), (i, kind, theirs)


def test_check_arrow_states_parses_one_cid_per_header_not_per_cid(monkeypatch) -> None:
    """Real states carry distinct CIDs (random digests) that already differ in their first 16
    characters: the check must parse one value per distinct header, not one per CID (it did
    one pass over the column per CID: 4,000 states took 51 s, issue 24)."""
    import base64
    import random

    from vsm.sdk import _gojson
    from vsm.sdk.sectors import check_arrow_states

    rnd = random.Random(24)
    piece, sealed, message = bytes.fromhex("0181e203922020"), bytes.fromhex("0182e203912020"), bytes.fromhex("0171a0e40220")

    def cid(header: bytes) -> str:
        return "b" + base64.b32encode(header + rnd.randbytes(32)).decode().rstrip("=").lower()

    states = [s for s in (make_state(3, n, with_piece=True) for n in range(6000)) if s.pre is not None][:3000]
    for st in states:
        st.pre.comm_r, st.pre.comm_d = cid(sealed), cid(piece)  # type: ignore[union-attr]
        st.message_info.pre_commit_cid = cid(message)  # type: ignore[union-attr]
        st.pieces[0].piece.piece_cid = st.pieces[0].deal_info.piece_cid = cid(piece)  # type: ignore[index,union-attr]
    states[1234].pre.comm_d = states[1234].pre.comm_d[:-1] + "b"  # type: ignore[union-attr]  # spare bits set
    parsed: list[str] = []
    real_parse = _gojson.parse_cid
    monkeypatch.setattr(_gojson, "parse_cid", lambda v: parsed.append(v) or real_parse(v))
    found = check_arrow_states(states_to_arrow(states))
    assert [(row, e.path) for row, e in found] == [(1234, "Pre.CommD")]
    # a few per column (one per header, the bad value once more), never one per state
    assert len(parsed) < 60, len(parsed)
