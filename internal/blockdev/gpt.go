package blockdev

import (
	"errors"
	"fmt"
	"io"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// Entry sizes this reader accepts: 128 bytes times a power of two, as the UEFI spec allows.
const (
	gptMinEntrySize = 128
	gptMaxEntrySize = 4096
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
	Number int
	gpt.Entry
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
var ErrNoGPT = gpt.ErrNoGPT

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
	if _, _, err := gpt.ProtectiveMBR(r); err != nil {
		return nil, fmt.Errorf("GPT: %w", err)
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

// readGPTAt validates the header at lba and its entry array. lastLBA is the
// disk's last LBA or 0 when unknown.
func readGPTAt(r io.ReaderAt, sectorSize int, lba, lastLBA uint64) (*GPT, error) {
	h, err := gpt.ReadHeader(r, sectorSize, lba)
	if err != nil {
		return nil, err
	}
	where := fmt.Sprintf("GPT header at LBA %d", lba)
	g := &GPT{
		SectorSize:     sectorSize,
		HeaderLBA:      h.MyLBA,
		AlternateLBA:   h.AlternateLBA,
		FirstUsableLBA: h.FirstUsable,
		LastUsableLBA:  h.LastUsable,
		DiskGUID:       gpt.FormatGUID(h.DiskGUID[:]),
		EntryCount:     h.EntryCount,
		EntrySize:      h.EntrySize,
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
	if h.EntriesLBA < 2 && lba == 1 {
		return nil, fmt.Errorf("%s: partition entries at LBA %d overlap the MBR or header", where, h.EntriesLBA)
	}
	var diskSectors uint64
	if lastLBA != 0 {
		diskSectors = lastLBA + 1
	}
	entries, err := h.ReadEntries(r, sectorSize, diskSectors)
	if err != nil {
		return nil, err
	}
	for _, e := range gpt.Entries(entries, g.EntryCount, g.EntrySize) {
		// The kernel ignores entries that end before they start or lie
		// past the end of the disk; do the same so numbering stays aligned.
		if e.LastLBA < e.FirstLBA || (lastLBA != 0 && e.LastLBA > lastLBA) {
			continue
		}
		g.Partitions = append(g.Partitions, GPTPartition{Number: e.Slot + 1, Entry: e})
	}
	return g, nil
}
