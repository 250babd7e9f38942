package measure

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTDXRTMR(t *testing.T) {
	sysfs := t.TempDir()
	if _, err := NewTDXRTMR(sysfs); !errors.Is(err, ErrNoRTMR) {
		t.Fatalf("NewTDXRTMR without the sysfs file: err = %v, want ErrNoRTMR", err)
	}
	file := RTMRFile(sysfs, 3)
	if want := filepath.Join(sysfs, "devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384"); file != want {
		t.Fatalf("RTMRFile = %s, want %s", file, want)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, make([]byte, 48), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := NewTDXRTMR(sysfs)
	if err != nil {
		t.Fatal(err)
	}
	d := sha512.Sum384([]byte("event"))
	if err := r.Extend(3, map[crypto.Hash][]byte{crypto.SHA384: d[:]}); err != nil {
		t.Fatal(err)
	}
	// A plain file keeps what was written: the kernel would extend instead, but the write is
	// what cvmboot controls, and it must be exactly the 48-byte digest at offset 0.
	got, err := ReadRTMR(sysfs, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, d[:]) {
		t.Errorf("wrote %x, want the digest %x", got, d)
	}
	tests := []struct {
		name    string
		index   int
		digests map[crypto.Hash][]byte
		want    string
	}{
		{"index out of range", 4, map[crypto.Hash][]byte{crypto.SHA384: d[:]}, "TDX RTMR 4: expected 0-3"},
		{"no sha384", 3, map[crypto.Hash][]byte{crypto.SHA256: d[:32]}, "expected a 48-byte sha384 digest, found 0 bytes"},
		{"missing file", 1, map[crypto.Hash][]byte{crypto.SHA384: d[:]}, "rtmr1:sha384"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Extend(tt.index, tt.digests)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Extend error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if err := os.WriteFile(file, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRTMR(sysfs, 3); err == nil || !strings.Contains(err.Error(), "read 5 bytes") {
		t.Errorf("ReadRTMR of a short file: err = %v", err)
	}
}
