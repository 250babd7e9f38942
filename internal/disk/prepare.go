package disk

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	diskgpt "github.com/diskfs/go-diskfs/partition/gpt"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/gpt"
	"github.com/cvmboot/cvmboot/internal/luks2"
)

// DefaultAlign is the alignment of the new partition's start and end.
const DefaultAlign = 1 << 20

// Request describes the storage partition.
type Request struct {
	// Label is the GPT partition name; an earlier boot's partition is found by it.
	Label string
	// TypeGUID is the partition type (canonical UUID text, any case).
	TypeGUID string
	// MinSize is the smallest acceptable partition in bytes.
	MinSize int64
	// Align is the alignment of both ends in bytes; DefaultAlign when zero.
	Align int64
	// ESPPartUUID is the PARTUUID of the ESP the firmware booted from (LoaderDevicePartUUID),
	// lower case; "" when unknown. It is never reused, whatever its label and type.
	ESPPartUUID string
	// Keep leaves an earlier boot's partition as it is, for a caller that reads what it
	// holds (the persistent root); it must still not be in use.
	Keep bool
}

// Partition is the storage partition Prepare made or found.
type Partition struct {
	Disk     string // the disk it is on (a /dev path, or an image file)
	Path     string // its device node; empty for image files
	Number   int    // the kernel's partition number
	PartUUID string // lowercase canonical
	Start    int64  // bytes from the start of the disk
	Size     int64  // bytes
	// Reused is set when the partition is an earlier boot's: its LUKS2
	// metadata has been destroyed.
	Reused bool
	// Repaired is set when the table was rewritten for a grown disk.
	Repaired bool
}

// ErrNoSpace is wrapped by NoSpaceError.
var ErrNoSpace = errors.New("not enough free space for the storage partition")

// NoSpaceError says the disk has no room for the partition. Nothing was
// written to the disk.
type NoSpaceError struct {
	Disk    string
	Largest int64 // bytes of the largest aligned free range (0 when none)
	Min     int64 // bytes required
	Reason  string
}

func (e *NoSpaceError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s: %s", e.Disk, e.Reason)
	}
	return fmt.Sprintf("%s: largest aligned free range is %d bytes (%d MiB), storage.min_size requires %d bytes (%d MiB)",
		e.Disk, e.Largest, e.Largest>>20, e.Min, e.Min>>20)
}

func (e *NoSpaceError) Unwrap() error { return ErrNoSpace }

// Preparer finds or makes the storage partition. The zero value works on
// /sys and /dev as PID 1 sees them.
type Preparer struct {
	Log     *zap.Logger
	SysRoot string // "/sys" when empty
	DevRoot string // "/dev" when empty
	// SectorSize overrides the logical sector size (BLKSSZGET for block
	// devices, 512 for image files).
	SectorSize int
	// Timeout bounds the wait for the new partition's node; 10 s when zero.
	Timeout time.Duration
	// Mknod creates the partition node when devtmpfs did not.
	Mknod bool
	// NewUUID returns the new partition's PARTUUID; random when nil.
	NewUUID func() (string, error)
}

func (p *Preparer) log() *zap.Logger {
	if p.Log == nil {
		return zap.NewNop()
	}
	return p.Log
}

