// Package secret holds key material outside the Go heap: in its own
// anonymous mapping, locked in RAM, excluded from core dumps and forked
// children, zeroed on Wipe.
package secret

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Locked is one page of locked memory of which the first n bytes are in use.
// The Go heap never holds a copy of what it holds.
type Locked struct {
	mem []byte // the whole mapping (one page)
	n   int
}

// New maps and locks a page for n bytes (1 to the page size).
func New(n int) (*Locked, error) {
	page := os.Getpagesize()
	if n <= 0 || n > page {
		return nil, fmt.Errorf("secret size %d: expected 1 to %d bytes", n, page)
	}
	mem, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mapping secret memory: %w", err)
	}
	k := &Locked{mem: mem, n: n}
	if err := unix.Mlock(mem); err != nil {
		k.Wipe()
		return nil, fmt.Errorf("locking secret memory in RAM (mlock): %w", err)
	}
	// Best effort: a kernel without these advices still has locked memory.
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	_ = unix.Madvise(mem, unix.MADV_WIPEONFORK)
	return k, nil
}

// Bytes is the secret; it is valid until Wipe.
func (k *Locked) Bytes() []byte {
	if k.mem == nil {
		return nil
	}
	return k.mem[:k.n]
}

// Wipe zeroes the page and releases its mapping; it may be called again.
func (k *Locked) Wipe() {
	if k.mem == nil {
		return
	}
	clear(k.mem)
	_ = unix.Munlock(k.mem)
	_ = unix.Munmap(k.mem)
	k.mem = nil
}
