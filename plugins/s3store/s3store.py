"""s3store: an ObjStore on an S3 bucket (AWS S3 or any S3-compatible server).

Objects live under ``s3://<Bucket>/<Prefix>/<path>``. Meta (``[Common.PieceStores.Meta]``)::

    Bucket          required; must exist (checked when the store opens, see CheckBucket)
    Endpoint        "" -> AWS; e.g. "http://127.0.0.1:9000" for a compatible server
                    (an Endpoint switches to path-style addressing)
    Region          "us-east-1"
    AccessKey       } both, or neither (then CredentialsFile, then boto3's usual chain:
    SecretKey       } env vars, ~/.aws, instance role)
    CredentialsFile TOML or INI file holding AccessKey / SecretKey (also accepted:
                    aws_access_key_id / aws_secret_access_key, top level or in one section)
    Prefix          "" : key prefix inside the bucket
    PartSize        "67108864" (64 MiB); bytes, or with a unit ("16MiB"); at least 5 MiB
    CheckBucket     "true": HEAD the bucket when the store opens, so a bad bucket, endpoint or
                    credentials fail at startup; "false" if the policy forbids HeadBucket

put streams: it reads exactly PartSize bytes into ONE bytearray, reused for every part of
the upload (memory stays at one part whatever the object size: 32 GiB included), sends it
with upload_part straight from that buffer (no copy), then reads the next part into it.
An object smaller than PartSize is one put_object. If anything fails (the reader raises, the
server refuses a part, the worker is interrupted) the multipart upload is aborted, so
nothing ever becomes visible under the key. A worker killed mid-upload cannot abort: its
parts stay invisible but stored, so give the bucket a lifecycle rule
(AbortIncompleteMultipartUpload, e.g. after 1 day). At most 10,000 parts: PartSize bounds
the largest object (64 MiB -> 625 GiB).

get returns a buffered reader over the streaming HTTP body (read/readinto/readall work);
closing it releases the connection. delete of a missing object raises ObjectNotFoundError,
as the file store does (S3 itself says nothing, so delete HEADs first). instance_info has no
capacity to report: total/free/used are 0.

Errors name the plugin, the store, the endpoint and the cause, e.g.
``s3store: store 'pieces' at http://127.0.0.1:9000: bucket 'nope' does not exist``.
"""

from __future__ import annotations

import configparser
import io
import logging
import posixpath
import re
import tomllib
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions as bexc

from vsm.sdk import (
    Config,
    InstanceInfo,
    InvalidObjectPathError,
    ObjectNotFoundError,
    PluginError,
    ReadOnlyStoreError,
    Stat,
)

__all__ = ["open", "S3Store"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"
MIN_PART_SIZE = 5 << 20  # S3's floor for every part but the last
MAX_PART_SIZE = 5 << 30  # S3's ceiling for one part
MAX_PARTS = 10_000
MAX_KEY_BYTES = 1024  # S3's longest object key (UTF-8)
DEFAULT_PART_SIZE = 64 << 20

_KNOWN = {
    "Bucket", "Endpoint", "Region", "AccessKey", "SecretKey", "CredentialsFile",
    "Prefix", "PartSize", "CheckBucket",
}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2,
          "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30}
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidClientTokenId", "403", "Forbidden",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def open(cfg: Config) -> S3Store:  # noqa: A001 - the exported Constructor's name
    """Constructor: checks Meta, builds the S3 client and (CheckBucket) HEADs the bucket."""
    name = cfg.name or cfg.path
    meta = {k: str(v) for k, v in cfg.meta.items()}
    where = f"s3store: store {name!r}"
    unknown = sorted(set(meta) - _KNOWN)
    if unknown:
        raise ValueError(f"{where}: unknown Meta key(s) {unknown}; known: {sorted(_KNOWN)}")
    bucket = meta.get("Bucket", "").strip()
    if not bucket:
        raise ValueError(f"{where}: Meta 'Bucket' is required")
    part_size = _parse_size(meta.get("PartSize", ""), where)
    check = meta.get("CheckBucket", "true").lower()
    if check not in ("true", "false"):
        raise ValueError(f"{where}: Meta 'CheckBucket' = {meta['CheckBucket']!r}; use \"true\" or \"false\"")
    access, secret = _credentials(meta, where)
    endpoint = meta.get("Endpoint", "").strip() or None
    region = meta.get("Region", "").strip() or "us-east-1"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=_client_config(path_style=endpoint is not None),
    )
    store = S3Store(
        cfg=Config(name=name, path=cfg.path, meta=cfg.meta, strict=cfg.strict,
                   read_only=cfg.read_only, weight=cfg.weight),
        client=client,
        bucket=bucket,
        prefix=meta.get("Prefix", "").strip("/"),
        part_size=part_size,
        endpoint=endpoint or f"https://s3.{region}.amazonaws.com",
    )
    if check == "true":
        store.check_bucket()
    return store


