package blockdev

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	diskgpt "github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/cvmboot/cvmboot/internal/gpt"
)

func randomUUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return gpt.FormatUUID(b[:])
}

// attachLoop attaches img with partition scanning and detaches it when the
// test ends. It skips the test where loop devices are unavailable.
func attachLoop(t *testing.T, img string, extra ...string) string {
	t.Helper()
	losetup := needTool(t, "losetup")
	args := append([]string{"--find", "--show", "--partscan"}, extra...)
	out, err := exec.Command(losetup, append(args, img)...).CombinedOutput()
	if err != nil {
		t.Skipf("losetup failed, no loop devices here: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	// Kernels built without a GPT parser (CONFIG_EFI_PARTITION=n, as on
	// some sandbox VMs) ignore --partscan; partx then adds the partitions
	// with BLKPG, which still gives real sysfs partition entries.
	first := filepath.Join("/sys/class/block", filepath.Base(dev), filepath.Base(dev)+"p1")
	scanned := false
	for i := 0; i < 10 && !scanned; i++ {
		time.Sleep(100 * time.Millisecond)
		_, err := os.Stat(first)
		scanned = err == nil
	}
	if !scanned {
		partx := needTool(t, "partx")
		if out, err := exec.Command(partx, "--add", dev).CombinedOutput(); err != nil {
			t.Skipf("kernel did not scan %s and partx --add failed: %v: %s", dev, err, out)
		}
		t.Logf("kernel did not scan partitions of %s; added them with partx", dev)
	}
	return dev
}

// TestLoopDevice runs the real sysfs path: a GPT image attached with
// losetup -P, its partitions found by PARTUUID=, PARTLABEL=, UUID= and
// PARTNROFF through /sys/class/block and /dev.
func TestLoopDevice(t *testing.T) {
	sgdisk := needTool(t, "sgdisk")
	mkfs := needTool(t, "mkfs.ext4")
	rootUUID, verityUUID, fsUUID := randomUUID(t), randomUUID(t), randomUUID(t)
	label := "cvmtest-" + rootUUID[:8]
	img := sparseFile(t, t.TempDir(), "disk.img", 64<<20)
	run(t, "", sgdisk, "-o",
		"-n", "1:2048:+32M", "-t", "1:"+typeRoot, "-u", "1:"+rootUUID, "-c", "1:"+label,
		"-n", "2:0:+8M", "-t", "2:"+typeRootVerity, "-u", "2:"+verityUUID, "-c", "2:"+label+"-verity",
		img)

	s := &Scanner{} // real /sys and /dev; never mknod on the host
	// Start waiting before the device exists so the uevent path is used.
	type result struct {
		d   *Device
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := s.Wait(context.Background(), "PARTUUID="+strings.ToUpper(rootUUID), 20*time.Second)
		done <- result{d, err}
	}()
	time.Sleep(100 * time.Millisecond)
	loop := attachLoop(t, img)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.d.Path != loop+"p1" || r.d.Parent != filepath.Base(loop) || r.d.PartNumber != 1 || r.d.PartLabel != label {
		t.Fatalf("PARTUUID resolved to %+v, want %sp1", r.d, loop)
	}
	run(t, "", mkfs, "-q", "-U", fsUUID, "-L", label, loop+"p1")

	for spec, want := range map[string]string{
		"PARTLABEL=" + label + "-verity":        loop + "p2",
		"PARTUUID=" + rootUUID + "/PARTNROFF=1": loop + "p2",
		"UUID=" + fsUUID:                        loop + "p1",
		"LABEL=" + label:                        loop + "p1",
		loop + "p2":                             loop + "p2",
	} {
		d, err := s.Wait(context.Background(), spec, 10*time.Second)
		if err != nil {
			t.Errorf("%s: %v", spec, err)
			continue
		}
		if d.Path != want {
			t.Errorf("%s resolved to %s, want %s", spec, d.Path, want)
		}
		if spec == "UUID="+fsUUID && d.FS.Type != "ext4" {
			t.Errorf("%s: type %q", spec, d.FS.Type)
		}
	}
}

// TestLoopDevice4K attaches a table written with 4 KiB sectors to a loop
// device with 4 KiB logical blocks: the scanner must read the GPT at byte
// 4096 and convert LBAs for the start cross-check.
func TestLoopDevice4K(t *testing.T) {
	partUUID := randomUUID(t)
	path := filepath.Join(t.TempDir(), "disk4k.img")
	d, err := diskfs.Create(path, 32<<20, diskfs.SectorSize4k)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Partition(&diskgpt.Table{LogicalSectorSize: 4096, PhysicalSectorSize: 4096, ProtectiveMBR: true,
		Partitions: []*diskgpt.Partition{{Index: 1, Start: 256, End: 256 + 1023, Type: diskgpt.Type(strings.ToUpper(typeRoot)),
			Name: "root4k", GUID: strings.ToUpper(partUUID)}}})
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	loop := attachLoop(t, path, "--sector-size", "4096")
	dev, err := (&Scanner{}).Wait(context.Background(), "PARTUUID="+partUUID, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Path != loop+"p1" || dev.LogicalBlockSize != 4096 || dev.Start != 256*8 || dev.PartLabel != "root4k" {
		t.Errorf("got %+v, want %sp1 with 4096-byte blocks", dev, loop)
	}
	fmt.Fprintln(testWriter{t}, "resolved", dev.Summary())
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
