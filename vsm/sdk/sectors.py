"""Sector state types (Go `core.SectorState` and friends), their Go JSON and their Arrow form.

Three encodings of one model, all driven by the field tables below:

    Go JSON (KV value)  <->  SectorState (dataclasses)  <->  Arrow row (SECTOR_STATE_SCHEMA)

- Go JSON: field names and order of `damocles-manager/core` (after its 2024-04 change: no
  `Pre.Deals`; `Pieces` beside the legacy `Deals`), a cid as `{"/": "bafy..."}` (null when
  undefined), an undefined address as "<empty>", `[]byte` as base64 (null when nil),
  `[32]byte` as an array of 32 numbers, `omitempty` where Go has it, Go's string escaping.
  A state written by damocles-manager decodes and re-encodes to the same bytes; decoding is
  as strict as Go's json.Unmarshal (vsm/sdk/_gojson.py), and Go itself checks both
  directions in tests/gojson/.
- Arrow: snake_case columns, nested types kept (`pieces` is list<struct<...>>), a cid as its
  string, null where Go has nil. `SECTOR_EVENT_SCHEMA` prefixes the event columns.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from . import _gojson as _gj
from ._conform import cast_by_name, fields_beyond, shaped_like, union_schema
from ._gojson import GoJSONError

__all__ = [
    "AllocatedSector",
    "DealInfoV2",
    "DealProposal",
    "EVENT_KINDS",
    "GoJSONError",
    "LegacyDealInfo",
    "MessageInfo",
    "PieceInfo",
    "PieceInfoV2",
    "PreCommitInfo",
    "ProofInfo",
    "ReportStateReq",
    "SECTOR_EVENT_SCHEMA",
    "SECTOR_STATE_SCHEMA",
    "STATE_FIELDS",
    "Seed",
    "SectorFailure",
    "SectorID",
    "SectorPieceV2",
    "SectorPublicInfo",
    "SectorState",
    "SectorStateChange",
    "SectorUpgradedInfo",
    "TerminateInfo",
    "Ticket",
    "WorkerIdentifier",
    "arrow_to_go_json",
    "arrow_to_states",
    "cast_by_name",
    "check_arrow_states",
    "decode_field",
    "decode_state",
    "decode_state_exact",
    "decode_state_json",
    "fields_beyond",
    "go_dumps",
    "sector_key",
    "shaped_like",
    "states_to_arrow",
    "union_schema",
]

# Event kinds, in the order of the Go hooks (plus "revert": a write-ahead event whose KV commit
# failed is followed by one carrying the state the KV really holds; see vsm/sectors/_journal.py;
# and "rebuild": a sink refilled from the KV state gets one per sector, vsm/sectors/_rebuild.py).
EVENT_KINDS = ("import", "init", "update", "finalize", "restore", "revert", "rebuild")


@dataclasses.dataclass(frozen=True, order=True)
class SectorID:
    miner: int
    number: int


@dataclasses.dataclass(frozen=True)
class AllocatedSector:
    id: SectorID
    proof_type: int


def sector_key(sid: SectorID) -> bytes:
    """The KV key of a sector's state: `m-<miner>-n-<number>` (Go `makeSectorKey`)."""
    return b"m-%d-n-%d" % (sid.miner, sid.number)


# --- field codecs --------------------------------------------------------------------------
# Each dataclass lists its fields in Go order with metadata: go name, encoding, omitempty.
# enc: "int" (int64) | "uint" (uint64) | "bool" | "str" | "optstr" (*string) | "optint" (*int64)
# | "cid" (cid.Cid or *cid.Cid: None is undefined / nil) | "addr" (address.Address: "" is
# undefined) | "bigint" (big.Int as a decimal string) | "label" (market.DealLabel) | "bytes"
# ([]byte: None is nil) | "bytes32" ([32]byte) | "id" (abi.SectorID) | a dataclass (a struct;
# None is a nil pointer) | ("list", dataclass). `embedded`: a field of DealInfoV2's embedded pointer.


def _f(go: str, enc: Any, default: Any = None, *, omitempty: bool = False, factory: Any = None, embedded: bool = False) -> Any:
    md = {"go": go, "enc": enc, "omitempty": omitempty, "embedded": embedded}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@dataclasses.dataclass
class Ticket:
    ticket: bytes | None = _f("Ticket", "bytes")
    epoch: int = _f("Epoch", "int", 0)


@dataclasses.dataclass
class Seed:
    seed: bytes | None = _f("Seed", "bytes")
    epoch: int = _f("Epoch", "int", 0)


@dataclasses.dataclass
class PieceInfo:
    """Legacy `core.PieceInfo`."""

    size: int = _f("Size", "uint", 0)
    offset: int = _f("Offset", "uint", 0)
    cid: str | None = _f("Cid", "cid")


@dataclasses.dataclass
class DealProposal:
    """`market.DealProposal`; token amounts are decimal strings as in Go's JSON, an address is
    its string ("" for the undefined address, which Go writes as "<empty>")."""

    piece_cid: str | None = _f("PieceCID", "cid")
    piece_size: int = _f("PieceSize", "uint", 0)
    verified_deal: bool = _f("VerifiedDeal", "bool", False)
    client: str = _f("Client", "addr", "")
    provider: str = _f("Provider", "addr", "")
    label: str = _f("Label", "label", "")
    start_epoch: int = _f("StartEpoch", "int", 0)
    end_epoch: int = _f("EndEpoch", "int", 0)
    storage_price_per_epoch: str = _f("StoragePricePerEpoch", "bigint", "0")
    provider_collateral: str = _f("ProviderCollateral", "bigint", "0")
    client_collateral: str = _f("ClientCollateral", "bigint", "0")


@dataclasses.dataclass
class LegacyDealInfo:
    """One entry of the legacy `Deals` list (Go `LegacyDealInfo`, formerly `DealInfo`)."""

    id: int = _f("ID", "uint", 0)
    payload_size: int = _f("PayloadSize", "uint", 0)
    piece: PieceInfo = _f("Piece", PieceInfo, factory=PieceInfo)
    proposal: DealProposal | None = _f("Proposal", DealProposal)
    is_compatible: bool = _f("IsCompatible", "bool", False)


@dataclasses.dataclass
class PieceInfoV2:
    """`abi.PieceInfo`."""

    size: int = _f("Size", "uint", 0)
    piece_cid: str | None = _f("PieceCID", "cid")


@dataclasses.dataclass
class DealInfoV2:
    """`core.DealInfoV2`: the fields of the embedded `*market.DealInfoV2`, then two flags.

    The embedded part is a pointer in Go: when it is nil, Go writes only IsBuiltinMarket and
    IsCompatible. Here that is `deal_id is None` (its other fields are then None too);
    decoding any of its keys allocates it with zero values, as Go does."""

    deal_id: int | None = _f("DealID", "uint", 0, embedded=True)
    publish_cid: str | None = _f("PublishCid", "cid", embedded=True)
    allocation_id: int | None = _f("AllocationID", "uint", 0, embedded=True)
    piece_cid: str | None = _f("PieceCID", "cid", embedded=True)
    piece_size: int | None = _f("PieceSize", "uint", 0, embedded=True)
    client: str | None = _f("Client", "addr", "", embedded=True)
    provider: str | None = _f("Provider", "addr", "", embedded=True)
    offset: int | None = _f("Offset", "uint", 0, embedded=True)
    length: int | None = _f("Length", "uint", 0, embedded=True)
    payload_size: int | None = _f("PayloadSize", "uint", 0, embedded=True)
    start_epoch: int | None = _f("StartEpoch", "int", 0, embedded=True)
    end_epoch: int | None = _f("EndEpoch", "int", 0, embedded=True)
    is_builtin_market: bool = _f("IsBuiltinMarket", "bool", False)
    is_compatible: bool = _f("IsCompatible", "bool", False)


