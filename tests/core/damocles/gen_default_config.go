// Writes sector-manager.cfg beside it: what `damocles-manager daemon init` writes to <home>/sector-manager.cfg:
// modules.DefaultConfig(true) through confmgr.ConfigComment, with BurntSushi/toml v1.5.0
// (damocles-manager's go.mod). The struct types are copied field for field from
// damocles-manager/modules/config.go and manager-plugin/objstore/objstore.go (HEAD 4235a895);
// FIL, MustAddress and Duration are stand-ins with the same MarshalText.
//
// Regenerate (needs github.com/BurntSushi/toml v1.5.0, e.g. a checkout of its tag):
//
//	go mod init damocfg && go mod edit -require github.com/BurntSushi/toml@v1.5.0 \
//	  [-replace github.com/BurntSushi/toml=/path/to/toml-v1.5.0] && go run . > sector-manager.cfg
package main

import (
	"bytes"
	"os"
	"time"

	"github.com/BurntSushi/toml"
)

type ActorID uint64
type ChainEpoch int64

type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// FIL: big.Int{*math/big.Int}; Short() of 5e9 attoFIL is "5 nanoFIL"; a nil Int marshals as "".
type FIL struct{ short *string }

func (f FIL) MarshalText() ([]byte, error) {
	if f.short == nil {
		return []byte{}, nil
	}
	return []byte(*f.short), nil
}

type MustAddress struct{ s string }

func (ma MustAddress) MarshalText() ([]byte, error) { return []byte(ma.s), nil }

type ObjstoreConfig struct {
	Name string
	Path string
	Meta map[string]string

	Strict   bool
	ReadOnly bool
	Weight   uint
}

type StoreSelectPolicy struct {
	AllowMiners []ActorID
	DenyMiners  []ActorID
}

type CommonAPIConfig struct {
	Chain              *string
	Messager           *string
	Market             *string
	Gateway            []string
	Token              string
	ChainEventInterval Duration
}

type PluginConfig struct{ Dir string }

type DBConfig struct {
	Driver string
	Badger *KVStoreBadgerDBConfig
	Mongo  *KVStoreMongoDBConfig
	Plugin *KVStorePluginDBConfig
}
type KVStoreBadgerDBConfig struct{ BaseDir string }
type KVStoreMongoDBConfig struct {
	Enable       bool
	DSN          string
	DatabaseName string
}
type KVStorePluginDBConfig struct {
	PluginName string
	Meta       map[string]string
}
type PieceStoreConfig struct {
	Name       string
	Path       string
	Meta       map[string]string
	ReadOnly   bool
	Plugin     string
	PluginName string
}
type PersistStoreConfig struct {
	ObjstoreConfig
	StoreSelectPolicy

	Plugin     string
	PluginName string
}
type ProvingConfig struct {
	ParallelCheckLimit    int
	SingleCheckTimeout    Duration
	PartitionCheckTimeout Duration
	WorkerProver          *WorkerProverConfig
}
type WorkerProverConfig struct {
	JobMaxTry        uint32
	HeartbeatTimeout time.Duration
	JobLifetime      time.Duration
}
type CommonConfig struct {
	API               CommonAPIConfig
	Plugins           *PluginConfig
	PieceStores       []PieceStoreConfig
	PersistStores     []PersistStoreConfig
	ScanPersistStores []string
	MongoKVStore      *KVStoreMongoDBConfig
	DB                *DBConfig
	Proving           ProvingConfig
}
type FeeConfig struct {
	GasOverEstimation float64
	GasOverPremium    float64
	GasFeeCap         FIL
	MaxFeeCap         FIL
}
type MinerSectorConfig struct {
	InitNumber   uint64
	MinNumber    *uint64
	MaxNumber    *uint64
	Enabled      bool
	EnableDeals  bool
	LifetimeDays uint64
	Verbose      bool
}
type MinerSnapUpRetryConfig struct {
	MaxAttempts      *int
	PollInterval     Duration
	APIFailureWait   Duration
	LocalFailureWait Duration
}
type MinerSnapUpConfig struct {
	Enabled bool
	Sender  *MustAddress
	Senders []MustAddress

	SendFund bool
	FeeConfig
	CleanupCCData bool

	MessageConfidential *ChainEpoch
	ReleaseCondidential *ChainEpoch

	MessageConfidence ChainEpoch
	ReleaseConfidence ChainEpoch

	Retry MinerSnapUpRetryConfig
}
type MinerCommitmentConfig struct {
	Confidence int64
	Pre        MinerCommitmentPolicyConfig
	Prove      MinerCommitmentPolicyConfig
	Terminate  MinerCommitmentPolicyConfig
}
type MinerCommitmentPolicyConfig struct {
	Sender  *MustAddress
	Senders []MustAddress

	SendFund bool
	FeeConfig
	Batch MinerCommitmentBatchPolicyConfig
}
type MinerCommitmentBatchPolicyConfig struct {
	Threshold     int
	MaxWait       Duration
	CheckInterval Duration
	FeeConfig
}
type MinerPoStConfig struct {
	Sender  *MustAddress
	Senders []MustAddress

	Enabled     bool
	StrictCheck bool
	Parallel    bool
	FeeConfig
	Confidence                      uint64
	SubmitConfidence                uint64
	ChallengeConfidence             uint64
	MaxRecoverSectorLimit           uint64
	MaxPartitionsPerPoStMessage     uint64
	MaxPartitionsPerRecoveryMessage uint64
}
type MinerProofConfig struct{ Enabled bool }
type MinerSealingConfig struct {
	SealingEpochDuration int64

	RequireActivationSuccess         bool
	RequireActivationSuccessUpdate   bool
	RequireNotificationSuccess       bool
	RequireNotificationSuccessUpdate bool

	UseSyntheticPoRep bool

	SealingSectorDeadlineDelayNi uint64
}
type MinerConfig struct {
	Actor      ActorID
	Sector     MinerSectorConfig
	SnapUp     MinerSnapUpConfig
	Commitment MinerCommitmentConfig
	PoSt       MinerPoStConfig
	Proof      MinerProofConfig
	Sealing    MinerSealingConfig
}
type Config struct {
	Common CommonConfig
	Miners []MinerConfig
}

