package disk

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/luks2"
)

// attachLoop attaches img to a loop device with partition support and
// detaches it when the test ends; it skips where loop devices are missing.
func attachLoop(t *testing.T, img string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	losetup := needTool(t, "losetup")
	out, err := exec.Command(losetup, "--find", "--show", "--partscan", img).CombinedOutput()
	if err != nil {
		t.Skipf("losetup failed, no loop devices here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// addPartitions makes the kernel know the loop device's partitions. Partition scanning is
// off on kernels without a GPT parser; BLKPG does not need the parser, so the existing ones
// are added that way.
func addPartitions(t *testing.T, loop string, parts []part) {
	t.Helper()
	name := filepath.Base(loop)
	if _, err := os.Stat("/sys/class/block/" + name + "/" + name + "p2"); err == nil {
		return
	}
	f, err := os.OpenFile(loop, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, p := range parts {
		if err := blkpgAdd(f, i+1, int64(p.start)*512, int64(p.end-p.start+1)*512); err != nil {
			t.Skipf("BLKPG_ADD_PARTITION on %s: %v (loop devices without partition support here)", loop, err)
		}
	}
	t.Logf("kernel did not scan %s; added the existing partitions with BLKPG", loop)
}

// TestLoopBLKPG runs the kernel side on a loop device: the new partition is
// announced with BLKPG_ADD_PARTITION (the root partition of the image stays
// open, so a whole-table re-read could not be used), its sysfs entry and
// /dev node appear, and the second run reuses it through its node.
func TestLoopBLKPG(t *testing.T) {
	img := makeImage(t, 96*MiB, espRootParts)
	loop := attachLoop(t, img)
	name := filepath.Base(loop)
	rootNode := loop + "p2"
	addPartitions(t, loop, espRootParts)
	// Hold the "root" open, as the mounted root is during boot.
	p := &Preparer{Mknod: true, Timeout: 10 * time.Second}
	if _, err := p.ensureNodeFor(rootNode); err != nil {
		t.Fatal(err)
	}
	root, err := os.Open(rootNode)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	if d, err := p.DiskOf(rootNode); err != nil || d != loop {
		t.Errorf("DiskOf(%s) = %q, %v; want %s", rootNode, d, err, loop)
	}
	got, err := p.Prepare(context.Background(), loop, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got.Number != 3 || got.Path != loop+"p3" || got.Start != 25*MiB || got.Size != 70*MiB {
		t.Fatalf("partition %+v", got)
	}
	var st unix.Stat_t
	if err := unix.Stat(got.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("%s: %v (mode %#o)", got.Path, err, st.Mode)
	}
	size, err := os.ReadFile("/sys/class/block/" + name + "p3/size")
	if err != nil || strings.TrimSpace(string(size)) != "143360" {
		t.Errorf("sysfs size of %sp3: %q, %v; want 143360 sectors", name, size, err)
	}

	pf, err := os.OpenFile(got.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := luks2.Format(pf, got.Size, luks2.Options{VolumeKey: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	pf.Close()

	// The kernel forgets the partition (as when it could not read the
	// table at boot): reuse must announce it again.
	if err := blkpgDel(loop, got.Number); err != nil {
		t.Fatalf("BLKPG_DEL_PARTITION: %v", err)
	}
	again, err := p.Prepare(context.Background(), loop, storageRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reused || again.Path != got.Path || again.PartUUID != got.PartUUID {
		t.Fatalf("second run %+v, first %+v", again, got)
	}
	pf, err = os.Open(got.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if _, err := luks2.Read(pf); err == nil {
		t.Error("LUKS2 header still readable through the partition node after reuse")
	}

	// A partition in use (claimed exclusively, as a mount or a dm-verity table claims the
	// root's partitions) is never reused, whatever its label: nothing is written to it.
	wf, err := os.OpenFile(got.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := luks2.Format(wf, got.Size, luks2.Options{VolumeKey: make([]byte, 64), Label: "in use"}); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	held, err := os.OpenFile(got.Path, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, err = p.Prepare(context.Background(), loop, storageRequest())
	if err == nil || !strings.Contains(err.Error(), "carries the storage label but is in use (mounted or opened exclusively): refusing to reuse or destroy it") {
		t.Errorf("Prepare on a partition in use: %v", err)
	}
	if h, err := luks2.Read(held); err != nil || h.Label != "in use" {
		t.Errorf("the partition in use was written to: %v", err)
	}
}

// ensureNodeFor makes sure the node of an existing partition exists (for
// kernels where it was added by BLKPG just now).
func (p *Preparer) ensureNodeFor(path string) (string, error) {
	name := filepath.Base(path)
	dev, err := os.ReadFile("/sys/class/block/" + name + "/dev")
	if err != nil {
		return "", err
	}
	return p.ensureNode(name, strings.TrimSpace(string(dev)))
}

// TestDiskOfDir walks fake sysfs trees: a partition, a whole disk and
// device-mapper stacks on one or two disks.
func TestDiskOfDir(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) string {
		d := filepath.Join(root, p)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	vda := mk("devices/vda")
	vda2 := mk("devices/vda/vda2")
	vda3 := mk("devices/vda/vda3")
	vdb1 := mk("devices/vdb/vdb1")
	for _, d := range []string{vda2, vda3, vdb1} {
		os.WriteFile(filepath.Join(d, "partition"), []byte("2\n"), 0o644)
	}
	verity := mk("devices/virtual/dm-0")
	mk("devices/virtual/dm-0/slaves")
	os.Symlink(vda2, filepath.Join(verity, "slaves", "vda2"))
	os.Symlink(vda3, filepath.Join(verity, "slaves", "vda3"))
	split := mk("devices/virtual/dm-1")
	mk("devices/virtual/dm-1/slaves")
	os.Symlink(vda2, filepath.Join(split, "slaves", "vda2"))
	os.Symlink(vdb1, filepath.Join(split, "slaves", "vdb1"))
	tests := []struct {
		dir, want, err string
	}{
		{vda2, "vda", ""},
		{vda, "vda", ""},
		{verity, "vda", ""},
		{split, "", "sits on two disks"},
	}
	for _, tt := range tests {
		got, err := diskOfDir(tt.dir, 0)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("diskOfDir(%s) = %q, %v; want %q, %q", tt.dir, got, err, tt.want, tt.err)
		}
	}
}

func blkpgDel(disk string, number int) error {
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bp := unix.BlkpgPartition{Pno: int32(number)}
	arg := unix.BlkpgIoctlArg{Op: unix.BLKPG_DEL_PARTITION, Datalen: int32(unsafe.Sizeof(bp)), Data: (*byte)(unsafe.Pointer(&bp))}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return errno
	}
	return nil
}

// TestLoopBusyOverlap: the host deletes the root's entry from the GPT on disk after the kernel
// read the table; the free range storage would take is the root's, which is in use. Nothing
// is written.
func TestLoopBusyOverlap(t *testing.T) {
	img := makeImage(t, 96*MiB, espRootParts)
	loop := attachLoop(t, img)
	name := filepath.Base(loop)
	addPartitions(t, loop, espRootParts)
	p := &Preparer{Mknod: true, Timeout: 10 * time.Second}
	rootNode, err := p.ensureNodeFor(loop + "p2")
	if err != nil {
		t.Fatal(err)
	}
	held, err := os.OpenFile(rootNode, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	editEntries(t, img, func(e []byte) { clear(e[128:256]) })
	// The edit went to the file: drop what the loop device cached of the old table (the
	// kernel's partition scan read it through the device).
	lf, err := os.OpenFile(loop, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, lf.Fd(), unix.BLKFLSBUF, 0); errno != 0 {
		lf.Close()
		t.Fatalf("BLKFLSBUF %s: %v", loop, errno)
	}
	lf.Close()
	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Prepare(context.Background(), loop, storageRequest())
	if err == nil || !strings.Contains(err.Error(), "overlaps the kernel's partition "+name+"p2") || !strings.Contains(err.Error(), "which is in use") {
		t.Fatalf("Prepare over the in-use root's range: %v", err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Error("the disk was written")
	}
}
