package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/luks2"
)

func storageRequest() Request {
	return Request{Label: storageName, TypeGUID: typeLinux, MinSize: 16 * MiB}
}

func fixedUUID(u string) func() (string, error) {
	return func() (string, error) { return u, nil }
}

// TestPrepareNewPartition adds the storage partition to a disk with an ESP,
// a root and free space: aligned, labelled, typed, other entries untouched,
// and the table valid for sgdisk, go-diskfs and our reader.
func TestPrepareNewPartition(t *testing.T) {
	tests := []struct {
		name      string
		size      int64
		parts     []part
		wantStart int64
		wantSize  int64
		wantSlot  int
	}{
		{"free space after root", 128 * MiB, espRootParts, 25 * MiB, 128*MiB - 25*MiB - MiB, 2},
		{
			// An unaligned gap before the root loses its unaligned head.
			"largest gap in the middle", 256 * MiB,
			[]part{{2048, 4095, typeESP, "esp"}, {100000, 120000, typeRoot, "root"}, {400000, 450000, typeRoot, "b"}},
			59 * MiB, 195*MiB - 59*MiB, 3,
		},
		{
			// The first free slot is reused, not appended after the last.
			"hole in the entry array", 128 * MiB,
			[]part{{2048, 4095, typeESP, "esp"}, {0, 0, "", ""}, {4096, 8191, typeRoot, "root"}},
			4 * MiB, 128*MiB - 4*MiB - MiB, 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var parts []part
			for _, p := range tt.parts {
				if p.typ != "" {
					parts = append(parts, p)
				}
			}
			img := makeImage(t, tt.size, parts)
			if tt.name == "hole in the entry array" {
				// move entry 2 to slot 3, leaving slot 2 empty
				editEntries(t, img, func(e []byte) { copy(e[256:384], e[128:256]); clear(e[128:256]) })
			}
			before := readTableFile(t, img)
			p := &Preparer{NewUUID: fixedUUID("11111111-2222-4333-8444-555555555555")}
			got, err := p.Prepare(context.Background(), img, storageRequest())
			if err != nil {
				t.Fatal(err)
			}
			if got.Start != tt.wantStart || got.Size != tt.wantSize || got.Number != tt.wantSlot+1 || got.Reused || got.Repaired {
				t.Errorf("partition %+v, want start %d size %d number %d", got, tt.wantStart, tt.wantSize, tt.wantSlot+1)
			}
			after := readTableFile(t, img)
			if len(after.Entries) != len(before.Entries)+1 {
				t.Fatalf("%d entries after, %d before", len(after.Entries), len(before.Entries))
			}
			for _, e := range before.Entries {
				found := false
				for _, a := range after.Entries {
					found = found || (a.Slot == e.Slot && a.Raw == e.Raw)
				}
				if !found {
					t.Errorf("%s changed", e.describe())
				}
			}
			var n *Entry
			for i := range after.Entries {
				if after.Entries[i].Slot == tt.wantSlot {
					n = &after.Entries[i]
				}
			}
			if n == nil || n.Name != storageName || n.TypeGUID != typeLinux || n.UniqueGUID != "11111111-2222-4333-8444-555555555555" ||
				int64(n.FirstLBA)*512%MiB != 0 || int64(n.LastLBA+1)*512%MiB != 0 {
				t.Errorf("new entry %+v", n)
			}
			if after.BackupProblem != "" {
				t.Error(after.BackupProblem)
			}
			sgdiskVerify(t, img)
		})
	}
}

