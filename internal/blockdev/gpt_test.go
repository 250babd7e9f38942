package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	diskfs "github.com/diskfs/go-diskfs"
	diskgpt "github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

// Type GUIDs from the Discoverable Partitions Specification (x86-64).
const (
	typeRoot       = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
	typeRootVerity = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
	typeESP        = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
	typeLinuxData  = "0fc63daf-8483-4772-8e79-3d69d8477de4"
)

// testPart describes one entry for buildGPT.
type testPart struct {
	index      int // entry index (0-based)
	typeGUID   string
	uniqueGUID string
	first      uint64
	last       uint64
	attrs      uint64
	name       string
}

// gptImage is a disk image with a GPT written by buildGPT, plus the
// offsets tests need in order to corrupt it.
type gptImage struct {
	data        []byte
	sectorSize  int
	primaryHdr  int // byte offset of the primary header
	backupHdr   int
	primaryEnts int
	entryCount  uint32
	entrySize   uint32
}

// buildGPT writes a protective MBR, primary and backup GPT with correct
// CRCs. It is the tests' independent writer, built from the UEFI layout.
func buildGPT(t testing.TB, sectorSize int, sectors uint64, parts []testPart) *gptImage {
	t.Helper()
	const entryCount, entrySize = 128, 128
	img := &gptImage{data: make([]byte, int(sectors)*sectorSize), sectorSize: sectorSize, entryCount: entryCount, entrySize: entrySize}
	entSectors := uint64((entryCount*entrySize + sectorSize - 1) / sectorSize)
	lastLBA := sectors - 1
	// Protective MBR.
	mbr := img.data[0:512]
	mbr[446+4] = 0xEE
	binary.LittleEndian.PutUint32(mbr[446+8:], 1)
	binary.LittleEndian.PutUint32(mbr[446+12:], uint32(min(lastLBA, 0xFFFFFFFF)))
	mbr[510], mbr[511] = 0x55, 0xAA

	entries := make([]byte, entryCount*entrySize)
	for _, p := range parts {
		e := entries[p.index*entrySize:]
		tg, err := gpt.ParseGUID(p.typeGUID)
		if err != nil {
			t.Fatal(err)
		}
		ug, err := gpt.ParseGUID(p.uniqueGUID)
		if err != nil {
			t.Fatal(err)
		}
		copy(e[0:16], tg[:])
		copy(e[16:32], ug[:])
		binary.LittleEndian.PutUint64(e[32:], p.first)
		binary.LittleEndian.PutUint64(e[40:], p.last)
		binary.LittleEndian.PutUint64(e[48:], p.attrs)
		for i, c := range utf16.Encode([]rune(p.name)) {
			binary.LittleEndian.PutUint16(e[56+2*i:], c)
		}
	}
	entCRC := crc32.ChecksumIEEE(entries)
	diskGUID, _ := gpt.ParseGUID("01020304-0506-0708-090a-0b0c0d0e0f10")
	writeHdr := func(myLBA, altLBA, entLBA uint64) {
		h := img.data[int(myLBA)*sectorSize:]
		copy(h, gpt.Signature)
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], myLBA)
		binary.LittleEndian.PutUint64(h[32:], altLBA)
		binary.LittleEndian.PutUint64(h[40:], 2+entSectors)
		binary.LittleEndian.PutUint64(h[48:], lastLBA-1-entSectors)
		copy(h[56:72], diskGUID[:])
		binary.LittleEndian.PutUint64(h[72:], entLBA)
		binary.LittleEndian.PutUint32(h[80:], entryCount)
		binary.LittleEndian.PutUint32(h[84:], entrySize)
		binary.LittleEndian.PutUint32(h[88:], entCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		copy(img.data[int(entLBA)*sectorSize:], entries)
	}
	writeHdr(1, lastLBA, 2)
	writeHdr(lastLBA, 1, lastLBA-entSectors)
	img.primaryHdr = sectorSize
	img.backupHdr = int(lastLBA) * sectorSize
	img.primaryEnts = 2 * sectorSize
	return img
}

