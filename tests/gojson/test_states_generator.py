"""bench/states.py's realistic states are states damocles could hold, and as varied as real ones.

Every benchmark and most sector tests run on them (issue 24: a benchmark on one constant state
hid a quadratic check), so Go itself reads every generated row back to the same bytes, and the
variety the module's docstring promises is counted here: distinct digests, every point of
sealing, 0-4 pieces, legacy deals, offline states, labels and clients of every kind.
"""

from __future__ import annotations

import collections

import pyarrow.compute as pc
import pytest

from bench.states import make_state, state_batch
from vsm.sdk.sectors import arrow_to_go_json, arrow_to_states, check_arrow_states, decode_state_exact

from .conftest import GoJSON

pytestmark = pytest.mark.timeout(120)


def test_go_reads_every_generated_state_back_to_its_bytes(go_json: GoJSON) -> None:
    batch = state_batch(1001, 0, 3000)
    lines = arrow_to_go_json(batch).to_pylist()
    assert check_arrow_states(batch) == []
    for line, (kind, theirs) in zip(lines, go_json.roundtrip(lines)):
        assert kind == "ok" and theirs == line, (kind, theirs[:200])
    states = arrow_to_states(batch)
    assert [decode_state_exact(line) for line in lines] == states
    assert [s.to_go_json() for s in states] == lines  # the row encoder and the object encoder agree


def test_generated_states_are_distinct_and_varied() -> None:
    batch = state_batch(1001, 0, 20_000)
    states = arrow_to_states(batch.slice(0, 5000))
    # every CID, commitment and message its own (random digests), as real data has them
    pieces = batch.column("pieces").flatten()
    deals = batch.column("deals").flatten()
    for name, cids in {
        "CommR": batch.column("pre").field("comm_r"), "CommD": batch.column("pre").field("comm_d"),
        "PreCommitCid": batch.column("message_info").field("pre_commit_cid"),
        "CommitCid": batch.column("message_info").field("commit_cid"),
        "Pieces.PieceCID": pieces.field("piece").field("piece_cid"),
        "Pieces.DealInfo.PublishCid": pieces.field("deal_info").field("publish_cid"),
        "Deals.Piece.Cid": deals.field("piece").field("cid"),
    }.items():
        cids = cids.drop_null()
        assert len(cids) > 500 and len(pc.unique(cids)) == len(cids), name
    tickets = batch.column("ticket").field("ticket").drop_null()
    assert len(pc.unique(tickets)) == len(tickets) > 10_000
    # every point of sealing, online and offline
    stages = collections.Counter(
        ("removed" if s.removed else "finalized" if s.finalized else "upgraded" if s.upgraded else
         "proven" if s.proof else "seed" if s.seed else "precommitted" if s.pre else "ticket" if s.ticket else "allocated")
        for s in states
    )
    assert set(stages) == {"removed", "finalized", "proven", "seed", "precommitted", "ticket", "allocated"}, stages
    assert 0.3 < sum(s.finalized for s in states) / len(states) < 0.8  # offline
    assert any(s.upgraded and s.upgraded_info and s.upgrade_public for s in states)
    assert any(s.terminate_info.terminate_cid for s in states) and any(s.abort_reason for s in states)
    assert any(s.latest_state and s.latest_state.failure for s in states) and any(s.latest_state is None for s in states)
    # 0-4 pieces: with a builtin-market or a DDO deal, a nil embedded deal, no deal info; nil and empty lists
    assert {len(s.pieces or []) for s in states} == {0, 1, 2, 3, 4}
    assert any(s.pieces is None for s in states) and any(s.pieces == [] for s in states)
    infos = [p.deal_info for s in states for p in s.pieces or []]
    assert any(d is None for d in infos) and any(d is not None and d.deal_id is None for d in infos)
    assert any(d is not None and d.deal_id and d.publish_cid for d in infos)  # builtin market
    assert any(d is not None and d.deal_id == 0 and d.allocation_id and d.publish_cid is None for d in infos)  # DDO
    for s in states:  # pieces fit the sector, in order
        ends = [p.deal_info.offset + p.deal_info.length for p in s.pieces or [] if p.deal_info and p.deal_info.deal_id is not None]
        assert all(e <= (1 << 36) for e in ends)
    # legacy deals, with and without a proposal; labels and clients of every kind
    legacy = [d for s in states for d in s.deals or []]
    assert any(d.proposal is None for d in legacy) and any(d.proposal is not None for d in legacy)
    labels = pc.unique(deals.field("proposal").field("label").drop_null()).to_pylist()
    assert "" in labels and any(len(x.encode()) == 256 for x in labels) and any("<" in x or '"' in x for x in labels)
    clients = pc.unique(pieces.field("deal_info").field("client").drop_null()).to_pylist()
    assert {c[:2] for c in clients} == {"f0", "f1", "f3"}
    assert len({s.latest_state.worker.instance for s in states if s.latest_state}) > 50


def test_make_state_is_a_row_of_the_generator() -> None:
    assert make_state(7, 1500) == make_state(7, 1500) and make_state(7, 1500) is not make_state(7, 1500)
    assert make_state(7, 1500).id.number == 1500 and make_state(7, 1500) != make_state(7, 1501)
    with_pieces = [make_state(7, n, with_piece=True) for n in range(200)]
    assert all(s.pieces and s.pieces[0].deal_info and s.pieces[0].deal_info.deal_id is not None for s in with_pieces)
    assert all(not s.pieces and not s.deals for s in (make_state(7, n, with_piece=False) for n in range(200)))
    # with_piece changes the pieces only
    a, b = make_state(7, 3), make_state(7, 3, with_piece=True)
    a.pieces = b.pieces = a.deals = b.deals = None
    assert a == b
