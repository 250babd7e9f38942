package verity

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// superblockMagic opens every verity superblock.
var superblockMagic = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Byte offsets of the superblock fields (little-endian).
const (
	sbOffVersion       = 8
	sbOffHashType      = 12
	sbOffUUID          = 16
	sbOffAlgorithm     = 32
	sbOffDataBlockSize = 64
	sbOffHashBlockSize = 68
	sbOffDataBlocks    = 72
	sbOffSaltSize      = 80
	sbOffPad1          = 82
	sbOffSalt          = 88
	sbOffPad2          = 344
	sbAlgorithmLen     = 32
)

// Superblock is the 512-byte header veritysetup writes at the start of the
// verity area. The kernel never reads it; it records the parameters.
type Superblock struct {
	HashType      uint32
	UUID          [16]byte
	Algorithm     string
	DataBlockSize uint32
	HashBlockSize uint32
	DataBlocks    uint64
	Salt          []byte
}

// SuperblockError reports a superblock field with an unexpected value.
type SuperblockError struct {
	Field    string // on-disk field name, e.g. "hash_block_size"
	Offset   int    // byte offset of the field within the superblock
	Expected string
	Found    string
	wrapped  error
}

func (e *SuperblockError) Error() string {
	return fmt.Sprintf("verity superblock: field %s (byte %d): expected %s, found %s", e.Field, e.Offset, e.Expected, e.Found)
}

func (e *SuperblockError) Unwrap() error { return e.wrapped }

func sbErr(field string, offset int, expected, found string) *SuperblockError {
	return &SuperblockError{Field: field, Offset: offset, Expected: expected, Found: found}
}

// ErrNoSuperblock is wrapped by the error ParseSuperblock returns when the
// bytes do not start with the verity magic (not a verity hash device).
var ErrNoSuperblock = errors.New("no verity superblock")

// SuperblockFromParams returns the superblock describing p.
func SuperblockFromParams(p Params) *Superblock {
	return &Superblock{
		HashType:      p.HashType,
		UUID:          p.UUID,
		Algorithm:     p.Algorithm,
		DataBlockSize: p.DataBlockSize,
		HashBlockSize: p.HashBlockSize,
		DataBlocks:    p.DataBlocks,
		Salt:          append([]byte(nil), p.Salt...),
	}
}

// Params returns the parameters the superblock records, for a verity area at
// hashOffset. As in veritysetup, a superblock's values are the ones used:
// callers should not override them with other sources.
func (s *Superblock) Params(hashOffset uint64) Params {
	p := DefaultParams()
	p.HashType = s.HashType
	p.UUID = s.UUID
	p.Algorithm = s.Algorithm
	p.DataBlockSize = s.DataBlockSize
	p.HashBlockSize = s.HashBlockSize
	p.DataBlocks = s.DataBlocks
	if len(s.Salt) > 0 {
		p.Salt = append([]byte(nil), s.Salt...)
	}
	p.HashOffset = hashOffset
	return p
}

// MarshalBinary encodes s in the on-disk layout after checking it as
// ParseSuperblock would.
func (s *Superblock) MarshalBinary() ([]byte, error) {
	if len(s.Algorithm) >= sbAlgorithmLen {
		return nil, &SuperblockError{Field: "algorithm", Offset: sbOffAlgorithm, Expected: fmt.Sprintf("a name shorter than %d bytes", sbAlgorithmLen), Found: strconv.Quote(s.Algorithm)}
	}
	if len(s.Salt) > MaxSaltSize {
		return nil, &SuperblockError{Field: "salt_size", Offset: sbOffSaltSize, Expected: fmt.Sprintf("at most %d", MaxSaltSize), Found: strconv.Itoa(len(s.Salt))}
	}
	b := s.marshal()
	if _, err := ParseSuperblock(b); err != nil {
		return nil, err
	}
	return b, nil
}