@dataclasses.dataclass
class SectorPieceV2:
    piece: PieceInfoV2 = _f("Piece", PieceInfoV2, factory=PieceInfoV2)
    deal_info: DealInfoV2 | None = _f("DealInfo", DealInfoV2)


@dataclasses.dataclass
class PreCommitInfo:
    comm_r: str | None = _f("CommR", "cid")
    comm_d: str | None = _f("CommD", "cid")
    ticket: Ticket = _f("Ticket", Ticket, factory=Ticket)


@dataclasses.dataclass
class ProofInfo:
    proof: bytes | None = _f("Proof", "bytes")


@dataclasses.dataclass
class MessageInfo:
    pre_commit_cid: str | None = _f("PreCommitCid", "cid")
    commit_cid: str | None = _f("CommitCid", "cid")
    need_send: bool = _f("NeedSend", "bool", False)


@dataclasses.dataclass
class TerminateInfo:
    terminate_cid: str | None = _f("TerminateCid", "cid")
    terminated_at: int = _f("TerminatedAt", "int", 0)
    added_height: int = _f("AddedHeight", "int", 0)


@dataclasses.dataclass
class WorkerIdentifier:
    instance: str = _f("Instance", "str", "")
    location: str = _f("Location", "str", "")


@dataclasses.dataclass
class SectorStateChange:
    prev: str = _f("Prev", "str", "")
    next: str = _f("Next", "str", "")
    event: str = _f("Event", "str", "")


@dataclasses.dataclass
class SectorFailure:
    level: str = _f("Level", "str", "")
    desc: str = _f("Desc", "str", "")


@dataclasses.dataclass
class ReportStateReq:
    worker: WorkerIdentifier = _f("Worker", WorkerIdentifier, factory=WorkerIdentifier)
    state_change: SectorStateChange = _f("StateChange", SectorStateChange, factory=SectorStateChange)
    failure: SectorFailure | None = _f("Failure", SectorFailure)


@dataclasses.dataclass
class SectorPublicInfo:
    comm_r: bytes = _f("CommR", "bytes32", b"\0" * 32)
    sealed_cid: str | None = _f("SealedCID", "cid")
    activation: int = _f("Activation", "int", 0)
    expiration: int = _f("Expiration", "int", 0)


@dataclasses.dataclass
class SectorUpgradedInfo:
    access_instance: str = _f("AccessInstance", "str", "")
    sealed_cid: str | None = _f("SealedCID", "cid")
    unsealed_cid: str | None = _f("UnsealedCID", "cid")
    proof: bytes | None = _f("Proof", "bytes")


@dataclasses.dataclass
class SectorState:
    """Go `core.SectorState`. `id` is JSON `ID: {Miner, Number}`; Arrow columns `miner`, `number`."""

    id: SectorID = _f("ID", "id", factory=lambda: SectorID(0, 0))
    sector_type: int = _f("SectorType", "int", 0)
    ticket: Ticket | None = _f("Ticket", Ticket, omitempty=True)
    seed: Seed | None = _f("Seed", Seed, omitempty=True)
    deals: list[LegacyDealInfo] | None = _f("Deals", ("list", LegacyDealInfo))
    pieces: list[SectorPieceV2] | None = _f("Pieces", ("list", SectorPieceV2))
    pre: PreCommitInfo | None = _f("Pre", PreCommitInfo, omitempty=True)
    proof: ProofInfo | None = _f("Proof", ProofInfo, omitempty=True)
    message_info: MessageInfo = _f("MessageInfo", MessageInfo, factory=MessageInfo)
    terminate_info: TerminateInfo = _f("TerminateInfo", TerminateInfo, factory=TerminateInfo)
    latest_state: ReportStateReq | None = _f("LatestState", ReportStateReq, omitempty=True)
    finalized: bool = _f("Finalized", "bool", False)
    removed: bool = _f("Removed", "bool", False)
    abort_reason: str = _f("AbortReason", "str", "")
    upgraded: bool = _f("Upgraded", "bool", False)
    upgrade_public: SectorPublicInfo | None = _f("UpgradePublic", SectorPublicInfo)
    upgraded_info: SectorUpgradedInfo | None = _f("UpgradedInfo", SectorUpgradedInfo)
    upgrade_message_id: str | None = _f("UpgradeMessageID", "optstr")
    upgrade_landed_epoch: int | None = _f("UpgradeLandedEpoch", "optint")
    imported: bool = _f("Imported", "bool", False)
    need_rebuild: bool = _f("NeedRebuild", "bool", False)
    unsealing: bool = _f("Unsealing", "bool", False)

    # -- Go JSON --
    def to_go_dict(self) -> dict[str, Any]:
        """The state as Go's encoding/json would build it (ordered dict of JSON values)."""
        return _CODECS[SectorState].to_go(self)  # type: ignore[no-any-return]

    def to_go_json(self) -> bytes:
        """The exact bytes Go's json.Marshal writes for this state."""
        return go_dumps(self.to_go_dict())

    @classmethod
    def from_go_dict(cls, d: Mapping[str, Any]) -> SectorState:
        """Strict, as Go decodes (see decode_state); GoJSONError names the field path."""
        return decode_state(d)

    @classmethod
    def from_go_json(cls, data: bytes | str) -> SectorState:
        """Strict, as Go decodes (see decode_state_json); GoJSONError names the field path."""
        return decode_state_json(data)

    # -- Arrow --
    def to_arrow_row(self) -> dict[str, Any]:
        """One row of SECTOR_STATE_SCHEMA as a Python dict (for pa.RecordBatch.from_pylist)."""
        return _CODECS[SectorState].to_row(self)  # type: ignore[no-any-return]

    @classmethod
    def from_arrow_row(cls, row: Mapping[str, Any]) -> SectorState:
        return _CODECS[SectorState].from_row(row)  # type: ignore[no-any-return]


# Go field name -> Python attribute of SectorState, in Go order: what update() accepts.
STATE_FIELDS: dict[str, str] = {
    f.metadata["go"]: f.name for f in dataclasses.fields(SectorState)
}


# --- Go JSON text: vsm/sdk/_gojson.py ------------------------------------------------------

go_dumps = _gj.go_dumps


# --- codecs, compiled once per dataclass -------------------------------------------------


