package main

import (
	"math"
	"math/big"
)

type fixture struct {
	name  string
	state SectorState
}

func mustCid(s string) Cid {
	c, err := CidDecode(s)
	if err != nil {
		panic(s + ": " + err.Error())
	}
	return c
}

func cidp(s string) *Cid { c := mustCid(s); return &c }

func mustAddr(s string) Address {
	a, err := addressDecode(s)
	if err != nil {
		panic(s + ": " + err.Error())
	}
	return a
}

func label(s string) DealLabel { return DealLabel{bs: []byte(s)} }

func tok(s string) TokenAmount {
	i, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic(s)
	}
	return TokenAmount{i}
}

const (
	commR   = "bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb"
	commD   = "baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"
	piece1  = "baga6ea4seaqao7s73y24kcutaosvacpdjgfe5pw76ooefnyqw4ynr3d2y6x2mpq"
	piece2  = "baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"
	msgCid  = "bafy2bzacea3wsdh6y3a36tb3skempjoxqpuyompjbmfeyf34fi3uy6uue42v4"
	msgCid2 = "bafy2bzacecnamqgqmifpluoeldx7zzglxcljo6oja4vrmtj7432rphldpdmm2"
	v0Cid   = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
)

var (
	undef  Address
	idAddr = mustAddr("f01234")
	// secp256k1, actor, bls and delegated (f4) addresses, for checksums of every protocol
	secpAddr = mustAddr("f15ihq5ibzwki2b4ep2f46avlkrqzhpqgtga7pdrq")
	actAddr  = mustAddr("f24vg6ut43yw2h2jqydgbg2xq7x6f4kub3bg6as6i")
	blsAddr  = mustAddr("f3vvmn62lofvhjd2ugzca6sof2j2ubwok6cj4xxbfzz4yuxfkgobpihhd2thlanmsh3w2ptld2gqkn2jvlss4a")
	f4Addr   = mustAddr("f410fkkld55ioe7qg24wvt7fu6pbknb56ht7pt4zamxa")
)

