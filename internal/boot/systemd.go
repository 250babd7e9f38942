package boot

import (
	"fmt"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// initrdStart is when the initramfs phase began, in systemd's dual timestamp (µs).
type initrdStart struct{ realtime, monotonic uint64 }

func nowInitrdStart() initrdStart {
	var mono unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	var real unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &real)
	return initrdStart{realtime: uint64(real.Nano() / 1000), monotonic: uint64(mono.Nano() / 1000)}
}

// systemdState is the manager state handed to systemd as if a systemd initrd had serialized
// it: only the initrd timestamp, so `systemd-analyze` accounts the initramfs as initrd time.
func systemdState(t initrdStart) []byte {
	return []byte(fmt.Sprintf("initrd-timestamp=%d %d\n\n", t.realtime, t.monotonic))
}

// isSystemd tells whether init (a path in the current root, after the switch) is systemd.
func isSystemd(init string) bool {
	resolved, err := filepath.EvalSymlinks(init)
	if err != nil {
		return false
	}
	return filepath.Base(resolved) == "systemd"
}

// systemdHandoffArgs returns the arguments systemd gets after a switch from an initrd —
// --switched-root --system and its serialized state in an inherited memfd — or nil when init
// is not systemd.
func systemdHandoffArgs(init string, t initrdStart) ([]string, error) {
	if !isSystemd(init) {
		return nil, nil
	}
	// No MFD_CLOEXEC: systemd reads it after the exec.
	fd, err := unix.MemfdCreate("cvmboot-systemd-state", 0)
	if err != nil {
		return nil, fmt.Errorf("systemd state: %w", err)
	}
	// Written through the raw fd: an *os.File would close it from its finalizer when the
	// collector runs before the exec (the read-ahead goroutine allocates meanwhile), and
	// systemd would find no state and freeze.
	for b := systemdState(t); len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			return nil, fmt.Errorf("systemd state: %w", err)
		}
		b = b[n:]
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, fmt.Errorf("systemd state: %w", err)
	}
	return []string{"--switched-root", "--system", "--deserialize=" + strconv.Itoa(fd)}, nil
}