// rehash recomputes the header CRC of the header at off after a test
// edited a field, so that only the intended check fails.
func (g *gptImage) rehash(off int) {
	h := g.data[off:]
	size := binary.LittleEndian.Uint32(h[12:])
	if int(size) > g.sectorSize || size < 20 {
		size = 92
	}
	binary.LittleEndian.PutUint32(h[16:], 0)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:size]))
}

var twoParts = []testPart{
	{index: 0, typeGUID: typeRoot, uniqueGUID: "a1b2c3d4-e5f6-4718-9a0b-1c2d3e4f5a6b", first: 2048, last: 4095, name: "root-x86-64"},
	{index: 2, typeGUID: typeRootVerity, uniqueGUID: "00112233-4455-6677-8899-aabbccddeeff", first: 4096, last: 4607, attrs: 1<<60 | 1<<63, name: "vérité 𝄞"},
}

func TestFormatGUIDMixedEndian(t *testing.T) {
	// The root type GUID as it is stored on disk: first three fields
	// byte-swapped, last two as written.
	onDisk := []byte{0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09}
	if got := gpt.FormatGUID(onDisk); got != typeRoot {
		t.Errorf("formatGUID = %s, want %s", got, typeRoot)
	}
	if got := gpt.FormatUUID(onDisk); got == typeRoot {
		t.Errorf("formatUUID must not byte-swap, got %s", got)
	}
	back, err := gpt.ParseGUID(strings.ToUpper(typeRoot))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back[:], onDisk) {
		t.Errorf("ParseGUID = % x, want % x", back, onDisk)
	}
	for _, bad := range []string{"", "4f68bce3e8cd4db196e7fbcaf984b709", "4f68bce3-e8cd-4db1-96e7-fbcaf984b70g", "4f68bce3-e8cd-4db1-96e7_fbcaf984b709"} {
		if _, err := gpt.ParseGUID(bad); err == nil {
			t.Errorf("gpt.ParseGUID(%q) succeeded", bad)
		}
	}
}

func TestReadGPTValid(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		img := buildGPT(t, ss, 8192, twoParts)
		g, err := ReadGPT(bytes.NewReader(img.data), ss, int64(len(img.data)))
		if err != nil {
			t.Fatalf("sector %d: %v", ss, err)
		}
		if g.FromBackup || g.HeaderLBA != 1 || g.AlternateLBA != 8191 || g.SectorSize != ss {
			t.Errorf("sector %d: header %+v", ss, g)
		}
		if g.DiskGUID != "01020304-0506-0708-090a-0b0c0d0e0f10" {
			t.Errorf("disk GUID %s", g.DiskGUID)
		}
		if len(g.Partitions) != 2 {
			t.Fatalf("got %d partitions, want 2", len(g.Partitions))
		}
		p1, p3 := g.Partition(1), g.Partition(3)
		if g.Partition(2) != nil || p1 == nil || p3 == nil {
			t.Fatalf("partition numbering wrong: %+v", g.Partitions)
		}
		if p1.TypeGUID != typeRoot || p1.UniqueGUID != "a1b2c3d4-e5f6-4718-9a0b-1c2d3e4f5a6b" || p1.Name != "root-x86-64" || p1.FirstLBA != 2048 || p1.LastLBA != 4095 {
			t.Errorf("p1 = %+v", p1)
		}
		if p3.TypeGUID != typeRootVerity || p3.Name != "vérité 𝄞" || p3.Attributes != 1<<60|1<<63 {
			t.Errorf("p3 = %+v", p3)
		}
	}
}

