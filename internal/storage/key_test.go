package storage

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKernelKeyring adds a logon key as the stage does: userspace cannot
// read it back, and it is gone after Invalidate.
func TestKernelKeyring(t *testing.T) {
	// The thread keyring is this thread's: stay on it, as the stage does.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	kr := KernelKeyring{}
	desc := "cvmboot:test-" + strings.ReplaceAll(t.Name(), "/", "-")
	id, err := kr.AddLogon(desc, bytes.Repeat([]byte{0xa5}, 96))
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		t.Skipf("kernel keyring unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if d, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id); err != nil || !strings.HasPrefix(d, "logon;") {
		t.Errorf("the key is not a logon key of this thread: %q, %v", d, err)
	}
	buf := make([]byte, 128)
	if n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, buf, 0); err == nil {
		t.Errorf("logon key payload readable from userspace (%d bytes)", n)
	}
	if err := kr.Invalidate(id); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id); err == nil {
		t.Error("key still described after Invalidate")
	}
}

// TestKeyHookOnlyInTestBuilds builds a program linking the stage with and
// without the cvmboot_testhook tag: only the tagged build contains the hook
// that reveals keys (its path and its function).
func TestKeyHookOnlyInTestBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found")
	}
	dir := t.TempDir()
	build := func(out string, tags ...string) []byte {
		args := append([]string{"build", "-o", out}, tags...)
		cmd := exec.Command(goBin, append(args, "./testdata/hookprobe")...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, b)
		}
		bin, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		nm, err := exec.Command(goBin, "tool", "nm", out).Output()
		if err != nil {
			t.Fatal(err)
		}
		return append(bin, nm...)
	}
	product := build(filepath.Join(dir, "product"))
	hooked := build(filepath.Join(dir, "hooked"), "-tags", "cvmboot_testhook")
	for _, marker := range []string{"/run/cvmboot-test", "volume-key-", "storage.observeKey"} {
		if bytes.Contains(product, []byte(marker)) {
			t.Errorf("the product build contains %q", marker)
		}
		if !bytes.Contains(hooked, []byte(marker)) {
			t.Errorf("the cvmboot_testhook build lacks %q", marker)
		}
	}
}
