"""The s3store ObjStore plugin against a moto S3 server on loopback: the conformance kit,
multipart streaming with flat memory, aborts that leave nothing, and the error messages."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tracemalloc
import uuid
from typing import Any, Callable, Iterator

import pytest

from vsm.plugin.conformance import OBJSTORE_CHECKS, format_results, run_objstore_kit
from vsm.sdk import Config, InvalidObjectPathError, ObjectNotFoundError, PluginError, ReadOnlyStoreError

from .conftest import ServerProcess, _moto, constructor, free_port

pytestmark = pytest.mark.timeout(120)

open_s3 = constructor("s3store")
MiB = 1 << 20
KEYS = {"AccessKey": "testing-access-key", "SecretKey": "testing-secret-key"}


def boto_client(endpoint: str, **keys: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=keys.get("AccessKey", KEYS["AccessKey"]),
        aws_secret_access_key=keys.get("SecretKey", KEYS["SecretKey"]),
    )


@pytest.fixture
def bucket(moto: ServerProcess) -> Iterator[tuple[str, str]]:
    """(endpoint, bucket): a fresh bucket in the session's moto server."""
    endpoint = f"http://{moto.addr}"
    name = f"vsm-{uuid.uuid4().hex[:12]}"
    s3 = boto_client(endpoint)
    s3.create_bucket(Bucket=name)
    yield endpoint, name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def meta(bucket: tuple[str, str]) -> dict[str, str]:
    endpoint, name = bucket
    return {"Bucket": name, "Endpoint": endpoint, "Prefix": "pieces", "PartSize": str(5 * MiB), **KEYS}


@pytest.fixture
def make_store(meta: dict[str, str]) -> Callable[[bool], Any]:
    def make(read_only: bool) -> Any:
        return open_s3(Config(name="s3-kit", path="/unused", meta=meta, read_only=read_only))

    return make


@pytest.mark.parametrize("check", OBJSTORE_CHECKS, ids=lambda c: c.__name__)
def test_objstore_check(make_store: Callable[[bool], Any], check: Callable[[Any], None]) -> None:
    results = run_objstore_kit(make_store, (check,))
    assert results[0].passed, format_results(results)


