package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// dm-integrity superblock (drivers/md/dm-integrity.c struct superblock),
// little-endian, in the first sector at the integrity offset:
//
//	0  magic "integrt\0"        8  version u8       9  log2_interleave_sectors u8
//	10 integrity_tag_size u16   12 journal_sections u32
//	16 provided_data_sectors u64 (what userspace reads)
//	24 flags u32                28 log2_sectors_per_block u8
const (
	integritySBSize = 4096 // the kernel reserves 8 sectors
	// IntegritySuperblockSize is the area zeroed before the kernel formats dm-integrity.
	IntegritySuperblockSize = integritySBSize
	integrityMagic          = "integrt\x00"
	integrityMaxVersion     = 6
	sbFlagFixedPadding      = 0x8 // SB_FLAG_FIXED_PADDING
	integrityLog2Sectors4K  = 3
)

// IntegritySuperblock is the part of a dm-integrity superblock the stage
// checks.
type IntegritySuperblock struct {
	Version             uint8
	TagSize             uint16
	JournalSections     uint32
	ProvidedDataSectors uint64
	Flags               uint32
	Log2SectorsPerBlock uint8
}

// ErrNoIntegritySuperblock is returned for a sector without the magic (the
// kernel did not format it).
var ErrNoIntegritySuperblock = errors.New("no dm-integrity superblock")

// ParseIntegritySuperblock decodes a superblock the kernel wrote and checks
// it against what was asked: tag size, 4 KiB blocks, and a data size that is
// positive, whole 4 KiB blocks and below maxSectors (the device size past the
// offset).
func ParseIntegritySuperblock(b []byte, tagSize int, maxSectors uint64) (*IntegritySuperblock, error) {
	if len(b) < 64 {
		return nil, fmt.Errorf("dm-integrity superblock: %d bytes, expected at least 64", len(b))
	}
	if !bytes.Equal(b[:8], []byte(integrityMagic)) {
		return nil, fmt.Errorf("%w: magic %q, expected %q", ErrNoIntegritySuperblock, b[:8], integrityMagic)
	}
	le := binary.LittleEndian
	sb := &IntegritySuperblock{
		Version:             b[8],
		TagSize:             le.Uint16(b[10:12]),
		JournalSections:     le.Uint32(b[12:16]),
		ProvidedDataSectors: le.Uint64(b[16:24]),
		Flags:               le.Uint32(b[24:28]),
		Log2SectorsPerBlock: b[28],
	}
	switch {
	case sb.Version < 1 || sb.Version > integrityMaxVersion:
		return nil, fmt.Errorf("dm-integrity superblock version %d, expected 1 to %d", sb.Version, integrityMaxVersion)
	case int(sb.TagSize) != tagSize:
		return nil, fmt.Errorf("dm-integrity superblock tag size %d, expected %d", sb.TagSize, tagSize)
	case sb.Log2SectorsPerBlock != integrityLog2Sectors4K:
		return nil, fmt.Errorf("dm-integrity superblock block size %d bytes, expected %d", uint64(512)<<min(sb.Log2SectorsPerBlock, 40), EncryptionSectorSize)
	case sb.Flags&sbFlagFixedPadding == 0:
		return nil, fmt.Errorf("dm-integrity superblock flags %#x lack fix_padding", sb.Flags)
	case sb.ProvidedDataSectors == 0 || sb.ProvidedDataSectors%8 != 0 || sb.ProvidedDataSectors >= maxSectors:
		return nil, fmt.Errorf("dm-integrity superblock provides %d sectors, expected whole 4 KiB blocks below the %d sectors of the device", sb.ProvidedDataSectors, maxSectors)
	}
	return sb, nil
}
