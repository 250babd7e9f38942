package storage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBlockDevicesOnFiles runs the real Devices on an image file (O_DIRECT
// where the file system allows it).
func TestBlockDevicesOnFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xee}, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d := BlockDevices{}
	if size, err := d.Size(path); err != nil || size != 4<<20 {
		t.Fatalf("Size = %d, %v", size, err)
	}
	if err := d.ZeroDirect(path, 1<<20, 2<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	for off, want := range map[int64]byte{0: 0xee, 1 << 20: 0, 3<<20 - 4096: 0, 3 << 20: 0xee} {
		if err := d.ReadDirect(path, off, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{want}, 4096)) {
			t.Errorf("block at %d is not %#x", off, want)
		}
	}
	for _, bad := range [][2]int64{{1, 4096}, {0, 100}, {-4096, 4096}} {
		if err := d.ZeroDirect(path, bad[0], bad[1]); err == nil {
			t.Errorf("ZeroDirect(%d, %d) accepted unaligned I/O", bad[0], bad[1])
		}
	}
	dev, err := d.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt([]byte("LUKS"), 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadDirect(path, 0, got); err != nil || string(got[:4]) != "LUKS" {
		t.Errorf("direct read after a buffered write: %q, %v", got[:4], err)
	}
	if _, _, err := d.Number(path); err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Errorf("Number of a file: %v", err)
	}
}

// TestBlockDevicesOnLoop checks device numbers, sizes, exclusive opens and
// direct I/O on a real block device.
func TestBlockDevicesOnLoop(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup not installed")
	}
	img := filepath.Join(t.TempDir(), "loop.img")
	os.WriteFile(img, nil, 0o600)
	os.Truncate(img, 16<<20)
	out, err := exec.Command(losetup, "--find", "--show", "--sector-size", "4096", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command(losetup, "--detach", loop).Run()
	d := BlockDevices{}
	ma, mi, err := d.Number(loop)
	if err != nil || ma == 0 {
		t.Fatalf("Number(%s) = %d:%d, %v", loop, ma, mi, err)
	}
	if size, err := d.Size(loop); err != nil || size != 16<<20 {
		t.Errorf("Size(%s) = %d, %v", loop, size, err)
	}
	dev, err := d.Open(loop)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open(loop); err == nil {
		t.Error("a second exclusive open succeeded")
	}
	dev.WriteAt(bytes.Repeat([]byte{1}, 8192), 0)
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.ZeroDirect(loop, 4096, 4096); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8192)
	if err := d.ReadDirect(loop, 0, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:4096], bytes.Repeat([]byte{1}, 4096)) || !bytes.Equal(b[4096:], make([]byte, 4096)) {
		t.Error("direct I/O on the loop device does not see the writes")
	}
}
