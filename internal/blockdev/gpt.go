package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strings"
	"unicode/utf16"
)

const (
	gptSignature     = "EFI PART"
	gptMinHeaderSize = 92
	gptMinEntrySize  = 128
	gptMaxEntrySize  = 4096
	// maxGPTEntryArrayBytes bounds how much we read for the entry array of
	// an untrusted table. The UEFI default is 128×128 bytes = 16 KiB; 1 MiB
	// leaves room for any real tool while keeping a forged count harmless.
	maxGPTEntryArrayBytes = 1 << 20
	gptNameBytes          = 72
	mbrPartitionTypeGPT   = 0xEE
)

// GPT is a validated GUID partition table.
type GPT struct {
	SectorSize     int    // logical sector size the table was read with
	HeaderLBA      uint64 // LBA of the header that was used
	AlternateLBA   uint64 // LBA of the other header, as recorded in this one
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	DiskGUID       string
	EntryCount     uint32
	EntrySize      uint32
	// Partitions holds the used entries in table order.
	Partitions []GPTPartition
	// FromBackup is set when the primary header was rejected and the backup
	// at the last LBA was used, as the kernel does; PrimaryError says why.
	FromBackup   bool
	PrimaryError error
}

// GPTPartition is one used GPT entry.
type GPTPartition struct {
	// Number is the kernel's partition number: entry index + 1.
	Number     int
	TypeGUID   string // lowercase canonical
	UniqueGUID string // PARTUUID, lowercase canonical
	FirstLBA   uint64
	LastLBA    uint64
	Attributes uint64
	Name       string // PARTLABEL
}

// Partition returns the entry the kernel exposes as partition number n, or nil.
func (g *GPT) Partition(n int) *GPTPartition {
	for i := range g.Partitions {
		if g.Partitions[i].Number == n {
			return &g.Partitions[i]
		}
	}
	return nil
}

// ErrNoGPT is wrapped by ReadGPT when the disk carries no GPT signature at
// all (as opposed to a damaged or forged one).
var ErrNoGPT = errors.New("no GPT signature")

// ReadGPT reads and validates the GPT of a disk of diskSize bytes (0 when
// unknown: then the backup header cannot be located and end-of-disk bounds
// are not checked). Like the kernel, it requires a protective MBR, uses the
// primary header when valid and falls back to the backup at the last LBA.
func ReadGPT(r io.ReaderAt, sectorSize int, diskSize int64) (*GPT, error) {
	if sectorSize < 512 || sectorSize > 65536 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("GPT: logical sector size %d is not a power of two in 512..65536", sectorSize)
	}
	var lastLBA uint64
	if diskSize > 0 {
		if diskSize < int64(3*sectorSize) {
			return nil, fmt.Errorf("GPT: disk of %d bytes is too small for a GPT with %d-byte sectors: %w", diskSize, sectorSize, ErrNoGPT)
		}
		lastLBA = uint64(diskSize/int64(sectorSize)) - 1
	}
	if err := checkProtectiveMBR(r); err != nil {
		return nil, err
	}
	g, perr := readGPTAt(r, sectorSize, 1, lastLBA)
	if perr == nil {
		return g, nil
	}
	if lastLBA == 0 {
		return nil, fmt.Errorf("primary %w (disk size unknown, backup not tried)", perr)
	}
	g, berr := readGPTAt(r, sectorSize, lastLBA, lastLBA)
	if berr != nil {
		if errors.Is(perr, ErrNoGPT) && errors.Is(berr, ErrNoGPT) {
			return nil, fmt.Errorf("GPT: %w at LBA 1 nor at LBA %d", ErrNoGPT, lastLBA)
		}
		return nil, fmt.Errorf("primary %v; backup %v", perr, berr)
	}
	g.FromBackup = true
	g.PrimaryError = perr
	return g, nil
}

