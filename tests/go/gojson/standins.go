package main

// Stand-ins for the library types of the sector state with their JSON methods copied from:
//   github.com/ipfs/go-cid v0.5.0            (Cid: MarshalJSON, UnmarshalJSON, Decode, Cast, String)
//   github.com/multiformats/go-multihash v0.2.3, go-varint v0.0.7, go-multibase v0.2.0,
//   go-base32 v0.1.0, mr-tron/base58 v1.2.0  (what Decode and String use)
//   github.com/filecoin-project/go-address v1.2.0  (Address: MarshalJSON, UnmarshalJSON, decode, encode)
//   github.com/filecoin-project/go-state-types v0.17.0 big.Int and builtin/v9/market.DealLabel
// with the standard library only: blake2b (for address checksums) is written out below.
// Multibase: every base go-multibase decodes except base36, base2 and base256emoji,
// which this stand-in (and vsm-pool) refuse; damocles writes v1 CIDs in base32 only.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ---------------------------------------------------------------- go-varint v0.0.7

var (
	errVarintOverflow   = errors.New("varints larger than uint63 not supported")
	errVarintUnderflow  = errors.New("varints malformed, could not reach the end")
	errVarintNotMinimal = errors.New("varint not minimally encoded")
)

func fromUvarint(buf []byte) (uint64, int, error) {
	var x uint64
	var s uint
	for i, b := range buf {
		if (i == 8 && b >= 0x80) || i >= 9 {
			return 0, 0, errVarintOverflow
		}
		if b < 0x80 {
			if b == 0 && s > 0 {
				return 0, 0, errVarintNotMinimal
			}
			return x | uint64(b)<<s, i + 1, nil
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	return 0, 0, errVarintUnderflow
}

func toUvarint(num uint64) []byte {
	buf := make([]byte, binary.MaxVarintLen64)
	n := binary.PutUvarint(buf, num)
	return buf[:n]
}

// ---------------------------------------------------------------- go-multihash v0.2.3

func mhUvarint(buf []byte) (uint64, []byte, error) {
	n, c, err := fromUvarint(buf)
	if err != nil {
		return n, buf, err
	}
	return n, buf[c:], nil
}

func readMultihashFromBuf(buf []byte) (int, uint64, []byte, error) {
	initBufLength := len(buf)
	if initBufLength < 2 {
		return 0, 0, nil, errors.New("multihash too short. must be >= 2 bytes")
	}
	var err error
	var code, length uint64
	code, buf, err = mhUvarint(buf)
	if err != nil {
		return 0, 0, nil, err
	}
	length, buf, err = mhUvarint(buf)
	if err != nil {
		return 0, 0, nil, err
	}
	if length > math.MaxInt32 {
		return 0, 0, nil, errors.New("digest too long, supporting only <= 2^31-1")
	}
	if int(length) > len(buf) {
		return 0, 0, nil, errors.New("length greater than remaining number of bytes in buffer")
	}
	rlen := (initBufLength - len(buf)) + int(length)
	return rlen, code, buf[:length], nil
}

func mhCast(buf []byte) ([]byte, uint64, int, error) {
	rlen, code, dig, err := readMultihashFromBuf(buf)
	if err != nil {
		return nil, 0, 0, err
	}
	if len(buf) != rlen {
		return nil, 0, 0, fmt.Errorf("multihash length inconsistent: expected %d; got %d", len(buf), rlen)
	}
	return buf, code, len(dig), nil
}

// ---------------------------------------------------------------- mr-tron/base58 v1.2.0

const btcAlphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
const flickrAlphabet = "123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"

func b58Decode(str, alphabet string) ([]byte, error) {
	if len(str) == 0 {
		return nil, errors.New("zero length string")
	}
	n := new(big.Int)
	for i := 0; i < len(str); i++ {
		d := strings.IndexByte(alphabet, str[i])
		if d < 0 {
			return nil, fmt.Errorf("invalid base58 digit (%q)", str[i])
		}
		n.Mul(n, big.NewInt(58))
		n.Add(n, big.NewInt(int64(d)))
	}
	zeros := 0
	for zeros < len(str) && str[zeros] == alphabet[0] {
		zeros++
	}
	return append(make([]byte, zeros), n.Bytes()...), nil
}

func b58Encode(bin []byte, alphabet string) string {
	zeros := 0
	for zeros < len(bin) && bin[zeros] == 0 {
		zeros++
	}
	n := new(big.Int).SetBytes(bin)
	var out []byte
	mod := new(big.Int)
	for n.Sign() > 0 {
		n.DivMod(n, big.NewInt(58), mod)
		out = append(out, alphabet[mod.Int64()])
	}
	for i := 0; i < zeros; i++ {
		out = append(out, alphabet[0])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return string(out)
}

// ---------------------------------------------------------------- go-base32 v0.1.0 (case-insensitive decoding)

const b32Std = "abcdefghijklmnopqrstuvwxyz234567"
const b32Hex = "0123456789abcdefghijklmnopqrstuv"

// b32Decode: go-base32's decode with a case-insensitive alphabet; newlines skipped; with
// padding the input is in quanta of 8 ending in valid padding, without it a trailing partial
// quantum is taken as it is (bits that do not fill a byte are dropped, as go-base32 does).
func b32Decode(s, alphabet string, padded bool) ([]byte, error) {
	src := []byte(strings.NewReplacer("\r", "", "\n", "").Replace(s))
	var out []byte
	olen := len(src)
	for len(src) > 0 {
		var dbuf [8]byte
		dlen := 8
		end := false
		for j := 0; j < 8; {
			if len(src) == 0 {
				if padded {
					return nil, fmt.Errorf("illegal base32 data at input byte %d", olen-len(src)-j)
				}
				dlen = j
				break
			}
			in := src[0]
			src = src[1:]
			if padded && in == '=' && j >= 2 && len(src) < 8 {
				if len(src)+j < 8-1 {
					return nil, fmt.Errorf("illegal base32 data at input byte %d", olen)
				}
				for k := 0; k < 8-1-j; k++ {
					if len(src) > k && src[k] != '=' {
						return nil, fmt.Errorf("illegal base32 data at input byte %d", olen-len(src)+k-1)
					}
				}
				dlen, end = j, true
				if dlen == 1 || dlen == 3 || dlen == 6 {
					return nil, fmt.Errorf("illegal base32 data at input byte %d", olen-len(src)-1)
				}
				break
			}
			c := strings.IndexByte(alphabet, lower(in))
			if c < 0 {
				return nil, fmt.Errorf("illegal base32 data at input byte %d", olen-len(src)-1)
			}
			dbuf[j] = byte(c)
			j++
		}
		var dst [5]byte
		dst[4] = dbuf[6]<<5 | dbuf[7]
		dst[3] = dbuf[4]<<7 | dbuf[5]<<2 | dbuf[6]>>3
		dst[2] = dbuf[3]<<4 | dbuf[4]>>1
		dst[1] = dbuf[1]<<6 | dbuf[2]<<1 | dbuf[3]>>4
		dst[0] = dbuf[0]<<3 | dbuf[1]>>2
		out = append(out, dst[:dlen*5/8]...)
		if end {
			if len(src) > 0 { // go-base32 stops at the padding; the caller's length check fails
				return out, nil
			}
			break
		}
	}
	return out, nil
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 32
	}
	return c
}

func b32EncodeLowerNoPad(data []byte) string {
	var sb strings.Builder
	var acc uint64
	nbits := 0
	for _, b := range data {
		acc = acc<<8 | uint64(b)
		nbits += 8
		for nbits >= 5 {
			sb.WriteByte(b32Std[(acc>>(nbits-5))&31])
			nbits -= 5
		}
	}
	if nbits > 0 {
		sb.WriteByte(b32Std[(acc<<(5-nbits))&31])
	}
	return sb.String()
}

// ---------------------------------------------------------------- go-multibase v0.2.0 (Decode)

func multibaseDecode(data string) ([]byte, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("cannot decode multibase for zero length string")
	}
	r, _ := utf8.DecodeRuneInString(data)
	rest := data[1:]
	switch r {
	case 0x00:
		return []byte(rest), nil
	case 'f', 'F':
		return hex.DecodeString(rest)
	case 'b', 'B':
		return b32Decode(rest, b32Std, false)
	case 'v', 'V':
		return b32Decode(rest, b32Hex, false)
	case 'c', 'C':
		return b32Decode(rest, b32Std, true)
	case 't', 'T':
		return b32Decode(rest, b32Hex, true)
	case 'z':
		return b58Decode(rest, btcAlphabet)
	case 'Z':
		return b58Decode(rest, flickrAlphabet)
	case 'M':
		return base64.StdEncoding.DecodeString(rest)
	case 'U':
		return base64.URLEncoding.DecodeString(rest)
	case 'm':
		return base64.RawStdEncoding.DecodeString(rest)
	case 'u':
		return base64.RawURLEncoding.DecodeString(rest)
	default: // base36 'k'/'K', base2 '0', base256emoji: not in the stand-in
		return nil, fmt.Errorf("selected encoding not supported")
	}
}

// ---------------------------------------------------------------- go-cid v0.5.0

type Cid struct{ str string }

func invalidCid(err error) error { return fmt.Errorf("invalid cid: %w", err) }

func (c Cid) Defined() bool { return c.str != "" }

func (c Cid) version() uint64 {
	if len(c.str) == 34 && c.str[0] == 18 && c.str[1] == 32 {
		return 0
	}
	return 1
}

func (c Cid) String() string {
	if c.version() == 0 {
		return b58Encode([]byte(c.str), btcAlphabet)
	}
	return "b" + b32EncodeLowerNoPad([]byte(c.str))
}

func cidFromBytes(data []byte) (int, Cid, error) {
	if len(data) > 2 && data[0] == 0x12 && data[1] == 32 {
		if len(data) < 34 {
			return 0, Cid{}, invalidCid(fmt.Errorf("not enough bytes for cid v0"))
		}
		if _, _, _, err := mhCast(data[:34]); err != nil {
			return 0, Cid{}, invalidCid(err)
		}
		return 34, Cid{string(data[:34])}, nil
	}
	vers, n, err := fromUvarint(data)
	if err != nil {
		return 0, Cid{}, invalidCid(err)
	}
	if vers != 1 {
		return 0, Cid{}, invalidCid(fmt.Errorf("expected 1 as the cid version number, got: %d", vers))
	}
	_, cn, err := fromUvarint(data[n:])
	if err != nil {
		return 0, Cid{}, invalidCid(err)
	}
	mhnr, _, _, err := readMultihashFromBuf(data[n+cn:])
	if err != nil {
		return 0, Cid{}, invalidCid(err)
	}
	l := n + cn + mhnr
	return l, Cid{string(data[0:l])}, nil
}

func cidCast(data []byte) (Cid, error) {
	nr, c, err := cidFromBytes(data)
	if err != nil {
		return Cid{}, invalidCid(err)
	}
	if nr != len(data) {
		return Cid{}, invalidCid(fmt.Errorf("trailing bytes in data buffer passed to cid Cast"))
	}
	return c, nil
}

func CidDecode(v string) (Cid, error) {
	if len(v) < 2 {
		return Cid{}, invalidCid(errors.New("cid too short"))
	}
	if len(v) == 46 && v[:2] == "Qm" {
		hash, err := b58Decode(v, btcAlphabet)
		if err != nil {
			return Cid{}, invalidCid(err)
		}
		_, code, length, err := mhCast(hash)
		if err != nil {
			return Cid{}, invalidCid(err)
		}
		if code != 0x12 || length != 32 {
			return Cid{}, invalidCid(fmt.Errorf("invalid hash for cidv0 %d-%d", code, length))
		}
		return Cid{string(hash)}, nil
	}
	data, err := multibaseDecode(v)
	if err != nil {
		return Cid{}, invalidCid(err)
	}
	return cidCast(data)
}

func (c *Cid) UnmarshalJSON(b []byte) error {
	if len(b) < 2 {
		return invalidCid(fmt.Errorf("invalid cid json blob"))
	}
	obj := struct {
		CidTarget string `json:"/"`
	}{}
	objptr := &obj
	err := json.Unmarshal(b, &objptr)
	if err != nil {
		return invalidCid(err)
	}
	if objptr == nil {
		*c = Cid{}
		return nil
	}
	if obj.CidTarget == "" {
		return invalidCid(fmt.Errorf("cid was incorrectly formatted"))
	}
	out, err := CidDecode(obj.CidTarget)
	if err != nil {
		return invalidCid(err)
	}
	*c = out
	return nil
}

func (c Cid) MarshalJSON() ([]byte, error) {
	if !c.Defined() {
		return []byte("null"), nil
	}
	return []byte(fmt.Sprintf("{\"/\":\"%s\"}", c.String())), nil
}

// ---------------------------------------------------------------- go-address v1.2.0

type Address struct{ str string }

var (
	errUnknownNetwork  = errors.New("unknown address network")
	errUnknownProtocol = errors.New("unknown address protocol")
	errInvalidPayload  = errors.New("invalid address payload")
	errInvalidLength   = errors.New("invalid address length")
	errInvalidChecksum = errors.New("invalid address checksum")
	errInvalidEncoding = errors.New("invalid encoding")
)

const (
	undefAddressString     = "<empty>"
	maxInt64StringLength   = 19
	payloadHashLength      = 20
	checksumHashLength     = 4
	maxAddressStringLength = 2 + maxInt64StringLength + 1 + 93
	blsPublicKeyBytes      = 48
	maxSubaddressLen       = 54
)

func addrChecksum(ingest []byte) []byte { return blake2b(ingest, checksumHashLength) }

func newAddress(protocol byte, payload []byte) (Address, error) {
	switch protocol {
	case 0:
		v, n, err := fromUvarint(payload)
		if err != nil {
			return Address{}, fmt.Errorf("could not decode: %v: %w", err, errInvalidPayload)
		}
		if n != len(payload) {
			return Address{}, fmt.Errorf("different varint length (v:%d != p:%d): %w", n, len(payload), errInvalidLength)
		}
		if v > math.MaxInt64 {
			return Address{}, fmt.Errorf("id addresses must be less than 2^63: %w", errInvalidPayload)
		}
	case 1, 2:
		if len(payload) != payloadHashLength {
			return Address{}, errInvalidLength
		}
	case 3:
		if len(payload) != blsPublicKeyBytes {
			return Address{}, errInvalidLength
		}
	case 4:
		namespace, n, err := fromUvarint(payload)
		if err != nil {
			return Address{}, fmt.Errorf("could not decode delegated address namespace: %v: %w", err, errInvalidPayload)
		}
		if namespace > math.MaxInt64 {
			return Address{}, fmt.Errorf("namespace id must be less than 2^63: %w", errInvalidPayload)
		}
		if len(payload)-n > maxSubaddressLen {
			return Address{}, errInvalidLength
		}
	default:
		return Address{}, errUnknownProtocol
	}
	return Address{string(append([]byte{protocol}, payload...))}, nil
}

func (a Address) String() string {
	if a.str == "" {
		return undefAddressString
	}
	protocol := a.str[0]
	payload := []byte(a.str[1:])
	switch protocol {
	case 1, 2, 3, 4:
		cksm := addrChecksum(append([]byte{protocol}, payload...))
		s := "f" + fmt.Sprintf("%d", protocol)
		if protocol == 4 {
			namespace, n, _ := fromUvarint(payload)
			payload = payload[n:]
			s += fmt.Sprintf("%df", namespace)
		}
		return s + b32EncodeLowerNoPad(append(payload, cksm...))
	default:
		i, _, _ := fromUvarint(payload)
		return fmt.Sprintf("f%d%d", protocol, i)
	}
}

func addrBase32decode(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ { // go's base32 with a lowercase alphabet is case-sensitive
		if s[i] != '\n' && s[i] != '\r' && strings.IndexByte(b32Std, s[i]) < 0 {
			return nil, fmt.Errorf("illegal base32 data at input byte %d", i)
		}
	}
	decoded, err := b32Decode(s, b32Std, false)
	if err != nil {
		return nil, err
	}
	if b32EncodeLowerNoPad(decoded) != s {
		return nil, errInvalidEncoding
	}
	return decoded, nil
}

func addressDecode(a string) (Address, error) {
	if len(a) == 0 || a == undefAddressString {
		return Address{}, nil
	}
	if len(a) > maxAddressStringLength || len(a) < 3 {
		return Address{}, errInvalidLength
	}
	if a[0] != 'f' && a[0] != 't' {
		return Address{}, errUnknownNetwork
	}
	var protocol byte
	switch a[1] {
	case '0', '1', '2', '3', '4':
		protocol = a[1] - '0'
	default:
		return Address{}, errUnknownProtocol
	}
	raw := a[2:]
	if protocol == 0 {
		if len(raw) > maxInt64StringLength {
			return Address{}, errInvalidLength
		}
		id, err := strconv.ParseUint(raw, 10, 63)
		if err != nil {
			return Address{}, errInvalidPayload
		}
		return newAddress(protocol, toUvarint(id))
	}
	var cksum, payload []byte
	if protocol == 4 {
		parts := strings.SplitN(raw, "f", 2)
		if len(parts) != 2 {
			return Address{}, errInvalidPayload
		}
		if len(parts[0]) > maxInt64StringLength {
			return Address{}, errInvalidLength
		}
		namespace, err := strconv.ParseUint(parts[0], 10, 63)
		if err != nil {
			return Address{}, errInvalidPayload
		}
		subaddrcksm, err := addrBase32decode(parts[1])
		if err != nil {
			return Address{}, err
		}
		if len(subaddrcksm) < checksumHashLength {
			return Address{}, errInvalidLength
		}
		subaddr := subaddrcksm[:len(subaddrcksm)-checksumHashLength]
		cksum = subaddrcksm[len(subaddrcksm)-checksumHashLength:]
		if len(subaddr) > maxSubaddressLen {
			return Address{}, errInvalidLength
		}
		payload = append(toUvarint(namespace), subaddr...)
	} else {
		payloadcksm, err := addrBase32decode(raw)
		if err != nil {
			return Address{}, err
		}
		if len(payloadcksm) < checksumHashLength {
			return Address{}, errInvalidLength
		}
		payload = payloadcksm[:len(payloadcksm)-checksumHashLength]
		cksum = payloadcksm[len(payloadcksm)-checksumHashLength:]
		if (protocol == 1 || protocol == 2) && len(payload) != payloadHashLength {
			return Address{}, errInvalidLength
		}
		if protocol == 3 && len(payload) != blsPublicKeyBytes {
			return Address{}, errInvalidLength
		}
	}
	if !bytes.Equal(addrChecksum(append([]byte{protocol}, payload...)), cksum) {
		return Address{}, errInvalidChecksum
	}
	return newAddress(protocol, payload)
}

func (a *Address) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	addr, err := addressDecode(s)
	if err != nil {
		return err
	}
	*a = addr
	return nil
}

