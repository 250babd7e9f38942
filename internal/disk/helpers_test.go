package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	diskgpt "github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

const (
	MiB         = 1 << 20
	typeESP     = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
	typeRoot    = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
	typeLinux   = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	storageName = "cvmboot-storage"
)

// part is a partition of a test image, in 512-byte sectors.
type part struct {
	start, end uint64
	typ, name  string
}

// espRootParts is a typical image: ESP and root, nothing after.
var espRootParts = []part{
	{2048, 2048 + 8*2048 - 1, typeESP, "esp"},
	{2048 + 8*2048, 2048 + 24*2048 - 1, typeRoot, "root"},
}

// makeImage writes a GPT image of size bytes with the given partitions,
// using go-diskfs as an image builder would.
func makeImage(t *testing.T, size int64, parts []part) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := createImage(path, size, parts); err != nil {
		t.Fatal(err)
	}
	return path
}

func createImage(path string, size int64, parts []part) error {
	os.Remove(path)
	d, err := diskfs.Create(path, size, diskfs.SectorSize512)
	if err != nil {
		return err
	}
	defer d.Close()
	tbl := &diskgpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true}
	for i, p := range parts {
		tbl.Partitions = append(tbl.Partitions, &diskgpt.Partition{Index: i + 1, Start: p.start, End: p.end,
			Type: diskgpt.Type(p.typ), Name: p.name})
	}
	return d.Partition(tbl)
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func readTableFile(t *testing.T, path string) *Table {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	tb, err := ReadTable(f, 512, fi.Size())
	if err != nil {
		t.Fatalf("ReadTable(%s): %v", path, err)
	}
	return tb
}

// editEntries rewrites entry slots of both copies with edit and fixes the
// CRCs, to build tables go-diskfs refuses to write.
func editEntries(t *testing.T, path string, edit func(entries []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, hdrOff := range []int{512, len(b) - 512} {
		h := b[hdrOff : hdrOff+512]
		if string(h[0:8]) != gpt.Signature {
			continue
		}
		arr := b[int(le.Uint64(h[72:80]))*512:][:int(le.Uint32(h[80:84]))*128]
		edit(arr)
		le.PutUint32(h[88:92], crc32.ChecksumIEEE(arr))
		resealHeader(h)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// editHeader changes the primary header and fixes its CRC.
func editHeader(t *testing.T, path string, edit func(h []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := b[512:1024]
	edit(h)
	resealHeader(h)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func resealHeader(h []byte) {
	le := binary.LittleEndian
	size := le.Uint32(h[12:16])
	clear(h[16:20])
	le.PutUint32(h[16:20], crc32.ChecksumIEEE(h[:size]))
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

// sgdiskVerify runs sgdisk --verify when sgdisk is installed.
func sgdiskVerify(t *testing.T, path string) {
	t.Helper()
	p, err := exec.LookPath("sgdisk")
	if err != nil {
		return
	}
	out, err := exec.Command(p, "--verify", path).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("No problems found")) {
		t.Errorf("sgdisk --verify %s: %v\n%s", path, err, out)
	}
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