// Prepare opens the disk at diskPath (a whole-disk /dev node or an image
// file), validates its GPT and returns the storage partition: an earlier
// boot's, reused after destroying its LUKS2 metadata, or a new one over the
// largest free range. Too little space is a *NoSpaceError. A table this
// package refuses is an error wrapping ErrInvalidTable; in both cases the
// disk is unchanged.
func (p *Preparer) Prepare(ctx context.Context, diskPath string, req Request) (*Partition, error) {
	if req.Label == "" || gpt.NameUnits(req.Label) > gptMaxNameUnits {
		return nil, fmt.Errorf("partition label %q: expected 1 to %d UTF-16 code units", req.Label, gptMaxNameUnits)
	}
	wantType, err := canonicalUUID(req.TypeGUID)
	if err != nil {
		return nil, fmt.Errorf("partition type: %w", err)
	}
	if req.MinSize < 0 {
		return nil, fmt.Errorf("minimum size %d: expected >= 0", req.MinSize)
	}
	align := req.Align
	if align == 0 {
		align = DefaultAlign
	}

	f, err := os.OpenFile(diskPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening disk %s: %w", diskPath, err)
	}
	defer f.Close()
	dev, err := probeDisk(f, diskPath, p.SectorSize)
	if err != nil {
		return nil, err
	}
	if align <= 0 || align%int64(dev.sectorSize) != 0 {
		return nil, fmt.Errorf("alignment %d: expected a positive multiple of the %d-byte sector size of %s", align, dev.sectorSize, diskPath)
	}
	t, err := ReadTable(f, dev.sectorSize, dev.size)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", diskPath, err)
	}
	log := p.log().With(zap.String("disk", diskPath))
	if t.BackupProblem != "" {
		log.Warn("backup GPT is not a valid copy of the primary; the next table write replaces it", zap.String("problem", t.BackupProblem))
	}

	var ours []Entry
	for _, e := range t.Entries {
		if e.Name == req.Label {
			ours = append(ours, e)
		}
	}
	if len(ours) > 1 {
		return nil, fmt.Errorf("%w: disk %s: %s and %s both carry the storage label %q; refusing to choose", ErrInvalidTable, diskPath, ours[0].describe(), ours[1].describe(), req.Label)
	}

	part := &Partition{Disk: diskPath}
	var newEntry *diskgpt.Partition
	if len(ours) == 1 {
		e := ours[0]
		if e.TypeGUID != wantType {
			return nil, fmt.Errorf("disk %s: %s has the storage label but type %s, expected %s; refusing to reuse or destroy it", diskPath, e.describe(), e.TypeGUID, wantType)
		}
		part.Number, part.PartUUID, part.Reused = e.Number(), e.UniqueGUID, true
		part.Start = int64(e.FirstLBA) * int64(dev.sectorSize)
		part.Size = int64(e.LastLBA-e.FirstLBA+1) * int64(dev.sectorSize)
		if req.ESPPartUUID != "" && e.UniqueGUID == req.ESPPartUUID {
			return nil, fmt.Errorf("disk %s: %s has the storage label but is the ESP this boot was loaded from (LoaderDevicePartUUID %s); refusing to reuse or destroy it",
				diskPath, e.describe(), req.ESPPartUUID)
		}
		if part.Size < req.MinSize {
			return nil, fmt.Errorf("disk %s: %s has the storage label but is %d bytes (%d MiB), storage.min_size requires %d bytes (%d MiB); refusing to reuse it",
				diskPath, e.describe(), part.Size, part.Size>>20, req.MinSize, req.MinSize>>20)
		}
	} else {
		r, ok := t.LargestFree(uint64(align))
		largest := int64(0)
		if ok {
			largest = int64(r.Sectors()) * int64(dev.sectorSize)
		}
		if !ok || largest < req.MinSize || largest == 0 {
			return nil, &NoSpaceError{Disk: diskPath, Largest: largest, Min: req.MinSize}
		}
		slot := t.FreeSlot()
		if slot < 0 {
			return nil, &NoSpaceError{Disk: diskPath, Largest: largest, Min: req.MinSize,
				Reason: fmt.Sprintf("all %d GPT entries are in use", t.EntryCount)}
		}
		newUUID := p.NewUUID
		if newUUID == nil {
			newUUID = randomUUID
		}
		uuid, err := newUUID()
		if err != nil {
			return nil, fmt.Errorf("generating the partition UUID: %w", err)
		}
		if uuid, err = canonicalUUID(uuid); err != nil {
			return nil, fmt.Errorf("partition UUID: %w", err)
		}
		newEntry = &diskgpt.Partition{
			Index: slot + 1,
			Start: r.First,
			End:   r.Last,
			Type:  diskgpt.Type(strings.ToUpper(wantType)),
			Name:  req.Label,
			GUID:  strings.ToUpper(uuid),
		}
		part.Number, part.PartUUID = slot+1, uuid
		part.Start = int64(r.First) * int64(dev.sectorSize)
		part.Size = largest
	}

	if dev.block {
		if err := p.busyOverlap(dev, part); err != nil {
			return nil, err
		}
	}
	if newEntry != nil || t.Grown() {
		if err := writeTable(f, t, dev, newEntry); err != nil {
			return nil, fmt.Errorf("disk %s: %w", diskPath, err)
		}
		if t.Grown() {
			part.Repaired = true
			log.Info("disk was grown: GPT repaired, backup header moved to the last sector",
				zap.Uint64("old_backup_lba", t.AlternateLBA), zap.Uint64("new_backup_lba", t.LastLBA()),
				zap.Int64("disk_bytes", dev.size))
		}
		if newEntry != nil {
			log.Info("storage partition added to the GPT", zap.Int("number", part.Number),
				zap.String("partuuid", part.PartUUID), zap.Int64("start", part.Start), zap.Int64("size", part.Size))
		}
	}

	if dev.block {
		// A new partition is unknown to the kernel; a reused one normally
		// is (the boot's scan saw it), unless the kernel could not read
		// the table.
		known := false
		if newEntry == nil {
			if known, err = p.kernelHas(dev, part.Number); err != nil {
				return nil, err
			}
		}
		if !known {
			if err := p.tellKernel(f, diskPath, part); err != nil {
				return nil, err
			}
		}
		path, err := p.waitPartition(ctx, dev, part)
		if err != nil {
			return nil, err
		}
		part.Path = path
	}

	if part.Reused && req.Keep {
		if err := p.checkUnused(dev, part); err != nil {
			return nil, err
		}
		log.Info("partition from an earlier boot found", zap.Int("number", part.Number), zap.String("partuuid", part.PartUUID), zap.Int64("size", part.Size))
	} else if part.Reused {
		if err := p.destroyOld(f, dev, part); err != nil {
			return nil, err
		}
		log.Info("storage partition from an earlier boot reused: its LUKS2 metadata was destroyed",
			zap.Int("number", part.Number), zap.String("partuuid", part.PartUUID), zap.Int64("size", part.Size))
	}
	return part, nil
}

