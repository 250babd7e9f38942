package secret

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLocked(t *testing.T) {
	for _, n := range []int{0, -1, os.Getpagesize() + 1} {
		if _, err := New(n); err == nil {
			t.Errorf("New(%d) succeeded", n)
		}
	}
	k, err := New(96)
	if err != nil {
		t.Skipf("no locked memory here: %v", err)
	}
	b := k.Bytes()
	if len(b) != 96 || !bytes.Equal(b, make([]byte, 96)) {
		t.Fatalf("fresh key: %d bytes, not zero", len(b))
	}
	if _, err := unix.Getrandom(b, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(b, make([]byte, 96)) {
		t.Fatal("getrandom left the key zero")
	}
	if kb := lockedKiB(t); kb < 4 {
		t.Errorf("VmLck is %d kB with a locked key, want at least one page", kb)
	}
	k.Wipe()
	k.Wipe()
	if k.Bytes() != nil {
		t.Error("Bytes after Wipe is not nil")
	}
}

// lockedKiB reads the process's locked memory from /proc/self/status.
func lockedKiB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmLck:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Skip("no VmLck in /proc/self/status")
	return 0
}