// marshal encodes without checks; fields that do not fit are truncated.
func (s *Superblock) marshal() []byte {
	b := make([]byte, SuperblockSize)
	copy(b, superblockMagic[:])
	le := binary.LittleEndian
	le.PutUint32(b[sbOffVersion:], 1)
	le.PutUint32(b[sbOffHashType:], s.HashType)
	copy(b[sbOffUUID:sbOffUUID+16], s.UUID[:])
	copy(b[sbOffAlgorithm:sbOffAlgorithm+sbAlgorithmLen-1], s.Algorithm)
	le.PutUint32(b[sbOffDataBlockSize:], s.DataBlockSize)
	le.PutUint32(b[sbOffHashBlockSize:], s.HashBlockSize)
	le.PutUint64(b[sbOffDataBlocks:], s.DataBlocks)
	le.PutUint16(b[sbOffSaltSize:], uint16(min(len(s.Salt), MaxSaltSize)))
	copy(b[sbOffSalt:sbOffSalt+MaxSaltSize], s.Salt)
	return b
}

// ParseSuperblock decodes and checks the first 512 bytes of b. It checks
// what veritysetup checks (magic, version 1, hash type, known algorithm,
// block sizes, salt size) plus a non-zero data block count. Padding bytes are
// not checked, as veritysetup does not check them either.
func ParseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < SuperblockSize {
		return nil, sbErr("size", 0, fmt.Sprintf("%d bytes", SuperblockSize), fmt.Sprintf("%d bytes", len(b)))
	}
	if !bytes.Equal(b[:8], superblockMagic[:]) {
		return nil, &SuperblockError{Field: "signature", Expected: strconv.Quote(string(superblockMagic[:])), Found: strconv.Quote(string(b[:8])), wrapped: ErrNoSuperblock}
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[sbOffVersion:]); v != 1 {
		return nil, sbErr("version", sbOffVersion, "1", strconv.FormatUint(uint64(v), 10))
	}
	s := &Superblock{
		HashType:      le.Uint32(b[sbOffHashType:]),
		DataBlockSize: le.Uint32(b[sbOffDataBlockSize:]),
		HashBlockSize: le.Uint32(b[sbOffHashBlockSize:]),
		DataBlocks:    le.Uint64(b[sbOffDataBlocks:]),
	}
	copy(s.UUID[:], b[sbOffUUID:])
	if s.HashType > 1 {
		return nil, sbErr("hash_type", sbOffHashType, "0 or 1", strconv.FormatUint(uint64(s.HashType), 10))
	}
	alg := b[sbOffAlgorithm : sbOffAlgorithm+sbAlgorithmLen]
	nul := bytes.IndexByte(alg, 0)
	if nul < 0 {
		return nil, sbErr("algorithm", sbOffAlgorithm, "a NUL-terminated name", "no NUL in "+strconv.Quote(string(alg)))
	}
	s.Algorithm = string(alg[:nul])
	if _, ok := algorithms[s.Algorithm]; !ok {
		return nil, sbErr("algorithm", sbOffAlgorithm, fmt.Sprintf("one of %v", Algorithms()), strconv.Quote(s.Algorithm))
	}
	for _, f := range []struct {
		name string
		off  int
		v    uint32
	}{{"data_block_size", sbOffDataBlockSize, s.DataBlockSize}, {"hash_block_size", sbOffHashBlockSize, s.HashBlockSize}} {
		if !blockSizeOK(f.v) {
			return nil, sbErr(f.name, f.off, fmt.Sprintf("a power of two in [%d, %d]", MinBlockSize, MaxBlockSize), strconv.FormatUint(uint64(f.v), 10))
		}
	}
	if s.DataBlocks == 0 {
		return nil, sbErr("data_blocks", sbOffDataBlocks, "at least 1", "0")
	}
	saltSize := int(le.Uint16(b[sbOffSaltSize:]))
	if saltSize > MaxSaltSize {
		return nil, sbErr("salt_size", sbOffSaltSize, fmt.Sprintf("at most %d", MaxSaltSize), strconv.Itoa(saltSize))
	}
	s.Salt = append([]byte(nil), b[sbOffSalt:sbOffSalt+saltSize]...)
	return s, nil
}

