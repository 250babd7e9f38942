package storage

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Getrandom is the kernel CSPRNG through getrandom(2) without flags, which
// blocks until the CRNG is initialized: early in boot a key must never come
// from an unseeded pool.
type Getrandom struct{}

// Fill implements Random.
func (Getrandom) Fill(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Getrandom(b, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("getrandom: %w", err)
		}
		b = b[n:]
	}
	return nil
}

// KernelKeyring adds keys to the calling thread's keyring, as cryptsetup
// does. dm-crypt looks the key up with the credentials of the thread that
// loads the table, so the caller must hold its OS thread
// (runtime.LockOSThread) from AddLogon to the table load: a keyring made
// on one thread is not in the credentials of the process's other threads
// (measured: ENOKEY from DM_TABLE_LOAD when Go moved the goroutine).
type KernelKeyring struct{}

// AddLogon implements Keyring.
func (KernelKeyring) AddLogon(desc string, payload []byte) (int, error) {
	id, err := unix.AddKey("logon", desc, payload, unix.KEY_SPEC_THREAD_KEYRING)
	if err != nil {
		return 0, fmt.Errorf("adding logon key %q to the thread keyring: %w", desc, err)
	}
	return id, nil
}

// Invalidate implements Keyring.
func (KernelKeyring) Invalidate(id int) error {
	if _, err := unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0); err != nil {
		return fmt.Errorf("invalidating key %d: %w", id, err)
	}
	return nil
}