var fake = MustAddress{"f1abjxfbp274xpdqcpuaykwkfb43omjotacm2p3za"}

func fee() FeeConfig {
	s := "5 nanoFIL"
	return FeeConfig{GasOverEstimation: 1.2, GasOverPremium: 0, GasFeeCap: FIL{&s}}
}

func policy() MinerCommitmentPolicyConfig {
	return MinerCommitmentPolicyConfig{
		SendFund: true, FeeConfig: fee(), Senders: []MustAddress{fake},
		Batch: MinerCommitmentBatchPolicyConfig{Threshold: 4, MaxWait: Duration(time.Hour), CheckInterval: Duration(time.Minute), FeeConfig: fee()},
	}
}

func defaultConfig() Config {
	meta := map[string]string{"SomeKey": "SomeValue"}
	common := CommonConfig{
		API:               CommonAPIConfig{ChainEventInterval: Duration(time.Minute), Gateway: []string{"/ip4/{api_host}/tcp/{api_port}"}, Token: "{some token}"},
		PieceStores:       []PieceStoreConfig{{Name: "{store_name}", Path: "{store_path}", Meta: meta, PluginName: "s3store"}},
		PersistStores: []PersistStoreConfig{{
			ObjstoreConfig:    ObjstoreConfig{Name: "{store_name}", Path: "{store_path}", Meta: meta},
			StoreSelectPolicy: StoreSelectPolicy{AllowMiners: []ActorID{1, 2}, DenyMiners: []ActorID{3, 4}},
			PluginName:        "s3store",
		}},
		ScanPersistStores: []string{},
		DB:                &DBConfig{Driver: "badger", Badger: &KVStoreBadgerDBConfig{BaseDir: ""}},
		Proving: ProvingConfig{
			ParallelCheckLimit: 128, PartitionCheckTimeout: Duration(20 * time.Minute), SingleCheckTimeout: Duration(10 * time.Minute),
			WorkerProver: &WorkerProverConfig{JobMaxTry: 2, HeartbeatTimeout: 15 * time.Second, JobLifetime: 25 * time.Hour},
		},
	}
	min, max, attempts := uint64(10), uint64(1_000_000), 10
	commitment := MinerCommitmentConfig{Confidence: 10, Pre: policy(), Prove: policy(), Terminate: policy()}
	commitment.Terminate.Batch.Threshold = 2
	commitment.Pre.Batch.Threshold = 2
	commitment.Prove.Batch.Threshold = 4
	miner := MinerConfig{
		Actor:  10086,
		Sector: MinerSectorConfig{Enabled: true, LifetimeDays: 540, MinNumber: &min, MaxNumber: &max},
		SnapUp: MinerSnapUpConfig{
			SendFund: true, FeeConfig: fee(), CleanupCCData: true, MessageConfidence: 15, ReleaseConfidence: 30,
			Retry:   MinerSnapUpRetryConfig{MaxAttempts: &attempts, PollInterval: Duration(3 * time.Minute), APIFailureWait: Duration(3 * time.Minute), LocalFailureWait: Duration(3 * time.Minute)},
			Senders: []MustAddress{fake},
		},
		Commitment: commitment,
		PoSt: MinerPoStConfig{Enabled: true, StrictCheck: true, FeeConfig: fee(), Confidence: 10, Senders: []MustAddress{fake}},
		Sealing: MinerSealingConfig{SealingSectorDeadlineDelayNi: 6},
	}
	return Config{Common: common, Miners: []MinerConfig{miner}}
}

// confmgr.ConfigComment
func configComment(t any) ([]byte, error) {
	buf := new(bytes.Buffer)
	_, _ = buf.WriteString("# Default config:\n")
	e := toml.NewEncoder(buf)
	e.Indent = ""
	if err := e.Encode(t); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	b = bytes.ReplaceAll(b, []byte("\n"), []byte("\n#"))
	b = bytes.ReplaceAll(b, []byte("#["), []byte("["))
	return b, nil
}

func main() {
	b, err := configComment(defaultConfig())
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(b)
}