// ReadSuperblock reads and parses the superblock at offset on r.
func ReadSuperblock(r io.ReaderAt, offset uint64) (*Superblock, error) {
	if offset%512 != 0 || offset > 1<<63-1-SuperblockSize {
		return nil, fmt.Errorf("verity: superblock offset %d: expected a multiple of 512", offset)
	}
	b := make([]byte, SuperblockSize)
	if n, err := r.ReadAt(b, int64(offset)); n < len(b) {
		return nil, fmt.Errorf("verity: reading superblock at offset %d: got %d of %d bytes: %w", offset, n, len(b), orEOF(err))
	}
	return ParseSuperblock(b)
}

// compareSuperblock checks the on-disk superblock bytes against the one p
// describes. It returns the first differing field, or nil.
func compareSuperblock(stored []byte, p Params) *SuperblockError {
	s, err := ParseSuperblock(stored)
	if err != nil {
		var se *SuperblockError
		if errors.As(err, &se) {
			return se
		}
		return &SuperblockError{Field: "superblock", Expected: "a valid superblock", Found: err.Error()}
	}
	num := func(v uint64) string { return strconv.FormatUint(v, 10) }
	switch {
	case s.HashType != p.HashType:
		return sbErr("hash_type", sbOffHashType, num(uint64(p.HashType)), num(uint64(s.HashType)))
	case p.UUID != [16]byte{} && s.UUID != p.UUID:
		return sbErr("uuid", sbOffUUID, FormatUUID(p.UUID), FormatUUID(s.UUID))
	case s.Algorithm != p.Algorithm:
		return sbErr("algorithm", sbOffAlgorithm, strconv.Quote(p.Algorithm), strconv.Quote(s.Algorithm))
	case s.DataBlockSize != p.DataBlockSize:
		return sbErr("data_block_size", sbOffDataBlockSize, num(uint64(p.DataBlockSize)), num(uint64(s.DataBlockSize)))
	case s.HashBlockSize != p.HashBlockSize:
		return sbErr("hash_block_size", sbOffHashBlockSize, num(uint64(p.HashBlockSize)), num(uint64(s.HashBlockSize)))
	case s.DataBlocks != p.DataBlocks:
		return sbErr("data_blocks", sbOffDataBlocks, num(p.DataBlocks), num(s.DataBlocks))
	case len(s.Salt) != len(p.Salt):
		return sbErr("salt_size", sbOffSaltSize, strconv.Itoa(len(p.Salt)), strconv.Itoa(len(s.Salt)))
	case !bytes.Equal(s.Salt, p.Salt):
		return sbErr("salt", sbOffSalt, hexOrDash(p.Salt), hexOrDash(s.Salt))
	}
	// Everything else (padding, unused salt bytes, algorithm name tail) is
	// zero when written by veritysetup or Format: a non-zero byte there means
	// the superblock was altered.
	want := SuperblockFromParams(p)
	want.UUID = s.UUID
	wb := want.marshal()
	for i := range wb {
		if wb[i] != stored[i] {
			return sbErr(fieldAt(i), i, fmt.Sprintf("byte 0x%02x", wb[i]), fmt.Sprintf("byte 0x%02x", stored[i]))
		}
	}
	return nil
}

// fieldAt names the superblock field that holds byte i.
func fieldAt(i int) string {
	switch {
	case i < sbOffVersion:
		return "signature"
	case i < sbOffHashType:
		return "version"
	case i < sbOffUUID:
		return "hash_type"
	case i < sbOffAlgorithm:
		return "uuid"
	case i < sbOffDataBlockSize:
		return "algorithm"
	case i < sbOffHashBlockSize:
		return "data_block_size"
	case i < sbOffDataBlocks:
		return "hash_block_size"
	case i < sbOffSaltSize:
		return "data_blocks"
	case i < sbOffPad1:
		return "salt_size"
	case i < sbOffSalt:
		return "pad1"
	case i < sbOffPad2:
		return "salt"
	default:
		return "pad2"
	}
}

func hexOrDash(b []byte) string {
	if len(b) == 0 {
		return "-"
	}
	return hex.EncodeToString(b)
}

// orEOF turns a nil error from a short read into io.ErrUnexpectedEOF.
func orEOF(err error) error {
	if err == nil || err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
