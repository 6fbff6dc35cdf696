"""Realistic sector states for the benchmarks and the tests (shipped in the wheel with bench/,
so `vsm-pool bench` runs from an installed copy, where tests/ is not).

    state_batch(miner, first, count, seed)  -- numpy -> Arrow columns (SECTOR_STATE_SCHEMA)
         | blocks of _BLOCK rows, cached
         v
    make_state(miner, number, with_piece)   -- one row as a SectorState (a fresh object a call)

Real data is what the benchmarks must see (issue 24: every state had the same CIDs, so a check
that cost one pass over a column per distinct CID looked linear). Every row draws its own
random 32-byte digests, so every CID, commitment, message, ticket, seed and proof is distinct;
a state is at some point of sealing (allocated, ticket, pre-committed, seed, proven,
finalized (offline), aborted/removed, snap-upgraded), with 0-4 DDO pieces (with a builtin or
DDO deal, a nil embedded deal, or no deal info) or legacy deals (with and without a
proposal), labels empty, payload CIDs or text up to 256 bytes (some that Go escapes), clients
f0/f1/f3, workers and failures varied. CIDs are CIDv1 in Go's canonical form, built as go-cid
does: piece commitments `baga6ea4seaq...` (fil-commitment-unsealed, sha2-256-trunc254-padded),
sealed `bagboea4b5abc...` (fil-commitment-sealed, poseidon-bls12_381-a2-fc1), messages
`bafy2bzace...` (dag-cbor, blake2b-256). tests/sectors/test_states_generator.py checks that Go's
decoding reads every row back as it is.

Vectorised: ~3 us a state (5M states for the import bench in seconds), where building
SectorState objects and states_to_arrow cost ~35 us.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsm.sdk.sectors import SECTOR_STATE_SCHEMA, SectorState

__all__ = ["make_state", "state_batch", "state_batches"]

_BLOCK = 1024  # make_state's rows come from blocks of this many, generated once each

# CIDv1 headers (version, codec, multihash code, digest length; each a uvarint)
_PIECE_CID = bytes.fromhex("0181e203922020")  # fil-commitment-unsealed, sha2-256-trunc254-padded
_SEALED_CID = bytes.fromhex("0182e20381e80220")  # fil-commitment-sealed, poseidon-bls12_381-a2-fc1
_MESSAGE_CID = bytes.fromhex("0171a0e40220")  # dag-cbor, blake2b-256
_PAYLOAD_CID = bytes.fromhex("01701220")  # dag-pb, sha2-256: a deal label's payload CID

_B32 = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", np.uint8)

# (state reached, its latest LatestState.StateChange): stage index -> (prev, next, event)
_STAGES = ("allocated", "ticket", "precommitted", "seed", "proven", "finalized", "removed", "upgraded")
_STAGE_WEIGHTS = (0.05, 0.08, 0.08, 0.06, 0.08, 0.57, 0.05, 0.03)
_CHANGES = (
    ("Empty", "Allocated", "SectorAllocated"), ("TreeDBuilt", "TicketAssigned", "SectorTicket"),
    ("PC2Done", "PCSubmitted", "SectorPreCommitted"), ("PCLanded", "SeedAssigned", "SectorSeed"),
    ("C2Done", "ProofSubmitted", "SectorProofReady"), ("Persisted", "Finished", "SectorFinalized"),
    ("PC1Done", "Aborted", "SectorAbort"), ("Finished", "UpgradeFinished", "SectorUpgraded"),
)
_FAILURES = (
    ("temporary", 'call rpc "Damocles.SubmitPreCommit": dial tcp 10.1.0.5:1789: i/o timeout'),
    ("permanent", "pc2 failed: cache dir /mnt/nvme0/cache/s-t01000-42 missing p_aux\n"),
    ("temporary", "wait for seed: chain head 4512003 < seed epoch 4512150"),
    ("permanent", "commit message bafy2bzacea... reverted: exit code 16 (SysErrForbidden)"),
)
_ABORTS = ("ticket expired", "precommit message failed: exit code 18 (ErrInsufficientFunds)",
           "sector data corrupted: <sealed file checksum mismatch> & removed",
           "deal 112233 expired before the sector was proven")
_TEXT = ("deal for dataset shard", "Common Crawl segment", "ÜNICODE ✓ payload", "backup 2024-05 <db> & logs",
         "x" * 40, "project:archive/2023\\q4 \"raw\"")


def _b32_rows(data: np.ndarray) -> np.ndarray:
    """Unpadded lowercase base32 (RFC 4648, as go-multibase writes it) of each row of a
    (n, k) uint8 array: (n, ceil(8k/5)) ASCII codes; the last character's spare bits are 0.
    Five bytes give eight characters, each from at most two of them (uint8 work only)."""
    n, k = data.shape
    groups = -(-k // 5)
    b = np.zeros((n, groups * 5), np.uint8)
    b[:, :k] = data
    b0, b1, b2, b3, b4 = (b[:, i::5] for i in range(5))
    out = np.empty((n, groups, 8), np.uint8)
    for j, v in enumerate((b0 >> 3, (b0 & 7) << 2 | b1 >> 6, (b1 >> 1) & 31, (b1 & 1) << 4 | b2 >> 4,
                           (b2 & 15) << 1 | b3 >> 7, (b3 >> 2) & 31, (b3 & 3) << 3 | b4 >> 5, b4 & 31)):
        out[:, :, j] = v
    return _B32[out.reshape(n, groups * 8)[:, : -(-k * 8 // 5)]]


def _fixed_strings(chars: np.ndarray, binary: bool = False) -> pa.Array:
    """A string (or binary) array of the rows of an (n, width) uint8 array."""
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary() if binary else pa.string(), n,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars).tobytes())])


def _cids(rng: np.random.Generator, n: int, header: bytes) -> pa.Array:
    """n CIDs of this header over random 32-byte digests: 'b' + base32 of header + digest."""
    digest = np.frombuffer(rng.bytes(n * 32), np.uint8).reshape(n, 32).copy()
    if header == _PIECE_CID:
        digest[:, -1] &= 0x3F  # sha2-256-trunc254: the top two bits cleared
    data = np.concatenate([np.broadcast_to(np.frombuffer(header, np.uint8), (n, len(header))), digest], axis=1)
    text = _b32_rows(data)
    return _fixed_strings(np.concatenate([np.full((n, 1), ord("b"), np.uint8), text], axis=1))


def _random_bytes(rng: np.random.Generator, n: int, size: int, where: np.ndarray | None = None) -> pa.Array:
    """n random values of `size` bytes; with `where`, only there (elsewhere empty: to be nulled)."""
    if where is None:
        return _fixed_strings(np.frombuffer(rng.bytes(n * size), np.uint8).reshape(n, size), binary=True)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(where * size, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rng.bytes(int(offsets[-1])))])


def _pick(rng: np.random.Generator, n: int, choices: pa.Array | list[str], p: list[float] | None = None) -> pa.Array:
    choices = choices if isinstance(choices, pa.Array) else pa.array(choices, pa.string())
    return choices.take(pa.array(rng.choice(len(choices), n, p=p)))


def _text(values: np.ndarray, prefix: str = "") -> pa.Array:
    """Decimal text of an integer array, after a prefix ("f0" for an ID address)."""
    text = pc.cast(pa.array(values), pa.string())
    return pc.binary_join_element_wise(prefix, text, "") if prefix else text


def _null(arr: pa.Array, valid: np.ndarray) -> pa.Array:
    """arr with nulls where not valid, down to every leaf (as from_pylist leaves a null struct's
    children): writers and checkers that look at a child column see no stray values."""
    if valid.all():
        return arr
    mask = pa.array(~valid)
    if pa.types.is_struct(arr.type):
        children = [_null(arr.field(i), valid) for i in range(arr.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=list(arr.type), mask=mask)
    if pa.types.is_list(arr.type):
        return pa.ListArray.from_arrays(arr.offsets, arr.values, type=arr.type, mask=mask)
    if arr.null_count:
        valid = valid & arr.is_valid().to_numpy(zero_copy_only=False)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))  # a leaf of this module: offset 0
    return pa.Array.from_buffers(arr.type, len(arr), [bitmap, *arr.buffers()[1:]])


def _struct(type_: pa.DataType, valid: np.ndarray | None = None, **children: pa.Array) -> pa.Array:
    """A struct array of `type_` from its children by name (every field given)."""
    arr = pa.StructArray.from_arrays([children[f.name] for f in type_], fields=list(type_))
    return arr if valid is None else _null(arr, valid)


def _address_pool(seed: int, count: int) -> pa.Array:
    """Client addresses as Go writes them: f1 (secp256k1) and f3 (BLS) keys with go-address's
    blake2b-4 checksum, and f0 IDs; a miner deals with a bounded set of clients."""
    rng = np.random.default_rng([seed, 0xADD])
    out = []
    for i in range(count):
        kind = (0, 1, 1, 3)[i % 4]
        if kind == 0:
            out.append("f0%d" % rng.integers(1000, 3_000_000))
            continue
        payload = rng.integers(0, 256, 20 if kind == 1 else 48, np.uint8).tobytes()
        data = payload + hashlib.blake2b(bytes([kind]) + payload, digest_size=4).digest()
        out.append("f%d%s" % (kind, _b32_rows(np.frombuffer(data, np.uint8)[None, :]).tobytes().decode()))
    return pa.array(out, pa.string())


@functools.lru_cache(maxsize=4)
def _pools(seed: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng([seed, 0x9001])
    workers = [f"{site}-{kind}-{i:02d}" for site in ("bj", "sh", "gz") for kind in ("pc", "c2", "snap") for i in range(12)]
    locations = ["10.%d.%d.%d:17890" % tuple(rng.integers(0, 255, 3)) for _ in range(len(workers))]
    payload = _cids(rng, 64, _PAYLOAD_CID).to_pylist()
    long_labels = ["".join(rng.choice(list("abcdefghij0123456789 _-/"), k)) for k in rng.integers(100, 257, 16)]
    long_labels.append("ü" * 128)  # 256 bytes: the longest label Go accepts
    return {
        "clients": _address_pool(seed, 4096),
        "workers": pa.array(workers), "locations": pa.array(locations),
        "labels": pa.array([""] * 24 + payload + ["mAXCg5AIg" + p[9:] for p in payload[:16]] + list(_TEXT) + long_labels),
    }


def state_batch(miner: int, first: int, count: int, seed: int = 0, with_piece: bool | None = None) -> pa.RecordBatch:
    """Sectors first .. first+count-1 of `miner` as SECTOR_STATE_SCHEMA rows: a deterministic
    function of its arguments, every digest random (see the module's docstring). with_piece:
    None 0-4 DDO pieces or legacy deals, True 1-4 pieces the first with a deal, False none."""
    n = count
    rng = np.random.default_rng([seed, miner, first, count, 1])
    T = {f.name: f.type for f in SECTOR_STATE_SCHEMA}
    stage = rng.choice(len(_STAGES), n, p=_STAGE_WEIGHTS)
    st = {name: stage == i for i, name in enumerate(_STAGES)}
    done = st["finalized"] | st["upgraded"]
    reached = {k: stage >= i for i, k in enumerate(_STAGES[:5])}  # by sealing order
    progressed = rng.random(n)  # how far an aborted sector got
    for i, k in enumerate(("ticket", "precommitted", "seed", "proven"), 1):
        reached[k] = (reached[k] & ~st["removed"]) | (st["removed"] & (progressed < 1 - 0.2 * i))
    sector_type = np.where(rng.random(n) < 0.85, 8, 9)  # StackedDrg 32 GiB / 64 GiB V1_1
    sector_size = np.where(sector_type == 8, 1 << 35, 1 << 36)
    ticket_epoch = rng.integers(2_000_000, 4_500_000, n)
    ticket_bytes = _random_bytes(rng, n, 32)
    ticket_t = T["ticket"]
    ticket = _struct(ticket_t, reached["ticket"], ticket=ticket_bytes, epoch=pa.array(ticket_epoch))
    seed_epoch = ticket_epoch + rng.integers(1_500, 20_000, n)
    seeds = _struct(T["seed"], reached["seed"], seed=_random_bytes(rng, n, 32), epoch=pa.array(seed_epoch))
    pre = _struct(T["pre"], reached["precommitted"], comm_r=_cids(rng, n, _SEALED_CID), comm_d=_cids(rng, n, _PIECE_CID),
                  ticket=_struct(ticket_t, ticket=ticket_bytes, epoch=pa.array(ticket_epoch)))
    proof = _struct(T["proof"], reached["proven"], proof=_random_bytes(rng, n, 192))
    sent = reached["precommitted"] & (rng.random(n) < 0.9)
    committed = reached["proven"] & (done | (rng.random(n) < 0.7))
    message_info = _struct(T["message_info"], pre_commit_cid=_null(_cids(rng, n, _MESSAGE_CID), sent),
                           commit_cid=_null(_cids(rng, n, _MESSAGE_CID), committed),
                           need_send=pa.array((reached["precommitted"] & ~sent) | (reached["proven"] & ~committed)))
    terminated = done & (rng.random(n) < 0.02)
    term_epoch = seed_epoch + rng.integers(100_000, 1_000_000, n)
    terminate_info = _struct(T["terminate_info"], terminate_cid=_null(_cids(rng, n, _MESSAGE_CID), terminated),
                             terminated_at=pa.array(np.where(terminated, term_epoch, 0)),
                             added_height=pa.array(np.where(terminated, term_epoch - rng.integers(10, 2000, n), 0)))
    pools = _pools(seed)
    has_latest = np.where(st["allocated"], rng.random(n) < 0.3, rng.random(n) < 0.97)
    change = [pa.array([c[j] for c in _CHANGES]).take(pa.array(stage)) for j in range(3)]
    failed = rng.random(n) < 0.05
    failure_i = rng.integers(0, len(_FAILURES), n)
    failure = _struct(T["latest_state"].field("failure").type, failed,
                      level=pa.array([f[0] for f in _FAILURES]).take(pa.array(failure_i)),
                      desc=pa.array([f[1] for f in _FAILURES]).take(pa.array(failure_i)))
    worker_i = rng.integers(0, len(pools["workers"]), n)
    ls_t = T["latest_state"]
    latest = _struct(ls_t, has_latest,
                     worker=_struct(ls_t.field("worker").type, instance=pools["workers"].take(pa.array(worker_i)),
                                    location=pools["locations"].take(pa.array(worker_i))),
                     state_change=_struct(ls_t.field("state_change").type, prev=change[0], next=change[1], event=change[2]),
                     failure=failure)
    abort_reason = pc.if_else(pa.array(st["removed"]), _pick(rng, n, list(_ABORTS)), "")
    up = st["upgraded"]
    upgrade_public = _struct(T["upgrade_public"], up,
                             comm_r=pa.Array.from_buffers(pa.binary(32), n, [None, pa.py_buffer(rng.bytes(n * 32))]),
                             sealed_cid=_cids(rng, n, _SEALED_CID), activation=pa.array(seed_epoch + 300),
                             expiration=pa.array(seed_epoch + 300 + 540 * 2880))
    upgraded_info = _struct(T["upgraded_info"], up, access_instance=pools["workers"].take(pa.array(worker_i)),
                            sealed_cid=_cids(rng, n, _SEALED_CID), unsealed_cid=_cids(rng, n, _PIECE_CID),
                            proof=_random_bytes(rng, n, 1920, up))  # an update proof: partitions of 192 bytes
    upgrade_message_id = _null(_cids(rng, n, _MESSAGE_CID), up & (rng.random(n) < 0.95))
    landed = up & ~upgrade_message_id.is_null().to_numpy(zero_copy_only=False)
    pieces, deals = _pieces_and_deals(np.random.default_rng([seed, miner, first, count, 2]), n, miner, with_piece,
                                      sector_size, ticket_epoch, pools, T)
    flag = rng.random((3, n))
    columns = {
        "miner": pa.array(np.full(n, miner, np.uint64)), "number": pa.array(np.arange(first, first + n, dtype=np.uint64)),
        "sector_type": pa.array(sector_type), "ticket": ticket, "seed": seeds, "deals": deals, "pieces": pieces,
        "pre": pre, "proof": proof, "message_info": message_info, "terminate_info": terminate_info,
        "latest_state": latest, "finalized": pa.array(done), "removed": pa.array(st["removed"] | terminated),
        "abort_reason": abort_reason, "upgraded": pa.array(up), "upgrade_public": upgrade_public,
        "upgraded_info": upgraded_info, "upgrade_message_id": upgrade_message_id,
        "upgrade_landed_epoch": _null(pa.array(seed_epoch + rng.integers(500_000, 900_000, n)), landed),
        "imported": pa.array(flag[0] < 0.03), "need_rebuild": pa.array(flag[1] < 0.01), "unsealing": pa.array(flag[2] < 0.01),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in SECTOR_STATE_SCHEMA], schema=SECTOR_STATE_SCHEMA)


def _pieces_and_deals(rng: np.random.Generator, n: int, miner: int, with_piece: bool | None, sector_size: np.ndarray,
                      ticket_epoch: np.ndarray, pools: dict[str, pa.Array], T: dict[str, pa.DataType]) -> tuple[pa.Array, pa.Array]:
    """The Pieces column (DDO pieces, damocles since 2024-04) and the legacy Deals column."""
    legacy = (rng.random(n) < 0.12) if with_piece is None else np.zeros(n, bool)
    if with_piece is None:
        count = np.where(legacy, 0, rng.choice(5, n, p=[0.5, 0.25, 0.12, 0.08, 0.05]))
    elif with_piece:
        count = rng.integers(1, 5, n)
    else:
        count = np.zeros(n, np.int64)
    pieces = _piece_list(rng, count, miner, with_piece is True, sector_size, ticket_epoch, pools, T["pieces"])
    pieces = _null(pieces, (count > 0) | (rng.random(n) < 0.5))  # no pieces: nil or empty, as Go has both
    dcount = np.where(legacy, rng.choice(3, n, p=[0.1, 0.6, 0.3]), 0)
    deals = _deal_list(rng, dcount, miner, sector_size, ticket_epoch, pools, T["deals"])
    return pieces, _null(deals, legacy)


def _offsets(count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(list offsets, parent row of each item, index of each item within its list)."""
    offsets = np.zeros(len(count) + 1, np.int32)
    np.cumsum(count, out=offsets[1:])
    parent = np.repeat(np.arange(len(count)), count)
    return offsets, parent, np.arange(offsets[-1]) - offsets[parent]


def _sizes_within(parent: np.ndarray, offsets: np.ndarray, count: np.ndarray, sector_size: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Padded piece sizes (powers of two that fit the sector together) and their offsets."""
    fit = np.log2(sector_size[parent]).astype(np.int64) - np.ceil(np.log2(np.maximum(count[parent], 1))).astype(np.int64)
    size = np.left_shift(np.int64(1), rng.integers(27, fit + 1))
    ends = np.cumsum(size)
    start_of_list = np.concatenate([[0], ends])[offsets[parent]]
    return size.astype(np.uint64), (ends - size - start_of_list).astype(np.uint64)


def _piece_list(rng: np.random.Generator, count: np.ndarray, miner: int, first_has_deal: bool, sector_size: np.ndarray,
                ticket_epoch: np.ndarray, pools: dict[str, pa.Array], type_: pa.DataType) -> pa.Array:
    offsets, parent, within = _offsets(count)
    m = int(offsets[-1])
    size, offset = _sizes_within(parent, offsets, count, sector_size, rng)
    cid = _cids(rng, m, _PIECE_CID)
    kind = rng.choice(4, m, p=[0.45, 0.3, 0.1, 0.15])  # builtin market, DDO allocation, nil embedded, no deal info
    if first_has_deal:
        kind[within == 0] = np.where(rng.random(int((within == 0).sum())) < 0.5, 0, 1)
    market, ddo, embedded = kind == 0, kind == 1, kind < 2
    start = ticket_epoch[parent] + rng.integers(2_000, 20_000, m)
    item_t = type_.value_type
    deal_t = item_t.field("deal_info").type
    deal_info = _struct(
        deal_t, kind < 3,
        deal_id=_null(pa.array(np.where(market, rng.integers(1_000_000, 120_000_000, m), 0).astype(np.uint64)), embedded),
        publish_cid=_null(_cids(rng, m, _MESSAGE_CID), market),
        allocation_id=_null(pa.array(np.where(ddo | (market & (rng.random(m) < 0.3)), rng.integers(1_000, 90_000_000, m), 0).astype(np.uint64)), embedded),
        piece_cid=_null(cid, embedded), piece_size=_null(pa.array(size), embedded),
        client=_null(pools["clients"].take(pa.array(rng.integers(0, len(pools["clients"]), m))), embedded),
        provider=_null(_text(np.full(m, miner), "f0"), embedded),
        offset=_null(pa.array(offset), embedded), length=_null(pa.array(size), embedded),
        payload_size=_null(pa.array((size // 128 * 127 - rng.integers(0, 1 << 20, m).astype(np.uint64))), embedded),
        start_epoch=_null(pa.array(start), embedded), end_epoch=_null(pa.array(start + rng.integers(180, 1278, m) * 2880), embedded),
        is_builtin_market=pa.array(market | ((kind == 2) & (rng.random(m) < 0.5))), is_compatible=pa.array(rng.random(m) < 0.97),
    )
    item = _struct(item_t, piece=_struct(item_t.field("piece").type, size=pa.array(size), piece_cid=cid), deal_info=deal_info)
    return pa.ListArray.from_arrays(pa.array(offsets), item, type=type_)


def _deal_list(rng: np.random.Generator, count: np.ndarray, miner: int, sector_size: np.ndarray, ticket_epoch: np.ndarray,
               pools: dict[str, pa.Array], type_: pa.DataType) -> pa.Array:
    """Legacy `Deals` (states written before damocles' 2024-04 change): a deal with its
    proposal, or a filler piece (ID 0, no proposal)."""
    offsets, parent, _ = _offsets(count)
    m = int(offsets[-1])
    size, offset = _sizes_within(parent, offsets, count, sector_size, rng)
    cid = _cids(rng, m, _PIECE_CID)
    real = rng.random(m) < 0.8
    verified = rng.random(m) < 0.7
    start = ticket_epoch[parent] + rng.integers(2_000, 20_000, m)
    item_t = type_.value_type
    price = np.where(verified, 0, rng.integers(1, 10**11, m))
    proposal = _struct(
        item_t.field("proposal").type, real, piece_cid=cid, piece_size=pa.array(size), verified_deal=pa.array(verified),
        client=pools["clients"].take(pa.array(rng.integers(0, len(pools["clients"]), m))), provider=_text(np.full(m, miner), "f0"),
        label=_pick(rng, m, pools["labels"]), start_epoch=pa.array(start), end_epoch=pa.array(start + rng.integers(180, 540, m) * 2880),
        storage_price_per_epoch=_text(price), provider_collateral=_text(rng.integers(10**13, 10**17, m)),
        client_collateral=_text(np.where(rng.random(m) < 0.9, 0, rng.integers(1, 10**15, m))),
    )
    item = _struct(
        item_t, id=pa.array(np.where(real, rng.integers(1_000_000, 120_000_000, m), 0).astype(np.uint64)),
        payload_size=pa.array(np.where(real, size // 128 * 127 - rng.integers(0, 1 << 20, m).astype(np.uint64), 0).astype(np.uint64)),
        piece=_struct(item_t.field("piece").type, size=pa.array(size), offset=pa.array(offset), cid=cid),
        proposal=proposal, is_compatible=pa.array(rng.random(m) < 0.95),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), item, type=type_)


def state_batches(miner: int, count: int, first: int = 0, batch_size: int = 10_000, seed: int = 0) -> Iterator[pa.RecordBatch]:
    """`count` distinct realistic states of `miner` from sector `first` on, in batches."""
    for start in range(first, first + count, batch_size):
        yield state_batch(miner, start, min(batch_size, first + count - start), seed)


@functools.lru_cache(maxsize=64)
def _block_rows(miner: int, block: int, with_piece: bool | None) -> list[dict]:  # type: ignore[type-arg]
    return state_batch(miner, block * _BLOCK, _BLOCK, with_piece=with_piece).to_pylist()  # type: ignore[no-any-return]


def make_state(miner: int, number: int, with_piece: bool | None = None) -> SectorState:
    """Sector `number` of `miner`, a realistic state (see the module's docstring): the same for
    the same arguments, a fresh object each call. with_piece: None as real data has it (half
    without pieces, some legacy deals), True 1-4 DDO pieces the first with a deal, False none."""
    return SectorState.from_arrow_row(_block_rows(miner, number // _BLOCK, with_piece)[number % _BLOCK])