class _Codec:
    """Encoders generated once per dataclass from its field table (no per-field dispatch at
    run time: the import path encodes a million states), and its strict Go JSON decoder."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: list[tuple[str, str, Any, bool, bool]] = [
            (f.name, f.metadata["go"], f.metadata["enc"], f.metadata["omitempty"], f.metadata["embedded"])
            for f in dataclasses.fields(cls)
        ]
        self.to_go: Callable[[Any], dict[str, Any]] = self._compile_to_go()
        self.to_row: Callable[[Any], dict[str, Any]] = self._compile_to_row()
        self.from_row: Callable[[Mapping[str, Any]], Any] = self._compile_from_row()
        self.decode: Callable[[Any, Any, list[str] | None], Any] = _struct_decoder(self)

    def from_go(self, d: Any) -> Any:
        return self.decode(d, None, None)

    def _ns(self) -> dict[str, Any]:
        ns = dict(globals())
        ns.update({"_C": _CODECS, "b64e": base64.b64encode, "cls": self.cls, "addr": _gj.address_text})
        return ns

    def _compile(self, name: str, src: str) -> Callable[..., Any]:
        ns = self._ns()
        exec(src, ns)  # noqa: S102 - source generated from the field tables above
        fn: Callable[..., Any] = ns[name]
        return fn

    @staticmethod
    def _ref(enc: Any) -> str:
        return f"_C[{enc.__name__}]" if isinstance(enc, type) else f"_C[{enc[1].__name__}]"

    def _compile_to_go(self) -> Callable[[Any], dict[str, Any]]:
        lines = ["def to_go(o):", "    d = {}"]
        marker = next((name for name, *_, emb in self.fields if emb), None)
        for name, go, enc, omit, emb in self.fields:
            v = f"o.{name}"
            if enc == "cid":
                e = f"None if (v := {v}) is None else {{'/': v}}"
            elif enc == "bytes":
                e = f"None if (v := {v}) is None else b64e(v).decode()"
            elif enc == "bytes32":
                e = f"list({v})"
            elif enc == "addr":
                e = f"addr({v})"
            elif enc == "id":
                e = f"{{'Miner': {v}.miner, 'Number': {v}.number}}"
            elif isinstance(enc, type):
                e = f"None if (v := {v}) is None else {self._ref(enc)}.to_go(v)"
            elif isinstance(enc, tuple):
                e = f"None if (v := {v}) is None else [{self._ref(enc)}.to_go(x) for x in v]"
            else:
                e = v
            if omit:
                lines.append(f"    if {v} is not None: d[{go!r}] = {e}")
            elif emb:  # a nil embedded pointer: Go writes none of its fields
                lines.append(f"    if o.{marker} is not None: d[{go!r}] = {e}")
            else:
                lines.append(f"    d[{go!r}] = {e}")
        lines.append("    return d")
        return self._compile("to_go", "\n".join(lines))

    def _compile_to_row(self) -> Callable[[Any], dict[str, Any]]:
        items = []
        for name, _, enc, _, _ in self.fields:
            v = f"o.{name}"
            if enc == "id":
                items.append(f"'miner': {v}.miner, 'number': {v}.number")
            elif isinstance(enc, type):
                items.append(f"{name!r}: None if (v := {v}) is None else {self._ref(enc)}.to_row(v)")
            elif isinstance(enc, tuple):
                items.append(f"{name!r}: None if (v := {v}) is None else [{self._ref(enc)}.to_row(x) for x in v]")
            else:
                items.append(f"{name!r}: {v}")
        src = "def to_row(o):\n    return {" + ", ".join(items) + "}"
        return self._compile("to_row", src)

    def _compile_from_row(self) -> Callable[[Mapping[str, Any]], Any]:
        args = []
        for name, _, enc, _, emb in self.fields:
            if enc == "id":
                args.append(f"{name}=SectorID(r['miner'], r['number'])")
            elif isinstance(enc, type):
                args.append(f"{name}=None if (v := g({name!r})) is None else {self._ref(enc)}.from_row(v)")
            elif isinstance(enc, tuple):
                args.append(f"{name}=None if (v := g({name!r})) is None else [{self._ref(enc)}.from_row(x) for x in v]")
            elif enc in _ZERO and not emb:  # embedded fields keep None: a nil embedded pointer
                args.append(f"{name}=v if (v := g({name!r})) is not None else {_ZERO[enc]!r}")
            else:
                args.append(f"{name}=g({name!r})")
        src = "def from_row(r):\n    g = r.get\n    return cls(" + ", ".join(args) + ")"
        return self._compile("from_row", src)


_ZERO = {"int": 0, "uint": 0, "bool": False, "str": "", "addr": "", "label": "", "bigint": "0"}


# --- strict decoding: what Go's json.Unmarshal into core.SectorState accepts, nothing else ---
# A decoder is fn(value, old, unknown) -> new value: `old` is what the field holds already (Go
# decodes a repeated key into it), `unknown` collects ignored keys ("PreCommitInfo.Deals").

_Obj = _gj.GoObject
_NegZero = _gj.NegZero
_kind = _gj.kind_of
_Err = _gj.GoJSONError


def _dec_int(v: Any, old: Any, _u: Any = None) -> Any:
    t = type(v)
    if t is int:
        if -(1 << 63) <= v < 1 << 63:
            return v
        raise _Err(f"not an int64: number {v} out of range")
    if v is None:
        return old
    if t is _NegZero:
        return 0
    raise _Err(f"not an int64: {_kind(v)}")


def _dec_uint(v: Any, old: Any, _u: Any = None) -> Any:
    if type(v) is int:
        if 0 <= v < 1 << 64:
            return v
        raise _Err(f"not a uint64: number {v} out of range")
    if v is None:
        return old
    raise _Err(f"not a uint64: {_kind(v)}")


def _dec_u8(v: Any, old: Any) -> int:
    if type(v) is int and 0 <= v < 256:
        return v  # type: ignore[no-any-return]
    if v is None:
        return old  # type: ignore[no-any-return]
    raise _Err(f"not a byte: {_kind(v)}")


def _dec_bool(v: Any, old: Any, _u: Any = None) -> Any:
    if v is True or v is False:
        return v
    if v is None:
        return old
    raise _Err(f"not a bool: {_kind(v)}")


def _dec_str(v: Any, old: Any, _u: Any = None) -> Any:
    if type(v) is str:
        return _gj.go_string(v)
    if v is None:
        return old
    raise _Err(f"not a string: {_kind(v)}")


def _dec_optstr(v: Any, old: Any, _u: Any = None) -> Any:
    return None if v is None else _dec_str(v, None)


def _dec_optint(v: Any, old: Any, _u: Any = None) -> Any:
    return None if v is None else _dec_int(v, None)


def _dec_bytes(v: Any, old: Any, _u: Any = None) -> Any:
    if type(v) is str:
        try:
            return _gj.parse_base64(v)
        except (ValueError, binascii.Error) as e:
            raise _Err(f"not base64: {e}") from None
    if v is None:
        return None
    if type(v) is list:  # Go decodes an array of numbers into a []byte too
        out = bytearray(old[: len(v)] if old else b"")
        out += bytes(len(v) - len(out))
        for i, x in enumerate(v):
            try:
                out[i] = _dec_u8(x, out[i])
            except _Err as e:
                raise e.within(f"[{i}]") from None
        return bytes(out)
    raise _Err(f"not base64 bytes: {_kind(v)}")


def _dec_bytes32(v: Any, old: Any, _u: Any = None) -> Any:
    if type(v) is list:  # a [32]byte: shorter arrays are zero-filled, longer ones cut
        out = bytearray(old if old is not None else bytes(32))
        for i, x in enumerate(v[:32]):
            try:
                out[i] = _dec_u8(x, out[i])
            except _Err as e:
                raise e.within(f"[{i}]") from None
        out[len(v) :] = bytes(max(0, 32 - len(v)))
        return bytes(out)
    if v is None:
        return old
    raise _Err(f"not an array of 32 bytes: {_kind(v)}")


def _items(v: Any, what: str) -> Any:
    """The (key, value) pairs of a JSON object, or GoJSONError "not <what>" naming its kind."""
    if type(v) is _Obj:
        return v
    if isinstance(v, dict):
        return v.items()
    raise _Err("not " + what.format(_kind(v)))


def _dec_cid(v: Any, old: Any, _u: Any = None) -> Any:
    """cid.Cid.UnmarshalJSON: null is the undefined CID; else {"/": "<cid>"}."""
    if v is None:
        return None
    target = ""
    for k, x in _items(v, 'a CID: {} (want {{"/": "<cid>"}})'):
        if k == "/":
            if type(x) is str:
                target = x
            elif x is not None:
                raise _Err(f"not a CID: \"/\" is a {_kind(x)}")
    if not target:
        raise _Err("not a CID: invalid cid: cid was incorrectly formatted (empty)")
    try:
        return _gj.parse_cid(_gj.go_string(target))
    except ValueError as e:
        raise _Err(f"not a CID: {e}") from None


def _text_decoder(what: str, parse: Callable[[str], str], null: str | None, show: bool = False) -> Callable[..., Any]:
    """A decoder of a library type that Go reads from a JSON string (null: what null gives,
    None = refused); `show` puts the refused string into the reason."""

    def dec(v: Any, old: Any, _u: Any = None) -> Any:
        if type(v) is str:
            try:
                return parse(_gj.go_string(v))
            except ValueError as e:
                raise _Err(f"not {what}: {v!r}: {e}" if show else f"not {what}: {e}") from None
        if v is None and null is not None:
            return null
        raise _Err(f"not {what}: {_kind(v)}" + (" (want a decimal string)" if what == "a big integer" else ""))

    return dec


_dec_addr = _text_decoder("an address", _gj.parse_address, "", show=True)
_dec_bigint = _text_decoder("a big integer", _gj.parse_bigint, None)


def _dec_label(v: Any, old: Any, _u: Any = None) -> Any:
    if v is None:
        return ""
    if type(v) is not str:
        raise _Err(f"not a deal label: {_kind(v)}")
    v = _gj.go_string(v)
    if len(v.encode()) > 256:
        raise _Err(f"not a deal label: {len(v.encode())} bytes, at most 256")
    return v


_UNSET_ID = -1  # an ID part not given: refused (Go would take 0 and damocles store m-0-n-0)


def _dec_id(v: Any, old: Any, unknown: list[str] | None) -> Any:
    if v is None:
        return old
    miner, number = old.miner, old.number
    for k, x in _items(v, 'a sector ID: {} (want {{"Miner": ..., "Number": ...}})'):
        f = _fold(k)
        try:
            if f == "MINER":
                miner = _dec_uint(x, miner)
            elif f == "NUMBER":
                number = _dec_uint(x, number)
            elif unknown is not None:
                unknown.append("SectorID." + k)
        except _Err as e:
            raise e.within("Miner" if f == "MINER" else "Number") from None
    return SectorID(miner, number)


_SCALAR_DECODERS: dict[Any, Callable[[Any, Any, Any], Any]] = {
    "int": _dec_int, "uint": _dec_uint, "bool": _dec_bool, "str": _dec_str, "optstr": _dec_optstr,
    "optint": _dec_optint, "bytes": _dec_bytes, "bytes32": _dec_bytes32, "cid": _dec_cid,
    "addr": _dec_addr, "bigint": _dec_bigint, "label": _dec_label, "id": _dec_id,
}


def _fold(key: str) -> str | None:
    """Go's case-insensitive key match (bytes.EqualFold) against ASCII field names: besides
    ASCII case, 'ſ' (U+017F) folds to S and the Kelvin sign (U+212A) to K."""
    if not key.isascii():
        key = key.replace("\u017f", "s").replace("\u212a", "k")
        if not key.isascii():
            return None
    return key.upper()


def _decoder_for(enc: Any, pointer: bool) -> Callable[[Any, Any, Any], Any]:
    if isinstance(enc, type):
        codec = _CODECS[enc]
        if pointer:
            return lambda v, old, u: None if v is None else codec.decode(v, old, u)
        return lambda v, old, u: codec.decode(v, old if old is not None else codec.cls(), u)
    if isinstance(enc, tuple):
        return _list_decoder(_CODECS[enc[1]])
    return _SCALAR_DECODERS[enc]


def _list_decoder(codec: _Codec) -> Callable[[Any, Any, Any], Any]:
    name = codec.cls.__name__

    def dec(v: Any, old: Any, unknown: Any) -> Any:
        if type(v) is list:
            out = []
            for i, x in enumerate(v):
                prev = old[i] if old is not None and i < len(old) else None
                try:  # an element is a struct value: null leaves it as it is (zero if new)
                    out.append(codec.decode(x, prev if prev is not None else codec.cls(), unknown))
                except _Err as e:
                    raise e.within(f"[{i}]") from None
            return out
        if v is None:
            return None
        raise _Err(f"not a list of {name}: {_kind(v)}")

    return dec


# Struct-typed fields that Go declares as values; every other one is a pointer (null: nil).
_VALUE_STRUCTS = {("SectorState", "MessageInfo"), ("SectorState", "TerminateInfo"), ("LegacyDealInfo", "Piece"),
                  ("SectorPieceV2", "Piece"), ("PreCommitInfo", "Ticket"), ("ReportStateReq", "Worker"),
                  ("ReportStateReq", "StateChange")}


def _struct_decoder(codec: _Codec) -> Callable[[Any, Any, list[str] | None], Any]:
    """fn(value, old, unknown) for a struct: a JSON object decoded field by field into old
    (a struct value) or a new zero struct; null gives old (for a pointer field: None)."""
    cls, name = codec.cls, codec.cls.__name__
    table: dict[str, tuple[str, str, Any, bool]] = {}
    embedded_zero: dict[str, Any] = {}
    marker = None
    for attr, go, enc, _, emb in codec.fields:
        table[go] = (attr, go, None, emb)
        if emb:
            marker = marker or attr
            embedded_zero[attr] = None if enc == "cid" else _ZERO[enc]
    folded: dict[str, tuple[str, str, Any, bool]] = {}
    resolved = False

    def resolve() -> None:  # children's codecs exist only once every class is registered
        nonlocal resolved
        for attr, go, enc, _, emb in codec.fields:
            pointer = isinstance(enc, type) and (name, go) not in _VALUE_STRUCTS
            table[go] = (attr, go, _decoder_for(enc, pointer), emb)
        folded.update({go.upper(): f for go, f in table.items()})
        resolved = True

    def dec(v: Any, old: Any, unknown: list[str] | None) -> Any:
        if v is None:
            return old
        items = _items(v, f"a {name} object: {{}}")
        if not resolved:
            resolve()
        if old is None:
            obj = cls()
            for a in embedded_zero:  # Go's zero DealInfoV2: the embedded pointer is nil
                setattr(obj, a, None)
        else:
            obj = old
        for k, x in items:
            f = table.get(k)
            if f is None:
                f = folded.get(_fold(k))  # type: ignore[arg-type]
                if f is None:
                    if unknown is not None:
                        unknown.append(f"{name}.{k}")
                    continue
            attr, go, fn, emb = f
            if emb and getattr(obj, marker) is None:  # type: ignore[arg-type]
                for a, z in embedded_zero.items():  # Go allocates the embedded pointer
                    setattr(obj, a, z)
            try:
                setattr(obj, attr, fn(x, getattr(obj, attr), unknown))
            except _Err as e:
                raise e.within(go) from None
        return obj

    return dec


_CODECS: dict[type, _Codec] = {}
for _cls in (
    Ticket, Seed, PieceInfo, DealProposal, LegacyDealInfo, PieceInfoV2, DealInfoV2, SectorPieceV2,
    PreCommitInfo, ProofInfo, MessageInfo, TerminateInfo, WorkerIdentifier, SectorStateChange,
    SectorFailure, ReportStateReq, SectorPublicInfo, SectorUpgradedInfo, SectorState,
):  # leaves first: a codec refers to its children's codecs through _CODECS at call time
    _CODECS[_cls] = _Codec(_cls)


def decode_state(value: Any, unknown: list[str] | None = None) -> SectorState:
    """A SectorState from its Go JSON value (loads() output or a plain dict), exactly as Go's
    json.Unmarshal decodes it, or GoJSONError naming the field path. Refused beyond Go, on
    purpose: a value that is not an object (null gives damocles a nil state it cannot
    import) and a missing or null `ID`, `ID.Miner` or `ID.Number` (Go would take 0 and damocles
    store the state as m-0-n-0). Ignored keys go to `unknown` as "Struct.Key"."""
    if value is None:
        raise _Err("not a sector state: null")
    st = SectorState()
    st.id = SectorID(_UNSET_ID, _UNSET_ID)
    _CODECS[SectorState].decode(value, st, unknown)
    if st.id.miner == _UNSET_ID or st.id.number == _UNSET_ID:
        part = "" if st.id.miner == st.id.number == _UNSET_ID else ".Miner" if st.id.miner == _UNSET_ID else ".Number"
        raise _Err("missing: a state without its sector ID would be stored as m-0-n-0", "ID" + part)
    return st


def decode_state_json(data: bytes | str, unknown: list[str] | None = None) -> SectorState:
    """decode_state of one JSON text (a line of an import file): Go's scanner rules, then
    Go's decoding. Raises GoJSONError (a ValueError) with the field path. A fast path takes
    the lines damocles writes (~4x faster); every other line takes the exact path
    (decode_state_exact), the reference for any faster import pipeline."""
    try:
        return _decode_state_fast(data)
    except Exception:
        return decode_state_exact(data, unknown)


def decode_state_exact(data: bytes | str, unknown: list[str] | None = None) -> SectorState:
    """decode_state_json without the fast path: Go's decoding, one key at a time."""
    return decode_state(_gj.loads(data), unknown)


