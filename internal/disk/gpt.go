package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

const (
	gptEntrySize    = 128 // the only entry size this package rewrites
	gptMaxNameUnits = gpt.NameBytes / 2
)

// ErrNoGPT is wrapped when the disk has no protective MBR or no GPT header.
var ErrNoGPT = gpt.ErrNoGPT

// ErrInvalidTable is wrapped by every error about a GPT this package refuses
// to modify: damaged headers, entries out of range or overlapping, a table
// describing a bigger disk than the one present.
var ErrInvalidTable = errors.New("invalid GPT")

// Table is a validated GPT as read from a disk: the primary header, which
// must be intact, and its used entries.
type Table struct {
	SectorSize   int
	DiskSectors  uint64 // sectors of the device the table was read from
	AlternateLBA uint64 // where the primary header says the backup header is
	FirstUsable  uint64
	LastUsable   uint64
	EntriesLBA   uint64
	EntryCount   uint32
	EntrySize    uint32
	DiskGUID     string
	// Entries are the used entries in slot order.
	Entries []Entry
	// BackupProblem says why the backup header at AlternateLBA is not a
	// valid copy of the primary; empty when it is. A damaged backup is
	// rewritten with the next table write, it does not stop a write.
	BackupProblem string
	// ProtectiveMBRSectors is the size field of the protective MBR entry.
	ProtectiveMBRSectors uint32
	protectiveMBRSlot    int
}

// Entry is one used GPT entry.
type Entry struct {
	gpt.Entry
	Raw [gptEntrySize]byte // the entry as stored, compared byte for byte after a rewrite
}

// Number is the kernel's partition number of the entry.
func (e *Entry) Number() int { return e.Slot + 1 }

func (e *Entry) describe() string {
	return fmt.Sprintf("entry %d (%q, LBA %d-%d)", e.Number(), e.Name, e.FirstLBA, e.LastLBA)
}

// LastLBA is the device's last sector.
func (t *Table) LastLBA() uint64 { return t.DiskSectors - 1 }

// Grown reports whether the device is bigger than the table says: the backup
// header is not in the last sector, as after a cloud disk resize.
func (t *Table) Grown() bool { return t.AlternateLBA < t.LastLBA() }

// arraySectors is the size of one entry array in sectors.
func (t *Table) arraySectors() uint64 {
	return (uint64(t.EntryCount)*uint64(t.EntrySize) + uint64(t.SectorSize) - 1) / uint64(t.SectorSize)
}

// UsableEnd is the last usable LBA once the backup header sits in the
// device's last sector: what a repair of a grown disk makes available.
func (t *Table) UsableEnd() uint64 {
	return t.LastLBA() - t.arraySectors() - 1
}

// FreeSlot returns the first unused entry slot, or -1 when all are used.
func (t *Table) FreeSlot() int {
	used := make(map[int]bool, len(t.Entries))
	for _, e := range t.Entries {
		used[e.Slot] = true
	}
	for i := 0; i < int(t.EntryCount); i++ {
		if !used[i] {
			return i
		}
	}
	return -1
}

