package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxDeleteErrors bounds the errors DeleteTree reports; the rest are
// counted.
const maxDeleteErrors = 8

// DeleteTree deletes everything below dir (not dir itself) that lives on
// device dev and in dir's own mount. It never follows symbolic links (they
// are unlinked), never enters another mount (other device, or another
// mount of the same device where the kernel reports mount IDs), and leaves
// the paths in keep and their parents alone. It walks with directory file
// descriptors, so a path being renamed meanwhile cannot redirect it.
func DeleteTree(dir string, dev uint64, keep ...string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("delete tree: opening %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("delete tree: stat %s: %w", dir, err)
	}
	if st.Dev != dev {
		return fmt.Errorf("delete tree: %s is on device %d:%d, expected %d:%d; refusing",
			dir, unix.Major(st.Dev), unix.Minor(st.Dev), unix.Major(dev), unix.Minor(dev))
	}
	d := &deleter{dev: dev, keep: map[fileID]bool{}}
	d.mntID, d.haveMntID = mountID(fd, "")
	for _, k := range keep {
		var kst unix.Stat_t
		if unix.Lstat(k, &kst) == nil {
			d.keep[fileID{kst.Dev, kst.Ino}] = true
		}
	}
	d.deleteChildren(fd, dir)
	if d.failed > maxDeleteErrors {
		d.errs = append(d.errs, fmt.Errorf("and %d more errors", d.failed-maxDeleteErrors))
	}
	return errors.Join(d.errs...)
}

type fileID struct{ dev, ino uint64 }

type deleter struct {
	dev       uint64
	mntID     uint64
	haveMntID bool
	keep      map[fileID]bool
	errs      []error
	failed    int
}

func (d *deleter) fail(err error) {
	d.failed++
	if d.failed <= maxDeleteErrors {
		d.errs = append(d.errs, err)
	}
}

// mountID returns the mount ID of name relative to dirfd (dirfd itself for
// ""), without following a final symlink. ok is false on kernels without
// STATX_MNT_ID (before 5.8).
func mountID(dirfd int, name string) (uint64, bool) {
	flags := unix.AT_SYMLINK_NOFOLLOW | unix.AT_NO_AUTOMOUNT
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, name, flags, unix.STATX_MNT_ID, &stx); err != nil || stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, false
	}
	return stx.Mnt_id, true
}

// deleteChildren empties the directory open at fd (shown as path in
// errors) and reports whether something had to stay.
func (d *deleter) deleteChildren(fd int, path string) (kept bool) {
	names, err := readDirNames(fd)
	if err != nil {
		d.fail(fmt.Errorf("reading directory %s: %w", path, err))
		return true
	}
	for _, name := range names {
		child := filepath.Join(path, name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if !errors.Is(err, unix.ENOENT) {
				d.fail(fmt.Errorf("stat %s: %w", child, err))
				kept = true
			}
			continue
		}
		if d.keep[fileID{st.Dev, st.Ino}] {
			kept = true
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// Files, symlinks (not followed), device nodes, sockets.
			if err := unix.Unlinkat(fd, name, 0); err != nil {
				d.fail(fmt.Errorf("unlink %s: %w", child, err))
				kept = true
			}
			continue
		}
		if st.Dev != d.dev || d.otherMount(fd, name) {
			kept = true // a mount point: neither entered nor removed
			continue
		}
		cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			d.fail(fmt.Errorf("opening %s: %w", child, err))
			kept = true
			continue
		}
		// Re-check on the open descriptor: the entry may have been swapped
		// for a mount point between fstatat and openat.
		var cst unix.Stat_t
		if err := unix.Fstat(cfd, &cst); err != nil || cst.Dev != d.dev || cst.Ino != st.Ino || d.otherMount(cfd, "") {
			unix.Close(cfd)
			kept = true
			continue
		}
		childKept := d.deleteChildren(cfd, child)
		unix.Close(cfd)
		if childKept {
			kept = true
			continue
		}
		if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil {
			d.fail(fmt.Errorf("rmdir %s: %w", child, err))
			kept = true
		}
	}
	return kept
}

// otherMount reports whether name (relative to fd) is in another mount
// than the tree's root: this catches bind mounts of the same file system,
// which the device number alone cannot.
func (d *deleter) otherMount(fd int, name string) bool {
	if !d.haveMntID {
		return false
	}
	id, ok := mountID(fd, name)
	return ok && id != d.mntID
}

// readDirNames lists the directory open at fd without consuming fd (a
// duplicate is read and closed).
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(dup)
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}
