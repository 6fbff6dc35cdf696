"""SectorState: Go JSON byte-exact round trip, Arrow round trip, DuckDB nested round trip."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from vsm.sdk.sectors import (
    SECTOR_EVENT_SCHEMA,
    SECTOR_STATE_SCHEMA,
    SectorID,
    SectorState,
    arrow_to_states,
    go_dumps,
    sector_key,
    states_to_arrow,
)

pytestmark = pytest.mark.timeout(30)


def test_go_json_round_trip_is_byte_exact(sample_json: bytes) -> None:
    st = SectorState.from_go_json(sample_json)
    assert st.id == SectorID(1001, 42)
    assert st.deals is not None and st.deals[0].proposal is not None
    assert st.deals[0].proposal.label == "mAXCg5AIg <data> & ü"
    assert st.deals[1].proposal is None
    assert st.pieces is not None and st.pieces[0].deal_info is not None
    assert st.pieces[0].deal_info.allocation_id == 5566
    assert st.pieces[1].deal_info is None
    assert st.ticket is not None and st.ticket.ticket == bytes.fromhex("deadbeef00010203")
    assert st.upgrade_public is not None and st.upgrade_public.comm_r == bytes(range(1, 33))
    assert st.pre is not None and st.pre.ticket.epoch == 2501000
    assert st.to_go_json() == sample_json


def test_new_state_matches_go_zero_value() -> None:
    # what json.Marshal(core.SectorState{ID: ..., SectorType: 8}) writes: omitempty pointers absent
    want = (
        b'{"ID":{"Miner":1,"Number":2},"SectorType":8,"Deals":null,"Pieces":null,'
        b'"MessageInfo":{"PreCommitCid":null,"CommitCid":null,"NeedSend":false},'
        b'"TerminateInfo":{"TerminateCid":null,"TerminatedAt":0,"AddedHeight":0},'
        b'"Finalized":false,"Removed":false,"AbortReason":"","Upgraded":false,"UpgradePublic":null,'
        b'"UpgradedInfo":null,"UpgradeMessageID":null,"UpgradeLandedEpoch":null,"Imported":false,'
        b'"NeedRebuild":false,"Unsealing":false}'
    )
    assert SectorState(SectorID(1, 2), 8).to_go_json() == want
    assert SectorState.from_go_json(want).to_go_json() == want


def test_go_string_escaping() -> None:
    # \b and \f as Go >= 1.22 writes them (damocles-manager is built with Go 1.24)
    assert go_dumps("a\x08b\x0c<&>\u2028\\b é \\u0008") == '"a\\bb\\f\\u003c\\u0026\\u003e\\u2028\\\\b é \\\\u0008"'.encode()


def test_older_state_without_newer_fields_imports() -> None:
    # a 2023 state: no Pieces / Unsealing keys; missing keys take Go zero values
    old = {"ID": {"Miner": 5, "Number": 6}, "SectorType": 3, "Deals": [], "Finalized": True}
    st = SectorState.from_go_dict(old)
    assert st.finalized and st.deals == [] and st.pieces is None and not st.unsealing


def test_arrow_round_trip_nested(sample_json: bytes) -> None:
    st = SectorState.from_go_json(sample_json)
    batch = states_to_arrow([st, SectorState(SectorID(1, 1))])
    assert batch.schema.equals(SECTOR_STATE_SCHEMA)
    assert pa.types.is_list(batch.schema.field("pieces").type)
    assert pa.types.is_struct(batch.schema.field("pieces").type.value_type)
    back = arrow_to_states(batch)
    assert back[0] == st and back[0].to_go_json() == sample_json
    assert back[1] == SectorState(SectorID(1, 1))


def test_event_schema_columns() -> None:
    names = SECTOR_EVENT_SCHEMA.names
    assert names[:7] == ["seq", "kind", "time", "worker_state", "changed_fields", "miner", "number"]
    assert SECTOR_EVENT_SCHEMA.field("time").type == pa.timestamp("us", tz="UTC")
    assert names[5:] == SECTOR_STATE_SCHEMA.names


def test_json_to_arrow_to_duckdb_exact(sample_json: bytes) -> None:
    st = SectorState.from_go_json(sample_json)
    batch = states_to_arrow([st])
    con = duckdb.connect()
    con.register("b", pa.Table.from_batches([batch]))
    con.execute("CREATE TABLE t AS SELECT * FROM b")
    con.unregister("b")
    # nested values are queryable as such
    rows = con.execute("SELECT pieces[1].deal_info.allocation_id, deals[1].proposal.label FROM t").fetchall()
    assert rows == [(5566, "mAXCg5AIg <data> & ü")]
    out = con.sql("SELECT * FROM t").to_arrow_table()
    back = arrow_to_states(out)[0]
    assert back == st
    assert back.to_go_json() == sample_json
    assert json.loads(back.to_go_json()) == json.loads(sample_json)


def test_sector_key() -> None:
    assert sector_key(SectorID(1001, 42)) == b"m-1001-n-42"


def test_arrow_to_go_json_matches_per_row_encoder(sample_json: bytes) -> None:
    # the column-wise encoder of the import path writes the same bytes as to_go_json
    from vsm.sdk.sectors import arrow_to_go_json

    from .helpers import make_state

    odd = SectorState.from_go_json(sample_json)
    assert odd.pre is not None and odd.ticket is not None and odd.proof is not None
    odd.deals, odd.pieces = [], []
    odd.ticket.ticket, odd.proof.proof = b"", b"\x00\xff\x10\x11"
    odd.abort_reason = "tab\there \"quoted\" \\ \x01 \u2029 <x>"
    states = [SectorState.from_go_json(sample_json), SectorState(SectorID(1, 2), 8), odd]
    states += [make_state(5, n) for n in range(200)]
    batch = states_to_arrow(states)
    want = [s.to_go_json() for s in states]
    assert arrow_to_go_json(batch).to_pylist() == want
    assert arrow_to_go_json(batch.slice(3, 50)).to_pylist() == want[3:53]
    assert arrow_to_go_json(pa.Table.from_batches([batch.slice(0, 2), batch.slice(2)])).to_pylist() == want


def test_arrow_to_go_json_escapes_and_byte_lengths_in_nested_fields() -> None:
    # nested strings needing Go's escapes (and a harmless 0xE2 lead byte: the exact path), base64
    # of every length mod 3 in one column, mostly-null structs: same bytes as to_go_json
    from vsm.sdk.sectors import arrow_to_go_json

    from .helpers import make_state

    sealed = (make_state(7, n, with_piece=n % 2 == 0) for n in range(200))  # realistic: some lack what is edited below
    states = [s for s in sealed if s.latest_state is not None and s.proof is not None and s.ticket is not None][:30]
    for i, st in enumerate(states):
        assert st.latest_state is not None and st.proof is not None and st.ticket is not None
        st.latest_state.worker.instance = ["w<1>&", "plain", "dash \u2014 ok", "sep \u2028", "q\"\\"][i % 5]
        st.proof.proof = bytes(range(i % 7))
        st.ticket.ticket = None if i % 4 == 0 else b"\xfb" * (i % 5)
        if st.pieces and st.pieces[0].deal_info is not None and st.pieces[0].deal_info.deal_id is not None:
            st.pieces[0].deal_info.client = "c\x7f\u2029<"
    states[3].seed = None
    want = [s.to_go_json() for s in states]
    batch = states_to_arrow(states)
    assert arrow_to_go_json(batch).to_pylist() == want
    assert arrow_to_go_json(batch.slice(5, 11)).to_pylist() == want[5:16]