# --- the fast path of decode_state_json ------------------------------------------------------
# Most lines are what damocles writes: exact keys, known fields, well-typed values, no repeated
# keys. For them one generated function per struct reads the plain dicts of json.loads (C
# speed) straight through and counts the object members it saw; if the line's colons are more
# than members plus the colons inside its strings, a key was repeated (Go decodes it twice,
# a dict keeps one) and the exact path runs. Anything else unusual (unknown or differently
# cased keys, a null list element, -0, an escaped colon, any error) also goes the exact way,
# which alone says why a line is refused; so the fast path accepts only what the exact
# path accepts, with the same result (tests/gojson checks both on every input).

_FAST_LIMITS = {"int": (-(1 << 63), (1 << 63) - 1), "uint": (0, (1 << 64) - 1)}


def _fast_field(attr: str, enc: Any, pointer: bool) -> list[str]:
    """Lines (indented for the field's `if`) that decode x into obj.<attr> or raise."""
    t = f"obj.{attr}"
    if enc in _FAST_LIMITS:
        lo, hi = _FAST_LIMITS[enc]
        return [f"if type(x) is int and {lo} <= x <= {hi}: {t} = x", "elif x is not None: raise TypeError"]
    if enc == "optint":
        lo, hi = _FAST_LIMITS["int"]
        return [f"if x is None: {t} = None", f"elif type(x) is int and {lo} <= x <= {hi}: {t} = x", "else: raise TypeError"]
    if enc == "bool":
        return [f"if x is True or x is False: {t} = x", "elif x is not None: raise TypeError"]
    if enc in ("str", "optstr", "label"):
        none = {"str": "pass", "optstr": f"{t} = None", "label": f"{t} = ''"}[enc]
        out = ["if type(x) is str:", f"    {t} = x if x.isascii() else gs(x)", "    if ':' in x: c[1] += x.count(':')"]
        if enc == "label":
            out.append("    if len(x) > 64 and len(x.encode()) > 256: raise ValueError")
        return out + [f"elif x is None: {none}", "else: raise TypeError"]
    if enc == "bytes":
        return [f"if type(x) is str: {t} = pb64(x)", f"elif x is None: {t} = None", "else: raise TypeError"]
    if enc == "bytes32":
        return [f"if type(x) is list and len(x) == 32 and all(type(i) is int for i in x): {t} = bytes(x)",
                "elif x is not None: raise TypeError"]
    if enc == "cid":
        return [f"if x is None: {t} = None", "elif type(x) is dict and len(x) == 1:",
                f"    {t} = pcid(x['/'])", "    c[0] += 1", "else: raise TypeError"]
    if enc == "addr":
        return [f"if type(x) is str: {t} = paddr(x)", f"elif x is None: {t} = ''", "else: raise TypeError"]
    if enc == "bigint":
        return [f"if type(x) is str: {t} = pbig(x)", "else: raise TypeError"]
    if enc == "id":
        return ["if type(x) is dict and len(x) == 2 and type(m := x.get('Miner')) is int and type(n := x.get('Number')) is int"
                " and 0 <= m < 18446744073709551616 and 0 <= n < 18446744073709551616:",
                f"    {t} = SectorID(m, n)", "    c[0] += 2", "else: raise TypeError"]
    if isinstance(enc, type):
        child = f"_F[{enc.__name__!r}]"
        if pointer:
            return [f"if x is None: {t} = None", f"else: {t} = {child}(x, {t}, c)"]
        return [f"if x is not None: {t} = {child}(x, {t}, c)"]
    if isinstance(enc, tuple):
        child = f"_F[{enc[1].__name__!r}]"
        return [f"if x is None: {t} = None", f"elif type(x) is list: {t} = [{child}(e, None, c) if e is not None else _null() for e in x]",
                "else: raise TypeError"]
    raise TypeError(enc)