// ReadTable reads and validates the GPT of a device of diskSize bytes with
// the given logical sector size. It is strict: anything this package would
// not rewrite safely is an error wrapping ErrInvalidTable (or ErrNoGPT),
// naming the entries and sizes involved. Nothing is written.
func ReadTable(r io.ReaderAt, sectorSize int, diskSize int64) (*Table, error) {
	if sectorSize < 512 || sectorSize > 4096 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("%w: logical sector size %d, expected 512, 1024, 2048 or 4096", ErrInvalidTable, sectorSize)
	}
	ss := uint64(sectorSize)
	if diskSize < 0 || uint64(diskSize) < 6*ss {
		return nil, fmt.Errorf("%w: device of %d bytes is too small for a GPT", ErrNoGPT, diskSize)
	}
	t := &Table{SectorSize: sectorSize, DiskSectors: uint64(diskSize) / ss}

	slot, sectors, err := gpt.ProtectiveMBR(r)
	if err != nil {
		return nil, err
	}
	t.protectiveMBRSlot, t.ProtectiveMBRSectors = slot, sectors

	hdr, entries, err := readHeader(r, t, 1)
	if err != nil {
		if backup, _, berr := readHeader(r, t, t.LastLBA()); berr == nil {
			return nil, fmt.Errorf("%w: primary %v; the backup header at LBA %d is valid: repair the table with sgdisk or gdisk before cvmboot modifies this disk", ErrInvalidTable, err, backup.MyLBA)
		}
		return nil, fmt.Errorf("primary %w", err)
	}
	t.AlternateLBA = hdr.AlternateLBA
	t.FirstUsable = hdr.FirstUsable
	t.LastUsable = hdr.LastUsable
	t.EntriesLBA = hdr.EntriesLBA
	t.EntryCount = hdr.EntryCount
	t.EntrySize = hdr.EntrySize
	t.DiskGUID = gpt.FormatGUID(hdr.DiskGUID[:])

	if err := t.checkGeometry(); err != nil {
		return nil, err
	}
	if err := t.parseEntries(entries); err != nil {
		return nil, err
	}

	// The backup must mirror the primary; when it does not, the next write
	// repairs it. Only its presence and consistency are checked here.
	if b, bentries, err := readHeader(r, t, t.AlternateLBA); err != nil {
		t.BackupProblem = err.Error()
	} else if b.EntriesCRC != hdr.EntriesCRC || !bytes.Equal(bentries, entries) || b.AlternateLBA != 1 ||
		b.FirstUsable != hdr.FirstUsable || b.LastUsable != hdr.LastUsable || b.DiskGUID != hdr.DiskGUID {
		t.BackupProblem = fmt.Sprintf("backup GPT header at LBA %d does not match the primary", t.AlternateLBA)
	}
	return t, nil
}

// readHeader reads the header at lba and its entry array, as gpt does, and refuses what
// this package would not rewrite: another revision, entry size or array layout.
func readHeader(r io.ReaderAt, t *Table, lba uint64) (*gpt.Header, []byte, error) {
	where := fmt.Sprintf("GPT header at LBA %d", lba)
	ss := uint64(t.SectorSize)
	if lba >= t.DiskSectors {
		return nil, nil, fmt.Errorf("%w: %s is beyond the device's last LBA %d", ErrInvalidTable, where, t.LastLBA())
	}
	invalid := func(err error) error {
		if errors.Is(err, ErrNoGPT) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrInvalidTable, err)
	}
	h, err := gpt.ReadHeader(r, t.SectorSize, lba)
	if err != nil {
		return nil, nil, invalid(err)
	}
	if h.Revision != gpt.Revision {
		return nil, nil, fmt.Errorf("%w: %s: revision %#08x, expected %#08x", ErrInvalidTable, where, h.Revision, gpt.Revision)
	}
	if h.EntrySize != gptEntrySize {
		return nil, nil, fmt.Errorf("%w: %s: partition entry size %d, expected %d", ErrInvalidTable, where, h.EntrySize, gptEntrySize)
	}
	arrayBytes := uint64(h.EntryCount) * uint64(h.EntrySize)
	if h.EntryCount == 0 || arrayBytes > gpt.MaxEntryArray || arrayBytes%ss != 0 {
		return nil, nil, fmt.Errorf("%w: %s: %d entries of %d bytes, expected 1 to %d entries filling whole %d-byte sectors",
			ErrInvalidTable, where, h.EntryCount, h.EntrySize, gpt.MaxEntryArray/gptEntrySize, ss)
	}
	if h.EntriesLBA < 2 || h.EntriesLBA > math.MaxInt64/ss || h.EntriesLBA+arrayBytes/ss > t.DiskSectors {
		return nil, nil, fmt.Errorf("%w: %s: entry array at LBA %d (%d sectors) is outside the device's %d sectors",
			ErrInvalidTable, where, h.EntriesLBA, arrayBytes/ss, t.DiskSectors)
	}
	entries, err := h.ReadEntries(r, t.SectorSize, t.DiskSectors)
	if err != nil {
		return nil, nil, invalid(err)
	}
	return h, entries, nil
}

