package mount

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
)

// notMountable are probe results that are containers or metadata, not file
// systems: mounting them is a configuration error, not a reason to guess.
var notMountable = map[string]bool{
	"crypto_LUKS":    true,
	"DM_verity_hash": true,
	"DM_integrity":   true,
	"swap":           true,
	"jbd":            true,
}

// optionFlags are the mount(8) options that map to MS_* flags; everything
// else is passed to the file system as data.
var optionFlags = map[string]struct {
	set   uintptr
	clear uintptr
}{
	"ro":          {set: unix.MS_RDONLY},
	"nosuid":      {set: unix.MS_NOSUID},
	"nodev":       {set: unix.MS_NODEV},
	"noexec":      {set: unix.MS_NOEXEC},
	"noatime":     {set: unix.MS_NOATIME},
	"nodiratime":  {set: unix.MS_NODIRATIME},
	"relatime":    {set: unix.MS_RELATIME},
	"strictatime": {set: unix.MS_STRICTATIME},
	"lazytime":    {set: unix.MS_LAZYTIME},
	"sync":        {set: unix.MS_SYNCHRONOUS},
	"dirsync":     {set: unix.MS_DIRSYNC},
	"silent":      {set: unix.MS_SILENT},
	"suid":        {clear: unix.MS_NOSUID},
	"dev":         {clear: unix.MS_NODEV},
	"exec":        {clear: unix.MS_NOEXEC},
	"atime":       {clear: unix.MS_NOATIME},
	"defaults":    {},
}

// ParseOptions splits a mount(8)-style option list into MS_* flags and the
// file-system data string.
func ParseOptions(opts string) (flags uintptr, data string, err error) {
	var rest []string
	for _, o := range strings.Split(opts, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if f, ok := optionFlags[o]; ok {
			flags = flags&^f.clear | f.set
			continue
		}
		if o == "rw" {
			return 0, "", fmt.Errorf("mount option %q: the root is always mounted read-only", o)
		}
		rest = append(rest, o)
	}
	return flags, strings.Join(rest, ","), nil
}

// rootMounter holds what Root needs from the system, replaceable in tests.
type rootMounter struct {
	log             *zap.Logger
	filesystemsPath string
	mount           func(source, target, fstype string, flags uintptr, data string) error
	probe           func(dev string) (blockdev.FSInfo, error)
	// logicalBlockSize is the device's logical block size (BLKSSZGET); nil: unknown.
	logicalBlockSize func(dev string) (int, error)
	// writable mounts read-write: the persistent root (root.persistent), never the image's.
	writable bool
}

// Root mounts dev read-only on target. fstype "auto" (or "") probes the
// device's signature and falls back to every block file system the kernel
// lists in /proc/filesystems. extraOpts is a mount(8) option list; "rw" is
// refused. It returns the file system type that mounted.
func Root(dev, fstype, target, extraOpts string) (string, error) {
	return (&rootMounter{filesystemsPath: "/proc/filesystems", mount: unix.Mount, probe: probeDevice, logicalBlockSize: logicalBlockSize}).mountRoot(dev, fstype, target, extraOpts)
}

// RootWithLog is Root with step logging.
func RootWithLog(log *zap.Logger, dev, fstype, target, extraOpts string) (string, error) {
	return (&rootMounter{log: log, filesystemsPath: "/proc/filesystems", mount: unix.Mount, probe: probeDevice, logicalBlockSize: logicalBlockSize}).mountRoot(dev, fstype, target, extraOpts)
}

// WritableRootWithLog is RootWithLog mounting read-write, for the persistent encrypted root.
func WritableRootWithLog(log *zap.Logger, dev, fstype, target, extraOpts string) (string, error) {
	return (&rootMounter{log: log, filesystemsPath: "/proc/filesystems", mount: unix.Mount, probe: probeDevice,
		logicalBlockSize: logicalBlockSize, writable: true}).mountRoot(dev, fstype, target, extraOpts)
}

// logicalBlockSize asks the kernel for the device's logical block size (BLKSSZGET).
func logicalBlockSize(dev string) (int, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return unix.IoctlGetInt(int(f.Fd()), unix.BLKSSZGET)
}