def _null() -> Any:
    raise TypeError("a null list element: the exact path")


_F: dict[str, Callable[[Any, Any, list[int]], Any]] = {}


def _compile_fast(codec: _Codec) -> None:
    cls = codec.cls
    name = cls.__name__
    emb = [attr for attr, *_, e in codec.fields if e]
    emb_keys = {go for _, go, *_, e in codec.fields if e}
    lines = ["def fast(d, old, c):", "    if type(d) is not dict: raise TypeError", "    if not KEYS.issuperset(d): raise KeyError",
             "    c[0] += len(d)", "    if old is not None:", "        obj = old", "    else:", "        obj = cls()"]
    lines += [f"        obj.{a} = None" for a in emb]
    if emb:
        lines += [f"    if obj.{emb[0]} is None and not EMB.isdisjoint(d):"]
        lines += [f"        obj.{a} = {(None if enc == 'cid' else _ZERO[enc])!r}" for a, _, enc, *_ in codec.fields if a in emb]
    lines.append("    g = d.get")
    for attr, go, enc, _, _ in codec.fields:
        pointer = isinstance(enc, type) and (name, go) not in _VALUE_STRUCTS
        lines.append(f"    if (x := g({go!r}, M)) is not M:")
        lines += ["        " + line for line in _fast_field(attr, enc, pointer)]
    lines.append("    return obj")
    ns = {"cls": cls, "KEYS": frozenset(go for _, go, *_ in codec.fields), "EMB": frozenset(emb_keys), "M": _MISSING,
          "_F": _F, "_null": _null, "SectorID": SectorID, "gs": _gj.go_string, "pb64": _gj.parse_base64,
          "pcid": _gj.parse_cid, "paddr": _gj.parse_address, "pbig": _gj.parse_bigint}
    exec("\n".join(lines), ns)  # noqa: S102 - source generated from the field tables
    _F[name] = ns["fast"]


_MISSING = object()
for _codec in _CODECS.values():
    _compile_fast(_codec)
_plain_json = json.JSONDecoder(parse_constant=_gj._no_constant)


def _has_neg_zero(text: str) -> bool:
    """Whether text may hold the number -0 (a string like "worker-01" does not)."""
    i = text.find("-0")
    while i >= 0:
        before = text[:i].rstrip()[-1:]
        if before in (":", ",", "[") and text[i + 2 : i + 3] not in (".", "e", "E") and not text[i + 2 : i + 3].isdigit():
            return True
        i = text.find("-0", i + 2)
    return False


def _decode_state_fast(data: bytes | str) -> SectorState:
    """The fast path (see above); raises on anything it does not take (then: the exact path)."""
    text = data.decode() if isinstance(data, (bytes, bytearray)) else data
    if ("-0" in text and _has_neg_zero(text)) or "\\u003a" in text or "\\u003A" in text:
        raise ValueError("the exact path")
    d = _plain_json.decode(text)
    if type(d) is not dict or "ID" not in d:
        raise ValueError("the exact path")
    c = [0, 0]
    st = _F["SectorState"](d, None, c)
    if text.count(":") != c[0] + c[1]:
        raise ValueError("a repeated key: the exact path")
    return st  # type: ignore[no-any-return]


