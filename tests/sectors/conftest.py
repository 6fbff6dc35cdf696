"""Fixtures for the sector-state tests: an in-process dict-backed KV DB and a realistic state."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator

import pytest

from vsm.sdk.errors import KeyNotFoundError, TransactionConflictError


class _Iter:
    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._it = iter(items)

    def __iter__(self) -> "_Iter":
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())


class _Txn:
    def __init__(self, coll: "DictCollection") -> None:
        self._c = coll
        self._w: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes:
        if key in self._w:
            v = self._w[key]
            if v is None:
                raise KeyNotFoundError(key.decode())
            return v
        try:
            return self._c.data[key]
        except KeyError:
            raise KeyNotFoundError(key.decode()) from None

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return fn(self.get(key))

    def put(self, key: bytes, val: bytes) -> None:
        self._w[bytes(key)] = bytes(val)

    def delete(self, key: bytes) -> None:
        self._w[bytes(key)] = None

    def scan(self, prefix: bytes) -> _Iter:
        merged = dict(self._c.data)
        for k, v in self._w.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return _Iter(sorted((k, v) for k, v in merged.items() if k.startswith(prefix)))


class DictCollection:
    """One collection; `conflicts` makes the next N update() calls raise a conflict."""

    def __init__(self, db: "DictDB") -> None:
        self.db = db
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.conflicts = 0
        self.fail_next: Exception | None = None

    def view(self, fn: Callable[[Any], Any]) -> Any:
        with self.lock:
            return fn(_Txn(self))

    def update(self, fn: Callable[[Any], Any]) -> Any:
        with self.lock:
            txn = _Txn(self)
            out = fn(txn)
            if self.fail_next is not None:
                e, self.fail_next = self.fail_next, None
                raise e
            if self.conflicts > 0:
                self.conflicts -= 1
                raise TransactionConflictError("conflict (injected)")
            for k, v in txn._w.items():
                if v is None:
                    self.data.pop(k, None)
                else:
                    self.data[k] = v
            self.db.commits += 1
            return out

    def need_retry_transactions(self) -> bool:
        return self.db.retry

    def get(self, key: bytes) -> bytes:
        return self.view(lambda t: t.get(key))

    def peek(self, key: bytes, fn: Callable[[bytes], Any]) -> Any:
        return self.view(lambda t: t.peek(key, fn))

    def put(self, key: bytes, val: bytes) -> None:
        self.update(lambda t: t.put(key, val))

    def delete(self, key: bytes) -> None:
        self.update(lambda t: t.delete(key))

    def scan(self, prefix: bytes) -> _Iter:
        return self.view(lambda t: t.scan(prefix))


class DictDB:
    def __init__(self, retry: bool = False) -> None:
        self.retry = retry
        self.colls: dict[str, DictCollection] = {}
        self.commits = 0

    def run(self) -> None:
        pass

    def close(self) -> None:
        pass

    def open_collection(self, name: str) -> DictCollection:
        return self.colls.setdefault(name, DictCollection(self))


@pytest.fixture
def dictdb() -> Iterator[DictDB]:
    yield DictDB()


# A state as damocles-manager writes it (hand-written from core/types*.go field order; Go
# itself checks it in tests/gojson):
# legacy deals with a proposal, v2 pieces with and without deal info, pre-commit, proof,
# snap-up fields, a failure with characters Go escapes.
SAMPLE_GO_JSON = (
    '{"ID":{"Miner":1001,"Number":42},"SectorType":8,'
    '"Ticket":{"Ticket":"3q2+7wABAgM=","Epoch":2501000},'
    '"Seed":{"Seed":"AAECAwQFBgc=","Epoch":2501150},'
    '"Deals":[{"ID":7788,"PayloadSize":1024,'
    '"Piece":{"Size":2048,"Offset":0,"Cid":{"/":"baga6ea4seaqao7s73y24kcutaosvacpdjgfe5pw76ooefnyqw4ynr3d2y6x2mpq"}},'
    '"Proposal":{"PieceCID":{"/":"baga6ea4seaqao7s73y24kcutaosvacpdjgfe5pw76ooefnyqw4ynr3d2y6x2mpq"},"PieceSize":2048,'
    '"VerifiedDeal":true,"Client":"f01234","Provider":"f01001","Label":"mAXCg5AIg \\u003cdata\\u003e \\u0026 ü",'
    '"StartEpoch":2510000,"EndEpoch":4000000,"StoragePricePerEpoch":"0","ProviderCollateral":"363510000000000",'
    '"ClientCollateral":"0"},"IsCompatible":false},'
    '{"ID":0,"PayloadSize":0,"Piece":{"Size":2048,"Offset":2048,"Cid":{"/":"baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"}},'
    '"Proposal":null,"IsCompatible":true}],'
    '"Pieces":[{"Piece":{"Size":34359738368,"PieceCID":{"/":"baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"}},'
    '"DealInfo":{"DealID":0,"PublishCid":null,"AllocationID":5566,'
    '"PieceCID":{"/":"baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"},"PieceSize":34359738368,'
    '"Client":"f03344","Provider":"f01001","Offset":0,"Length":34359738368,"PayloadSize":30000000000,'
    '"StartEpoch":2510000,"EndEpoch":5000000,"IsBuiltinMarket":false,"IsCompatible":false}},'
    '{"Piece":{"Size":2048,"PieceCID":{"/":"baga6ea4seaqpy7usqklokfx2vxuynmupslkeutzexe2uqurdg5vhtebhxqmpqmy"}},"DealInfo":null}],'
    '"Pre":{"CommR":{"/":"bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb"},'
    '"CommD":{"/":"baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"},'
    '"Ticket":{"Ticket":"3q2+7wABAgM=","Epoch":2501000}},'
    '"Proof":{"Proof":"kZKTlJWWl5iZmg=="},'
    '"MessageInfo":{"PreCommitCid":{"/":"bafy2bzacedxkkpqwmuf4dnnz4h5djmvjc7zu2bhzbhbkoqqm6npg3zpd5lewu"},'
    '"CommitCid":null,"NeedSend":true},'
    '"TerminateInfo":{"TerminateCid":null,"TerminatedAt":0,"AddedHeight":0},'
    '"LatestState":{"Worker":{"Instance":"worker-01","Location":"10.0.0.7:17890"},'
    '"StateChange":{"Prev":"PCSubmitted","Next":"PCLanded","Event":"Evt\\u0026Landed"},'
    '"Failure":{"Level":"temp","Desc":"line1\\nline2 \\u003cretry\\u003e \\b \\\\b"}},'
    '"Finalized":false,"Removed":false,"AbortReason":"",'
    '"Upgraded":true,'
    '"UpgradePublic":{"CommR":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32],'
    '"SealedCID":{"/":"bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb"},"Activation":1200000,"Expiration":3000000},'
    '"UpgradedInfo":{"AccessInstance":"store-a","SealedCID":{"/":"bagboea4b5abcamxkzmzcciabkdxzu4vqkpmpvwgyiyldaogf7ssr4c7yl5u7ftxb"},'
    '"UnsealedCID":{"/":"baga6ea4seaqhfd5zcatqebd4jrulvrqcz6rqg4nlfmkvqalqk6ykdhbvfptevli"},"Proof":"AQID"},'
    '"UpgradeMessageID":"bafy2bzacecupgrade","UpgradeLandedEpoch":2600000,'
    '"Imported":false,"NeedRebuild":false,"Unsealing":true}'
)


@pytest.fixture
def sample_json() -> bytes:
    json.loads(SAMPLE_GO_JSON)  # well-formed
    return SAMPLE_GO_JSON.encode()
