package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/disk"
)

// TestEditGPT: the hostile tables the attack scenarios write keep valid CRCs (the strict
// parser gets past them) and carry exactly the defect each scenario is about.
func TestEditGPT(t *testing.T) {
	needTool(t, "mkfs.ext4")
	tree := writeTree(t, map[string]string{"sbin/init": "#!/bin/true\n"})
	build := func(t *testing.T) *DiskImage {
		img, err := BuildDisk(context.Background(), DiskRecipe{Path: filepath.Join(t.TempDir(), "disk.raw"),
			ESPSize: 8 * MiB, Root: RootSpec{Tree: tree}, FreeSpace: 64 * MiB})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	read := func(t *testing.T, img *DiskImage) error {
		f, err := os.Open(img.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = disk.ReadTable(f, 512, img.Size)
		return err
	}
	rootFirst := func(img *DiskImage) uint64 { return uint64(img.Root.Start / 512) }
	tests := []struct {
		name string
		both bool
		edit func(img *DiskImage) func(h *GPTHeader, entries []byte) error
		want string
	}{
		{"overlap", true, func(img *DiskImage) func(*GPTHeader, []byte) error {
			return func(_ *GPTHeader, e []byte) error {
				return PutGPTEntry(e, 2, GPTEntry{TypeGUID: TypeLinuxData, UniqueGUID: "0badc0de-0000-4000-8000-000000000003",
					FirstLBA: rootFirst(img) + 2048, LastLBA: rootFirst(img) + 4095, Name: "decoy"})
			}
		}, `entry 3 ("decoy", LBA`},
		{"beyond the end", true, func(img *DiskImage) func(*GPTHeader, []byte) error {
			return func(_ *GPTHeader, e []byte) error {
				return PutGPTEntry(e, 2, GPTEntry{TypeGUID: TypeLinuxData, UniqueGUID: "0badc0de-0000-4000-8000-000000000004",
					FirstLBA: uint64(img.FreeStart / 512), LastLBA: uint64(img.Size/512) + 100000, Name: "beyond"})
			}
		}, "ends beyond the device's last LBA"},
		{"claims a larger disk", false, func(img *DiskImage) func(*GPTHeader, []byte) error {
			return func(h *GPTHeader, _ []byte) error { h.AlternateLBA += 1 << 21; return nil }
		}, "the GPT describes a disk of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := build(t)
			if err := read(t, img); err != nil {
				t.Fatalf("untouched table refused: %v", err)
			}
			if err := EditGPT(img.Path, tt.both, tt.edit(img)); err != nil {
				t.Fatal(err)
			}
			err := read(t, img)
			if !errors.Is(err, disk.ErrInvalidTable) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "CRC32") {
				t.Errorf("edited table: %v, want an invalid-GPT error with %q", err, tt.want)
			}
		})
	}
}