// destroyOld overwrites the LUKS2 metadata of a reused partition, through
// its own node when it has one (so the partition's page cache and the disk
// agree), else through a window of the image file.
func (p *Preparer) destroyOld(disk *os.File, dev *diskInfo, part *Partition) error {
	var (
		target luks2.Device
		sync   func() error
	)
	if part.Path != "" {
		// Exclusively: the kernel then refuses a partition that is mounted or held by a
		// device-mapper target (this boot's root, /usr, their hash devices), which a host
		// can give the storage label and type.
		pf, err := os.OpenFile(part.Path, os.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("disk %s: partition %d (PARTUUID %s) carries the storage label but is in use (%s): refusing to reuse or destroy it",
				part.Disk, part.Number, part.PartUUID, p.inUseBy(dev, part))
		}
		if err != nil {
			return fmt.Errorf("opening reused partition %s: %w", part.Path, err)
		}
		defer pf.Close()
		target, sync = pf, pf.Sync
	} else {
		target, sync = &window{f: disk, off: part.Start, size: part.Size}, disk.Sync
	}
	if err := luks2.Destroy(target, part.Size); err != nil {
		return fmt.Errorf("destroying the LUKS2 metadata of reused partition %d on %s: %w", part.Number, part.Disk, err)
	}
	if err := sync(); err != nil {
		return fmt.Errorf("syncing reused partition %d on %s: %w", part.Number, part.Disk, err)
	}
	return nil
}

// checkUnused refuses a reused partition the kernel has in use (mounted, or held by a
// device-mapper target), as destroyOld does before writing.
func (p *Preparer) checkUnused(dev *diskInfo, part *Partition) error {
	if part.Path == "" {
		return nil
	}
	pf, err := os.OpenFile(part.Path, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("disk %s: partition %d (PARTUUID %s) carries the label but is in use (%s): refusing it",
			part.Disk, part.Number, part.PartUUID, p.inUseBy(dev, part))
	}
	if err != nil {
		return fmt.Errorf("opening partition %s: %w", part.Path, err)
	}
	return pf.Close()
}

// inUseBy says what holds a busy partition: the devices stacked on it, else a mount.
func (p *Preparer) inUseBy(dev *diskInfo, part *Partition) string {
	dir, err := p.sysDir(dev.major, dev.minor)
	if err == nil {
		if name, _, found, _ := findPartition(dir, part.Number); found {
			if hs, err := os.ReadDir(filepath.Join(dir, name, "holders")); err == nil && len(hs) > 0 {
				var names []string
				for _, h := range hs {
					names = append(names, h.Name())
				}
				return "held by " + strings.Join(names, ", ") + ", e.g. this boot's dm-verity root or /usr"
			}
		}
	}
	return "mounted or opened exclusively"
}