func TestReadGPTCorrupt(t *testing.T) {
	const ss = 512
	le32 := binary.LittleEndian.PutUint32
	tests := []struct {
		name       string
		edit       func(g *gptImage)
		wantBackup bool   // primary rejected, backup used
		wantErr    string // ReadGPT fails with this substring
		noGPT      bool   // the error wraps ErrNoGPT
	}{
		{name: "primary header CRC", edit: func(g *gptImage) { g.data[g.primaryHdr+40] ^= 1 }, wantBackup: true},
		{name: "primary entries CRC", edit: func(g *gptImage) { g.data[g.primaryEnts+20] ^= 1 }, wantBackup: true},
		{name: "primary signature gone", edit: func(g *gptImage) { g.data[g.primaryHdr] = 'X' }, wantBackup: true},
		{name: "both header CRCs", edit: func(g *gptImage) {
			g.data[g.primaryHdr+40] ^= 1
			g.data[g.backupHdr+40] ^= 1
		}, wantErr: "header CRC32"},
		{name: "no GPT at all", edit: func(g *gptImage) {
			clear(g.data[g.primaryHdr : g.primaryHdr+8])
			clear(g.data[g.backupHdr : g.backupHdr+8])
		}, wantErr: "no GPT signature", noGPT: true},
		{name: "no protective MBR", edit: func(g *gptImage) { g.data[446+4] = 0x83 }, wantErr: "0xee", noGPT: true},
		{name: "no boot signature", edit: func(g *gptImage) { g.data[510] = 0 }, wantErr: "55aa", noGPT: true},
		{name: "entry count overflow", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				le32(g.data[off+80:], 0xFFFFFFFF)
				g.rehash(off)
			}
		}, wantErr: "more than the 1048576 accepted"},
		{name: "entry size zero", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				le32(g.data[off+84:], 0)
				g.rehash(off)
			}
		}, wantErr: "partition entry size 0"},
		{name: "entry size not a power of two", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				le32(g.data[off+84:], 129)
				g.rehash(off)
			}
		}, wantErr: "partition entry size 129"},
		{name: "header size too big", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				le32(g.data[off+12:], 513)
				g.rehash(off)
			}
		}, wantErr: "header size 513"},
		{name: "header in wrong place", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				binary.LittleEndian.PutUint64(g.data[off+24:], 7)
				g.rehash(off)
			}
		}, wantErr: "says it is at LBA 7"},
		{name: "entries past end of disk", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				binary.LittleEndian.PutUint64(g.data[off+72:], 8190)
				g.rehash(off)
			}
		}, wantErr: "past the end of the disk"},
		{name: "entries LBA overflow", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				binary.LittleEndian.PutUint64(g.data[off+72:], 1<<62)
				g.rehash(off)
			}
		}, wantErr: "overflows"},
		{name: "usable range beyond disk", edit: func(g *gptImage) {
			for _, off := range []int{g.primaryHdr, g.backupHdr} {
				binary.LittleEndian.PutUint64(g.data[off+48:], 1<<40)
				g.rehash(off)
			}
		}, wantErr: "beyond the disk's last LBA"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := buildGPT(t, ss, 8192, twoParts)
			tc.edit(img)
			g, err := ReadGPT(bytes.NewReader(img.data), ss, int64(len(img.data)))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				if errors.Is(err, ErrNoGPT) != tc.noGPT {
					t.Errorf("errors.Is(err, ErrNoGPT) = %v, want %v (%v)", !tc.noGPT, tc.noGPT, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g.FromBackup != tc.wantBackup || (tc.wantBackup && g.PrimaryError == nil) {
				t.Errorf("FromBackup = %v (primary error %v), want %v", g.FromBackup, g.PrimaryError, tc.wantBackup)
			}
			if tc.wantBackup && g.HeaderLBA != 8191 {
				t.Errorf("backup header LBA %d", g.HeaderLBA)
			}
			if len(g.Partitions) != 2 {
				t.Errorf("partitions: %+v", g.Partitions)
			}
		})
	}
}

func TestReadGPTSkipsInvalidEntries(t *testing.T) {
	parts := append([]testPart{
		{index: 1, typeGUID: typeLinuxData, uniqueGUID: "11111111-1111-1111-1111-111111111111", first: 5000, last: 4999, name: "backwards"},
		{index: 3, typeGUID: typeLinuxData, uniqueGUID: "22222222-2222-2222-2222-222222222222", first: 5000, last: 9000, name: "past end"},
	}, twoParts...)
	img := buildGPT(t, 512, 8192, parts)
	g, err := ReadGPT(bytes.NewReader(img.data), 512, int64(len(img.data)))
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Partitions) != 2 || g.Partition(2) != nil || g.Partition(4) != nil {
		t.Errorf("invalid entries kept: %+v", g.Partitions)
	}
}

