package main

// The sector state types of damocles-manager, copied field for field with their tags from
// github.com/ipfs-force-community/damocles damocles-manager/core/types.go and
// types_sector_state.go (HEAD 4235a895, after the 2024-04 change b1ccc1ff that removed
// PreCommitInfo.Deals and added SectorState.Pieces), with the types they use from
// go-state-types v0.17.0 (abi, builtin/v9/market) and venus v1.19.0
// (venus-shared/types/market.DealInfoV2). Only the JSON-relevant parts are kept; the
// library types with JSON methods (cid.Cid, address.Address, big.Int, market.DealLabel)
// are the stand-ins in standins.go.

// --- abi (go-state-types/abi) ---
type (
	ActorID             uint64
	SectorNumber        uint64
	ChainEpoch          int64
	PaddedPieceSize     uint64
	DealID              uint64
	RegisteredSealProof int64
	Randomness          []byte
	TokenAmount         = BigInt
	AllocationId        uint64 // verifreg.AllocationId via venus-shared/types
)

type SectorID struct {
	Miner  ActorID
	Number SectorNumber
}

// abi.PieceInfo
type AbiPieceInfo struct {
	Size     PaddedPieceSize // Size in nodes. For BLS12-381 (capacity 254 bits), must be >= 16. (16 * 8 = 128)
	PieceCID Cid
}

// --- go-state-types builtin/v9/market ---
type DealProposal struct {
	PieceCID     Cid `checked:"true"` // Checked in validateDeal, CommP
	PieceSize    PaddedPieceSize
	VerifiedDeal bool
	Client       Address
	Provider     Address

	// Label is an arbitrary client chosen label to apply to the deal
	Label DealLabel

	StartEpoch           ChainEpoch
	EndEpoch             ChainEpoch
	StoragePricePerEpoch TokenAmount

	ProviderCollateral TokenAmount
	ClientCollateral   TokenAmount
}

// --- venus-shared/types/market ---
type MarketDealInfoV2 struct {
	DealID     DealID
	PublishCid Cid

	AllocationID AllocationId

	PieceCID    Cid
	PieceSize   PaddedPieceSize
	Client      Address
	Provider    Address
	Offset      PaddedPieceSize
	Length      PaddedPieceSize
	PayloadSize uint64
	StartEpoch  ChainEpoch
	EndEpoch    ChainEpoch
}

// --- damocles-manager/core ---
type PieceInfo struct {
	Size   PaddedPieceSize
	Offset PaddedPieceSize
	Cid    Cid
}

type LegacyDealInfo struct {
	ID          DealID
	PayloadSize uint64
	Piece       PieceInfo
	Proposal    *DealProposal

	// this is the flag for pieces from original implementations
	// if true, workers should use the piece data directly, instead of padding themselves
	IsCompatible bool
}

type DealInfoV2 struct {
	*MarketDealInfoV2
	// if true, it indicates that the deal is an legacy builtin market deal,
	// otherwise it is a DDO deal
	IsBuiltinMarket bool
	// this is the flag for pieces from original implementations
	// if true, workers should use the piece data directly, instead of padding themselves
	IsCompatible bool
}

type SectorPieceV2 struct {
	Piece    AbiPieceInfo
	DealInfo *DealInfoV2
}

type (
	Deals        []LegacyDealInfo
	SectorPieces []SectorPieceV2
)

type Ticket struct {
	Ticket Randomness
	Epoch  ChainEpoch
}

type Seed struct {
	Seed  Randomness
	Epoch ChainEpoch
}

type PreCommitInfo struct {
	CommR  Cid
	CommD  Cid
	Ticket Ticket
}

type ProofOnChainInfo struct {
	Proof []byte
}

type ProofInfo = ProofOnChainInfo

type MessageInfo struct {
	PreCommitCid *Cid
	CommitCid    *Cid
	NeedSend     bool
}

type TerminateInfo struct {
	TerminateCid *Cid
	TerminatedAt ChainEpoch
	AddedHeight  ChainEpoch
}

type ReportStateReq struct {
	Worker      WorkerIdentifier
	StateChange SectorStateChange
	Failure     *SectorFailure
}

type WorkerIdentifier struct {
	Instance string
	Location string
}

type SectorStateChange struct {
	Prev  string
	Next  string
	Event string
}

type SectorFailure struct {
	Level string
	Desc  string
}

type SectorPublicInfo struct {
	CommR      [32]byte
	SealedCID  Cid
	Activation ChainEpoch
	Expiration ChainEpoch
}

type (
	SectorFinalized          bool
	SectorUpgraded           bool
	SectorRemoved            bool
	SectorImported           bool
	SectorUpgradeLandedEpoch ChainEpoch
	SectorUpgradeMessageID   string
	SectorUpgradePublic      SectorPublicInfo
	SectorNeedRebuild        bool
	SectorUnsealing          bool
)

type SectorUpgradedInfo struct {
	AccessInstance string
	SealedCID      Cid
	UnsealedCID    Cid
	Proof          []byte
}

type SectorState struct {
	ID         SectorID
	SectorType RegisteredSealProof

	// may be nil
	Ticket       *Ticket        `json:",omitempty"`
	Seed         *Seed          `json:",omitempty"`
	LegacyPieces Deals          `json:"Deals"`
	Pieces       SectorPieces   `json:"Pieces"`
	Pre          *PreCommitInfo `json:",omitempty"`
	Proof        *ProofInfo     `json:",omitempty"`

	MessageInfo MessageInfo

	TerminateInfo TerminateInfo

	LatestState *ReportStateReq `json:",omitempty"`
	Finalized   SectorFinalized
	Removed     SectorRemoved
	AbortReason string

	// for snapup
	Upgraded           SectorUpgraded
	UpgradePublic      *SectorUpgradePublic
	UpgradedInfo       *SectorUpgradedInfo
	UpgradeMessageID   *SectorUpgradeMessageID
	UpgradeLandedEpoch *SectorUpgradeLandedEpoch

	// Imported
	Imported SectorImported

	// Rebuild
	NeedRebuild SectorNeedRebuild

	// Unseal
	Unsealing SectorUnsealing
}
