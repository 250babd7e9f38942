package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOverlayOverReadOnlyRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount")
	}
	if fss, err := readFilesystems("/proc/filesystems"); err != nil || !hasKey(fss, "overlay") {
		t.Skip("kernel has no overlayfs")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "sysroot")
	state := filepath.Join(dir, "run", "overlay")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	// The "verified root": a tmpfs with one file, then made read-only.
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(root, "etc-file"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "x"), nil, 0o644); err == nil {
		t.Fatal("the lower root is writable")
	}

	if err := Overlay(nil, OverlaySpec{Target: root, StateDir: state, TmpfsSize: "1m"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Unmount(root, unix.MNT_DETACH)
		unix.Unmount(state, unix.MNT_DETACH)
	})
	// Writes land in the tmpfs upper layer; the lower file is still visible.
	if err := os.WriteFile(filepath.Join(root, "new"), []byte("upper"), 0o644); err != nil {
		t.Fatalf("overlay root not writable: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(state, "upper", "new")); err != nil || string(b) != "upper" {
		t.Errorf("write did not land in the upper layer: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc-file")); err != nil || string(b) != "lower" {
		t.Errorf("lower file: %q %v", b, err)
	}
	// The size cap holds: a write past it fails with ENOSPC, the overlay stays usable.
	big := make([]byte, 2<<20)
	err := os.WriteFile(filepath.Join(root, "big"), big, 0o644)
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing past the tmpfs cap: %v, want ENOSPC", err)
	}
	os.Remove(filepath.Join(root, "big"))
	if err := os.WriteFile(filepath.Join(root, "after"), []byte("ok"), 0o644); err != nil {
		t.Errorf("overlay unusable after ENOSPC: %v", err)
	}
}

func hasKey(m map[string]bool, k string) bool { _, ok := m[k]; return ok }