// checkGeometry checks the primary header against the device.
func (t *Table) checkGeometry() error {
	ss := uint64(t.SectorSize)
	if t.AlternateLBA > t.LastLBA() {
		return fmt.Errorf("%w: the GPT describes a disk of %d sectors (%d bytes) but the device has %d sectors (%d bytes): backup header at LBA %d is beyond the last LBA %d",
			ErrInvalidTable, t.AlternateLBA+1, (t.AlternateLBA+1)*ss, t.DiskSectors, t.DiskSectors*ss, t.AlternateLBA, t.LastLBA())
	}
	arr := t.arraySectors()
	if t.EntriesLBA != 2 {
		return fmt.Errorf("%w: primary entry array at LBA %d, expected LBA 2 (the only layout cvmboot rewrites)", ErrInvalidTable, t.EntriesLBA)
	}
	if t.AlternateLBA < 2+2*arr+1 {
		return fmt.Errorf("%w: backup header at LBA %d leaves no room for two %d-sector entry arrays", ErrInvalidTable, t.AlternateLBA, arr)
	}
	if t.FirstUsable < t.EntriesLBA+arr || t.FirstUsable > t.LastUsable || t.LastUsable > t.AlternateLBA-arr-1 {
		return fmt.Errorf("%w: usable LBAs %d-%d, expected within %d-%d (entry arrays of %d sectors, backup header at LBA %d)",
			ErrInvalidTable, t.FirstUsable, t.LastUsable, t.EntriesLBA+arr, t.AlternateLBA-arr-1, arr, t.AlternateLBA)
	}
	return nil
}

// parseEntries decodes the used entries and rejects entries outside the
// usable range and overlapping entries.
func (t *Table) parseEntries(entries []byte) error {
	var problems []string
	for _, ge := range gpt.Entries(entries, t.EntryCount, gptEntrySize) {
		e := Entry{Entry: ge}
		copy(e.Raw[:], entries[ge.Slot*gptEntrySize:])
		switch {
		case e.FirstLBA > e.LastLBA:
			problems = append(problems, fmt.Sprintf("%s ends before it starts", e.describe()))
		case e.LastLBA > t.LastLBA():
			problems = append(problems, fmt.Sprintf("%s ends beyond the device's last LBA %d (%d bytes)", e.describe(), t.LastLBA(), t.DiskSectors*uint64(t.SectorSize)))
		case e.FirstLBA < t.FirstUsable || e.LastLBA > t.LastUsable:
			problems = append(problems, fmt.Sprintf("%s is outside the usable LBAs %d-%d", e.describe(), t.FirstUsable, t.LastUsable))
		}
		t.Entries = append(t.Entries, e)
	}
	sorted := make([]*Entry, len(t.Entries))
	for i := range t.Entries {
		sorted[i] = &t.Entries[i]
	}
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].FirstLBA < sorted[b].FirstLBA })
	// reach is the entry reaching furthest so far: an entry overlaps an
	// earlier one exactly when it starts before that one ends.
	var reach *Entry
	for _, cur := range sorted {
		if cur.FirstLBA > cur.LastLBA {
			continue // already reported
		}
		if reach != nil && cur.FirstLBA <= reach.LastLBA {
			problems = append(problems, fmt.Sprintf("%s overlaps %s", cur.describe(), reach.describe()))
		}
		if reach == nil || cur.LastLBA > reach.LastLBA {
			reach = cur
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidTable, strings.Join(problems, "; "))
	}
	return nil
}

// Range is a run of free sectors, First to Last inclusive.
type Range struct{ First, Last uint64 }

// Sectors is the length of the range.
func (r Range) Sectors() uint64 { return r.Last - r.First + 1 }

// FreeRanges lists the unallocated runs between FirstUsable and UsableEnd
// (the usable end after a repair, so a grown disk's new space counts).
func (t *Table) FreeRanges() []Range {
	sorted := append([]Entry(nil), t.Entries...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].FirstLBA < sorted[b].FirstLBA })
	var out []Range
	next := t.FirstUsable
	end := t.UsableEnd()
	for _, e := range sorted {
		if e.FirstLBA > next {
			out = append(out, Range{next, min(e.FirstLBA-1, end)})
		}
		next = max(next, e.LastLBA+1)
	}
	if next <= end {
		out = append(out, Range{next, end})
	}
	return out
}

// LargestFree returns the largest free range once its start is rounded up
// and its end rounded down to align bytes, and false when no range holds a
// whole aligned unit. Ties go to the range nearest the start of the disk.
func (t *Table) LargestFree(align uint64) (Range, bool) {
	ss := uint64(t.SectorSize)
	if align < ss {
		align = ss
	}
	unit := align / ss
	var best Range
	found := false
	for _, r := range t.FreeRanges() {
		first := (r.First + unit - 1) / unit * unit
		end := (r.Last + 1) / unit * unit // exclusive
		if first >= end {
			continue
		}
		c := Range{first, end - 1}
		if !found || c.Sectors() > best.Sectors() {
			best, found = c, true
		}
	}
	return best, found
}