def decode_field(go_name: str, value: Any, unknown: list[str] | None = None) -> Any:
    """A typed value for SectorState field `go_name`: its Go JSON form decoded strictly (as
    Go would, GoJSONError naming the field otherwise), or a typed value passed through.
    Keys Go would ignore go to `unknown` as "Struct.Key"."""
    f = _FIELD_BY_GO[go_name]
    enc = f.metadata["enc"]
    if dataclasses.is_dataclass(value) or isinstance(value, (bytes, SectorID)):
        return value
    if isinstance(enc, tuple) and isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return value
    pointer = isinstance(enc, type) and ("SectorState", go_name) not in _VALUE_STRUCTS
    try:
        return _decoder_for(enc, pointer)(value, getattr(SectorState(), f.name), unknown)
    except _Err as e:
        raise e.within(go_name) from None


_FIELD_BY_GO = {f.metadata["go"]: f for f in dataclasses.fields(SectorState)}


# --- Arrow schemas -----------------------------------------------------------------------

_ARROW_SCALAR = {
    "int": pa.int64(),
    "uint": pa.uint64(),
    "bool": pa.bool_(),
    "str": pa.string(),
    "addr": pa.string(),
    "bigint": pa.string(),
    "label": pa.string(),
    "cid": pa.string(),
    "bytes": pa.binary(),
    "bytes32": pa.binary(32),
    "optint": pa.int64(),
    "optstr": pa.string(),
}


def _arrow_type(enc: Any) -> pa.DataType:
    if isinstance(enc, type):
        return pa.struct([pa.field(f.name, _arrow_type(f.metadata["enc"])) for f in dataclasses.fields(enc)])
    if isinstance(enc, tuple):
        return pa.list_(_arrow_type(enc[1]))
    return _ARROW_SCALAR[enc]


def _state_fields() -> list[pa.Field]:
    out = [pa.field("miner", pa.uint64(), nullable=False), pa.field("number", pa.uint64(), nullable=False)]
    for f in dataclasses.fields(SectorState):
        if f.metadata["enc"] != "id":
            out.append(pa.field(f.name, _arrow_type(f.metadata["enc"])))
    return out


SECTOR_STATE_SCHEMA: pa.Schema = pa.schema(_state_fields())

SECTOR_EVENT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("seq", pa.uint64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # one of EVENT_KINDS
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("worker_state", pa.string(), nullable=False),  # "online" | "offline"
        pa.field("changed_fields", pa.list_(pa.string())),  # Go field names
        *_state_fields(),
    ]
)


def states_to_arrow(states: Sequence[SectorState], schema: pa.Schema = SECTOR_STATE_SCHEMA) -> pa.RecordBatch:
    """A RecordBatch of full states (SECTOR_STATE_SCHEMA)."""
    return pa.RecordBatch.from_pylist([s.to_arrow_row() for s in states], schema=schema)


def arrow_to_states(batch: pa.RecordBatch | pa.Table) -> list[SectorState]:
    """SectorState objects of every row (either schema)."""
    return [SectorState.from_arrow_row(r) for r in batch.to_pylist()]


# --- Go JSON from Arrow, column-wise ---------------------------------------------------------
# The import path encodes a million states: per-row Python (to_go_json) costs ~17 us a state,
# these kernels ~1 us. Each value becomes its JSON text in a string column, parents join their
# children's texts element-wise; rare strings that need escaping go through go_dumps itself,
# so the bytes are those of SectorState.to_go_json() for the same row (tests/sectors check it).

try:  # numpy comes with most pyarrow installs; without it the per-row encoder is used
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

# A string holding one of these bytes is written by go_dumps itself: controls, '"', '\\', Go's
# HTML escapes <>&, and 0xE2, the lead byte of U+2028/U+2029 (other characters starting with
# it merely take that exact, slower path).
_ESC_BYTES = None if np is None else np.zeros(256, bool)
if _ESC_BYTES is not None:
    _ESC_BYTES[:0x20] = True
    _ESC_BYTES[[ord(c) for c in '"\\<>&']] = True
    _ESC_BYTES[0xE2] = True
_NULL = pa.scalar("null")


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _nullify(arr: pa.Array, text: pa.Array) -> pa.Array:
    """text where arr is valid, "null" where it is null."""
    if arr.null_count == 0:
        return text
    return pc.if_else(pc.is_valid(arr), text, _NULL)


def _escape_rows(arr: pa.Array) -> np.ndarray:
    """Indices of the values of a string array (no nulls) that hold a byte JSON/Go escapes:
    one table lookup over the data buffer (a regex per value cost ~10x more)."""
    n = len(arr)
    if n == 0 or arr.buffers()[2] is None:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
    lo, hi = int(offsets[0]), int(offsets[-1])
    hits = np.flatnonzero(_ESC_BYTES[np.frombuffer(arr.buffers()[2], np.uint8, hi - lo, lo)])
    if not len(hits):
        return hits
    return np.unique(np.searchsorted(offsets, hits + lo, side="right") - 1)


def _b64(arr: pa.Array) -> pa.Array:
    """Standard base64 (with padding) of every value of a binary array (nulls as "").

    Values of one length L are encoded together: padded with zeros to a multiple of 3 bytes,
    one binascii call over all of them, the last (3 - L % 3) % 3 characters set to '='."""
    arr = arr.cast(pa.binary()) if arr.type != pa.binary() else arr
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if arr.null_count:
        lengths = np.where(arr.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    out_len = (lengths + 2) // 3 * 4
    out_off = np.zeros(n + 1, np.int64)
    np.cumsum(out_len, out=out_off[1:])
    out = np.empty(int(out_off[-1]), np.uint8)
    for L in np.unique(lengths):
        L = int(L)
        if L == 0:
            continue
        rows = np.flatnonzero(lengths == L)
        k3 = (L + 2) // 3
        start = int(offsets[rows[0]])
        dense = len(rows) == n and int(offsets[n]) - start == n * L  # the usual case: a view
        src = data[start : start + n * L].reshape(n, L) if dense else data[offsets[rows][:, None] + np.arange(L)]
        if k3 * 3 != L:
            mat = np.zeros((len(rows), k3 * 3), np.uint8)
            mat[:, :L] = src
            src = mat
        chars = np.frombuffer(binascii.b2a_base64(np.ascontiguousarray(src).data, newline=False), np.uint8)
        chars = chars.reshape(len(rows), k3 * 4)
        pad = k3 * 3 - L
        if pad:
            chars = chars.copy()
            chars[:, k3 * 4 - pad :] = ord("=")
        if dense:
            out[:] = chars.reshape(-1)
        else:
            out[out_off[rows][:, None] + np.arange(k3 * 4)] = chars
    if out_off[-1] < 2**31:
        return pa.StringArray.from_buffers(n, pa.py_buffer(out_off.astype(np.int32)), pa.py_buffer(out))
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(out_off), pa.py_buffer(out))