def _parse_size(text: str, where: str) -> int:
    if not text.strip():
        return DEFAULT_PART_SIZE
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = m and _UNITS.get(m.group(2).lower())
    size = int(m.group(1)) * unit if m and unit else -1
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ValueError(
            f"{where}: Meta 'PartSize' = {text!r}; use bytes (or \"16MiB\") between 5 MiB and 5 GiB"
        )
    return size


def _credentials(meta: dict[str, str], where: str) -> tuple[str | None, str | None]:
    """(access key, secret key) from Meta or CredentialsFile; (None, None) -> boto3's chain."""
    access, secret = meta.get("AccessKey", ""), meta.get("SecretKey", "")
    path = meta.get("CredentialsFile", "")
    if path and (access or secret):
        raise ValueError(f"{where}: set either Meta AccessKey/SecretKey or CredentialsFile, not both")
    if path:
        access, secret = _read_credentials_file(path, where)
    if bool(access) != bool(secret):
        raise ValueError(f"{where}: Meta AccessKey and SecretKey go together; one of them is empty")
    return (access or None), (secret or None)


def _read_credentials_file(path: str, where: str) -> tuple[str, str]:
    try:
        with io.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{where}: cannot read Meta CredentialsFile {path!r}: {e.strerror}") from None
    text = raw.decode("utf-8", "replace")
    tables: list[dict[str, Any]] = []
    try:
        doc = tomllib.loads(text)
        tables = [doc] + [v for v in doc.values() if isinstance(v, dict)]
    except tomllib.TOMLDecodeError:
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
        try:
            parser.read_string(text, source=path)
        except configparser.Error as e:
            raise ValueError(f"{where}: Meta CredentialsFile {path!r} is neither TOML nor INI: {e}") from None
        tables = [dict(parser.defaults())] + [dict(parser[s]) for s in parser.sections()]
    for t in tables:
        for a_key, s_key in (("AccessKey", "SecretKey"), ("aws_access_key_id", "aws_secret_access_key")):
            if t.get(a_key) and t.get(s_key):
                return str(t[a_key]), str(t[s_key])
    raise ValueError(
        f"{where}: Meta CredentialsFile {path!r} holds no AccessKey and SecretKey "
        "(top level or in one section)"
    )


def _client_config(path_style: bool) -> botocore.config.Config:
    kw: dict[str, Any] = dict(
        connect_timeout=10,
        read_timeout=120,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"} if path_style else {},
    )
    # botocore >= 1.36 adds CRC checksums to every upload by default; many S3-compatible
    # servers reject them. Ask for checksums only where the API requires them.
    try:
        return botocore.config.Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **kw,
        )
    except TypeError:
        return botocore.config.Config(**kw)