class _Pattern(io.RawIOBase):
    """n pseudo-random bytes produced on the fly (the source never holds the object), hashed
    as they go; fails with RuntimeError after fail_at bytes if set."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.left = n
        self.fail_at = fail_at
        self.sent = 0
        self.sha = hashlib.sha256()
        self._block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.fail_at is not None and self.sent >= self.fail_at:
            raise RuntimeError("source failed midway")
        off = self.sent % len(self._block)
        n = min(len(b), self.left, len(self._block) - off)
        mv = memoryview(self._block)[off : off + n]
        b[:n] = mv
        self.sha.update(mv)
        self.left -= n
        self.sent += n
        return n


def _sha_of_get(store: Any, path: str) -> tuple[str, int]:
    sha, total = hashlib.sha256(), 0
    with store.get(path) as r:
        buf = bytearray(3 * MiB + 7)
        while n := r.readinto(buf):
            sha.update(memoryview(buf)[:n])
            total += n
    return sha.hexdigest(), total


def test_multipart_put_streams_in_one_buffer(meta: dict[str, str], bucket: tuple[str, str]) -> None:
    """40 MiB + 1 B in 5 MiB parts: 9 parts, the same sha256 back, and the put's Python
    allocations peak near one part (the buffer), not near the object."""
    store = open_s3(Config(name="big", path="", meta=meta))
    size = 40 * MiB + 1
    src = _Pattern(size)
    tracemalloc.start()
    try:
        written = store.put("sealed/s-t01000-1", src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == size
    assert peak < 2.5 * 5 * MiB, f"put allocated {peak / MiB:.1f} MiB at peak for 5 MiB parts"
    assert store.stat("sealed/s-t01000-1").size == size
    assert _sha_of_get(store, "sealed/s-t01000-1") == (src.sha.hexdigest(), size)
    head = boto_client(bucket[0]).head_object(Bucket=bucket[1], Key="pieces/sealed/s-t01000-1")
    assert head["ETag"].strip('"').endswith("-9"), head["ETag"]  # a multipart object of 9 parts


def test_exact_multiple_of_part_size(meta: dict[str, str]) -> None:
    store = open_s3(Config(name="x", path="", meta=meta))
    src = _Pattern(10 * MiB)
    assert store.put("exact", src) == 10 * MiB
    assert _sha_of_get(store, "exact") == (src.sha.hexdigest(), 10 * MiB)


def test_reader_failing_midway_leaves_nothing(meta: dict[str, str], bucket: tuple[str, str]) -> None:
    """The source raises after 2 parts: the put raises that error, the upload is aborted (no
    object, no pending multipart upload), and an older object at the key is untouched."""
    store = open_s3(Config(name="x", path="", meta=meta))
    with pytest.raises(RuntimeError, match="source failed midway"):
        store.put("piece", _Pattern(30 * MiB, fail_at=12 * MiB))
    with pytest.raises(ObjectNotFoundError):
        store.stat("piece")
    s3 = boto_client(bucket[0])
    assert s3.list_multipart_uploads(Bucket=bucket[1]).get("Uploads", []) == []
    store.put("piece", io.BytesIO(b"old"))
    with pytest.raises(RuntimeError):
        store.put("piece", _Pattern(30 * MiB, fail_at=7 * MiB))
    assert store.get("piece").read() == b"old"


def test_get_is_a_streaming_reader(meta: dict[str, str]) -> None:
    store = open_s3(Config(name="x", path="", meta=meta))
    data = bytes(range(256)) * 4096  # 1 MiB
    store.put("obj", io.BytesIO(data))
    r = store.get("obj")
    assert r.read(10) == data[:10]
    buf = bytearray(1000)
    assert r.readinto(buf) == 1000 and bytes(buf) == data[10:1010]
    assert r.read() == data[1010:]
    assert r.read() == b""
    r.close()
    r.close()


def test_full_path_and_info(meta: dict[str, str]) -> None:
    store = open_s3(Config(name="", path="/piece-store", meta=meta))
    assert store.full_path("cache/s-t04040-1001") == f"s3://{meta['Bucket']}/pieces/cache/s-t04040-1001"
    assert store.instance() == "/piece-store"
    info = store.instance_info()
    assert (info.total, info.free, info.used, info.type) == (0, 0, 0, "plugin-s3")
    no_prefix = open_s3(Config(name="n", path="", meta={**meta, "Prefix": ""}))
    assert no_prefix.full_path("a/b") == f"s3://{meta['Bucket']}/a/b"
    with pytest.raises(InvalidObjectPathError):
        no_prefix.full_path("../a")


def test_read_only(meta: dict[str, str]) -> None:
    store = open_s3(Config(name="ro", path="", meta=meta, read_only=True))
    with pytest.raises(ReadOnlyStoreError, match="ro"):
        store.put("x", io.BytesIO(b"x"))


def test_missing_bucket_says_so(meta: dict[str, str]) -> None:
    endpoint = meta["Endpoint"]
    with pytest.raises(PluginError) as ei:
        open_s3(Config(name="pieces", path="", meta={**meta, "Bucket": "no-such-bucket"}))
    assert str(ei.value) == (
        f"s3store: store 'pieces' at {endpoint}: bucket 'no-such-bucket' does not exist; "
        "create it or fix Meta 'Bucket'"
    )
    # With the startup check off, the first operation says the same.
    store = open_s3(Config(name="pieces", path="", meta={**meta, "Bucket": "no-such-bucket", "CheckBucket": "false"}))
    with pytest.raises(PluginError, match="bucket 'no-such-bucket' does not exist"):
        store.put("x", io.BytesIO(b"x"))
    with pytest.raises(PluginError, match="bucket 'no-such-bucket' does not exist"):
        store.put("big", _Pattern(6 * MiB))


def test_unreachable_endpoint_says_so(meta: dict[str, str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PluginError) as ei:
        open_s3(Config(name="pieces", path="", meta={**meta, "Endpoint": endpoint}))
    msg = str(ei.value)
    assert msg.startswith(f"s3store: store 'pieces' at {endpoint}: ")
    assert "cannot reach the endpoint: Connection refused" in msg


@pytest.fixture(scope="module")
def moto_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks credentials: (endpoint, valid keys) for bucket 'authed'."""
    # The first 5 requests are free: they create the user, its key, a policy and the bucket.
    server = _moto(tmp_path_factory, env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"})
    try:
        import boto3

        endpoint = f"http://{server.addr}"
        kw: dict[str, Any] = dict(endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="setup", aws_secret_access_key="setup")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="vsm")
        key = iam.create_access_key(UserName="vsm")["AccessKey"]
        policy = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        iam.attach_user_policy(UserName="vsm", PolicyArn=policy["Policy"]["Arn"])
        boto3.client("s3", **kw).create_bucket(Bucket="authed")
        yield endpoint, {"AccessKey": key["AccessKeyId"], "SecretKey": key["SecretAccessKey"]}
    finally:
        server.kill()