def _valid_part(arr: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """(the valid slots only, their indices) when a struct/list is mostly null; else (arr, None)."""
    if arr.null_count == 0 or arr.null_count * 4 < len(arr):
        return arr, None
    idx = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
    return arr.take(pa.array(idx)), idx


def _scatter(n: int, idx: np.ndarray, text: pa.Array) -> pa.Array:
    """Texts of the valid slots put back at idx among n, "null" elsewhere."""
    pos = np.full(n, len(text), np.int64)
    pos[idx] = np.arange(len(idx))
    return pa.concat_arrays([text, pa.array(["null"], pa.string())]).take(pa.array(pos))


def _enc_value(arr: pa.Array, enc: Any) -> pa.Array:
    """The Go JSON text of every value of arr (Arrow form of a field with encoding enc)."""
    return _concat(_enc_parts(arr, enc))


def _concat(parts: list[Any]) -> pa.Array:
    """Join parts (arrays and literal strings) element-wise; adjacent literals merged first."""
    merged: list[Any] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    if len(merged) == 1 and not isinstance(merged[0], str):
        return merged[0]
    return _join(*merged)


def _enc_parts(arr: pa.Array, enc: Any) -> list[Any]:
    """Pieces (arrays, literal strings) whose element-wise concatenation is the Go JSON text of
    every value of arr. A struct without nulls is inlined into its parent's pieces, so the
    whole state is written by a few joins rather than one per nesting level."""
    if enc in ("int", "uint"):
        return [pc.cast(arr.fill_null(0) if arr.null_count else arr, pa.string())]
    if enc == "optint":
        return [_nullify(arr, pc.cast(arr, pa.string()).fill_null("null"))]
    if enc == "bool":
        return [pc.if_else(arr.fill_null(False) if arr.null_count else arr, "true", "false")]
    if enc in ("str", "label"):
        return _quote_parts(arr.fill_null("") if arr.null_count else arr)
    if enc == "bigint":
        return _quote_parts(arr.fill_null("0") if arr.null_count else arr)
    if enc == "addr":  # the undefined address ("") is Go's "<empty>", HTML-escaped
        arr = arr.fill_null("") if arr.null_count else arr
        undef = pc.equal(arr, "")
        if not pc.any(undef).as_py():
            return _quote_parts(arr)
        return [pc.if_else(undef, '"\\u003cempty\\u003e"', _concat(_quote_parts(arr)))]
    if enc == "optstr":
        return [_nullify(arr, _concat(_quote_parts(arr.fill_null(""))))]
    if enc == "cid":
        parts = ['{"/":', *_quote_parts(arr.fill_null("") if arr.null_count else arr), "}"]
        return parts if arr.null_count == 0 else [_nullify(arr, _concat(parts))]
    if enc == "bytes":
        parts = ['"', _b64(arr), '"']
        return parts if arr.null_count == 0 else [_nullify(arr, _concat(parts))]
    if enc == "bytes32":
        return [pa.array(["null" if v is None else "[" + ",".join(map(str, v)) + "]" for v in arr.to_pylist()], pa.string())]
    if isinstance(enc, tuple):
        return [_enc_list(arr, lambda vals: _enc_struct(vals, enc[1]))]
    if isinstance(enc, type):
        if arr.null_count == 0:
            return _struct_parts(arr, enc)
        part, idx = _valid_part(arr)
        text = _nullify(part, _enc_struct(part, enc))
        return [text if idx is None else _scatter(len(arr), idx, text)]
    raise TypeError(f"no Arrow encoder for {enc!r}")


def _quote_parts(arr: pa.Array) -> list[Any]:
    """JSON string literals of a string array without nulls (Go's escaping), as pieces."""
    idx = _escape_rows(arr)
    if not len(idx):
        return ['"', arr, '"']
    fixed = [go_dumps(s).decode() for s in arr.take(pa.array(idx)).to_pylist()]
    mask = np.zeros(len(arr), bool)
    mask[idx] = True
    return [pc.replace_with_mask(_join('"', arr, '"'), pa.array(mask), pa.array(fixed, pa.string()))]


def _enc_list(arr: pa.Array, enc_values: Callable[[pa.Array], pa.Array]) -> pa.Array:
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
    offsets = np.zeros(len(arr) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    texts = enc_values(arr.flatten())
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), texts), ",")
    return _nullify(arr, _join("[", joined, "]"))


def _enc_struct(arr: pa.Array, cls: type) -> pa.Array:
    """'{...}' for every slot of a struct array (null slots get a text too; callers mask)."""
    return _concat(_struct_parts(arr, cls))


def _struct_parts(arr: pa.Array, cls: type) -> list[Any]:
    fields = dataclasses.fields(cls)
    embedded = [f for f in fields if f.metadata["embedded"]]
    if embedded and arr.field(embedded[0].name).null_count:
        # DealInfoV2 with a nil embedded pointer (deal_id null): only the fields of its own
        present = pc.is_valid(arr.field(embedded[0].name))
        full = _concat(_fields_parts(arr, fields))
        short = _concat(_fields_parts(arr, [f for f in fields if not f.metadata["embedded"]]))
        return [pc.if_else(present, full, short)]
    return _fields_parts(arr, fields)


def _fields_parts(arr: pa.Array, fields: Sequence[dataclasses.Field]) -> list[Any]:  # type: ignore[type-arg]
    parts: list[Any] = []
    first = True
    for f in fields:
        go, enc = f.metadata["go"], f.metadata["enc"]
        key = ("{" if first else ",") + f'"{go}":'
        first = False
        if enc == "id":  # SectorState.ID lives in the top-level columns miner/number
            parts += [key + '{"Miner":', *_enc_parts(arr.field("miner"), "uint"), ',"Number":', *_enc_parts(arr.field("number"), "uint"), "}"]
            continue
        child = arr.field(f.name)
        if not f.metadata["omitempty"] or child.null_count == 0:
            parts += [key, *_enc_parts(child, enc)]
        elif child.null_count < len(child):  # (all null: the key is left out of every row)
            parts.append(pc.if_else(pc.is_valid(child), _concat([key, *_enc_parts(child, enc)]), ""))
    parts.append("}")
    return parts


