package storage

import (
	"errors"
	"fmt"
	"os"

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

// lockedKey is key material in its own anonymous mapping: locked in RAM
// (never swapped), excluded from core dumps and from forked children, and
// zeroed by Wipe. The Go heap never holds a copy.
type lockedKey struct {
	mem []byte // the whole mapping (one page)
	n   int
}

func newLockedKey(n int) (*lockedKey, error) {
	page := os.Getpagesize()
	if n <= 0 || n > page {
		return nil, fmt.Errorf("key size %d: expected 1 to %d bytes", n, page)
	}
	mem, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mapping key memory: %w", err)
	}
	k := &lockedKey{mem: mem, n: n}
	if err := unix.Mlock(mem); err != nil {
		k.Wipe()
		return nil, fmt.Errorf("locking key memory in RAM (mlock): %w", err)
	}
	// Best effort: a kernel without these advices still has a locked key.
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_WIPEONFORK)
	return k, nil
}

// Bytes is the key; it is valid until Wipe.
func (k *lockedKey) Bytes() []byte {
	if k.mem == nil {
		return nil
	}
	return k.mem[:k.n]
}

// Wipe zeroes the key and releases its mapping; it may be called again.
func (k *lockedKey) Wipe() {
	if k.mem == nil {
		return
	}
	clear(k.mem)
	_ = unix.Munlock(k.mem)
	_ = unix.Munmap(k.mem)
	k.mem = nil
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
