package storage

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment of direct I/O offsets, lengths and buffers:
// the largest logical block size (the crypt device's 4 KiB sectors).
const directAlign = 4096

// BlockDevices is Devices on the real /dev nodes. Image files work too
// (for tests): where O_DIRECT is unsupported (tmpfs) they fall back to
// buffered I/O.
type BlockDevices struct{}

// Number implements Devices.
func (BlockDevices) Number(path string) (uint32, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, fmt.Errorf("%s is not a block device (mode %#o)", path, st.Mode)
	}
	return unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), nil
}

// Size implements Devices.
func (BlockDevices) Size(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return deviceSize(f)
}

func deviceSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64 on %s: %w", f.Name(), errno)
	}
	return int64(size), nil
}

// Open implements Devices. O_EXCL on a block device fails with EBUSY while
// anything (a mount, a device-mapper table) holds it.
func (BlockDevices) Open(path string) (Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s exclusively: %w", path, err)
	}
	return &syncedFile{f}, nil
}

type syncedFile struct{ *os.File }

func (s *syncedFile) Close() error {
	err := s.Sync()
	if err == nil {
		// Drop cached pages; only block devices know the ioctl.
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, s.Fd(), unix.BLKFLSBUF, 0); errno != 0 && errno != unix.ENOTTY && errno != unix.EINVAL {
			err = fmt.Errorf("BLKFLSBUF on %s: %w", s.Name(), errno)
		}
	}
	if cerr := s.File.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("closing %s: %w", s.Name(), err)
	}
	return nil
}

// openDirect opens path with O_DIRECT, or buffered when the file system
// (tmpfs) refuses O_DIRECT on a regular file.
func openDirect(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EINVAL) {
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().IsRegular() {
			f, err = os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return f, nil
}

// alignedBuffer is page-aligned anonymous memory for O_DIRECT.
func alignedBuffer(n int) ([]byte, func(), error) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("mapping a %d-byte I/O buffer: %w", n, err)
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}

func checkAligned(off, n int64) error {
	if off < 0 || n <= 0 || off%directAlign != 0 || n%directAlign != 0 {
		return fmt.Errorf("direct I/O of %d bytes at %d: expected positive multiples of %d", n, off, directAlign)
	}
	return nil
}

// ReadDirect implements Devices.
func (BlockDevices) ReadDirect(path string, off int64, b []byte) error {
	if err := checkAligned(off, int64(len(b))); err != nil {
		return err
	}
	f, err := openDirect(path, os.O_RDONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, free, err := alignedBuffer(len(b))
	if err != nil {
		return err
	}
	defer free()
	if _, err := f.ReadAt(buf, off); err != nil {
		return fmt.Errorf("reading %d bytes at %d of %s: %w", len(b), off, path, err)
	}
	copy(b, buf)
	return nil
}

// zeroChunk is the size of one direct zero write.
const zeroChunk = 1 << 20

// ZeroDirect implements Devices.
func (BlockDevices) ZeroDirect(path string, off, n int64) error {
	if err := checkAligned(off, n); err != nil {
		return err
	}
	f, err := openDirect(path, os.O_WRONLY)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, free, err := alignedBuffer(int(min(n, zeroChunk)))
	if err != nil {
		return err
	}
	defer free()
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		if _, err := f.WriteAt(buf[:k], off+done); err != nil {
			return fmt.Errorf("writing zeros at %d of %s: %w", off+done, path, err)
		}
		done += k
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}

// Written implements Devices: sectors written (field 7 of /sys/dev/block/M:m/stat, in
// 512-byte units whatever the device's sector size).
func (d BlockDevices) Written(path string) (int64, error) {
	maj, min, err := d.Number(path)
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", maj, min))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, fmt.Errorf("/sys/dev/block/%d:%d/stat has %d fields, want at least 7", maj, min, len(f))
	}
	n, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/sys/dev/block/%d:%d/stat: sectors written %q: %w", maj, min, f[6], err)
	}
	return n * 512, nil
}