def arrow_to_go_json(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Go JSON of every row (SECTOR_STATE_SCHEMA or SECTOR_EVENT_SCHEMA columns), as a binary
    array: row i is `SectorState.from_arrow_row(row i).to_go_json()`, built column-wise."""
    if np is None:  # pragma: no cover
        return pa.array([SectorState.from_arrow_row(r).to_go_json() for r in batch.to_pylist()], pa.binary())
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema=batch.schema)
    names = [f.name for f in dataclasses.fields(SectorState) if f.metadata["enc"] != "id"]
    struct = pa.StructArray.from_arrays([batch.column("miner"), batch.column("number")] + [batch.column(n) for n in names], ["miner", "number", *names])
    return _enc_struct(struct, SectorState).cast(pa.binary())


# --- checking Arrow rows against what Go could have written ---------------------------------
# An Arrow row (Parquet import, a streamed import) holds a CID, an address or a token amount as
# a string; Go's types can hold only valid ones, in their canonical form, so a row whose
# string is anything else would be stored as bytes damocles cannot read. Checked column-wise:
# strings by a pattern at C speed, then each distinct value the pattern cannot vouch for
# through the exact parser; CIDs grouped by (header, length), one of each group parsed.

_CID_SHAPE = r"^b[a-z2-7]{8,}$"
_ID_ADDRESS = r"^f0(0|[1-9][0-9]{0,17})$"  # below 10^18 < 2^63: valid without a parse
_BIGINT = r"^(0|-?[1-9][0-9]*)$"  # big.Int.String()


def check_arrow_states(batch: pa.RecordBatch | pa.Table) -> list[tuple[int, GoJSONError]]:
    """(row, error) for every row of `batch` (SECTOR_STATE_SCHEMA columns) holding a value
    no Go SectorState can hold: a CID, address or token amount not in Go's canonical form, a
    deal label over 256 bytes. The error names the Go field path, as decoding does."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema=batch.schema)
    found: dict[int, GoJSONError] = {}
    rows = np.arange(batch.num_rows)
    for f in dataclasses.fields(SectorState):
        if f.metadata["enc"] != "id" and f.name in batch.schema.names:
            _check_column(batch.column(f.name), f.metadata["enc"], f.metadata["go"], rows, [], found)
    return sorted(found.items())


def _check_column(arr: pa.Array, enc: Any, path: str, rows: np.ndarray, idx: list[np.ndarray], found: dict[int, GoJSONError]) -> None:
    if isinstance(enc, type):
        if arr.null_count:
            keep = arr.is_valid().to_numpy(zero_copy_only=False)
            arr, rows, idx = arr.filter(pa.array(keep)), rows[keep], [i[keep] for i in idx]
        for f in dataclasses.fields(enc):
            _check_column(arr.field(f.name), f.metadata["enc"], path + "." + f.metadata["go"], rows, idx, found)
        return
    if isinstance(enc, tuple):
        parent = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        offsets = arr.offsets.to_numpy(zero_copy_only=False)
        within = np.arange(len(parent)) - (offsets[parent] - offsets[0])
        _check_column(arr.flatten(), enc[1], path + "[%d]", rows[parent], [i[parent] for i in idx] + [within], found)
        return
    bad = _bad_values(arr, enc)
    if bad is None:
        return
    mask, reason = bad
    for j in np.flatnonzero(mask):
        row = int(rows[j])
        if row not in found:
            where = path % tuple(int(i[j]) for i in idx) if idx else path
            found[row] = GoJSONError(reason(arr[j].as_py()), where)


def _bad_values(arr: pa.Array, enc: Any) -> tuple[np.ndarray, Callable[[Any], str]] | None:
    """(mask of bad values, their reason) for one leaf column, None if all are good."""
    if enc == "label":
        lengths = pc.binary_length(arr.cast(pa.binary())).fill_null(0).to_numpy(zero_copy_only=False)
        mask = lengths > 256
        return (mask, lambda v: f"not a deal label: {len(v.encode())} bytes, at most 256") if mask.any() else None
    if enc == "bigint":
        ok = pc.match_substring_regex(arr, _BIGINT).fill_null(True)
        if pc.all(ok).as_py():
            return None
        return ~ok.to_numpy(zero_copy_only=False), lambda v: f"not a big integer in Go's form: {v!r}"
    if enc == "cid":
        return _exact(arr, _cid_suspects(arr), lambda v: _gj.parse_cid(v) == v, "not a CID in Go's form")
    if enc == "addr":
        suspect = pc.invert(pc.or_(pc.equal(arr, ""), pc.match_substring_regex(arr, _ID_ADDRESS)).fill_null(True))
        return _exact(arr, suspect, _address_in_go_form, "not an address in Go's form")
    return None


def _cid_suspects(arr: pa.Array) -> pa.Array:
    """The values of a CID column that need go-cid's parse one by one: every value not shaped
    like a base32 CIDv1, and every one whose header is not a valid header's or whose last
    character has spare bits set. A CIDv1 is valid when its header (version, codec, multihash
    code and length: four uvarints) is, its length fits that header and its spare bits are
    zero; its digest is any bytes. So the headers are decoded for the whole column at once
    (numpy, from the first 15 base32 characters: 9 bytes, room for any real header), and
    one value per distinct (header, length) is parsed: a column of N distinct CIDs costs a
    few passes, not one pass per CID (grouping by the first 16 characters, as before, made
    every real CID a group of its own: quadratic, issue 24)."""
    shaped = pc.fill_null(pc.match_substring_regex(arr, _CID_SHAPE), False).to_numpy(zero_copy_only=False)
    suspect = ~shaped
    rows = np.flatnonzero(shaped)
    if rows.size:
        cids = arr.take(pa.array(rows)).cast(pa.string())
        ok = _valid_header_groups(cids) & _spare_bits_clear(cids)
        suspect[rows[~ok]] = True
    return pa.array(suspect)


_HEAD_CHARS = 15  # base32 characters after the 'b': 75 bits, the header's first 9 bytes
_B32_LUT = np.zeros(256, np.uint8)
_B32_LUT[np.frombuffer(_gj._B32_STD.encode(), np.uint8)] = np.arange(32, dtype=np.uint8)


def _fixed_width(strings: pa.Array, width: int) -> np.ndarray:
    """(n, width) uint8 of an array of ASCII strings each exactly `width` bytes long."""
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset : strings.offset + n + 1]
    return np.frombuffer(strings.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(n, width)


def _valid_header_groups(cids: pa.Array) -> np.ndarray:
    """True where the CID's (header, length) is one a parsed representative proved valid."""
    n = len(cids)
    head = pc.utf8_rpad(pc.utf8_slice_codeunits(cids, 1, 1 + _HEAD_CHARS), _HEAD_CHARS, "a")
    values = _B32_LUT[_fixed_width(head, _HEAD_CHARS)]
    bits = (values[:, :, None] >> np.arange(4, -1, -1, dtype=np.uint8)) & 1
    head_bytes = np.packbits(bits.reshape(n, 5 * _HEAD_CHARS)[:, :72], axis=1)  # (n, 9)
    width = head_bytes.shape[1]
    # next_end[:, j]: one past the first byte at or after j that ends a uvarint (9: none does)
    next_end = np.full((n, width + 1), width + 1, np.int64)
    for j in range(width - 1, -1, -1):
        next_end[:, j] = np.where(head_bytes[:, j] < 0x80, j + 1, next_end[:, j + 1])
    at = np.zeros(n, np.int64)
    for _ in range(4):  # version, codec, multihash code, digest length
        at = next_end[np.arange(n), np.minimum(at, width)]
    fits = at <= width
    header = np.where(np.arange(width) < at[:, None], head_bytes, 0)  # the digest's bytes zeroed
    lengths = pc.utf8_length(cids).to_numpy(zero_copy_only=False).astype("<u4")
    key = np.ascontiguousarray(np.column_stack([header, at.astype(np.uint8)[:, None], lengths.view(np.uint8).reshape(n, 4)]))
    keys = pa.FixedSizeBinaryArray.from_buffers(pa.binary(key.shape[1]), n, [None, pa.py_buffer(key)])
    encoded = pc.dictionary_encode(keys)  # hashing: linear, where a sort of the keys was not cheap
    group = encoded.indices.to_numpy(zero_copy_only=False)
    first = np.empty(len(encoded.dictionary), np.int64)
    first[group[::-1]] = np.arange(n - 1, -1, -1)  # each group's first row (the last write wins)
    group_ok = np.array([_parses_to_itself(cids[int(i)].as_py()) for i in first], bool)
    return fits & group_ok[group]


def _spare_bits_clear(cids: pa.Array) -> np.ndarray:
    """True where the last base32 character sets none of the bits past the last whole byte
    (go's base32 ignores them, so a CID with them set is not in its canonical form)."""
    spare = (pc.utf8_length(cids).to_numpy(zero_copy_only=False).astype(np.int64) - 1) * 5 % 8
    last = _B32_LUT[_fixed_width(pc.utf8_slice_codeunits(cids, -1), 1)[:, 0]]
    return (last & ((1 << spare) - 1)) == 0


@functools.lru_cache(maxsize=1 << 16)
def _address_in_go_form(address: str) -> bool:
    """Remembered: a deal's client (an f1/f3 address, checksummed) recurs across a file's
    blocks, and each parse cost ~14 us (3.6 of the check's 9.7 us a realistic state)."""
    try:
        return _gj.parse_address(address) == address
    except ValueError:
        return False


def _parses_to_itself(cid: str) -> bool:
    try:
        return _gj.parse_cid(cid) == cid
    except ValueError:
        return False


def _exact(arr: pa.Array, suspect: pa.Array, good: Callable[[str], bool], what: str) -> tuple[np.ndarray, Callable[[Any], str]] | None:
    """The suspect values checked one distinct value at a time."""
    suspect = pc.and_(suspect, pc.is_valid(arr))
    if not pc.any(suspect).as_py():
        return None
    bad = []
    for v in pc.unique(arr.filter(suspect)).to_pylist():
        try:
            ok = good(v)
        except ValueError:
            ok = False
        if not ok:
            bad.append(v)
    if not bad:
        return None
    mask = pc.is_in(arr, value_set=pa.array(bad, pa.string())).fill_null(False).to_numpy(zero_copy_only=False)

    def reason(v: str) -> str:
        try:
            return f"{what}: {v!r} (Go writes it {_gj.parse_cid(v) if what.startswith('not a CID') else _gj.parse_address(v)!r})"
        except ValueError as e:
            return f"{what}: {v!r}: {e}"

    return mask, reason
