package storage

import (
	"context"
	"io"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
)

// The stage's side effects, each behind an interface: unit tests pass fakes, the VM tests
// the real implementations (BlockDevices, Mkfs, Getrandom, KernelKeyring, SysMounter,
// RootDisk, *dm.Control).

// Disk finds or makes the storage partition on the disk holding the root.
type Disk interface {
	Prepare(ctx context.Context, rootDevice string, req disk.Request) (*disk.Partition, error)
}

// DeviceMapper is what the stage needs of device-mapper; *dm.Control has it.
type DeviceMapper interface {
	CreateAndLoad(name, uuid string, targets []dm.Target, readOnly bool) (dm.Device, error)
	Remove(name string) error
}

// Devices is the block device access the stage needs beyond device-mapper.
type Devices interface {
	// Number returns the device number of a block device node.
	Number(path string) (major, minor uint32, err error)
	// Size returns the size of a block device in bytes.
	Size(path string) (int64, error)
	// Open opens a device exclusively for the LUKS2 metadata writes. Close
	// syncs and drops the device's page cache, so that later readers see
	// what the kernel (dm-integrity) writes underneath.
	Open(path string) (Device, error)
	// ReadDirect reads len(b) bytes at off, bypassing the page cache (the
	// dm-integrity superblock is written by the kernel, not through it).
	ReadDirect(path string, off int64, b []byte) error
	// ZeroDirect writes n zero bytes at off, bypassing the page cache.
	ZeroDirect(path string, off, n int64) error
	// Written returns the bytes written to a block device since it appeared, from the
	// kernel's I/O counters.
	Written(path string) (int64, error)
}

// Device is an opened block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Close() error
}

// Formatter creates the file system on the opened volume.
type Formatter interface {
	Format(ctx context.Context, dev string, size int64) error
	// MountData are the file system's mount options the format relies on.
	MountData() string
}

// Random fills buffers with key material.
type Random interface {
	Fill(b []byte) error
}

// Keyring hands the volume key to the kernel: dm-crypt reads it from a
// logon key, so the key never appears in a table string (which would be a
// Go heap copy nobody can wipe, and readable with dmsetup table --showkeys).
type Keyring interface {
	// AddLogon adds a logon key (readable by the kernel only) and returns its id.
	AddLogon(desc string, payload []byte) (int, error)
	// Invalidate removes the key at once; dm-crypt keeps its own copy.
	Invalidate(id int) error
}

// Mounter mounts file systems.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string) error
	MkdirAll(path string) error
}
