package dm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestWaitForLink(t *testing.T) {
	dir := t.TempDir()
	d := Device{Name: "root", Major: 254, Minor: 7}
	err := WaitForLink(dir, d, 30*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "udev did not link "+dir+"/mapper/root to root (254:7) within 30ms: found nothing") {
		t.Fatalf("no link: %v", err)
	}
	// udev's link: mapper/root → ../dm-7, made while the caller waits.
	if err := unix.Mknod(filepath.Join(dir, "dm-7"), unix.S_IFBLK|0o600, int(unix.Mkdev(254, 7))); err != nil {
		t.Skipf("mknod needs CAP_MKNOD: %v", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		os.MkdirAll(filepath.Join(dir, "mapper"), 0o755)
		os.Symlink("../dm-7", filepath.Join(dir, "mapper", "root"))
	}()
	if err := WaitForLink(dir, d, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A link to another device is not ours.
	if err := WaitForLink(dir, Device{Name: "root", Major: 254, Minor: 8}, 30*time.Millisecond); err == nil || !strings.Contains(err.Error(), "found mode 60000, device 254:7") {
		t.Errorf("wrong device: %v", err)
	}
}