func (a Address) MarshalJSON() ([]byte, error) {
	return []byte(`"` + a.String() + `"`), nil
}

// ---------------------------------------------------------------- go-state-types big.Int

type BigInt struct {
	*big.Int
}

func (bi *BigInt) MarshalJSON() ([]byte, error) {
	if bi.Int == nil {
		return json.Marshal("0")
	}
	return json.Marshal(bi.String())
}

func (bi *BigInt) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	i, ok := big.NewInt(0).SetString(s, 10)
	if !ok {
		return fmt.Errorf("failed to parse big string: '%s'", string(b))
	}
	bi.Int = i
	return nil
}

// ---------------------------------------------------------------- go-state-types builtin/v9/market.DealLabel

const dealMaxLabelSize = 256

type DealLabel struct {
	bs        []byte
	notString bool
}

func (label DealLabel) MarshalJSON() ([]byte, error) {
	if label.notString {
		return json.Marshal("")
	}
	return json.Marshal(string(label.bs))
}

func (label *DealLabel) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("failed to unmarshal string: %w", err)
	}
	if len(str) > dealMaxLabelSize {
		return fmt.Errorf("failed to create label from string: provided string is too large to be a label (%d), max length (%d)", len(str), dealMaxLabelSize)
	}
	if !utf8.ValidString(str) {
		return fmt.Errorf("failed to create label from string: provided string is invalid utf8")
	}
	*label = DealLabel{bs: []byte(str)}
	return nil
}