// window is a section of a file, readable and writable.
type window struct {
	f         *os.File
	off, size int64
}

func (w *window) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= w.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), w.size-off)
	k, err := w.f.ReadAt(b[:n], w.off+off)
	if err == nil && int64(k) < int64(len(b)) {
		err = io.EOF
	}
	return k, err
}

func (w *window) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(b)) > w.size {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the %d-byte partition", len(b), off, w.size)
	}
	return w.f.WriteAt(b, w.off+off)
}

// diskIO is what writeTable needs of the disk.
type diskIO interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// writeTable rewrites the GPT through go-diskfs: repaired for the device's
// size, with newEntry added when not nil. The result is captured, validated
// and compared with t before it is written, backup first; on any error
// nothing has been written.
func writeTable(f diskIO, t *Table, dev *diskInfo, newEntry *diskgpt.Partition) error {
	gt, err := diskgpt.Read(&capture{base: f, size: dev.size}, dev.sectorSize, dev.sectorSize)
	if err != nil {
		return fmt.Errorf("go-diskfs reading the GPT: %w", err)
	}
	if gt.RecoveredFromBackup || len(gt.Partitions) != len(t.Entries) {
		return fmt.Errorf("go-diskfs read %d entries (from backup: %v), the validator %d; refusing to write", len(gt.Partitions), gt.RecoveredFromBackup, len(t.Entries))
	}
	// The protective MBR is handled below: go-diskfs would truncate its
	// size field on disks over 2 TiB.
	gt.ProtectiveMBR = false
	if t.Grown() {
		if err := gt.Repair(uint64(dev.size)); err != nil {
			return fmt.Errorf("repairing the GPT for %d bytes: %w", dev.size, err)
		}
	}
	if newEntry != nil {
		gt.Partitions = append(gt.Partitions, newEntry)
	}
	c := &capture{base: f, size: dev.size}
	if err := gt.Write(c, dev.size); err != nil {
		return fmt.Errorf("go-diskfs serializing the GPT: %w", err)
	}
	if err := checkRewrite(t, c, dev, newEntry); err != nil {
		return fmt.Errorf("refusing to write the new GPT: %w", err)
	}
	for _, w := range c.writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			return fmt.Errorf("writing %d bytes of GPT at offset %d: %w", len(w.data), w.off, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("syncing GPT write at offset %d: %w", w.off, err)
		}
	}
	if t.Grown() {
		if err := fixProtectiveMBR(f, t); err != nil {
			return err
		}
	}
	return nil
}

// checkRewrite re-reads the captured table and compares it with the old one:
// same geometry and disk GUID, backup in the last sector, every old entry
// byte for byte, and the new entry as requested.
func checkRewrite(old *Table, c *capture, dev *diskInfo, newEntry *diskgpt.Partition) error {
	nt, err := ReadTable(c, dev.sectorSize, dev.size)
	if err != nil {
		return fmt.Errorf("the table go-diskfs made does not validate: %w", err)
	}
	switch {
	case nt.BackupProblem != "":
		return fmt.Errorf("backup of the new table: %s", nt.BackupProblem)
	case nt.AlternateLBA != nt.LastLBA():
		return fmt.Errorf("new backup header at LBA %d, expected the last LBA %d", nt.AlternateLBA, nt.LastLBA())
	case nt.DiskGUID != old.DiskGUID:
		return fmt.Errorf("disk GUID changed from %s to %s", old.DiskGUID, nt.DiskGUID)
	case nt.FirstUsable != old.FirstUsable || nt.EntryCount != old.EntryCount || nt.EntriesLBA != old.EntriesLBA:
		return fmt.Errorf("geometry changed: first usable LBA %d→%d, %d→%d entries at LBA %d→%d",
			old.FirstUsable, nt.FirstUsable, old.EntryCount, nt.EntryCount, old.EntriesLBA, nt.EntriesLBA)
	case nt.LastUsable != old.UsableEnd():
		return fmt.Errorf("new last usable LBA %d, expected %d", nt.LastUsable, old.UsableEnd())
	}
	want := len(old.Entries)
	if newEntry != nil {
		want++
	}
	if len(nt.Entries) != want {
		return fmt.Errorf("new table has %d entries, expected %d", len(nt.Entries), want)
	}
	bySlot := make(map[int]Entry, len(nt.Entries))
	for _, e := range nt.Entries {
		bySlot[e.Slot] = e
	}
	for _, e := range old.Entries {
		if n, ok := bySlot[e.Slot]; !ok || n.Raw != e.Raw {
			return fmt.Errorf("%s would change (go-diskfs does not round-trip it); other partitions are never modified", e.describe())
		}
	}
	if newEntry != nil {
		n, ok := bySlot[newEntry.Index-1]
		wantType := strings.ToLower(string(newEntry.Type))
		if !ok || n.FirstLBA != newEntry.Start || n.LastLBA != newEntry.End || n.Name != newEntry.Name ||
			n.TypeGUID != wantType || n.UniqueGUID != strings.ToLower(newEntry.GUID) || n.Attributes != 0 {
			return fmt.Errorf("new entry %d is not what was requested (%q LBA %d-%d type %s)", newEntry.Index, newEntry.Name, newEntry.Start, newEntry.End, wantType)
		}
	}
	return nil
}

