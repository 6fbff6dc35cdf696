"""Realistic sector states for the benchmarks and the tests (shipped in the wheel with bench/,
so `vsm-pool bench` runs from an installed copy, where tests/ is not)."""

from __future__ import annotations

from vsm.sdk.sectors import (
    DealInfoV2,
    MessageInfo,
    PieceInfoV2,
    PreCommitInfo,
    ProofInfo,
    ReportStateReq,
    SectorID,
    SectorPieceV2,
    SectorState,
    SectorStateChange,
    Seed,
    Ticket,
    WorkerIdentifier,
)

__all__ = ["make_state"]


def make_state(miner: int, number: int, with_piece: bool | None = None) -> SectorState:
    """A sealed-looking state; every third one carries a DDO piece."""
    if with_piece is None:
        with_piece = number % 3 == 0
    st = SectorState(SectorID(miner, number), 8)
    st.ticket = Ticket(number.to_bytes(8, "big") * 4, 2_500_000 + number)
    st.seed = Seed(b"\x01" * 32, 2_500_150 + number)
    st.pre = PreCommitInfo("bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb", "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli", Ticket(b"\x02" * 32, 2_500_000))
    st.proof = ProofInfo(b"\x03" * 192)
    st.message_info = MessageInfo("bafy2bzacedxkkpqwmuf4dnnz4h5djmvjc7zu2bhzbhbkoqqm6npg3zpd5lewu", None, True)
    st.latest_state = ReportStateReq(WorkerIdentifier("worker-01", "10.0.0.7"), SectorStateChange("C2Done", "Persisted", "Evt"), None)
    if with_piece:
        cid = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"
        st.pieces = [SectorPieceV2(PieceInfoV2(34359738368, cid), DealInfoV2(0, None, 1000 + number, cid, 34359738368, "f03344", "f0%d" % miner, 0, 34359738368, 3 << 30, 2_510_000, 5_000_000, False, False))]
    return st