// TestPrepareGrownDisk: a table made for 64 MiB on a 160 MiB device is
// repaired (backup header at the new end) and the new space is used.
func TestPrepareGrownDisk(t *testing.T) {
	img := makeImage(t, 64*MiB, espRootParts[:1])
	if err := os.Truncate(img, 160*MiB); err != nil {
		t.Fatal(err)
	}
	if tb := readTableFile(t, img); !tb.Grown() || tb.AlternateLBA != 64*2048-1 {
		t.Fatalf("before: grown %v, backup at %d", tb.Grown(), tb.AlternateLBA)
	}
	got, err := (&Preparer{}).Prepare(context.Background(), img, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Repaired || got.Start != 9*MiB || got.Size != 160*MiB-10*MiB {
		t.Errorf("partition %+v: want repaired, start 9 MiB, size 150 MiB", got)
	}
	tb := readTableFile(t, img)
	if tb.Grown() || tb.AlternateLBA != 160*2048-1 || tb.LastUsable != 160*2048-34 || tb.BackupProblem != "" {
		t.Errorf("after: backup at %d, last usable %d, backup problem %q", tb.AlternateLBA, tb.LastUsable, tb.BackupProblem)
	}
	mbr := make([]byte, 512)
	f, _ := os.Open(img)
	f.ReadAt(mbr, 0)
	f.Close()
	if n := binary.LittleEndian.Uint32(mbr[446+12:]); n != 160*2048-1 {
		t.Errorf("protective MBR covers %d sectors, want %d", n, 160*2048-1)
	}
	sgdiskVerify(t, img)
}

// TestPrepareReuse: the second boot finds the first boot's partition by its
// label, destroys its LUKS2 header and writes nothing to the table.
func TestPrepareReuse(t *testing.T) {
	img := makeImage(t, 128*MiB, espRootParts)
	first, err := (&Preparer{}).Prepare(context.Background(), img, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := &window{f: f, off: first.Start, size: first.Size}
	key := make([]byte, 64)
	if _, err := luks2.Format(w, first.Size, luks2.Options{VolumeKey: key, Label: "previous boot"}); err != nil {
		t.Fatal(err)
	}
	if _, err := luks2.Read(w); err != nil {
		t.Fatalf("the header written as the previous boot does not read back: %v", err)
	}
	tableBefore := make([]byte, 34*512)
	f.ReadAt(tableBefore, 0)

	// Keep finds the partition and leaves its header for the caller.
	keep := storageRequest()
	keep.Keep = true
	kept, err := (&Preparer{}).Prepare(context.Background(), img, keep)
	if err != nil {
		t.Fatal(err)
	}
	if !kept.Reused || kept.PartUUID != first.PartUUID {
		t.Errorf("Keep got %+v, first %+v", kept, first)
	}
	if _, err := luks2.Read(w); err != nil {
		t.Fatalf("Keep destroyed the previous boot's header: %v", err)
	}

	second, err := (&Preparer{}).Prepare(context.Background(), img, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !second.Reused || second.PartUUID != first.PartUUID || second.Start != first.Start || second.Size != first.Size {
		t.Errorf("second boot got %+v, first %+v", second, first)
	}
	if _, err := luks2.Read(w); err == nil {
		t.Error("the previous boot's LUKS2 header is still readable after reuse")
	}
	meta := make([]byte, luks2.DefaultDataOffset)
	w.ReadAt(meta, 0)
	for i, b := range meta {
		if b != 0 {
			t.Fatalf("byte %d of the old metadata region is %#x, want 0", i, b)
		}
	}
	tableAfter := make([]byte, 34*512)
	f.ReadAt(tableAfter, 0)
	if string(tableAfter) != string(tableBefore) {
		t.Error("reuse rewrote the GPT")
	}
	f.Close()
}

// TestPrepareRefuses covers every case where nothing may be written: no
// space, and tables this package does not trust. The image hash is checked.
func TestPrepareRefuses(t *testing.T) {
	full := []part{{2048, 2048 + 8*2048 - 1, typeESP, "esp"}, {2048 + 8*2048, 64*2048 - 34, typeRoot, "root"}}
	tests := []struct {
		name    string
		size    int64
		parts   []part
		req     func(*Request)
		mangle  func(t *testing.T, img string)
		wantErr error
		wantMsg string
	}{
		{name: "no free space", size: 64 * MiB, parts: full, wantErr: ErrNoSpace, wantMsg: "largest aligned free range is 0 bytes"},
		{name: "free space below min_size", size: 64 * MiB, parts: espRootParts,
			req: func(r *Request) { r.MinSize = 64 * MiB }, wantErr: ErrNoSpace, wantMsg: "requires 67108864 bytes"},
		{name: "free space below one aligned MiB", size: 26 * MiB, parts: espRootParts, wantErr: ErrNoSpace},
		{name: "overlapping entries", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable, wantMsg: `entry 2 ("root", LBA 18000-51199) overlaps entry 1 ("esp"`,
			mangle: func(t *testing.T, img string) {
				editEntries(t, img, func(e []byte) { binary.LittleEndian.PutUint64(e[128+32:], 18000) })
			}},
		{name: "entry beyond the usable range", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable, wantMsg: "outside the usable LBAs 34-131038",
			mangle: func(t *testing.T, img string) {
				editEntries(t, img, func(e []byte) { binary.LittleEndian.PutUint64(e[128+40:], 131070) })
			}},
		{name: "entry ending before it starts", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable, wantMsg: "ends before it starts",
			mangle: func(t *testing.T, img string) {
				editEntries(t, img, func(e []byte) { binary.LittleEndian.PutUint64(e[128+40:], 100) })
			}},
		{name: "table for a bigger disk", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable,
			wantMsg: "describes a disk of 131072 sectors (67108864 bytes) but the device has 65536 sectors (33554432 bytes)",
			mangle: func(t *testing.T, img string) {
				if err := os.Truncate(img, 32*MiB); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "damaged primary header", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable, wantMsg: "backup header at LBA 131071 is valid",
			mangle: func(t *testing.T, img string) {
				f, _ := os.OpenFile(img, os.O_RDWR, 0)
				f.WriteAt([]byte{0xff}, 512+40)
				f.Close()
			}},
		{name: "no protective MBR", size: 64 * MiB, parts: espRootParts, wantErr: ErrNoGPT,
			mangle: func(t *testing.T, img string) {
				f, _ := os.OpenFile(img, os.O_RDWR, 0)
				f.WriteAt([]byte{0, 0}, 510)
				f.Close()
			}},
		{name: "entries not at LBA 2", size: 64 * MiB, parts: espRootParts, wantErr: ErrInvalidTable, wantMsg: "primary entry array at LBA 3",
			mangle: func(t *testing.T, img string) {
				b, _ := os.ReadFile(img)
				copy(b[3*512:35*512], b[2*512:34*512])
				os.WriteFile(img, b, 0o644)
				editHeader(t, img, func(h []byte) { binary.LittleEndian.PutUint64(h[72:], 3); binary.LittleEndian.PutUint64(h[40:], 35) })
			}},
		{name: "our label with another type", size: 64 * MiB,
			parts:   append(append([]part(nil), espRootParts...), part{52 * 2048, 60 * 2048, typeRoot, storageName}),
			wantMsg: "has the storage label but type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709"},
		{name: "our label below min_size", size: 64 * MiB,
			parts:   append(append([]part(nil), espRootParts...), part{52 * 2048, 60*2048 - 1, typeLinux, storageName}),
			wantMsg: "has the storage label but is 8388608 bytes (8 MiB), storage.min_size requires 16777216 bytes (16 MiB); refusing to reuse it"},
		{name: "our label twice", size: 64 * MiB,
			parts:   []part{{2048, 4095, typeLinux, storageName}, {4096, 8191, typeLinux, storageName}},
			wantErr: ErrInvalidTable, wantMsg: "both carry the storage label"},
		{name: "a name go-diskfs cannot round-trip", size: 64 * MiB, parts: espRootParts, wantMsg: "would change (go-diskfs does not round-trip it)",
			mangle: func(t *testing.T, img string) {
				// an unpaired surrogate after "esp": decoding replaces it
				editEntries(t, img, func(e []byte) { binary.LittleEndian.PutUint16(e[56+6:], 0xd800) })
			}},
		{name: "label too long", size: 64 * MiB, parts: espRootParts, req: func(r *Request) { r.Label = strings.Repeat("x", 37) }, wantMsg: "expected 1 to 36 UTF-16 code units"},
		{name: "bad type GUID", size: 64 * MiB, parts: espRootParts, req: func(r *Request) { r.TypeGUID = "linux" }, wantMsg: `"linux" is not a UUID`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := makeImage(t, tt.size, tt.parts)
			if tt.mangle != nil {
				tt.mangle(t, img)
			}
			before := fileHash(t, img)
			req := storageRequest()
			if tt.req != nil {
				tt.req(&req)
			}
			got, err := (&Preparer{}).Prepare(context.Background(), img, req)
			if err == nil {
				t.Fatalf("Prepare succeeded: %+v", got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
			if fileHash(t, img) != before {
				t.Error("the image changed")
			}
			var nse *NoSpaceError
			if errors.Is(tt.wantErr, ErrNoSpace) && !errors.As(err, &nse) {
				t.Errorf("%T is not a *NoSpaceError", err)
			}
		})
	}
}

// TestPrepareAllSlotsUsed: a table whose 128 entries are all used cannot
// take the partition, whatever the free space.
func TestPrepareAllSlotsUsed(t *testing.T) {
	var parts []part
	for i := uint64(0); i < 128; i++ {
		parts = append(parts, part{2048 + i*8, 2048 + i*8 + 7, typeLinux, "p"})
	}
	img := makeImage(t, 128*MiB, parts)
	before := fileHash(t, img)
	_, err := (&Preparer{}).Prepare(context.Background(), img, storageRequest())
	var nse *NoSpaceError
	if !errors.As(err, &nse) || !strings.Contains(err.Error(), "all 128 GPT entries are in use") {
		t.Fatalf("error %v, want all entries in use", err)
	}
	if fileHash(t, img) != before {
		t.Error("the image changed")
	}
}

// TestPrepareSgdiskImage reads a table written by sgdisk, as image builders
// other than go-diskfs make them.
func TestPrepareSgdiskImage(t *testing.T) {
	sgdisk := needTool(t, "sgdisk")
	img := makeImage(t, 96*MiB, nil)
	os.WriteFile(img, make([]byte, 96*MiB), 0o644)
	out, err := execOut(sgdisk, "-o", "-n", "1:2048:+8M", "-t", "1:"+typeESP, "-c", "1:ESP",
		"-n", "2:0:+16M", "-t", "2:"+typeRoot, "-c", "2:root-x86-64", img)
	if err != nil {
		t.Fatalf("sgdisk: %v\n%s", err, out)
	}
	got, err := (&Preparer{}).Prepare(context.Background(), img, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got.Number != 3 || got.Start != 25*MiB || got.Size != 96*MiB-26*MiB {
		t.Errorf("partition %+v", got)
	}
	sgdiskVerify(t, img)
	out, _ = execOut(sgdisk, "-i", "3", img)
	if !strings.Contains(strings.ToLower(string(out)), storageName) || !strings.Contains(strings.ToLower(string(out)), typeLinux) {
		t.Errorf("sgdisk -i 3:\n%s", out)
	}
}

// TestPrepareRefusesESP: the ESP the boot came from is never reused, whatever label and type
// the host gave it; nothing is written.
func TestPrepareRefusesESP(t *testing.T) {
	img := makeImage(t, 64*MiB, append(append([]part(nil), espRootParts...), part{52 * 2048, 60*2048 - 1, typeLinux, storageName}))
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	tab, err := ReadTable(f, 512, st.Size())
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	esp := tab.Entries[len(tab.Entries)-1].UniqueGUID
	before, _ := os.ReadFile(img)
	req := storageRequest()
	req.ESPPartUUID = esp
	_, err = (&Preparer{}).Prepare(context.Background(), img, req)
	if err == nil || !strings.Contains(err.Error(), "has the storage label but is the ESP this boot was loaded from (LoaderDevicePartUUID "+esp+")") {
		t.Fatalf("err = %v", err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Error("the image changed")
	}
}