// checkProtectiveMBR requires the 0x55AA boot signature and a partition of
// type 0xEE in sector 0, the condition under which Linux reads a GPT.
func checkProtectiveMBR(r io.ReaderAt) error {
	var mbr [512]byte
	if _, err := r.ReadAt(mbr[:], 0); err != nil {
		return fmt.Errorf("GPT: reading protective MBR: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return fmt.Errorf("GPT: %w: sector 0 has boot signature %02x%02x, expected 55aa", ErrNoGPT, mbr[510], mbr[511])
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == mbrPartitionTypeGPT {
			return nil
		}
	}
	return fmt.Errorf("GPT: %w: MBR has no partition of type 0xee (protective MBR)", ErrNoGPT)
}

// readGPTAt validates the header at lba and its entry array. lastLBA is the
// disk's last LBA or 0 when unknown.
func readGPTAt(r io.ReaderAt, sectorSize int, lba, lastLBA uint64) (*GPT, error) {
	where := fmt.Sprintf("GPT header at LBA %d", lba)
	if lba > math.MaxInt64/uint64(sectorSize) {
		return nil, fmt.Errorf("%s: offset overflows", where)
	}
	hdr := make([]byte, sectorSize)
	if _, err := r.ReadAt(hdr, int64(lba)*int64(sectorSize)); err != nil {
		return nil, fmt.Errorf("%s: read: %w", where, err)
	}
	if string(hdr[0:8]) != gptSignature {
		return nil, fmt.Errorf("%s: %w (found %q, expected %q)", where, ErrNoGPT, printable(hdr[0:8]), gptSignature)
	}
	le := binary.LittleEndian
	hdrSize := le.Uint32(hdr[12:16])
	if hdrSize < gptMinHeaderSize || int(hdrSize) > sectorSize {
		return nil, fmt.Errorf("%s: header size %d, expected %d..%d", where, hdrSize, gptMinHeaderSize, sectorSize)
	}
	wantCRC := le.Uint32(hdr[16:20])
	crcBuf := bytes.Clone(hdr[:hdrSize])
	clear(crcBuf[16:20])
	if got := crc32.ChecksumIEEE(crcBuf); got != wantCRC {
		return nil, fmt.Errorf("%s: header CRC32 is %#08x, computed %#08x", where, wantCRC, got)
	}
	g := &GPT{
		SectorSize:     sectorSize,
		HeaderLBA:      le.Uint64(hdr[24:32]),
		AlternateLBA:   le.Uint64(hdr[32:40]),
		FirstUsableLBA: le.Uint64(hdr[40:48]),
		LastUsableLBA:  le.Uint64(hdr[48:56]),
		DiskGUID:       formatGUID(hdr[56:72]),
		EntryCount:     le.Uint32(hdr[80:84]),
		EntrySize:      le.Uint32(hdr[84:88]),
	}
	entriesLBA := le.Uint64(hdr[72:80])
	entriesCRC := le.Uint32(hdr[88:92])
	if g.HeaderLBA != lba {
		return nil, fmt.Errorf("%s: header says it is at LBA %d", where, g.HeaderLBA)
	}
	if g.FirstUsableLBA > g.LastUsableLBA {
		return nil, fmt.Errorf("%s: first usable LBA %d > last usable LBA %d", where, g.FirstUsableLBA, g.LastUsableLBA)
	}
	if lastLBA != 0 && g.LastUsableLBA > lastLBA {
		return nil, fmt.Errorf("%s: last usable LBA %d beyond the disk's last LBA %d", where, g.LastUsableLBA, lastLBA)
	}
	if g.EntrySize < gptMinEntrySize || g.EntrySize > gptMaxEntrySize || g.EntrySize&(g.EntrySize-1) != 0 {
		return nil, fmt.Errorf("%s: partition entry size %d, expected 128×2^n up to %d", where, g.EntrySize, gptMaxEntrySize)
	}
	arrayBytes := uint64(g.EntryCount) * uint64(g.EntrySize)
	if arrayBytes > maxGPTEntryArrayBytes {
		return nil, fmt.Errorf("%s: %d entries of %d bytes = %d bytes, more than the %d accepted", where, g.EntryCount, g.EntrySize, arrayBytes, maxGPTEntryArrayBytes)
	}
	if entriesLBA < 2 && lba == 1 {
		return nil, fmt.Errorf("%s: partition entries at LBA %d overlap the MBR or header", where, entriesLBA)
	}
	if entriesLBA > math.MaxInt64/uint64(sectorSize) {
		return nil, fmt.Errorf("%s: partition entries LBA %d overflows", where, entriesLBA)
	}
	entriesOff := int64(entriesLBA) * int64(sectorSize)
	if lastLBA != 0 {
		end := uint64(entriesOff) + arrayBytes
		if end > (lastLBA+1)*uint64(sectorSize) {
			return nil, fmt.Errorf("%s: partition entries at LBA %d (%d bytes) extend past the end of the disk", where, entriesLBA, arrayBytes)
		}
	}
	entries := make([]byte, arrayBytes)
	if _, err := r.ReadAt(entries, entriesOff); err != nil {
		return nil, fmt.Errorf("%s: reading %d bytes of partition entries at LBA %d: %w", where, arrayBytes, entriesLBA, err)
	}
	if got := crc32.ChecksumIEEE(entries); got != entriesCRC {
		return nil, fmt.Errorf("%s: partition entries CRC32 is %#08x, computed %#08x", where, entriesCRC, got)
	}
	var zero [16]byte
	for i := uint32(0); i < g.EntryCount; i++ {
		e := entries[uint64(i)*uint64(g.EntrySize):]
		if bytes.Equal(e[0:16], zero[:]) {
			continue // unused entry
		}
		p := GPTPartition{
			Number:     int(i) + 1,
			TypeGUID:   formatGUID(e[0:16]),
			UniqueGUID: formatGUID(e[16:32]),
			FirstLBA:   le.Uint64(e[32:40]),
			LastLBA:    le.Uint64(e[40:48]),
			Attributes: le.Uint64(e[48:56]),
			Name:       decodeUTF16Name(e[56 : 56+gptNameBytes]),
		}
		// The kernel ignores entries that end before they start or lie
		// past the end of the disk; do the same so numbering stays aligned.
		if p.LastLBA < p.FirstLBA || (lastLBA != 0 && p.LastLBA > lastLBA) {
			continue
		}
		g.Partitions = append(g.Partitions, p)
	}
	return g, nil
}

// decodeUTF16Name decodes a NUL-terminated UTF-16LE partition name.
// Unpaired surrogates become U+FFFD rather than failing the table.
func decodeUTF16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// printable renders possibly binary bytes for an error message.
func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '.'
		}
		return r
	}, string(b))
}
