package measure

import (
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// RTMRDir is where Linux 6.16 and later expose the TDX measurement registers, below /sys.
const RTMRDir = "devices/virtual/misc/tdx_guest/measurements"

// ErrNoRTMR means the kernel offers no way to extend a TDX RTMR (before Linux 6.16).
var ErrNoRTMR = errors.New("the kernel exposes no writable TDX RTMR (needs Linux 6.16 or later)")

// TDXRTMR extends TDX runtime measurement registers through sysfs.
type TDXRTMR struct {
	dir string
}

// RTMRFile returns the sysfs file of RTMR index under the sysfs root.
func RTMRFile(sysfs string, index int) string {
	return filepath.Join(sysfs, RTMRDir, fmt.Sprintf("rtmr%d:sha384", index))
}

// NewTDXRTMR returns the extender for the RTMRs under the sysfs root (normally /sys). It wraps
// ErrNoRTMR when the kernel has no RTMR files.
func NewTDXRTMR(sysfs string) (*TDXRTMR, error) {
	file := RTMRFile(sysfs, eventlog.RTMRIndex)
	if _, err := os.Stat(file); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is missing: %w", file, ErrNoRTMR)
		}
		return nil, fmt.Errorf("TDX RTMR: %w", err)
	}
	return &TDXRTMR{dir: filepath.Join(sysfs, RTMRDir)}, nil
}

// Kind implements Extender.
func (r *TDXRTMR) Kind() string { return eventlog.KindRTMR }

// Algorithms implements Extender.
func (r *TDXRTMR) Algorithms() []crypto.Hash { return []crypto.Hash{crypto.SHA384} }

// Extend implements Extender: each write of a 48-byte digest to the RTMR's file is one extend.
func (r *TDXRTMR) Extend(index int, digests map[crypto.Hash][]byte) error {
	if index < 0 || index > 3 {
		return fmt.Errorf("TDX RTMR %d: expected 0-3", index)
	}
	d := digests[crypto.SHA384]
	if len(d) != crypto.SHA384.Size() {
		return fmt.Errorf("TDX RTMR %d: expected a %d-byte sha384 digest, found %d bytes", index, crypto.SHA384.Size(), len(d))
	}
	file := filepath.Join(r.dir, fmt.Sprintf("rtmr%d:sha384", index))
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("TDX RTMR %d: %w", index, err)
	}
	n, err := f.Write(d)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("TDX RTMR %d: extend via %s: %w", index, file, err)
	}
	if n != len(d) {
		return fmt.Errorf("TDX RTMR %d: extend via %s wrote %d of %d bytes", index, file, n, len(d))
	}
	return nil
}

// ReadRTMR reads the current value of RTMR index under the sysfs root.
func ReadRTMR(sysfs string, index int) ([]byte, error) {
	b, err := os.ReadFile(RTMRFile(sysfs, index))
	if err != nil {
		return nil, fmt.Errorf("TDX RTMR %d: %w", index, err)
	}
	if len(b) != crypto.SHA384.Size() {
		return nil, fmt.Errorf("TDX RTMR %d: read %d bytes from %s, expected %d", index, len(b), RTMRFile(sysfs, index), crypto.SHA384.Size())
	}
	return b, nil
}
