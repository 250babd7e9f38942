package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// makeGPT writes a disk image with two partitions through go-diskfs, an
// implementation independent of readGPT.
func makeGPT(t testing.TB) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.raw")
	d, err := diskfs.Create(path, 8<<20, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	tbl := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, Partitions: []*gpt.Partition{
		{Index: 1, Start: 2048, End: 4095, Type: gpt.EFISystemPartition, GUID: "6B1D4A53-3C8E-4C55-9F0C-7D2A1E5C0E5F"},
		{Index: 2, Start: 4096, End: 8191, Type: gpt.LinuxRootX86_64, GUID: "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0b01"},
	}}
	if err := d.Partition(tbl); err != nil {
		t.Fatal(err)
	}
	d.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadGPT(t *testing.T) {
	img := makeGPT(t)
	entries, err := readGPT(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	want := []gptEntry{
		{1, "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0e5f", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"},
		{2, "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0b01", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"},
	}
	if len(entries) != len(want) {
		t.Fatalf("entries %+v, want %+v", entries, want)
	}
	for i := range want {
		if entries[i] != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, entries[i], want[i])
		}
	}

	corrupt := func(off int, v []byte) []byte {
		b := append([]byte(nil), img...)
		copy(b[off:], v)
		return b
	}
	u32 := func(v uint32) []byte { b := make([]byte, 4); binary.LittleEndian.PutUint32(b, v); return b }
	bad := []struct {
		name string
		img  []byte
		want string
	}{
		{"no signature", corrupt(512, []byte("NOT PART")), "no GPT signature"},
		{"zero entries", corrupt(512+80, u32(0)), "entry count 0"},
		{"huge entry count", corrupt(512+80, u32(1<<30)), "entry count"},
		{"small entry size", corrupt(512+84, u32(64)), "entry size 64"},
		{"truncated", img[:600], "read"},
		{"array beyond the end", corrupt(512+72, []byte{0xff, 0xff, 0xff, 0, 0, 0, 0, 0}), "read 128 GPT entries"},
	}
	for _, tt := range bad {
		if _, err := readGPT(bytes.NewReader(tt.img)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func FuzzReadGPT(f *testing.F) {
	// A compact seed: the header with the entry count cut to 4, and those entries.
	seed := append([]byte(nil), makeGPT(f)[:1024+4*128]...)
	binary.LittleEndian.PutUint32(seed[512+80:], 4)
	f.Add(seed)
	f.Add([]byte("EFI PART"))
	f.Fuzz(func(t *testing.T, img []byte) {
		entries, err := readGPT(bytes.NewReader(img))
		if err != nil {
			return
		}
		for _, e := range entries {
			if e.Index < 1 || e.Index > gptMaxEntries || len(e.PartUUID) != 36 || len(e.TypeUUID) != 36 {
				t.Fatalf("bad entry %+v", e)
			}
		}
	})
}

func TestParseArgs(t *testing.T) {
	got := parseArgs("console=ttyS0 root=PARTUUID=ab init=\"/sbin/my init\" ro root=/dev/vda2\n")
	want := map[string]string{"console": "ttyS0", "root": "/dev/vda2", "init": "/sbin/my init", "ro": ""}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("parsed %v", got)
	}
}

func FuzzSplitCmdline(f *testing.F) {
	f.Add(`root=PARTUUID=x init="/a b" standin.timeout=5`)
	f.Fuzz(func(t *testing.T, s string) {
		for _, w := range splitCmdline(s) {
			if strings.Contains(w, `"`) {
				t.Fatalf("quote kept in %q", w)
			}
		}
	})
}