// ---------------------------------------------------------------- BLAKE2b (RFC 7693), unkeyed

var b2iv = [8]uint64{
	0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
	0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
}

var b2sigma = [10][16]byte{
	{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
	{14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
	{11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
	{7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
	{9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
	{2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
	{12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
	{13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
	{6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
	{10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
}

func b2compress(h *[8]uint64, block []byte, t uint64, final bool) {
	var m [16]uint64
	for i := range m {
		m[i] = binary.LittleEndian.Uint64(block[i*8:])
	}
	var v [16]uint64
	copy(v[:8], h[:])
	copy(v[8:], b2iv[:])
	v[12] ^= t
	if final {
		v[14] = ^v[14]
	}
	g := func(a, b, c, d int, x, y uint64) {
		v[a] = v[a] + v[b] + x
		v[d] = bits.RotateLeft64(v[d]^v[a], -32)
		v[c] = v[c] + v[d]
		v[b] = bits.RotateLeft64(v[b]^v[c], -24)
		v[a] = v[a] + v[b] + y
		v[d] = bits.RotateLeft64(v[d]^v[a], -16)
		v[c] = v[c] + v[d]
		v[b] = bits.RotateLeft64(v[b]^v[c], -63)
	}
	for r := 0; r < 12; r++ {
		s := &b2sigma[r%10]
		g(0, 4, 8, 12, m[s[0]], m[s[1]])
		g(1, 5, 9, 13, m[s[2]], m[s[3]])
		g(2, 6, 10, 14, m[s[4]], m[s[5]])
		g(3, 7, 11, 15, m[s[6]], m[s[7]])
		g(0, 5, 10, 15, m[s[8]], m[s[9]])
		g(1, 6, 11, 12, m[s[10]], m[s[11]])
		g(2, 7, 8, 13, m[s[12]], m[s[13]])
		g(3, 4, 9, 14, m[s[14]], m[s[15]])
	}
	for i := range h {
		h[i] ^= v[i] ^ v[i+8]
	}
}

func blake2b(data []byte, size int) []byte {
	h := b2iv
	h[0] ^= 0x01010000 ^ uint64(size)
	var t uint64
	for len(data) > 128 {
		t += 128
		b2compress(&h, data[:128], t, false)
		data = data[128:]
	}
	var block [128]byte
	copy(block[:], data)
	t += uint64(len(data))
	b2compress(&h, block[:], t, true)
	out := make([]byte, 64)
	for i, x := range h {
		binary.LittleEndian.PutUint64(out[i*8:], x)
	}
	return out[:size]
}
