package storage

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// labSuperblock is the first 32 bytes of the superblock the Debian 6.1
// kernel wrote for a 2 GiB partition (tag 32, 4 KiB blocks, fix_padding),
// read back in the lab VM.
const labSuperblock = "696e746567727400040f20007c000000" + "18823e000000000008000000030c0000"

func superblock(t testing.TB) []byte {
	b, err := hex.DecodeString(labSuperblock)
	if err != nil {
		t.Fatal(err)
	}
	return append(b, make([]byte, integritySBSize-len(b))...)
}

func TestParseIntegritySuperblock(t *testing.T) {
	const partSectors = 2<<30/512 - 32768
	sb, err := ParseIntegritySuperblock(superblock(t), 32, partSectors)
	if err != nil {
		t.Fatal(err)
	}
	if sb.ProvidedDataSectors != 4096536 || sb.Version != 4 || sb.JournalSections != 124 || sb.TagSize != 32 {
		t.Errorf("parsed %+v", sb)
	}
	tests := []struct {
		name   string
		mangle func(b []byte)
		tag    int
		max    uint64
		want   string
	}{
		{"not formatted", func(b []byte) { clear(b) }, 32, partSectors, "no dm-integrity superblock"},
		{"other tag size", nil, 28, partSectors, "tag size 32, expected 28"},
		{"512-byte blocks", func(b []byte) { b[28] = 0 }, 32, partSectors, "block size 512 bytes, expected 4096"},
		{"future version", func(b []byte) { b[8] = 7 }, 32, partSectors, "version 7"},
		{"legacy padding", func(b []byte) { b[24] = 0 }, 32, partSectors, "lack fix_padding"},
		{"bigger than the device", nil, 32, 4096536, "provides 4096536 sectors"},
		{"partial block", func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 4096537) }, 32, partSectors, "whole 4 KiB blocks"},
		{"nothing provided", func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 0) }, 32, partSectors, "provides 0 sectors"},
	}
	for _, tt := range tests {
		b := superblock(t)
		if tt.mangle != nil {
			tt.mangle(b)
		}
		_, err := ParseIntegritySuperblock(b, tt.tag, tt.max)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
	}
	if _, err := ParseIntegritySuperblock(make([]byte, 64), 32, partSectors); !errors.Is(err, ErrNoIntegritySuperblock) {
		t.Errorf("zeros: %v, want ErrNoIntegritySuperblock", err)
	}
}

// FuzzIntegritySuperblock: the superblock is read back from the disk, which
// the host controls. Parsing must not panic, and an accepted superblock must
// describe whole 4 KiB blocks inside the device.
func FuzzIntegritySuperblock(f *testing.F) {
	f.Add(superblock(f)[:64], 32, uint64(4161536))
	f.Add(superblock(f)[:64], 28, uint64(8))
	f.Add([]byte("integrt\x00"), 32, uint64(1<<40))
	f.Fuzz(func(t *testing.T, b []byte, tag int, max uint64) {
		sb, err := ParseIntegritySuperblock(b, tag, max)
		if err != nil {
			return
		}
		if sb.ProvidedDataSectors == 0 || sb.ProvidedDataSectors%8 != 0 || sb.ProvidedDataSectors >= max || int(sb.TagSize) != tag {
			t.Fatalf("accepted %+v for tag %d, max %d", sb, tag, max)
		}
	})
}
