package persist

import (
	"context"

	"github.com/cvmboot/cvmboot/internal/tpmseal"
)

// The stage's side effects beyond storage's (storage.Disk, Devices, DeviceMapper, Keyring,
// Random), each behind an interface: unit tests pass fakes, the VM tests the real ones.

// TPMs opens the TPM that seals the key.
type TPMs interface {
	// Open returns a connection and how to close it. Closing flushes the objects and
	// sessions the connection still holds, as the kernel's resource manager does for
	// /dev/tpmrm0: the unlock leaves its handles to the close.
	Open() (tpmseal.TPM, func(), error)
}

// Copier copies the verified root into the encrypted volume.
type Copier interface {
	// Copy copies the first n bytes of src to dst and flushes dst.
	Copy(ctx context.Context, src, dst string, n int64) error
}

// Filesystem mounts the root read-write and grows it to its device.
type Filesystem interface {
	// Mount mounts dev read-write at target and returns the file system type.
	Mount(dev, target string) (string, error)
	// Grow grows the file system mounted at target on dev to the size of dev, when it is
	// smaller; it returns the sizes before and after, in bytes.
	Grow(dev, target string) (before, after int64, err error)
}
