package verity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func validSuperblock() *Superblock {
	return SuperblockFromParams(params(func(p *Params) { p.DataBlocks = 262144 }))
}

func TestSuperblockRoundTrip(t *testing.T) {
	for _, s := range []*Superblock{
		validSuperblock(),
		{HashType: 0, Algorithm: "sha1", DataBlockSize: 512, HashBlockSize: MaxBlockSize, DataBlocks: 1},
		{HashType: 1, Algorithm: "sha512", DataBlockSize: 4096, HashBlockSize: 512, DataBlocks: 1<<64 - 1, Salt: salt(256)},
	} {
		b, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != SuperblockSize {
			t.Fatalf("marshalled %d bytes", len(b))
		}
		got, err := ParseSuperblock(b)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Salt) == 0 {
			s.Salt = []byte{}
		}
		if got.HashType != s.HashType || got.Algorithm != s.Algorithm || got.DataBlockSize != s.DataBlockSize ||
			got.HashBlockSize != s.HashBlockSize || got.DataBlocks != s.DataBlocks || !bytes.Equal(got.Salt, s.Salt) || got.UUID != s.UUID {
			t.Errorf("round trip: got %+v want %+v", got, s)
		}
	}
}

// TestSuperblockLayout pins field offsets against a superblock written by
// veritysetup (golden vector).
func TestSuperblockLayout(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "golden", "sha256-type1-4k-superblock.hash"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSuperblock(b)
	if err != nil {
		t.Fatal(err)
	}
	if FormatUUID(s.UUID) != "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0" || s.Algorithm != "sha256" || s.HashType != 1 ||
		s.DataBlockSize != 4096 || s.HashBlockSize != 4096 || s.DataBlocks != 300 || len(s.Salt) != 32 || s.Salt[31] != 0x1f {
		t.Errorf("parsed %+v", s)
	}
	m, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m, b[:SuperblockSize]) {
		t.Error("MarshalBinary differs from veritysetup's superblock")
	}
}

func TestParseSuperblockErrors(t *testing.T) {
	valid, _ := validSuperblock().MarshalBinary()
	le := binary.LittleEndian
	tests := []struct {
		name  string
		mod   func(b []byte) []byte
		field string
		want  string
	}{
		{"short", func(b []byte) []byte { return b[:511] }, "size", "expected 512 bytes, found 511 bytes"},
		{"magic", func(b []byte) []byte { b[0] = 'V'; return b }, "signature", `expected "verity\x00\x00", found "Verity\x00\x00"`},
		{"version", func(b []byte) []byte { le.PutUint32(b[8:], 2); return b }, "version", "expected 1, found 2"},
		{"hash type", func(b []byte) []byte { le.PutUint32(b[12:], 7); return b }, "hash_type", "expected 0 or 1, found 7"},
		{"algorithm unknown", func(b []byte) []byte { copy(b[32:], "md5\x00"); return b }, "algorithm", `found "md5"`},
		{"algorithm without NUL", func(b []byte) []byte { copy(b[32:64], strings.Repeat("a", 32)); return b }, "algorithm", "expected a NUL-terminated name"},
		{"data block size", func(b []byte) []byte { le.PutUint32(b[64:], 4097); return b }, "data_block_size", "expected a power of two in [512, 524288], found 4097"},
		{"hash block size", func(b []byte) []byte { le.PutUint32(b[68:], 256); return b }, "hash_block_size", "found 256"},
		{"data blocks", func(b []byte) []byte { le.PutUint64(b[72:], 0); return b }, "data_blocks", "expected at least 1, found 0"},
		{"salt size", func(b []byte) []byte { le.PutUint16(b[80:], 257); return b }, "salt_size", "expected at most 256, found 257"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSuperblock(tt.mod(append([]byte(nil), valid...)))
			var se *SuperblockError
			if !errors.As(err, &se) || se.Field != tt.field || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseSuperblock = %v, want field %s and %q", err, tt.field, tt.want)
			}
			if errors.Is(err, ErrNoSuperblock) != (tt.field == "signature") {
				t.Errorf("errors.Is(ErrNoSuperblock) = %v", !(tt.field == "signature"))
			}
		})
	}
	// Padding is not checked by Parse (veritysetup does not either).
	b := append([]byte(nil), valid...)
	b[500] = 0xff
	if _, err := ParseSuperblock(b); err != nil {
		t.Errorf("non-zero padding: %v", err)
	}
}

func TestMarshalSuperblockErrors(t *testing.T) {
	for _, tt := range []struct {
		mod  func(*Superblock)
		want string
	}{
		{func(s *Superblock) { s.Algorithm = strings.Repeat("x", 32) }, "a name shorter than 32 bytes"},
		{func(s *Superblock) { s.Salt = make([]byte, 300) }, "expected at most 256, found 300"},
		{func(s *Superblock) { s.HashBlockSize = 1000 }, "hash_block_size"},
		{func(s *Superblock) { s.Algorithm = "crc32" }, `"crc32"`},
	} {
		s := validSuperblock()
		tt.mod(s)
		if _, err := s.MarshalBinary(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("MarshalBinary = %v, want %q", err, tt.want)
		}
	}
}

func TestReadSuperblock(t *testing.T) {
	b, _ := validSuperblock().MarshalBinary()
	dev := &memDev{append(make([]byte, 4096), b...)}
	if _, err := ReadSuperblock(dev, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSuperblock(dev, 1000); err == nil || !strings.Contains(err.Error(), "offset 1000: expected a multiple of 512") {
		t.Errorf("misaligned: %v", err)
	}
	if _, err := ReadSuperblock(dev, 0); !errors.Is(err, ErrNoSuperblock) {
		t.Errorf("zeros: %v", err)
	}
	if _, err := ReadSuperblock(&memDev{b[:100]}, 0); err == nil || !strings.Contains(err.Error(), "got 100 of 512 bytes") {
		t.Errorf("short: %v", err)
	}
}
