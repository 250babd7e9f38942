package blockdev

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// probeCase builds an image with a real tool and states what blkid(8)
// reports for it (checked by hand with blkid -p when the table was written).
type probeCase struct {
	name  string
	tool  string
	size  int64
	build func(t *testing.T, tool, img string)
	want  FSInfo
	// seedBytes is how much of the image the stored regression seed keeps:
	// enough for every signature and label the probe reads.
	seedBytes int
}

func mkfsSeedless(args ...string) func(t *testing.T, tool, img string) {
	return func(t *testing.T, tool, img string) { run(t, "", tool, append(args, img)...) }
}

var probeCases = []probeCase{
	{name: "ext4", tool: "mkfs.ext4", size: 32 << 20, seedBytes: 8 << 10,
		build: mkfsSeedless("-q", "-F", "-U", "11111111-2222-3333-4444-555555555555", "-L", "rootfs"),
		want:  FSInfo{Type: "ext4", UUID: "11111111-2222-3333-4444-555555555555", Label: "rootfs", BlockSize: 1024}},
	{name: "ext3", tool: "mkfs.ext3", size: 32 << 20, seedBytes: 8 << 10,
		build: mkfsSeedless("-q", "-F", "-U", "33333333-2222-3333-4444-555555555555", "-L", "e3"),
		want:  FSInfo{Type: "ext3", UUID: "33333333-2222-3333-4444-555555555555", Label: "e3", BlockSize: 1024}},
	{name: "ext2", tool: "mkfs.ext2", size: 32 << 20, seedBytes: 8 << 10,
		build: mkfsSeedless("-q", "-F", "-U", "22222222-2222-3333-4444-555555555555"),
		want:  FSInfo{Type: "ext2", UUID: "22222222-2222-3333-4444-555555555555", BlockSize: 1024}},
	{name: "xfs", tool: "mkfs.xfs", size: 300 << 20, seedBytes: 4 << 10,
		build: mkfsSeedless("-q", "-f", "-L", "xfsl", "-m", "uuid=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
		want:  FSInfo{Type: "xfs", UUID: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", Label: "xfsl"}},
	{name: "btrfs", tool: "mkfs.btrfs", size: 128 << 20, seedBytes: 68 << 10,
		build: mkfsSeedless("-q", "-f", "-L", "btl", "-U", "99999999-8888-7777-6666-555555555555"),
		want:  FSInfo{Type: "btrfs", UUID: "99999999-8888-7777-6666-555555555555", Label: "btl"}},
	{name: "vfat16", tool: "mkfs.vfat", size: 32 << 20, seedBytes: 128 << 10,
		build: mkfsSeedless("-F", "16", "-i", "1234ABCD", "-n", "VFATLBL"),
		want:  FSInfo{Type: "vfat", UUID: "1234-ABCD", Label: "VFATLBL", Version: "FAT16"}},
	{name: "vfat12", tool: "mkfs.vfat", size: 4 << 20, seedBytes: 64 << 10,
		build: mkfsSeedless("-F", "12", "-i", "0000BEEF"),
		want:  FSInfo{Type: "vfat", UUID: "0000-BEEF", Version: "FAT12"}},
	{name: "vfat32", tool: "mkfs.vfat", size: 64 << 20, seedBytes: 1<<20 + 8<<10,
		build: mkfsSeedless("-F", "32", "-i", "DEADBEEF", "-n", "V32"),
		want:  FSInfo{Type: "vfat", UUID: "DEAD-BEEF", Label: "V32", Version: "FAT32"}},
	{name: "swap", tool: "mkswap", size: 16 << 20, seedBytes: 4 << 10,
		build: mkfsSeedless("-q", "-L", "swl", "-U", "01234567-89ab-cdef-0123-456789abcdef"),
		want:  FSInfo{Type: "swap", UUID: "01234567-89ab-cdef-0123-456789abcdef", Label: "swl", Version: "1"}},
	{name: "luks2", tool: "cryptsetup", size: 32 << 20, seedBytes: 4 << 10,
		build: func(t *testing.T, tool, img string) {
			run(t, "pw", tool, "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
				"--uuid", "0badc0de-0000-4000-8000-000000000001", "--label", "lukslbl", "-d", "-", img)
		},
		want: FSInfo{Type: "crypto_LUKS", UUID: "0badc0de-0000-4000-8000-000000000001", Label: "lukslbl", Version: "2"}},
	{name: "luks1", tool: "cryptsetup", size: 32 << 20, seedBytes: 4 << 10,
		build: func(t *testing.T, tool, img string) {
			run(t, "pw", tool, "luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations", "1000",
				"--uuid", "0badc0de-0000-4000-8000-000000000002", "-d", "-", img)
		},
		want: FSInfo{Type: "crypto_LUKS", UUID: "0badc0de-0000-4000-8000-000000000002", Version: "1"}},
	{name: "verity", tool: "veritysetup", size: 8 << 20, seedBytes: 4 << 10,
		build: func(t *testing.T, tool, img string) {
			data := sparseFile(t, filepath.Dir(img), "verity-data.img", 16<<20)
			run(t, "", tool, "format", "--uuid", "7e57ab1e-0000-4000-8000-000000000003", data, img)
		},
		want: FSInfo{Type: "DM_verity_hash", UUID: "7e57ab1e-0000-4000-8000-000000000003", Version: "1"}},
	{name: "erofs", tool: "mkfs.erofs", seedBytes: 4 << 10,
		build: func(t *testing.T, tool, img string) {
			src := filepath.Join(filepath.Dir(img), "erofs-src")
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hello\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, "", tool, "--quiet", "-T0", "-U12345678-1234-1234-1234-123456789abc", img, src)
		},
		want: FSInfo{Type: "erofs", UUID: "12345678-1234-1234-1234-123456789abc"}},
	{name: "squashfs", tool: "mksquashfs", seedBytes: 4 << 10,
		build: func(t *testing.T, tool, img string) {
			src := filepath.Join(filepath.Dir(img), "sq-src")
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
			run(t, "", tool, src, img, "-quiet", "-noappend", "-mkfs-time", "0", "-all-time", "0")
		},
		want: FSInfo{Type: "squashfs", Version: "4.0"}},
}

func probeFile(t *testing.T, path string) (FSInfo, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	return Probe(f, st.Size())
}

// TestProbeToolImages builds each image with its real tool and probes it.
// With CVMBOOT_REGEN_TESTDATA=1 it also refreshes the stored seeds.
func TestProbeToolImages(t *testing.T) {
	for _, tc := range probeCases {
		t.Run(tc.name, func(t *testing.T) {
			tool := needTool(t, tc.tool)
			dir := t.TempDir()
			img := filepath.Join(dir, tc.name+".img")
			if tc.size > 0 {
				sparseFile(t, dir, tc.name+".img", tc.size)
			}
			tc.build(t, tool, img)
			got, err := probeFile(t, img)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Probe = %+v, want %+v", got, tc.want)
			}
			if os.Getenv("CVMBOOT_REGEN_TESTDATA") == "1" {
				writeSeed(t, img, tc.name, tc.seedBytes)
			}
		})
	}
}

func seedPath(name string) string { return filepath.Join("testdata", "probe", name+".img.gz") }

func writeSeed(t *testing.T, img, name string, n int) {
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	b = b[:min(n, len(b))]
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(b)
	zw.Close()
	if err := os.MkdirAll(filepath.Dir(seedPath(name)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(seedPath(name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readSeed(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(seedPath(name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProbeStoredImages probes the stored prefixes of the tool-made images,
// so the offsets stay covered on machines without the tools.
func TestProbeStoredImages(t *testing.T) {
	for _, tc := range probeCases {
		t.Run(tc.name, func(t *testing.T) {
			b := readSeed(t, tc.name)
			got, err := Probe(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Probe = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// erofsImage builds a minimal EROFS superblock block with the checksum
// feature, the way mkfs.erofs lays it out.
func erofsImage(label string, corruptCsum bool) []byte {
	b := make([]byte, 4096)
	sb := b[1024:]
	binary.LittleEndian.PutUint32(sb[0:], 0xE0F5E1E2)
	binary.LittleEndian.PutUint32(sb[8:], erofsFeatureCsum)
	sb[12] = 12
	copy(sb[48:64], []byte{0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc})
	copy(sb[64:80], label)
	csum := ^crc32.Checksum(b[1024:], castagnoli)
	if corruptCsum {
		csum ^= 1
	}
	binary.LittleEndian.PutUint32(sb[4:], csum)
	return b
}

func TestProbeSynthetic(t *testing.T) {
	luks2 := func(off int64, hdrOffset uint64, magic string) []byte {
		b := make([]byte, 1<<20)
		h := b[off:]
		copy(h, magic)
		binary.BigEndian.PutUint16(h[6:], 2)
		copy(h[luks2LabelOffset:], "lbl")
		copy(h[luksUUIDOffset:], "6f1d3c4a-0000-4000-8000-00000000abcd")
		binary.BigEndian.PutUint64(h[luks2HdrOffsetOff:], hdrOffset)
		return b
	}
	xfs := func(edit func([]byte)) []byte {
		b := readSeed(t, "xfs")
		edit(b)
		return b
	}
	tests := []struct {
		name string
		data []byte
		want FSInfo
		err  error
	}{
		{name: "empty", data: nil, err: ErrUnknownFS},
		{name: "zeros", data: make([]byte, 1<<20), err: ErrUnknownFS},
		{name: "erofs with label and checksum", data: erofsImage("erol", false),
			want: FSInfo{Type: "erofs", UUID: "12345678-1234-1234-1234-123456789abc", Label: "erol"}},
		{name: "erofs bad checksum", data: erofsImage("erol", true), err: ErrUnknownFS},
		{name: "luks2 secondary only", data: luks2(0x4000, 0x4000, luksSecondaryMagic),
			want: FSInfo{Type: "crypto_LUKS", UUID: "6f1d3c4a-0000-4000-8000-00000000abcd", Label: "lbl", Version: "2"}},
		{name: "luks2 header copy at wrong offset", data: luks2(0, 0x8000, luksMagic), err: ErrUnknownFS},
		{name: "luks2 secondary copy at wrong offset", data: luks2(0x8000, 0x4000, luksSecondaryMagic), err: ErrUnknownFS},
		{name: "xfs magic with zero AG count", data: xfs(func(b []byte) { clear(b[88:92]) }), err: ErrUnknownFS},
		{name: "xfs sector size not matching log", data: xfs(func(b []byte) { b[121] = 10 }), err: ErrUnknownFS},
		{name: "truncated ext4", data: readSeed(t, "ext4")[:1100], err: ErrUnknownFS},
		{name: "vfat16 label from root directory", data: withBytes(readSeed(t, "vfat16"), 0x2b, "NO NAME    "),
			want: FSInfo{Type: "vfat", UUID: "1234-ABCD", Label: "VFATLBL", Version: "FAT16"}},
		{name: "vfat32 label from root directory", data: withBytes(readSeed(t, "vfat32"), 0x47, "OTHER      "),
			want: FSInfo{Type: "vfat", UUID: "DEAD-BEEF", Label: "V32", Version: "FAT32"}},
		{name: "vfat bad media byte", data: withBytes(readSeed(t, "vfat16"), 0x15, "\x12"), err: ErrUnknownFS},
		{name: "squashfs 3", data: append([]byte("hsqs"), make([]byte, 28)...), err: ErrUnknownFS},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Probe(bytes.NewReader(tc.data), int64(len(tc.data)))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Probe = %+v, %v; want error %v", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Probe = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func withBytes(b []byte, off int, s string) []byte {
	copy(b[off:], s)
	return b
}

// failingReader returns an I/O error after the first sector, like a disk
// with a bad block.
type failingReader struct{ data []byte }

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= 512 {
		return 0, errors.New("input/output error")
	}
	return copy(p, r.data[off:]), nil
}

func TestProbeIOError(t *testing.T) {
	_, err := Probe(failingReader{make([]byte, 1<<20)}, 1<<20)
	if err == nil || errors.Is(err, ErrUnknownFS) || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("Probe error = %v, want the I/O error", err)
	}
}

func FuzzProbe(f *testing.F) {
	for _, tc := range probeCases {
		b := readSeed(f, tc.name)
		f.Add(b[:min(len(b), 70<<10)])
	}
	f.Add(erofsImage("x", false))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, size := range []int64{int64(len(data)), 0} {
			info, err := Probe(bytes.NewReader(data), size)
			if err != nil && !errors.Is(err, ErrUnknownFS) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if err == nil && info.Type == "" {
				t.Fatal("match without a type")
			}
		}
	})
}