def test_wrong_credentials_say_so(moto_with_auth: tuple[str, dict[str, str]]) -> None:
    endpoint, good = moto_with_auth
    base = {"Bucket": "authed", "Endpoint": endpoint}
    store = open_s3(Config(name="ok", path="", meta={**base, **good}))
    store.put("x", io.BytesIO(b"x"))
    for bad in ({"AccessKey": "AKIAWRONGWRONGWRONG1", "SecretKey": "x"}, {**good, "SecretKey": "wrong"}):
        with pytest.raises(PluginError) as ei:
            open_s3(Config(name="bad", path="", meta={**base, **bad}))
        msg = str(ei.value)
        assert msg.startswith(f"s3store: store 'bad' at {endpoint}: ") and "access denied" in msg
        assert "AccessKey/SecretKey" in msg
        unchecked = open_s3(Config(name="bad", path="", meta={**base, **bad, "CheckBucket": "false"}))
        with pytest.raises(PluginError, match="access denied"):
            unchecked.get("x")


@pytest.mark.parametrize("form", ["toml", "toml-table", "ini", "aws"])
def test_credentials_file(form: str, meta: dict[str, str], tmp_path: pathlib.Path) -> None:
    a, s = KEYS["AccessKey"], KEYS["SecretKey"]
    text = {
        "toml": f'AccessKey = "{a}"\nSecretKey = "{s}"\n',
        "toml-table": f'[s3]\nAccessKey = "{a}"\nSecretKey = "{s}"\n',
        "ini": f"[s3]\nAccessKey = {a}\nSecretKey = {s}\n",
        "aws": f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n",
    }[form]
    path = tmp_path / "creds"
    path.write_text(text)
    m = {k: v for k, v in meta.items() if k not in KEYS}
    store = open_s3(Config(name="c", path="", meta={**m, "CredentialsFile": str(path)}))
    store.put("x", io.BytesIO(b"x"))
    assert store.stat("x").size == 1


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"PartSize": str(4 * MiB)}, "PartSize"),
        ({"PartSize": "lots"}, "PartSize"),
        ({"Bucket": ""}, "Bucket"),
        ({"CheckBucket": "maybe"}, "CheckBucket"),
        ({"SecretKey": ""}, "SecretKey"),
        ({"CredentialsFile": "/nonexistent/creds"}, "CredentialsFile"),
        ({"Buckett": "x"}, "Buckett"),
    ],
)
def test_bad_meta_names_the_key(extra: dict[str, str], key: str) -> None:
    meta = {"Bucket": "b", "Endpoint": "http://127.0.0.1:1", **KEYS, "CheckBucket": "false", **extra}
    if key == "CredentialsFile":
        meta = {k: v for k, v in meta.items() if k not in KEYS}
    with pytest.raises(ValueError, match=key):
        open_s3(Config(name="m", path="", meta=meta))


def test_part_size_units() -> None:
    meta = {"Bucket": "b", "Endpoint": "http://127.0.0.1:1", **KEYS, "CheckBucket": "false"}
    assert open_s3(Config(name="m", path="", meta={**meta, "PartSize": "16MiB"})).part_size == 16 * MiB
    assert open_s3(Config(name="m", path="", meta=meta)).part_size == 64 * MiB


def test_hostile_paths_are_invalid_paths(meta: dict[str, str]) -> None:
    """A folder path and a key past S3's 1024 bytes are the caller's mistake (HTTP 400 through
    the daemon), not a plugin failure (S3's KeyTooLongError was a 500; issue 25)."""
    store = open_s3(Config(name="s3", path="/unused", meta=meta))
    for bad in ("a/", "d/" * 600 + "x"):
        for call in (lambda p: store.put(p, io.BytesIO(b"x")), store.get, store.stat, store.delete):
            with pytest.raises(InvalidObjectPathError):
                call(bad)
    with pytest.raises(ObjectNotFoundError):
        store.stat("a")  # not stored under another name


def test_ranged_get_asks_s3_for_the_range_only(meta: dict[str, str]) -> None:
    store = open_s3(Config(name="s3", path="/unused", meta=meta))
    data = bytes(range(256)) * 1000
    store.put("r/obj", io.BytesIO(data))
    with store.get_range("r/obj", 1000, 10) as r:
        assert r.read() == data[1000:1010]
    stat = store.stat("r/obj")
    assert stat.etag and "\"" not in stat.etag and stat.modified and stat.modified > 1e9