func TestReadGPTBadArguments(t *testing.T) {
	img := buildGPT(t, 512, 256, nil)
	for _, ss := range []int{0, 256, 1000, 1 << 17} {
		if _, err := ReadGPT(bytes.NewReader(img.data), ss, int64(len(img.data))); err == nil {
			t.Errorf("sector size %d accepted", ss)
		}
	}
	if _, err := ReadGPT(bytes.NewReader(img.data[:1024]), 512, 1024); !errors.Is(err, ErrNoGPT) {
		t.Errorf("tiny disk: %v", err)
	}
	// Unknown disk size: the primary alone must do.
	if g, err := ReadGPT(bytes.NewReader(img.data), 512, 0); err != nil || g.FromBackup {
		t.Errorf("unknown size: %v", err)
	}
}

func TestDecodeUTF16Name(t *testing.T) {
	enc := func(u ...uint16) []byte {
		b := make([]byte, 72)
		for i, c := range u {
			binary.LittleEndian.PutUint16(b[2*i:], c)
		}
		return b
	}
	tests := []struct {
		in   []byte
		want string
	}{
		{enc(), ""},
		{enc('r', 'o', 'o', 't'), "root"},
		{enc(0xD834, 0xDD1E), "𝄞"},
		{enc(0xD834, 'x'), "\uFFFDx"}, // unpaired surrogate
		{enc('a', 0, 'b'), "a"},
	}
	for _, tc := range tests {
		if got := gpt.DecodeName(tc.in); got != tc.want {
			t.Errorf("gpt.DecodeName(% x) = %q, want %q", tc.in[:8], got, tc.want)
		}
	}
	full := make([]uint16, 36)
	for i := range full {
		full[i] = 'A'
	}
	if got := gpt.DecodeName(enc(full...)); got != strings.Repeat("A", 36) {
		t.Errorf("36-character name: %q", got)
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install gdisk fdisk e2fsprogs …): %v", name, err)
	}
	return p
}

