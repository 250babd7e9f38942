package storage

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// SysMounter is Mounter on mount(2).
type SysMounter struct{}

// Mount implements Mounter.
func (SysMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (type %q, flags %#x, options %q): %w", source, target, fstype, flags, data, err)
	}
	return nil
}

// Unmount implements Mounter; it detaches, so a busy mount still goes.
func (SysMounter) Unmount(target string) error {
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting %s: %w", target, err)
	}
	return nil
}

// MkdirAll implements Mounter.
func (SysMounter) MkdirAll(path string) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("creating mount point %s: %w", path, err)
	}
	return nil
}

// mountFlags are the flags of every storage mount: container storage holds
// no device nodes or set-id programs that should work from it.
const mountFlags = unix.MS_NODEV | unix.MS_NOSUID
