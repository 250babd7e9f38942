package disk

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// diskInfo is what Prepare learns about the opened disk.
type diskInfo struct {
	path       string
	block      bool   // a block device (else an image file)
	name       string // kernel name ("vda") of a block device
	major      uint32
	minor      uint32
	size       int64
	sectorSize int
}

func probeDisk(f *os.File, path string, sectorSize int) (*diskInfo, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	d := &diskInfo{path: path, sectorSize: sectorSize}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		d.size = st.Size
		if d.sectorSize == 0 {
			d.sectorSize = 512
		}
	case unix.S_IFBLK:
		d.block = true
		d.major, d.minor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		var size uint64
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
			return nil, fmt.Errorf("BLKGETSIZE64 on %s: %w", path, errno)
		}
		d.size = int64(size)
		if d.sectorSize == 0 {
			ss, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
			if err != nil {
				return nil, fmt.Errorf("BLKSSZGET on %s: %w", path, err)
			}
			d.sectorSize = ss
		}
	default:
		return nil, fmt.Errorf("%s is neither a block device nor an image file (mode %#o)", path, st.Mode)
	}
	return d, nil
}

func (p *Preparer) sysRoot() string { return cmp.Or(p.SysRoot, "/sys") }
func (p *Preparer) devRoot() string { return cmp.Or(p.DevRoot, "/dev") }

// sysDir returns the sysfs directory of the device major:minor.
func (p *Preparer) sysDir(major, minor uint32) (string, error) {
	link := filepath.Join(p.sysRoot(), "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	dir, err := filepath.EvalSymlinks(link)
	if err != nil {
		return "", fmt.Errorf("block device %d:%d has no sysfs entry %s: %w", major, minor, link, err)
	}
	return dir, nil
}

// tellKernel adds the new partition to the kernel's view of the disk with
// BLKPG_ADD_PARTITION, falling back to a whole-table re-read (BLKRRPART),
// which fails while any partition of the disk is in use.
func (p *Preparer) tellKernel(f *os.File, diskPath string, part *Partition) error {
	err := blkpgAdd(f, part.Number, part.Start, part.Size)
	if err == nil {
		p.log().Debug("BLKPG_ADD_PARTITION done", zap.String("disk", diskPath), zap.Int("number", part.Number))
		return nil
	}
	if errors.Is(err, unix.EBUSY) {
		// The number or range is taken in the kernel's view: fine when it
		// is exactly our partition (a racing re-read saw the new table).
		return nil
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKRRPART, 0)
	if errno == 0 {
		p.log().Info("BLKPG_ADD_PARTITION failed, the partition table was re-read instead", zap.String("disk", diskPath), zap.Error(err))
		return nil
	}
	return fmt.Errorf("telling the kernel about partition %d of %s: BLKPG_ADD_PARTITION: %v; BLKRRPART: %v", part.Number, diskPath, err, errno)
}

func blkpgAdd(f *os.File, number int, start, length int64) error {
	bp := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(number)}
	arg := unix.BlkpgIoctlArg{
		Op:      unix.BLKPG_ADD_PARTITION,
		Datalen: int32(unsafe.Sizeof(bp)),
		Data:    (*byte)(unsafe.Pointer(&bp)),
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKPG, uintptr(unsafe.Pointer(&arg))); errno != 0 {
		return errno
	}
	return nil
}

// waitPartition waits until the kernel shows the partition in sysfs, checks
// its start and size, and returns its /dev node (created when missing and
// Mknod is set).
func (p *Preparer) waitPartition(ctx context.Context, d *diskInfo, part *Partition) (string, error) {
	number := part.Number
	diskDir, err := p.sysDir(d.major, d.minor)
	if err != nil {
		return "", err
	}
	timeout := cmp.Or(p.Timeout, 10*time.Second)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		name, dev, found, err := findPartition(diskDir, number)
		if err != nil {
			return "", err
		}
		if found {
			if err := checkExtent(filepath.Join(diskDir, name), part); err != nil {
				return "", fmt.Errorf("partition %d of %s: %w", number, d.path, err)
			}
			return p.ensureNode(name, dev)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("partition %d of %s did not appear in %s within %s", number, d.path, diskDir, timeout)
		case <-tick.C:
		}
	}
}

// kernelHas reports whether sysfs shows partition number of the disk.
func (p *Preparer) kernelHas(d *diskInfo, number int) (bool, error) {
	diskDir, err := p.sysDir(d.major, d.minor)
	if err != nil {
		return false, err
	}
	_, _, found, err := findPartition(diskDir, number)
	return found, err
}

// checkExtent compares the kernel's start and size of a partition (in
// 512-byte units in sysfs) with the table's.
func checkExtent(dir string, part *Partition) error {
	var got [2]int64
	for i, f := range []string{"start", "size"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Join(dir, f), err)
		}
		if got[i], err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return fmt.Errorf("%s: %q is not a number", filepath.Join(dir, f), strings.TrimSpace(string(b)))
		}
	}
	if got[0]*512 != part.Start || got[1]*512 != part.Size {
		return fmt.Errorf("the kernel has it at byte %d, %d bytes long; the GPT says byte %d, %d bytes (another partition holds this number in the kernel's view)",
			got[0]*512, got[1]*512, part.Start, part.Size)
	}
	return nil
}