func run(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sparseFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func readGPTFile(t *testing.T, path string, ss int) *GPT {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	g, err := ReadGPT(f, ss, st.Size())
	if err != nil {
		t.Fatalf("ReadGPT(%s): %v", path, err)
	}
	return g
}

func TestReadGPTSgdisk(t *testing.T) {
	sgdisk := needTool(t, "sgdisk")
	img := sparseFile(t, t.TempDir(), "disk.img", 16<<20)
	run(t, "", sgdisk, "-o",
		"-n", "1:2048:+4M", "-t", "1:"+typeRoot, "-u", "1:6E1C5A2F-0B3D-4E8A-9C7B-2D4F6A8B0C1E", "-c", "1:root partition",
		"-n", "2:0:+1M", "-t", "2:"+typeRootVerity, "-u", "2:0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9", "-c", "2:verity",
		"-A", "2:set:60",
		img)
	g := readGPTFile(t, img, 512)
	p1, p2 := g.Partition(1), g.Partition(2)
	if p1 == nil || p2 == nil {
		t.Fatalf("partitions: %+v", g.Partitions)
	}
	if p1.UniqueGUID != "6e1c5a2f-0b3d-4e8a-9c7b-2d4f6a8b0c1e" || p1.TypeGUID != typeRoot || p1.Name != "root partition" || p1.FirstLBA != 2048 {
		t.Errorf("p1 = %+v", p1)
	}
	if p2.UniqueGUID != "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9" || p2.TypeGUID != typeRootVerity || p2.Name != "verity" || p2.Attributes != 1<<60 {
		t.Errorf("p2 = %+v", p2)
	}
	// Cross-check with sgdisk's own reading.
	info := run(t, "", sgdisk, "-i", "1", img)
	if !strings.Contains(info, "6E1C5A2F-0B3D-4E8A-9C7B-2D4F6A8B0C1E") {
		t.Errorf("sgdisk -i disagrees:\n%s", info)
	}
}

func TestReadGPTSfdisk(t *testing.T) {
	sfdisk := needTool(t, "sfdisk")
	img := sparseFile(t, t.TempDir(), "disk.img", 32<<20)
	script := "label: gpt\n" +
		"start=2048, size=2048, type=" + typeESP + ", uuid=C0FFEE00-1234-4567-89AB-CDEF01234567, name=\"esp\"\n" +
		"start=4096, size=8192, type=" + typeRoot + ", uuid=DECAFBAD-0000-4000-8000-00000000ABCD, name=\"root\", attrs=\"GUID:60\"\n"
	run(t, script, sfdisk, "--no-reread", "--no-tell-kernel", "-q", img)
	g := readGPTFile(t, img, 512)
	p2 := g.Partition(2)
	if p2 == nil || p2.UniqueGUID != "decafbad-0000-4000-8000-00000000abcd" || p2.TypeGUID != typeRoot ||
		p2.Name != "root" || p2.FirstLBA != 4096 || p2.LastLBA != 4096+8192-1 || p2.Attributes != 1<<60 {
		t.Fatalf("p2 = %+v", p2)
	}
	if p1 := g.Partition(1); p1 == nil || p1.TypeGUID != typeESP || p1.UniqueGUID != "c0ffee00-1234-4567-89ab-cdef01234567" {
		t.Errorf("p1 = %+v", p1)
	}
}

// TestReadGPTDiskfs reads tables written by go-diskfs, with 512-byte and
// 4 KiB logical sectors.
func TestReadGPTDiskfs(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.img")
			d, err := diskfs.Create(path, 64<<20, diskfs.SectorSize(ss))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			first := uint64(1 << 20 / ss)
			table := &diskgpt.Table{
				LogicalSectorSize:  ss,
				PhysicalSectorSize: ss,
				ProtectiveMBR:      true,
				GUID:               "5A4D3C2B-1A09-4877-8665-544332211000",
				Partitions: []*diskgpt.Partition{
					{Index: 1, Start: first, End: first + uint64(8<<20/ss) - 1, Type: diskgpt.Type(strings.ToUpper(typeRoot)), Name: "root-a", GUID: "F00DF00D-1111-4222-8333-444455556666"},
					{Index: 2, Start: first + uint64(8<<20/ss), End: first + uint64(9<<20/ss) - 1, Type: diskgpt.Type(strings.ToUpper(typeRootVerity)), Name: "root-a-verity", GUID: "BEEFBEEF-1111-4222-8333-444455556666", Attributes: 1 << 60},
				},
			}
			if err := d.Partition(table); err != nil {
				t.Fatal(err)
			}
			g := readGPTFile(t, path, ss)
			if g.DiskGUID != "5a4d3c2b-1a09-4877-8665-544332211000" {
				t.Errorf("disk GUID %s", g.DiskGUID)
			}
			p1, p2 := g.Partition(1), g.Partition(2)
			if p1 == nil || p1.UniqueGUID != "f00df00d-1111-4222-8333-444455556666" || p1.TypeGUID != typeRoot || p1.Name != "root-a" || p1.FirstLBA != first {
				t.Errorf("p1 = %+v", p1)
			}
			if p2 == nil || p2.UniqueGUID != "beefbeef-1111-4222-8333-444455556666" || p2.TypeGUID != typeRootVerity || p2.Attributes != 1<<60 {
				t.Errorf("p2 = %+v", p2)
			}
			// With the other sector size there is no table where we look.
			other := 4608 - ss
			f, _ := os.Open(path)
			defer f.Close()
			if _, err := ReadGPT(f, other, 64<<20); err == nil {
				t.Errorf("table written with %d-byte sectors read with %d", ss, other)
			}
		})
	}
}