// fixProtectiveMBR sets the protective MBR entry's size to the grown disk,
// when the entry is a plain protective one covering the old table.
func fixProtectiveMBR(f diskIO, t *Table) error {
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return fmt.Errorf("reading the protective MBR: %w", err)
	}
	e := mbr[446+16*t.protectiveMBRSlot:]
	old := binary.LittleEndian.Uint32(e[12:16])
	if binary.LittleEndian.Uint32(e[8:12]) != 1 || (uint64(old) != t.AlternateLBA && old != 0xFFFFFFFF) {
		return nil // hybrid or unusual MBR: leave it as it is
	}
	size := uint32(min(t.LastLBA(), 0xFFFFFFFF))
	if size == old {
		return nil
	}
	binary.LittleEndian.PutUint32(e[12:16], size)
	if _, err := f.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("writing the protective MBR: %w", err)
	}
	return f.Sync()
}

// capture is the file go-diskfs writes the table to: reads see the disk
// with the captured writes applied, writes are only recorded.
type capture struct {
	base   io.ReaderAt
	size   int64
	pos    int64
	writes []capturedWrite
}

type capturedWrite struct {
	off  int64
	data []byte
}

func (c *capture) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= c.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), c.size-off)
	k, err := c.base.ReadAt(b[:n], off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
		return k, err
	}
	for _, w := range c.writes {
		lo, hi := max(off, w.off), min(off+n, w.off+int64(len(w.data)))
		if lo < hi {
			copy(b[lo-off:hi-off], w.data[lo-w.off:hi-w.off])
		}
	}
	if n < int64(len(b)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

func (c *capture) WriteAt(b []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(b)) > c.size {
		return 0, fmt.Errorf("GPT write of %d bytes at offset %d is outside the %d-byte disk", len(b), off, c.size)
	}
	c.writes = append(c.writes, capturedWrite{off, append([]byte(nil), b...)})
	return len(b), nil
}

func (c *capture) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += c.pos
	case io.SeekEnd:
		off += c.size
	default:
		return 0, fmt.Errorf("seek: whence %d", whence)
	}
	if off < 0 {
		return 0, fmt.Errorf("seek to %d", off)
	}
	c.pos = off
	return off, nil
}

func (c *capture) Read(b []byte) (int, error) {
	n, err := c.ReadAt(b, c.pos)
	c.pos += int64(n)
	return n, err
}

func (c *capture) Stat() (os.FileInfo, error) { return nil, errors.New("capture: no file information") }
func (c *capture) Close() error               { return nil }

// randomUUID returns a random (version 4) UUID.
func randomUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	s := fmt.Sprintf("%x", b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32], nil
}

// canonicalUUID checks s is 8-4-4-4-12 hex and lowercases it.
func canonicalUUID(s string) (string, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return "", fmt.Errorf("%q is not a UUID (8-4-4-4-12 hex digits)", s)
	}
	for i, c := range s {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue
		}
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", fmt.Errorf("%q is not a UUID (8-4-4-4-12 hex digits)", s)
		}
	}
	return strings.ToLower(s), nil
}