class _BufferBody(io.RawIOBase):
    """A seekable, read-only file over a memoryview: the request body of one part, sent
    straight from the upload's buffer (botocore may read it twice: to sign, then to send)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._pos)
        if n <= 0:
            return 0
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        data = bytes(self._view[self._pos : end])
        self._pos = max(self._pos, end)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _ObjectReader(io.RawIOBase):
    """Raw reader over a botocore StreamingBody; errors mid-stream become PluginErrors."""

    def __init__(self, body: Any, store: S3Store, path: str) -> None:
        super().__init__()
        self._body = body
        self._store = store
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._body.read(len(b))
        except (bexc.BotoCoreError, OSError) as e:
            raise self._store.error(e, "read", self._path) from None
        n = len(data)
        b[:n] = data
        return n

    def readall(self) -> bytes:
        try:
            return self._body.read()
        except (bexc.BotoCoreError, OSError) as e:
            raise self._store.error(e, "read", self._path) from None

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _read_full(reader: BinaryIO, view: memoryview) -> int:
    """Fills view from reader until it is full or the reader is at EOF; returns the count."""
    readinto = getattr(reader, "readinto", None)
    total, n = len(view), 0
    while n < total:
        if readinto is not None:
            got = readinto(view[n:])
        else:
            data = reader.read(total - n)
            got = len(data)
            view[n : n + got] = data
        if not got:
            break
        n += got
    return n


class S3Store:
    """One configured S3 store (the ObjStore protocol)."""

    def __init__(self, cfg: Config, client: Any, bucket: str, prefix: str, part_size: int, endpoint: str) -> None:
        self._cfg = cfg
        self._s3 = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"<S3Store {self._cfg.name!r} s3://{self.bucket}/{self.prefix} at {self.endpoint}>"

    # -- errors

    def error(self, exc: BaseException, action: str = "", path: str = "") -> PluginError:
        """One-line error naming plugin, store, endpoint, the action and the cause."""
        head = f"s3store: store {self._cfg.name!r} at {self.endpoint}"
        if action:
            head += f": {action} {path!r}" if path else f": {action}"
        if isinstance(exc, bexc.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = err.get("Message") or ""
            if code == "NoSuchBucket":
                return PluginError(f"{head}: bucket {self.bucket!r} does not exist; create it or fix Meta 'Bucket'")
            if code in _AUTH_CODES:
                detail = f"{code}: {message}" if message else code
                return PluginError(
                    f"{head}: access denied ({detail}); check Meta AccessKey/SecretKey "
                    f"(or CredentialsFile) and the policy of bucket {self.bucket!r}"
                )
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            return PluginError(f"{head}: {code or status}: {message or exc}")
        if isinstance(exc, bexc.NoCredentialsError):
            return PluginError(f"{head}: no credentials found; set Meta AccessKey and SecretKey or CredentialsFile")
        if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
            return PluginError(f"{head}: cannot reach the endpoint: {_root_cause(exc)}")
        if isinstance(exc, (bexc.BotoCoreError, OSError)):
            return PluginError(f"{head}: {_root_cause(exc)}")
        return PluginError(f"{head}: {type(exc).__name__}: {exc}")

    def _not_found(self, path: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(f"object not found: {path!r} in store {self._cfg.name!r} ({self.full_path(path)})")

    def check_bucket(self) -> None:
        """HEAD the bucket: says which of endpoint, credentials or bucket is wrong."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise PluginError(
                    f"s3store: store {self._cfg.name!r} at {self.endpoint}: bucket {self.bucket!r} "
                    "does not exist; create it or fix Meta 'Bucket'"
                ) from None
            raise self.error(e, "open bucket", self.bucket) from None
        except bexc.BotoCoreError as e:
            raise self.error(e, "open bucket", self.bucket) from None

    # -- paths

    def key(self, path: str) -> str:
        """The object key of path; InvalidObjectPathError if it is absolute or leaves the store."""
        if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
            raise InvalidObjectPathError(f"invalid object path {path!r}: must be relative to the store")
        if path.endswith("/"):  # normpath would drop it: the object would land under another name
            raise InvalidObjectPathError(f"invalid object path {path[:60]!r}: ends in '/', which names a folder, not an object")
        norm = posixpath.normpath(path)
        if norm in (".", "..") or norm.startswith("../"):
            raise InvalidObjectPathError(
                f"invalid object path {path!r}: outside of store {self._cfg.name!r}"
            )
        key = f"{self.prefix}/{norm}" if self.prefix else norm
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:  # S3 answers KeyTooLongError: the caller's mistake
            raise InvalidObjectPathError(
                f"invalid object path {path[:60]!r}...: its key is {len(key.encode('utf-8'))} bytes; S3 keys hold at most {MAX_KEY_BYTES}"
            )
        return key

    def full_path(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.key(path)}"

    # -- Store

    def type(self) -> str:
        return "plugin-s3"

    def version(self) -> str:
        return VERSION

    def instance(self) -> str:
        return self._cfg.name

    def instance_config(self) -> Config:
        return self._cfg

    def instance_info(self) -> InstanceInfo:
        # S3 has no capacity: unknown is 0, as the Go objstore reports for remote stores.
        return InstanceInfo(config=self._cfg, type=self.type(), total=0, free=0, used=0, used_percent=0.0)

    def stat(self, path: str) -> Stat:
        key = self.key(path)
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=key)
        except bexc.ClientError as e:
            if str(e.response.get("Error", {}).get("Code", "")) in _NOT_FOUND_CODES:
                raise self._not_found(path) from None
            raise self.error(e, "stat", path) from None
        except bexc.BotoCoreError as e:
            raise self.error(e, "stat", path) from None
        modified = head.get("LastModified")
        return Stat(
            size=int(head["ContentLength"]),
            etag=str(head.get("ETag") or "").strip('"') or None,
            modified=modified.timestamp() if modified is not None else None,
        )

    def get(self, path: str) -> BinaryIO:
        return self._get(path, {})

    def get_range(self, path: str, offset: int, length: int) -> BinaryIO:
        """[offset, offset + length) of the object: S3 sends only those bytes (a Range GET)."""
        if length <= 0:
            self.stat(path)  # still ObjectNotFoundError for a missing object
            return io.BufferedReader(io.BytesIO(b""))  # type: ignore[return-value]
        return self._get(path, {"Range": f"bytes={offset}-{offset + length - 1}"})

    def _get(self, path: str, extra: dict[str, str]) -> BinaryIO:
        key = self.key(path)
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
        except bexc.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise self._not_found(path) from None
            if code == "InvalidRange" and extra:  # the range starts past the end: no bytes
                return io.BufferedReader(io.BytesIO(b""))  # type: ignore[return-value]
            raise self.error(e, "get", path) from None
        except bexc.BotoCoreError as e:
            raise self.error(e, "get", path) from None
        return io.BufferedReader(_ObjectReader(resp["Body"], self, path), buffer_size=1 << 20)  # type: ignore[return-value]

    def delete(self, path: str) -> None:
        self._check_writable("delete", path)
        self.stat(path)  # S3 deletes missing keys silently; the ObjStore contract says not found
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.key(path))
        except (bexc.ClientError, bexc.BotoCoreError) as e:
            raise self.error(e, "delete", path) from None

    def put(self, path: str, reader: BinaryIO) -> int:
        """Streams reader into the object: one put_object below PartSize, else multipart."""
        self._check_writable("put", path)
        key = self.key(path)
        buf = bytearray(self.part_size)  # the one buffer of this upload, reused for every part
        view = memoryview(buf)
        try:
            n = _read_full(reader, view)
            if n < self.part_size:
                try:
                    self._s3.put_object(Bucket=self.bucket, Key=key, Body=_BufferBody(view[:n]), ContentLength=n)
                except (bexc.ClientError, bexc.BotoCoreError) as e:
                    raise self.error(e, "put", path) from None
                return n
            return self._put_multipart(path, key, reader, view, n)
        finally:
            view.release()

    def _put_multipart(self, path: str, key: str, reader: BinaryIO, view: memoryview, first: int) -> int:
        try:
            upload_id = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except (bexc.ClientError, bexc.BotoCoreError) as e:
            raise self.error(e, "put", path) from None
        parts: list[dict[str, Any]] = []
        total, n = 0, first
        try:
            while n:
                number = len(parts) + 1
                if number > MAX_PARTS:
                    raise PluginError(
                        f"s3store: store {self._cfg.name!r}: put {path!r}: object larger than "
                        f"{MAX_PARTS} parts of {self.part_size} bytes; raise Meta 'PartSize'"
                    )
                resp = self._s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=_BufferBody(view[:n]), ContentLength=n,
                )
                parts.append({"ETag": resp["ETag"], "PartNumber": number})
                total += n
                n = _read_full(reader, view) if n == len(view) else 0
            self._s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as e:
            self._abort(key, upload_id, path, e)
            if isinstance(e, (bexc.ClientError, bexc.BotoCoreError)):
                raise self.error(e, "put", path) from None
            raise
        return total

    def _abort(self, key: str, upload_id: str, path: str, cause: BaseException) -> None:
        """Best effort: a failed abort leaves parts billed but still invisible under the key."""
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as e:  # the original error matters more; say what is left behind
            log.warning("s3store: store %r: could not abort upload %s of %r: %s", self._cfg.name, upload_id, path, e)
            cause.add_note(f"s3store: multipart upload {upload_id} of {path!r} could not be aborted: {e}")

    def _check_writable(self, action: str, path: str) -> None:
        if self._cfg.read_only:
            raise ReadOnlyStoreError(f"read only store: {self._cfg.name!r}: {action} {path!r} refused")


def _root_cause(exc: BaseException) -> str:
    """The innermost OSError's text (e.g. "Connection refused"), else the exception's."""
    seen = exc
    while seen.__cause__ or seen.__context__:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.strerror} ({exc})"
    return str(exc)
