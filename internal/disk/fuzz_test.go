package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"testing"

	diskgpt "github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// memDisk is an in-memory disk for the fuzzer.
type memDisk struct{ b []byte }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("write beyond the disk")
	}
	return copy(m.b[off:], p), nil
}

func (m *memDisk) Sync() error { return nil }

// fuzzDiskSize is the size of the disk every fuzz input is laid on: big
// enough for a table with free space. An input is the disk's head (MBR,
// primary header and entries: fuzzHead bytes) followed by its tail (backup
// entries and header), which keeps inputs small for the fuzzer.
const (
	fuzzDiskSize = 256 << 10
	fuzzHead     = 34 * 512
	fuzzTail     = 33 * 512
)

// fuzzDisk lays an input on a fresh disk.
func fuzzDisk(data []byte) *memDisk {
	d := &memDisk{b: make([]byte, fuzzDiskSize)}
	head := data[:min(len(data), fuzzHead)]
	copy(d.b, head)
	if tail := data[len(head):]; len(tail) > 0 {
		tail = tail[:min(len(tail), fuzzTail)]
		copy(d.b[fuzzDiskSize-len(tail):], tail)
	}
	return d
}

func seedImage(f *testing.F, size int64, parts []part, mangle func(path string)) {
	path := f.TempDir() + "/seed.img"
	if err := createImage(path, size, parts); err != nil {
		f.Fatal(err)
	}
	if mangle != nil {
		mangle(path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append(b[:fuzzHead:fuzzHead], b[len(b)-fuzzTail:]...))
}

// FuzzReadTable feeds arbitrary bytes as a disk (see checkTable).
func FuzzReadTable(f *testing.F) {
	seedImage(f, fuzzDiskSize, []part{{40, 99, typeESP, "esp"}, {100, 199, typeRoot, "root"}}, nil)
	seedImage(f, fuzzDiskSize, nil, nil)
	seedImage(f, fuzzDiskSize/2, []part{{34, 60, typeLinux, storageName}}, nil) // grown once padded
	seedImage(f, fuzzDiskSize, []part{{40, 99, typeESP, "e"}, {90, 120, typeRoot, "overlap"}}, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkTable(t, fuzzDisk(data))
	})
}

// FuzzTableFields is FuzzReadTable with the CRCs recomputed after the
// mutation, so the fuzzer explores the geometry and entry checks and the
// rewrite instead of stopping at the checksums.
func FuzzTableFields(f *testing.F) {
	seedImage(f, fuzzDiskSize, []part{{40, 99, typeESP, "esp"}, {100, 199, typeRoot, "root"}}, nil)
	seedImage(f, fuzzDiskSize, []part{{34, 60, typeLinux, storageName}}, nil)
	seedImage(f, fuzzDiskSize/2, []part{{40, 99, typeESP, "e"}}, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		d := fuzzDisk(data)
		for _, lba := range []int64{1, fuzzDiskSize/512 - 1} {
			sealHeader(d.b, lba)
		}
		checkTable(t, d)
	})
}

// sealHeader recomputes the entry array and header CRCs of the header at
// lba, when its fields point inside the disk.
func sealHeader(b []byte, lba int64) {
	le := binary.LittleEndian
	h := b[lba*512 : lba*512+512]
	entries, count, size := le.Uint64(h[72:80]), uint64(le.Uint32(h[80:84])), uint64(le.Uint32(h[84:88]))
	if entries < uint64(len(b))/512 && count*size <= uint64(len(b))-entries*512 && count*size <= gpt.MaxEntryArray {
		le.PutUint32(h[88:92], crc32.ChecksumIEEE(b[entries*512:entries*512+count*size]))
	}
	hs := uint64(le.Uint32(h[12:16]))
	if hs >= gpt.MinHeaderSize && hs <= 512 {
		clear(h[16:20])
		le.PutUint32(h[16:20], crc32.ChecksumIEEE(h[:hs]))
	}
}

// checkTable: ReadTable must not panic and, when it accepts a table, the
// free ranges must lie in the usable area and miss every entry, and a
// rewrite with a new partition must either leave the disk unchanged (error)
// or produce a valid table that keeps every old entry byte for byte.
func checkTable(t *testing.T, disk *memDisk) {
	tb, err := ReadTable(disk, 512, fuzzDiskSize)
	if err != nil {
		return
	}
	used := func(lba uint64) bool {
		for _, e := range tb.Entries {
			if e.FirstLBA <= lba && lba <= e.LastLBA {
				return true
			}
		}
		return false
	}
	prevEnd := uint64(0)
	for _, r := range tb.FreeRanges() {
		if r.First > r.Last || r.First < tb.FirstUsable || r.Last > tb.UsableEnd() || r.First < prevEnd {
			t.Fatalf("free range %v outside usable %d-%d or unsorted", r, tb.FirstUsable, tb.UsableEnd())
		}
		if used(r.First) || used(r.Last) {
			t.Fatalf("free range %v overlaps an entry", r)
		}
		prevEnd = r.Last + 1
	}
	r, ok := tb.LargestFree(4096)
	slot := tb.FreeSlot()
	if !ok || slot < 0 {
		return
	}
	if r.First%8 != 0 || (r.Last+1)%8 != 0 || used(r.First) || used(r.Last) {
		t.Fatalf("largest free range %v is unaligned or used", r)
	}
	before := bytes.Clone(disk.b)
	newEntry := &diskgpt.Partition{Index: slot + 1, Start: r.First, End: r.Last, Type: diskgpt.Type("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
		Name: storageName, GUID: "11111111-2222-4333-8444-555555555555"}
	info := &diskInfo{size: fuzzDiskSize, sectorSize: 512}
	if err := writeTable(disk, tb, info, newEntry); err != nil {
		if !bytes.Equal(before, disk.b) {
			t.Fatalf("writeTable failed (%v) after changing the disk", err)
		}
		return
	}
	nt, err := ReadTable(disk, 512, fuzzDiskSize)
	if err != nil {
		t.Fatalf("the written table does not read back: %v", err)
	}
	if len(nt.Entries) != len(tb.Entries)+1 || nt.Grown() {
		t.Fatalf("written table: %d entries (had %d), grown %v", len(nt.Entries), len(tb.Entries), nt.Grown())
	}
	for _, e := range tb.Entries {
		found := false
		for _, n := range nt.Entries {
			found = found || n.Raw == e.Raw
		}
		if !found {
			t.Fatalf("%s changed", e.describe())
		}
	}
}