// findPartition looks for the child of diskDir whose "partition" file holds
// number and returns its name and MAJOR:MINOR.
func findPartition(diskDir string, number int) (name, dev string, found bool, err error) {
	ents, err := os.ReadDir(diskDir)
	if err != nil {
		return "", "", false, fmt.Errorf("listing %s: %w", diskDir, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(diskDir, e.Name(), "partition"))
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n != number {
			continue
		}
		devb, err := os.ReadFile(filepath.Join(diskDir, e.Name(), "dev"))
		if err != nil {
			return "", "", false, fmt.Errorf("reading %s: %w", filepath.Join(diskDir, e.Name(), "dev"), err)
		}
		return e.Name(), strings.TrimSpace(string(devb)), true, nil
	}
	return "", "", false, nil
}

// ensureNode returns /dev/name after checking it is the block device dev
// (MAJOR:MINOR), creating it when missing and Mknod is set.
func (p *Preparer) ensureNode(name, dev string) (string, error) {
	maj, mnr, ok := strings.Cut(dev, ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(mnr, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return "", fmt.Errorf("partition %s has device number %q: expected MAJOR:MINOR", name, dev)
	}
	want := unix.Mkdev(uint32(ma), uint32(mi))
	path := filepath.Join(p.devRoot(), name)
	for attempt := 0; ; attempt++ {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		if err == nil {
			if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != want {
				return "", fmt.Errorf("%s is not block device %s (mode %#o, device %d:%d)", path, dev, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
			}
			return path, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("stat %s: %w", path, err)
		}
		if p.Mknod {
			if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(want)); err != nil && !errors.Is(err, unix.EEXIST) {
				return "", fmt.Errorf("creating %s (%s): %w", path, dev, err)
			}
			continue
		}
		// devtmpfs creates the node right after the sysfs entry appears.
		if attempt >= 100 {
			return "", fmt.Errorf("%s (%s) is in sysfs but its node did not appear", path, dev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DiskOf returns the /dev node of the whole disk holding devPath: the
// disk itself, the parent of a partition, or the one disk under a
// device-mapper device (dm-verity's data and hash devices must be on the
// same disk).
func (p *Preparer) DiskOf(devPath string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(devPath, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", devPath, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device (mode %#o)", devPath, st.Mode)
	}
	dir, err := p.sysDir(unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if err != nil {
		return "", err
	}
	name, err := diskOfDir(dir, 0)
	if err != nil {
		return "", fmt.Errorf("finding the disk of %s: %w", devPath, err)
	}
	return filepath.Join(p.devRoot(), name), nil
}

func diskOfDir(dir string, depth int) (string, error) {
	if depth > 8 {
		return "", fmt.Errorf("%s: device stack deeper than 8", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return filepath.Base(filepath.Dir(dir)), nil
	}
	slaves, err := os.ReadDir(filepath.Join(dir, "slaves"))
	if err != nil || len(slaves) == 0 {
		return filepath.Base(dir), nil // a whole disk
	}
	disk := ""
	for _, s := range slaves {
		sub, err := filepath.EvalSymlinks(filepath.Join(dir, "slaves", s.Name()))
		if err != nil {
			return "", err
		}
		d, err := diskOfDir(sub, depth+1)
		if err != nil {
			return "", err
		}
		if disk != "" && d != disk {
			return "", fmt.Errorf("%s sits on two disks, %s and %s", filepath.Base(dir), disk, d)
		}
		disk = d
	}
	return disk, nil
}

// busyOverlap refuses a storage range that overlaps another partition the kernel knows of
// on this disk while that partition is in use (mounted, or held by dm-verity or another
// target). The on-disk GPT can differ from the kernel's view: the host may have rewritten it
// after the kernel read it, so free space on disk can still be the mounted root's blocks.
func (p *Preparer) busyOverlap(dev *diskInfo, part *Partition) error {
	dir, err := p.sysDir(dev.major, dev.minor)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	first, end := part.Start/512, (part.Start+part.Size)/512
	for _, e := range ents {
		pdir := filepath.Join(dir, e.Name())
		num, err := readSysInt(filepath.Join(pdir, "partition"))
		if err != nil || (part.Reused && int(num) == part.Number) {
			continue // a reused partition itself is opened exclusively before it is written
		}
		start, err1 := readSysInt(filepath.Join(pdir, "start"))
		size, err2 := readSysInt(filepath.Join(pdir, "size"))
		if err1 != nil || err2 != nil || start >= end || start+size <= first {
			continue
		}
		devb, err := os.ReadFile(filepath.Join(pdir, "dev"))
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Join(pdir, "dev"), err)
		}
		node, err := p.ensureNode(e.Name(), strings.TrimSpace(string(devb)))
		if err != nil {
			return err
		}
		f, err := os.OpenFile(node, os.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err == nil {
			f.Close()
			continue
		}
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("disk %s: storage partition %d (512-byte sectors %d-%d) overlaps the kernel's partition %s (sectors %d-%d), which is in use: the GPT on disk is not the one the kernel read; refusing to write",
				part.Disk, part.Number, first, end-1, e.Name(), start, start+size-1)
		}
		return fmt.Errorf("checking partition %s, which overlaps the storage range: %w", node, err)
	}
	return nil
}

func readSysInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}