func probeDevice(dev string) (blockdev.FSInfo, error) {
	f, err := os.Open(dev)
	if err != nil {
		return blockdev.FSInfo{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		size = 0
	}
	return blockdev.Probe(f, size)
}

func (r *rootMounter) mountRoot(dev, fstype, target, extraOpts string) (string, error) {
	log := r.log
	if log == nil {
		log = zap.NewNop()
	}
	flags, data, err := ParseOptions(extraOpts)
	if err != nil {
		return "", fmt.Errorf("mounting root %s on %s: %w", dev, target, err)
	}
	if !r.writable {
		flags |= unix.MS_RDONLY
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", fmt.Errorf("mounting root %s: creating mount point %s: %w", dev, target, err)
	}
	candidates, err := r.candidates(dev, fstype, log)
	if err != nil {
		return "", err
	}
	mode := "read-only"
	if r.writable {
		mode = "read-write"
	}
	var errs []error
	for _, t := range candidates {
		err := r.mount(dev, target, t, flags, data)
		if err == nil {
			log.Info("root mounted "+mode, zap.String("device", dev), zap.String("fstype", t),
				zap.String("target", target), zap.String("options", data))
			return t, nil
		}
		if errors.Is(err, unix.EINVAL) {
			if serr := r.blockSizeMismatch(dev, t); serr != nil {
				return "", serr
			}
		}
		me := &Error{Op: "mount " + mode, Source: dev, Target: target, FSType: t, Options: data, Err: err}
		log.Debug("root mount attempt failed", zap.Error(me))
		errs = append(errs, me)
		// A missing device or mount point will not improve with another type.
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EACCES) {
			break
		}
	}
	if len(errs) == 1 {
		return "", errs[0]
	}
	return "", fmt.Errorf("mounting root %s on %s failed with every candidate type %v: %w", dev, target, candidates, errors.Join(errs...))
}

// blockSizeMismatch explains an EINVAL from mount: a file system whose blocks are smaller
// than the device's logical blocks (ext4 made with 1 KiB blocks under a dm-verity device with
// 4 KiB data blocks) cannot be read by the kernel at all. nil when that is not the cause.
func (r *rootMounter) blockSizeMismatch(dev, fstype string) error {
	if r.probe == nil || r.logicalBlockSize == nil {
		return nil
	}
	info, err := r.probe(dev)
	if err != nil || info.BlockSize == 0 {
		return nil
	}
	lbs, err := r.logicalBlockSize(dev)
	if err != nil || lbs <= info.BlockSize {
		return nil
	}
	return fmt.Errorf("mounting root %s on its %s: the %s file system has %d-byte blocks but the device's logical block size is %d bytes (for dm-verity: its data block size), which the kernel cannot serve blocks that small from: make the file system with %d-byte blocks (mkfs.ext4 -b %d) or format dm-verity with --data-block-size=%d",
		dev, fstype, info.Type, info.BlockSize, lbs, lbs, lbs, info.BlockSize)
}

// candidates lists the file system types to try, best first.
func (r *rootMounter) candidates(dev, fstype string, log *zap.Logger) ([]string, error) {
	if fstype != "" && fstype != "auto" {
		return []string{fstype}, nil
	}
	kernel, kerr := readFilesystems(r.filesystemsPath)
	info, err := r.probe(dev)
	switch {
	case err == nil && notMountable[info.Type]:
		return nil, fmt.Errorf("mounting root %s: the device holds %s (UUID %s), not a file system", dev, info.Type, info.UUID)
	case err == nil:
		log.Info("root file system probed", zap.String("device", dev), zap.String("fstype", info.Type), zap.String("uuid", info.UUID))
		list := []string{info.Type}
		// ext2/ext3 are served by the ext4 driver on kernels built without
		// the older drivers.
		if (info.Type == "ext2" || info.Type == "ext3") && kerr == nil {
			if _, ok := kernel[info.Type]; !ok {
				list = []string{"ext4"}
			}
		}
		return list, nil
	case errors.Is(err, blockdev.ErrUnknownFS):
		log.Warn("no known signature on the root device, trying every block file system", zap.String("device", dev))
	default:
		// Opening may fail for a reason mount(2) reports better; still try.
		log.Warn("probing the root device failed, trying every block file system", zap.String("device", dev), zap.Error(err))
	}
	if kerr != nil {
		return nil, fmt.Errorf("mounting root %s: no signature found and the kernel's file systems are unknown: %w", dev, kerr)
	}
	var list []string
	for name, nodev := range kernel {
		if !nodev && name != "fuseblk" {
			list = append(list, name)
		}
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("mounting root %s: no signature found and %s lists no block file system", dev, r.filesystemsPath)
	}
	sort.Strings(list)
	return list, nil
}
