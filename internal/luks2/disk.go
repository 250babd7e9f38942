package luks2

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"hash"
)

// Binary header layout (big-endian), identical for both copies; see
// cryptsetup lib/luks2/luks2.h struct luks2_hdr_disk.
const (
	binHeaderSize = 4096 // binary part; the JSON area follows it

	offMagic     = 0x000
	offVersion   = 0x006
	offHdrSize   = 0x008
	offSeqID     = 0x010
	offLabel     = 0x018
	offCsumAlg   = 0x048
	offSalt      = 0x068
	offUUID      = 0x0A8
	offSubsystem = 0x0D0
	offHdrOffset = 0x100
	offCsum      = 0x1C0

	lenMagic   = 6
	lenLabel   = 48
	lenCsumAlg = 32
	lenSalt    = 64
	lenUUID    = 40
	lenCsum    = 64

	// MaxLabelLen is the longest label or subsystem string: the 48-byte
	// field keeps a terminating NUL.
	MaxLabelLen = lenLabel - 1

	formatVersion = 2
)

var (
	magicPrimary   = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}
	magicSecondary = []byte{'S', 'K', 'U', 'L', 0xba, 0xbe}
)

// Header sizes cryptsetup accepts (binary header + JSON area). The secondary
// copy sits at offset hdr_size, so these are also the places where a
// secondary copy is searched for when the primary is unreadable.
var allowedHeaderSizes = []uint64{
	16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10,
	512 << 10, 1 << 20, 2 << 20, 4 << 20,
}

const (
	// DefaultHeaderSize is the size of one header copy (4 KiB binary + 12 KiB JSON).
	DefaultHeaderSize = 16 << 10
	// MaxHeaderSize bounds the JSON area allocation when reading (4 MiB - 4 KiB).
	MaxHeaderSize = 4 << 20
	// MaxKeyslotsSize is cryptsetup's upper limit for the keyslots area.
	MaxKeyslotsSize = 128 << 20
	// DefaultDataOffset is where the encrypted data starts by default.
	DefaultDataOffset = 16 << 20
	// maxMetadataRegion is the largest possible metadata region
	// (two 4 MiB copies and a 128 MiB keyslots area).
	maxMetadataRegion = 2*MaxHeaderSize + MaxKeyslotsSize
)

func isAllowedHeaderSize(n uint64) bool {
	for _, s := range allowedHeaderSizes {
		if n == s {
			return true
		}
	}
	return false
}

// binHeader is the decoded 4096-byte binary part of one header copy.
type binHeader struct {
	magic     [lenMagic]byte
	version   uint16
	hdrSize   uint64
	seqID     uint64
	label     string
	csumAlg   string
	salt      [lenSalt]byte
	uuid      string
	subsystem string
	hdrOffset uint64
	csum      [lenCsum]byte
}

// cString returns the bytes up to the first NUL. The last byte of every
// field is treated as a terminator even when it is not NUL, as cryptsetup does.
func cString(b []byte) string {
	b = b[:len(b)-1]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func decodeBinHeader(b []byte) binHeader {
	var h binHeader
	copy(h.magic[:], b[offMagic:])
	h.version = binary.BigEndian.Uint16(b[offVersion:])
	h.hdrSize = binary.BigEndian.Uint64(b[offHdrSize:])
	h.seqID = binary.BigEndian.Uint64(b[offSeqID:])
	h.label = cString(b[offLabel : offLabel+lenLabel])
	h.csumAlg = cString(b[offCsumAlg : offCsumAlg+lenCsumAlg])
	copy(h.salt[:], b[offSalt:])
	h.uuid = cString(b[offUUID : offUUID+lenUUID])
	h.subsystem = cString(b[offSubsystem : offSubsystem+lenLabel])
	h.hdrOffset = binary.BigEndian.Uint64(b[offHdrOffset:])
	copy(h.csum[:], b[offCsum:])
	return h
}

// encode writes the binary header into b[:binHeaderSize] with a zero
// checksum; padding is zeroed so that the checksum covers defined bytes.
func (h *binHeader) encode(b []byte) {
	clear(b[:binHeaderSize])
	copy(b[offMagic:], h.magic[:])
	binary.BigEndian.PutUint16(b[offVersion:], h.version)
	binary.BigEndian.PutUint64(b[offHdrSize:], h.hdrSize)
	binary.BigEndian.PutUint64(b[offSeqID:], h.seqID)
	copy(b[offLabel:offLabel+lenLabel-1], h.label)
	copy(b[offCsumAlg:offCsumAlg+lenCsumAlg-1], h.csumAlg)
	copy(b[offSalt:], h.salt[:])
	copy(b[offUUID:offUUID+lenUUID-1], h.uuid)
	copy(b[offSubsystem:offSubsystem+lenLabel-1], h.subsystem)
	binary.BigEndian.PutUint64(b[offHdrOffset:], h.hdrOffset)
}

// newHash maps the hash names used in LUKS2 metadata (checksum_alg, digest
// hash, AF hash, PBKDF2 hash) to Go implementations.
func newHash(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha224":
		return sha256.New224, nil
	case "sha256":
		return sha256.New, nil
	case "sha384":
		return sha512.New384, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, fmt.Errorf("unsupported hash %q (supported: sha1, sha224, sha256, sha384, sha512)", name)
}

// headerChecksum computes the checksum over one header copy
// (binary header with the csum field zeroed, followed by the whole JSON area).
// copyBytes is the full hdr_size bytes; it is not modified.
func headerChecksum(alg string, copyBytes []byte) ([]byte, error) {
	newH, err := newHash(alg)
	if err != nil {
		return nil, err
	}
	h := newH()
	h.Write(copyBytes[:offCsum])
	var zero [lenCsum]byte
	h.Write(zero[:])
	h.Write(copyBytes[offCsum+lenCsum:])
	return h.Sum(nil), nil
}