func fixtures() []fixture {
	sid := SectorID{Miner: 1001, Number: 42}
	seal := RegisteredSealProof(8)
	ticket := &Ticket{Ticket: Randomness{0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3}, Epoch: 2501000}
	seed := &Seed{Seed: Randomness{0, 1, 2, 3, 4, 5, 6, 7}, Epoch: 2501150}
	pre := &PreCommitInfo{CommR: mustCid(commR), CommD: mustCid(commD), Ticket: *ticket}
	landed := SectorUpgradeLandedEpoch(3000000)
	msgID := SectorUpgradeMessageID("e4b2 <snap> & done")
	var commRBytes [32]byte
	for i := range commRBytes {
		commRBytes[i] = byte(i + 1)
	}
	legacy := Deals{
		{ID: 7788, PayloadSize: 1024, Piece: PieceInfo{Size: 2048, Cid: mustCid(piece1)}, Proposal: &DealProposal{
			PieceCID: mustCid(piece1), PieceSize: 2048, VerifiedDeal: true, Client: idAddr, Provider: mustAddr("f01001"),
			Label: label("mAXCg5AIg <data> & ü"), StartEpoch: 2510000, EndEpoch: 4000000,
			StoragePricePerEpoch: tok("0"), ProviderCollateral: tok("363510000000000"), ClientCollateral: TokenAmount{},
		}},
		{ID: 0, Piece: PieceInfo{Size: 2048, Offset: 2048, Cid: mustCid(piece2)}, IsCompatible: true},
	}
	ddo := SectorPieces{
		{Piece: AbiPieceInfo{Size: 34359738368, PieceCID: mustCid(commD)}, DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{
			AllocationID: 5566, PieceCID: mustCid(commD), PieceSize: 34359738368, Client: mustAddr("f03344"), Provider: mustAddr("f01001"),
			Length: 34359738368, PayloadSize: 30000000000, StartEpoch: 2510000, EndEpoch: 5000000,
		}}},
		{Piece: AbiPieceInfo{Size: 2048, PieceCID: mustCid(piece2)}, DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{
			DealID: 99, PublishCid: mustCid(msgCid), PieceCID: mustCid(piece2), PieceSize: 2048, Client: secpAddr, Provider: mustAddr("f01001"),
			Offset: 34359738368, Length: 2048, PayloadSize: 1900, StartEpoch: 2510000, EndEpoch: 4000000,
		}, IsBuiltinMarket: true}},
		{Piece: AbiPieceInfo{Size: 2048, PieceCID: mustCid(piece1)}}, // a filler piece: no deal info
		{Piece: AbiPieceInfo{Size: 1024}, DealInfo: &DealInfoV2{IsCompatible: true}}, // deal info whose embedded part is nil
	}
	latest := &ReportStateReq{
		Worker:      WorkerIdentifier{Instance: "worker-1", Location: "/mnt/sealing/01"},
		StateChange: SectorStateChange{Prev: "Empty", Next: "Allocated", Event: "SectorAllocated"},
	}
	mi := MessageInfo{PreCommitCid: cidp(msgCid), CommitCid: cidp(msgCid2), NeedSend: false}

	full := SectorState{
		ID: sid, SectorType: seal, Ticket: ticket, Seed: seed, LegacyPieces: legacy, Pieces: ddo, Pre: pre,
		Proof: &ProofInfo{Proof: []byte{1, 2, 3, 4, 5}}, MessageInfo: mi,
		TerminateInfo: TerminateInfo{TerminateCid: cidp(msgCid2), TerminatedAt: 3100000, AddedHeight: 3099000},
		LatestState:   &ReportStateReq{Worker: latest.Worker, StateChange: SectorStateChange{Prev: "C2Done", Next: "Finished", Event: "SectorFinished"}, Failure: &SectorFailure{Level: "temp", Desc: "rpc: <timeout> & retry\nnext"}},
		Finalized:     true, AbortReason: "", Upgraded: true,
		UpgradePublic:      &SectorUpgradePublic{CommR: commRBytes, SealedCID: mustCid(commR), Activation: 2500000, Expiration: 4500000},
		UpgradedInfo:       &SectorUpgradedInfo{AccessInstance: "store-1", SealedCID: mustCid(commR), UnsealedCID: mustCid(commD), Proof: []byte("snap-proof")},
		UpgradeMessageID:   &msgID,
		UpgradeLandedEpoch: &landed,
		Imported:           true, NeedRebuild: true, Unsealing: true,
	}

	var out []fixture
	add := func(name string, st SectorState) { out = append(out, fixture{name, st}) }

	add("empty", SectorState{})
	add("fresh_init", SectorState{ID: sid, SectorType: seal})
	add("with_ticket", SectorState{ID: sid, SectorType: seal, Ticket: ticket, LatestState: latest})
	add("legacy_deals", SectorState{ID: sid, SectorType: 3, Ticket: ticket, LegacyPieces: legacy, Pre: pre, MessageInfo: MessageInfo{PreCommitCid: cidp(msgCid), NeedSend: true}})
	add("ddo_pieces", SectorState{ID: sid, SectorType: seal, Ticket: ticket, Seed: seed, Pieces: ddo, Pre: pre, Proof: &ProofInfo{Proof: make([]byte, 192)}, MessageInfo: mi})
	add("snap_up", SectorState{
		ID: SectorID{Miner: 1001, Number: 7}, SectorType: seal, Pieces: ddo[:2], Upgraded: true,
		UpgradePublic:    &SectorUpgradePublic{CommR: commRBytes, SealedCID: mustCid(commR), Activation: 2500000, Expiration: 4500000},
		UpgradedInfo:     &SectorUpgradedInfo{AccessInstance: "store-1", SealedCID: mustCid(commR), UnsealedCID: mustCid(commD), Proof: []byte{9, 9, 9}},
		UpgradeMessageID: &msgID, UpgradeLandedEpoch: &landed,
	})
	add("finalized", SectorState{ID: sid, SectorType: seal, Ticket: ticket, Seed: seed, Pre: pre, Proof: &ProofInfo{Proof: []byte{7}}, MessageInfo: mi, LatestState: latest, Finalized: true})
	add("aborted", SectorState{ID: sid, SectorType: seal, Removed: true, AbortReason: "precommit: <rejected> & \"quoted\" \\ tab\t nl\n bs\b ff\f \x01 \x7f \u2028 \u2029 é 中文 😀"})
	add("full", full)
	add("escapes_everywhere", SectorState{
		ID: SectorID{Miner: 2, Number: 3}, SectorType: seal,
		LatestState: &ReportStateReq{
			Worker:      WorkerIdentifier{Instance: "<i>&", Location: "\u2028\u2029"},
			StateChange: SectorStateChange{Prev: "\x00", Next: "\x1f", Event: "\b\f\n\r\t"},
			Failure:     &SectorFailure{Level: "\"\\/", Desc: "\ufffd \U0010ffff"},
		},
		LegacyPieces: Deals{{ID: 1, Piece: PieceInfo{Cid: mustCid(piece1)}, Proposal: &DealProposal{Label: label("<>&\u2028\u2029\b\f\x00")}}},
		UpgradeMessageID: &msgID,
	})
	maxEpoch := SectorUpgradeLandedEpoch(math.MaxInt64)
	add("limits", SectorState{
		ID: SectorID{Miner: math.MaxUint64, Number: math.MaxUint64}, SectorType: math.MinInt64,
		Ticket: &Ticket{Ticket: Randomness{}, Epoch: math.MinInt64}, Seed: &Seed{Seed: nil, Epoch: math.MaxInt64},
		LegacyPieces: Deals{{ID: math.MaxUint64, PayloadSize: math.MaxUint64, Piece: PieceInfo{Size: math.MaxUint64, Offset: math.MaxUint64}, Proposal: &DealProposal{
			PieceSize: math.MaxUint64, Client: mustAddr("f09223372036854775807"), Provider: f4Addr,
			StartEpoch: math.MinInt64, EndEpoch: math.MaxInt64,
			StoragePricePerEpoch: tok("-123456789012345678901234567890"),
			ProviderCollateral:   tok("2000000000000000000000000000"),
			ClientCollateral:     tok("115792089237316195423570985008687907853269984665640564039457584007913129639935"),
		}}},
		Pieces: SectorPieces{{Piece: AbiPieceInfo{Size: math.MaxUint64}, DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{
			DealID: math.MaxUint64, AllocationID: math.MaxUint64, PieceSize: math.MaxUint64, Client: blsAddr, Provider: actAddr,
			Offset: math.MaxUint64, Length: math.MaxUint64, PayloadSize: math.MaxUint64, StartEpoch: math.MinInt64, EndEpoch: math.MaxInt64,
		}}}},
		TerminateInfo:      TerminateInfo{TerminatedAt: math.MinInt64, AddedHeight: math.MaxInt64},
		UpgradeLandedEpoch: &maxEpoch,
	})
	empty := SectorUpgradeMessageID("")
	zero := SectorUpgradeLandedEpoch(0)
	add("empty_not_nil", SectorState{
		ID: sid, Ticket: &Ticket{Ticket: Randomness{}}, Seed: &Seed{}, LegacyPieces: Deals{}, Pieces: SectorPieces{},
		Pre: &PreCommitInfo{}, Proof: &ProofInfo{Proof: []byte{}}, LatestState: &ReportStateReq{},
		UpgradePublic: &SectorUpgradePublic{}, UpgradedInfo: &SectorUpgradedInfo{Proof: []byte{}},
		UpgradeMessageID: &empty, UpgradeLandedEpoch: &zero,
	})
	add("undefined_everything", SectorState{
		ID: sid, LegacyPieces: Deals{{Proposal: &DealProposal{}}},
		Pieces:      SectorPieces{{DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{}}}, {DealInfo: &DealInfoV2{}}},
		MessageInfo: MessageInfo{PreCommitCid: &Cid{}, CommitCid: nil}, TerminateInfo: TerminateInfo{TerminateCid: &Cid{}},
	})
	add("address_kinds", SectorState{ID: sid, Pieces: SectorPieces{
		{DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{Client: secpAddr, Provider: actAddr}}},
		{DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{Client: blsAddr, Provider: f4Addr}}},
		{DealInfo: &DealInfoV2{MarketDealInfoV2: &MarketDealInfoV2{Client: undef, Provider: mustAddr("f00")}}},
	}})
	add("cid_v0", SectorState{ID: sid, Pre: &PreCommitInfo{CommR: mustCid(v0Cid), CommD: mustCid(commD)}})
	var bs []byte
	for n := 0; n < 8; n++ {
		bs = append(bs, byte(0xf8+n))
		add("bytes_"+string(rune('0'+n)), SectorState{ID: SectorID{Miner: 9, Number: SectorNumber(n)}, Proof: &ProofInfo{Proof: append([]byte(nil), bs...)}})
	}
	return out
}
