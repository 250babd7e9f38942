package persist

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/mount"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
)

// DeviceTPM is TPMs on /dev/tpmrm0 (DevDir when set).
type DeviceTPM struct{ DevDir string }

// Open implements TPMs.
func (d DeviceTPM) Open() (tpmseal.TPM, func(), error) {
	path := filepath.Join(d.DevDir, "tpmrm0")
	if d.DevDir == "" {
		path = "/dev/tpmrm0"
	}
	t, err := linuxtpm.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the TPM %s for the persistent root's key: %w", path, err)
	}
	return t, func() { t.Close() }, nil
}

// DirectCopier copies with O_DIRECT in large blocks, reading the next block while the
// last one is written: the source's blocks are hashed by dm-verity and the destination's
// encrypted and tagged, on different CPUs.
type DirectCopier struct {
	Log *zap.Logger
	// BlockSize is the I/O size; 4 MiB when zero.
	BlockSize int
}

// Copy implements Copier.
func (c DirectCopier) Copy(ctx context.Context, src, dst string, n int64) error {
	bs := c.BlockSize
	if bs == 0 {
		bs = 4 << 20
	}
	if n%4096 != 0 {
		return fmt.Errorf("%s: %d bytes is not a whole number of 4 KiB blocks", src, n)
	}
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer out.Close()

	type block struct {
		buf []byte
		off int64
		n   int
	}
	const depth = 2
	free := make(chan []byte, depth+1)
	for range depth + 1 {
		b, err := unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		defer unix.Munmap(b)
		free <- b
	}
	full := make(chan block, depth)
	readErr := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(full)
		for off := int64(0); off < n; {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				readErr <- ctx.Err()
				return
			}
			m := int(min(int64(bs), n-off))
			if _, err := in.ReadAt(buf[:m], off); err != nil {
				readErr <- fmt.Errorf("reading %s at byte %d: %w", src, off, err)
				return
			}
			full <- block{buf: buf, off: off, n: m}
			off += int64(m)
		}
		readErr <- nil
	}()
	for b := range full {
		if _, err := out.WriteAt(b.buf[:b.n], b.off); err != nil {
			cancel()
			for range full {
			}
			return fmt.Errorf("writing %s at byte %d: %w", dst, b.off, err)
		}
		free <- b.buf
	}
	if err := <-readErr; err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", dst, err)
	}
	return nil
}

// Ext4 is Filesystem for ext4, the one file system the persistent root grows.
type Ext4 struct{ Log *zap.Logger }

// Mount implements Filesystem.
func (e Ext4) Mount(dev, target string) (string, error) {
	return mount.WritableRootWithLog(e.Log, dev, "ext4", target, "")
}

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): online growth to a block count.
const ext4IocResizeFS = 0x40086610

// Grow implements Filesystem.
func (e Ext4) Grow(dev, target string) (int64, int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, 0, fmt.Errorf("reading the ext4 superblock of %s: %w", dev, err)
	}
	blocks, bs, err := ext4Size(sb)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", dev, err)
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		return 0, 0, err
	}
	before := int64(blocks) * bs
	want := uint64(size / bs)
	if want <= blocks {
		return before, before, nil
	}
	if err := prewriteGroupHeads(dev, sb, blocks, want); err != nil {
		return before, before, err
	}
	d, err := os.Open(target)
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, d.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&want))); errno != 0 {
		return before, before, fmt.Errorf("growing the ext4 file system on %s from %d to %d blocks (EXT4_IOC_RESIZE_FS): %w", dev, blocks, want, errno)
	}
	return before, int64(want) * bs, nil
}

// prewriteGroupHeads writes zeros over the head of every block group the growth adds: the
// superblock and descriptor table backups, the reserved descriptor blocks and the new
// bitmaps, which the kernel's resize reads before it writes them (measured: an inode bitmap
// of the first new group). dm-integrity fails a read of a sector never
// written (its tag is not valid), and the partition past the copied root was never
// written; everything else the resize touches it writes first.
func prewriteGroupHeads(dev string, sb []byte, oldBlocks, newBlocks uint64) error {
	le32 := func(off int) uint64 { return uint64(binary.LittleEndian.Uint32(sb[off:])) }
	bs := uint64(1024) << le32(0x18)
	first, perGroup := le32(0x14), le32(0x20)
	reserved := uint64(binary.LittleEndian.Uint16(sb[0xCE:]))
	descSize := uint64(32)
	if le32(0x60)&0x80 != 0 {
		if d := uint64(binary.LittleEndian.Uint16(sb[0xFE:])); d >= 32 {
			descSize = d
		}
	}
	if perGroup == 0 || perGroup > 8*bs {
		return fmt.Errorf("ext4 superblock: %d blocks per group", perGroup)
	}
	groups := func(blocks uint64) uint64 { return (blocks - first + perGroup - 1) / perGroup }
	gdtBlocks := (groups(newBlocks)*descSize + bs - 1) / bs
	// With flex_bg the resize puts the new groups' block and inode bitmaps right after the
	// first new group's descriptor backups, and reads them: two per group of a flex group.
	bitmaps := uint64(2)
	if le32(0x60)&0x200 != 0 { // INCOMPAT_FLEX_BG
		bitmaps = 2 << min(uint64(sb[0x174]), 16)
	}
	head := min(perGroup, 1+gdtBlocks+reserved+bitmaps+8)
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	zero, err := unix.Mmap(-1, 0, int(head*bs), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(zero)
	for g := groups(oldBlocks); g < groups(newBlocks); g++ {
		start := first + g*perGroup
		n := min(head, newBlocks-start)
		if _, err := f.WriteAt(zero[:n*bs], int64(start*bs)); err != nil {
			return fmt.Errorf("writing the head of new block group %d on %s: %w", g, dev, err)
		}
	}
	return f.Sync()
}

// checkSource refuses a verified root the persistent root cannot run on: only ext4 without
// bigalloc is grown and mounted read-write.
func (s *Stage) checkSource(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return fmt.Errorf("reading the file system superblock of %s: %w", dev, err)
	}
	if _, _, err := ext4Size(sb); err != nil {
		return fmt.Errorf("root.persistent: the verified root %s: %w", dev, err)
	}
	if binary.LittleEndian.Uint32(sb[0x64:])&0x200 != 0 { // RO_COMPAT_BIGALLOC
		return fmt.Errorf("root.persistent: the verified root %s is ext4 with bigalloc, which the persistent root does not grow", dev)
	}
	return nil
}

// ext4Size reads the block count and block size from an ext4 superblock.
func ext4Size(sb []byte) (uint64, int64, error) {
	if len(sb) < 0x158 {
		return 0, 0, fmt.Errorf("ext4 superblock: %d bytes, want 1024", len(sb))
	}
	if m := binary.LittleEndian.Uint16(sb[0x38:]); m != 0xEF53 {
		return 0, 0, fmt.Errorf("not an ext4 file system (no superblock magic 0xEF53, found 0x%04X): the persistent root grows ext4 only", m)
	}
	logBS := binary.LittleEndian.Uint32(sb[0x18:])
	if logBS > 6 {
		return 0, 0, fmt.Errorf("ext4 superblock: block size 2^(10+%d) is out of range", logBS)
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return blocks, 1024 << logBS, nil
}
