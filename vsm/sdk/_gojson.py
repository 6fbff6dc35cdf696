"""Go's encoding/json, as damocles-manager's types meet it: the text and the value codecs.

    JSON line --loads()--> values (objects as GoObject pairs, in order, duplicates kept)
              --sectors.py field tables + the checks below--> typed SectorState (or GoJSONError)
    SectorState --field tables--> Python values --go_dumps()--> the bytes json.Marshal writes

What Go does and this module copies (each checked against Go itself, tests/gojson/):
- Text: Go's scanner (no NaN, no trailing data); invalid UTF-8 bytes inside strings become
  U+FFFD one byte each, as do escaped lone surrogates; a key matches a field exactly or
  case-insensitively (with Unicode simple folding: 'ſ' is an 's', 'K' a 'k'); a repeated key
  decodes again into what the first one left (structs merge; null leaves a scalar alone).
- Numbers: an int64/uint64 field takes only a JSON integer in range (`1.5`, `1e3`, `-0` into a
  uint are refused; a big integer elsewhere is fine).
- Library types, with the JSON methods of the versions damocles pins: cid.Cid `{"/": "..."}`
  (go-cid v0.5.0: "" refused, re-encoded in its canonical base), address.Address (go-address
  v1.2.0: checksums checked, `t` re-encoded `f`, undefined written `"<empty>"`), big.Int
  (decimal string; null refused), market.DealLabel (at most 256 bytes), []byte (standard base64,
  or an array of bytes).
- Output: compact, `<`, `>`, `&`, U+2028, U+2029 escaped as \\u003c..., `\\b` `\\f` as Go >= 1.22
  writes them (damocles-manager is built with Go 1.24).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import re
from typing import Any, Callable

__all__ = [
    "GoJSONError",
    "GoObject",
    "address_text",
    "go_dumps",
    "loads",
    "parse_address",
    "parse_base64",
    "parse_bigint",
    "parse_cid",
]


class GoJSONError(ValueError):
    """Input Go's json.Unmarshal into damocles' SectorState refuses (or vsm-pool refuses on
    purpose, such as a state without its ID). `path` is the Go field path (`Pre.CommR`,
    `Pieces[1].DealInfo.Client`; "" for the line as a whole), `reason` what is wrong."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def within(self, name: str) -> GoJSONError:
        """Prefix the path with the enclosing field (`Pre` + `CommR`, or `Pieces` + `[1]`)."""
        if not self.path:
            self.path = name
        elif self.path.startswith("["):
            self.path = name + self.path
        else:
            self.path = name + "." + self.path
        return self

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class GoObject(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in order, repeated keys kept (Go decodes each)."""

    __slots__ = ()


# ------------------------------------------------------------------------------ JSON text


class NegZero(int):
    """The JSON number `-0`: zero to an int64, refused by a uint64 (strconv.ParseUint)."""

    __slots__ = ()


def _parse_int(text: str) -> int:
    return NegZero(0) if text == "-0" else int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _go_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    # Go's decoder turns every byte of invalid UTF-8 into one U+FFFD (utf8.DecodeRune)
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error("vsm-go-replace", _go_replace)

_decoder = json.JSONDecoder(object_pairs_hook=GoObject, parse_int=_parse_int, parse_constant=_no_constant)


def loads(data: bytes | str) -> Any:
    """One JSON value as Go's scanner reads it; objects as GoObject. Raises GoJSONError."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8", "vsm-go-replace")
    try:
        return _decoder.decode(data)
    except json.JSONDecodeError as e:
        raise GoJSONError(f"not JSON: {e.msg} (column {e.colno})") from None
    except ValueError as e:  # NaN / Infinity
        raise GoJSONError(f"not JSON: {e}") from None
    except RecursionError:
        raise GoJSONError("not JSON: nested too deeply") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def go_string(s: str) -> str:
    """A decoded JSON string as Go holds it: escaped lone surrogates become U+FFFD."""
    return s if s.isascii() else _SURROGATE.sub("\ufffd", s)


def kind_of(v: Any) -> str:
    """How Go names a JSON value in its type errors ("number 1.5", "string", "object"...)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, NegZero):
        return "number -0"
    if isinstance(v, (int, float)):
        return f"number {v!r}"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (GoObject, dict)):
        return "object"
    return "array"


_GO_ESC = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESC_RE = re.compile("[<>&\u2028\u2029]")
_dumps: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_PY_ESC_RE = re.compile(r"\\(u000[8c]|.)")  # an escape, read left to right (so \\\\ is one)


def _go_short(m: re.Match[str]) -> str:
    e = m.group(1)
    return "\\b" if e == "u0008" else "\\f" if e == "u000c" else m.group(0)


def go_dumps(value: Any) -> bytes:
    """json.dumps as Go's encoding/json writes: compact, HTML-safe escapes, UTF-8 kept,
    `\\b` and `\\f` as Go >= 1.22 writes them (Python's json writes \\u0008, \\u000c)."""
    s = _dumps(value)
    if _GO_ESC_RE.search(s):
        s = _GO_ESC_RE.sub(lambda m: _GO_ESC[m.group(0)], s)
    if "\\u000" in s:
        s = _PY_ESC_RE.sub(_go_short, s)
    return s.encode()


# ------------------------------------------------------------------------------ base64, base32, base58


def parse_base64(s: str) -> bytes:
    """[]byte from its JSON string: base64.StdEncoding.Decode (newlines skipped, padding
    required, trailing bits not checked)."""
    if "\n" in s or "\r" in s:
        s = s.replace("\n", "").replace("\r", "")
    return _b64(s, padded=True, url=False)


_B64_PADDED = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_B64_RAW = re.compile(r"[A-Za-z0-9+/]*")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")


def _b64(s: str, padded: bool, url: bool) -> bytes:
    if url:
        if "+" in s or "/" in s:
            raise ValueError("illegal base64 data")
        s = s.translate({ord("-"): "+", ord("_"): "/"})
    if padded:
        if not _B64_PADDED.fullmatch(s):
            raise ValueError("illegal base64 data")
    else:
        if not _B64_RAW.fullmatch(s) or len(s) % 4 == 1:
            raise ValueError("illegal base64 data")
        s += "=" * (-len(s) % 4)
    return binascii.a2b_base64(s)


_B32_STD = "abcdefghijklmnopqrstuvwxyz234567"
_B32_HEX = "0123456789abcdefghijklmnopqrstuv"
_B32_VALUE = {a: {c: i for i, c in enumerate(a)} for a in (_B32_STD, _B32_HEX)}


def _b32(s: str, alphabet: str, padded: bool) -> bytes:
    """go-base32's decoding: case-insensitive; newlines skipped; unpadded input may end in
    a partial group whose spare bits are dropped; padded input ends in valid padding."""
    s = s.replace("\n", "").replace("\r", "").lower()
    if padded:
        if len(s) % 8:
            raise ValueError("illegal base32 data")
        body = s.rstrip("=")
        if "=" in body or (len(s) - len(body)) not in (0, 1, 3, 4, 6):
            raise ValueError("illegal base32 data")
        s = body
    values = _B32_VALUE[alphabet]
    acc = 0
    try:
        for c in s:
            acc = acc << 5 | values[c]
    except KeyError:
        raise ValueError("illegal base32 data") from None
    nbytes = len(s) * 5 // 8
    return (acc >> (len(s) * 5 - nbytes * 8)).to_bytes(nbytes, "big")


def _b32_encode(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


_B58_BTC = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_FLICKR = "123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"


def _b58(s: str, alphabet: str) -> bytes:
    if not s:
        raise ValueError("zero length string")
    n = 0
    for c in s:
        d = alphabet.find(c)
        if d < 0:
            raise ValueError(f"invalid base58 digit ({c!r})")
        n = n * 58 + d
    zeros = len(s) - len(s.lstrip(alphabet[0]))
    return b"\0" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")


def _b58_encode(data: bytes, alphabet: str = _B58_BTC) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(alphabet[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return alphabet[0] * zeros + "".join(reversed(out))


# ------------------------------------------------------------------------------ CID (go-cid v0.5.0)


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """go-varint FromUvarint: at most 9 bytes, minimal encoding. Returns (value, new pos)."""
    if pos < len(buf) and buf[pos] < 0x80:
        return buf[pos], pos + 1
    x = s = 0
    for i in range(pos, len(buf)):
        b = buf[i]
        if (i - pos == 8 and b >= 0x80) or i - pos >= 9:
            raise ValueError("varints larger than uint63 not supported")
        if b < 0x80:
            if b == 0 and s > 0:
                raise ValueError("varint not minimally encoded")
            return x | b << s, i + 1
        x |= (b & 0x7F) << s
        s += 7
    raise ValueError("varints malformed, could not reach the end")


def _multihash_end(buf: bytes, pos: int) -> int:
    """End of the multihash at buf[pos:] (go-multihash readMultihashFromBuf)."""
    if len(buf) - pos < 2:
        raise ValueError("multihash too short. must be >= 2 bytes")
    _code, p = _uvarint(buf, pos)
    length, p = _uvarint(buf, p)
    if length > 2**31 - 1:
        raise ValueError("digest too long, supporting only <= 2^31-1")
    if length > len(buf) - p:
        raise ValueError("length greater than remaining number of bytes in buffer")
    return p + length


def _multibase(s: str) -> bytes:
    base, rest = s[0], s[1:]
    if base == "\0":
        return rest.encode()
    if base in "fF":
        if len(rest) % 2 or not re.fullmatch("[0-9a-fA-F]*", rest):
            raise ValueError("encoding/hex: invalid byte or odd length")
        return bytes.fromhex(rest)
    if base in "bB":
        return _b32(rest, _B32_STD, False)
    if base in "vV":
        return _b32(rest, _B32_HEX, False)
    if base in "cC":
        return _b32(rest, _B32_STD, True)
    if base in "tT":
        return _b32(rest, _B32_HEX, True)
    if base == "z":
        return _b58(rest, _B58_BTC)
    if base == "Z":
        return _b58(rest, _B58_FLICKR)
    if base in "mMuU":
        rest = rest.replace("\n", "").replace("\r", "")
        return _b64(rest, padded=base in "MU", url=base in "uU")
    # base36 'k', base2 '0' and base256emoji: go-multibase has them, vsm-pool does not
    raise ValueError("selected encoding not supported")


_B32_TO_HEX = str.maketrans(_B32_STD, _B32_HEX)  # base32 digits -> int(x, 32)'s digits
_B32_LOWER = re.compile("[a-z2-7]+")


def _canonical_b32_cid(s: str) -> str | None:
    """s itself when it is a v1 CID in go-cid's own form ('b' + lowercase base32, no spare
    bits set) with a valid structure; None when it needs the general path. The common case,
    at C speed: the digits as one int(..., 32)."""
    body = s[1:]
    if s[0] != "b" or not _B32_LOWER.fullmatch(body):
        return None
    nbits = len(body) * 5
    spare = nbits % 8
    n = int(body.translate(_B32_TO_HEX), 32)
    if n & ((1 << spare) - 1):
        return None
    data = (n >> spare).to_bytes(nbits // 8, "big")
    if len(data) > 2 and data[0] == 0x12 and data[1] == 32:
        return None  # v0 bytes in a multibase string: the general path writes them as Qm...
    _check_v1(data)
    return s


def _check_v1(data: bytes) -> None:
    """go-cid's CidFromBytes + Cast for v1: version 1, a codec, one multihash, nothing more."""
    version, p = _uvarint(data, 0)
    if version != 1:
        raise ValueError(f"invalid cid: expected 1 as the cid version number, got: {version}")
    _codec, p = _uvarint(data, p)
    if _multihash_end(data, p) != len(data):
        raise ValueError("invalid cid: trailing bytes in data buffer passed to cid Cast")


_CANONICAL_CIDS: dict[str, None] = {}  # recently seen canonical CIDs (a CC sector's CommD, batch messages)


def parse_cid(s: str) -> str:
    """cid.Decode(s).String(): the canonical form (v1 in base32 'b...', v0 'Qm...'), or
    ValueError with go-cid's reason."""
    if s in _CANONICAL_CIDS:
        return s
    if len(s) < 2:
        raise ValueError("invalid cid: cid too short")
    fast = _canonical_b32_cid(s)
    if fast is not None:
        if len(_CANONICAL_CIDS) >= 4096:
            _CANONICAL_CIDS.clear()
        _CANONICAL_CIDS[fast] = None
        return fast
    if len(s) == 46 and s.startswith("Qm"):
        mh = _b58(s, _B58_BTC)
        if _multihash_end(mh, 0) != len(mh):
            raise ValueError("invalid cid: multihash length inconsistent")
        if mh[0] != 0x12 or mh[1] != 32:
            raise ValueError(f"invalid cid: invalid hash for cidv0 {mh[0]}-{mh[1]}")
        return s
    try:
        data = _multibase(s)
    except ValueError as e:
        raise ValueError(f"invalid cid: {e}") from None
    if len(data) > 2 and data[0] == 0x12 and data[1] == 32:
        if len(data) < 34:
            raise ValueError("invalid cid: not enough bytes for cid v0")
        if len(data) != 34:
            raise ValueError("invalid cid: trailing bytes in data buffer passed to cid Cast")
        return _b58_encode(data)
    _check_v1(data)
    return "b" + _b32_encode(data)


# ------------------------------------------------------------------------------ address (go-address v1.2.0)

_UNDEF_ADDRESS = "<empty>"
_MAX_ADDRESS_LEN = 2 + 19 + 1 + 93


def _checksum(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=4).digest()


def _to_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _addr_b32(s: str) -> bytes:
    # go-address: base32 with a lowercase alphabet, no padding, and it must re-encode to s
    if not re.fullmatch("[a-z2-7]*", s):
        raise ValueError("invalid encoding")
    data = _b32(s, _B32_STD, False)
    if _b32_encode(data) != s:
        raise ValueError("invalid encoding")
    return data


def _parse_uint63(s: str) -> int:
    if not re.fullmatch("[0-9]+", s) or int(s) >= 2**63:
        raise ValueError("invalid address payload")
    return int(s)


def parse_address(s: str) -> str:
    """address.decode(s).String() with CurrentNetwork = Mainnet; "" for the undefined address
    ("" and "<empty>"). ValueError with go-address's reason."""
    if s == "" or s == _UNDEF_ADDRESS:
        return ""
    if len(s) > _MAX_ADDRESS_LEN or len(s) < 3:
        raise ValueError("invalid address length")
    if s[0] not in "ft":
        raise ValueError("unknown address network")
    if s[1] not in "01234":
        raise ValueError("unknown address protocol")
    protocol, raw = int(s[1]), s[2:]
    if protocol == 0:
        if len(raw) > 19:
            raise ValueError("invalid address length")
        return "f0%d" % _parse_uint63(raw)
    if protocol == 4:
        namespace, sep, sub = raw.partition("f")
        if not sep:
            raise ValueError("invalid address payload")
        if len(namespace) > 19:
            raise ValueError("invalid address length")
        ns = _parse_uint63(namespace)
        data = _addr_b32(sub)
        if len(data) < 4:
            raise ValueError("invalid address length")
        payload, cksum = data[:-4], data[-4:]
        if len(payload) > 54:
            raise ValueError("invalid address length")
        if _checksum(bytes([4]) + _to_uvarint(ns) + payload) != cksum:
            raise ValueError("invalid address checksum")
        return "f4%df%s" % (ns, sub)
    data = _addr_b32(raw)
    if len(data) < 4:
        raise ValueError("invalid address length")
    payload, cksum = data[:-4], data[-4:]
    if protocol in (1, 2) and len(payload) != 20 or protocol == 3 and len(payload) != 48:
        raise ValueError("invalid address length")
    if _checksum(bytes([protocol]) + payload) != cksum:
        raise ValueError("invalid address checksum")
    return "f%d%s" % (protocol, raw)


def address_text(a: str) -> str:
    """What Address.MarshalJSON puts between the quotes: "<empty>" for the undefined address."""
    return a or _UNDEF_ADDRESS


# ------------------------------------------------------------------------------ big.Int, DealLabel

_BIG = re.compile(r"[+-]?[0-9]+")


def parse_bigint(s: str) -> str:
    """big.Int.UnmarshalJSON's SetString(s, 10), written back as String()."""
    if not _BIG.fullmatch(s):
        raise ValueError(f"failed to parse big string: {json.dumps(s)!r}")
    return str(int(s))
