// Package initramfs writes the initramfs that starts cvmboot: a newc cpio archive holding
// the static agent as /init, its configuration, the kernel modules it loads and the few
// directories and device nodes a PID 1 needs before devtmpfs is mounted.
package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// File type bits of st_mode as the newc format stores them.
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// newcMagic starts every newc header (the variant without checksums).
const newcMagic = "070701"

// trailerName marks the end of a cpio archive.
const trailerName = "TRAILER!!!"

// maxFileSize is the largest file a newc header can describe (32-bit size field).
const maxFileSize = 1<<32 - 1

// entry is one archive member.
type entry struct {
	mode       uint32 // st_mode: file type and permission bits
	data       []byte // regular file content, or symlink target
	src        string // regular file read from disk at write time, instead of data
	size       int64  // size of src when added
	rdevMajor  uint32
	rdevMinor  uint32
	isExplicit bool // added by the caller, not created as a missing parent
}

// Archive collects the members of a newc cpio archive and writes them in a fixed order:
// sorted by path, parents created as needed, owner root, inode numbers counted from 1 and
// one modification time for all. The same members always give the same bytes.
// The zero value is an empty archive with modification time 0.
type Archive struct {
	// MTime is the modification time of every member, in seconds since the epoch.
	MTime uint32

	entries map[string]*entry
}

// cleanName turns an archive path ("/etc/x", "etc/x") into the member name ("etc/x"),
// refusing paths that would leave the archive root.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("archive path %q contains a NUL byte", name)
	}
	n := path.Clean("/" + name)[1:]
	// A member named like the trailer ends the archive for the kernel: not the path, and not
	// the parent directory the writer would add for it ("TRAILER!!!/x").
	first, _, _ := strings.Cut(n, "/")
	if n == "" || first == trailerName || strings.Contains("/"+name+"/", "/../") {
		return "", fmt.Errorf("archive path %q is not a file path inside the archive", name)
	}
	return n, nil
}

func permBits(perm fs.FileMode) uint32 {
	bits := uint32(perm.Perm())
	if perm&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if perm&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if perm&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

func (a *Archive) add(name string, e *entry) error {
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if a.entries == nil {
		a.entries = map[string]*entry{}
	}
	isDir := e.mode&0o170000 == modeDir
	if old, ok := a.entries[n]; ok && old.isExplicit {
		// Re-adding a directory only updates its permissions; anything else is a conflict
		// the caller must resolve, since one of the two contents would be lost.
		if !isDir || old.mode&0o170000 != modeDir {
			return fmt.Errorf("archive path /%s added twice", n)
		}
	}
	for p := path.Dir(n); p != "."; p = path.Dir(p) {
		if old, ok := a.entries[p]; ok && old.mode&0o170000 != modeDir {
			return fmt.Errorf("archive path /%s needs /%s to be a directory, but it was added as a file", n, p)
		}
	}
	if !isDir {
		for other := range a.entries {
			if strings.HasPrefix(other, n+"/") {
				return fmt.Errorf("archive path /%s is added as a file, but /%s is below it", n, other)
			}
		}
	}
	e.isExplicit = true
	a.entries[n] = e
	return nil
}

// AddDir adds a directory.
func (a *Archive) AddDir(name string, perm fs.FileMode) error {
	return a.add(name, &entry{mode: modeDir | permBits(perm)})
}

// AddFile adds a regular file holding data.
func (a *Archive) AddFile(name string, perm fs.FileMode, data []byte) error {
	if int64(len(data)) > maxFileSize {
		return fmt.Errorf("archive file /%s is %d bytes, newc allows at most %d", name, len(data), int64(maxFileSize))
	}
	return a.add(name, &entry{mode: modeRegular | permBits(perm), data: data})
}

// AddFileFrom adds a regular file whose content is read from src when the archive is
// written, so large files are not held in memory. src must stay unchanged until then.
func (a *Archive) AddFileFrom(name string, perm fs.FileMode, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("archive file /%s: %w", strings.TrimPrefix(name, "/"), err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("archive file /%s: source %s is a %s, expected a regular file", strings.TrimPrefix(name, "/"), src, st.Mode().Type())
	}
	if st.Size() > maxFileSize {
		return fmt.Errorf("archive file /%s: source %s is %d bytes, newc allows at most %d", strings.TrimPrefix(name, "/"), src, st.Size(), int64(maxFileSize))
	}
	return a.add(name, &entry{mode: modeRegular | permBits(perm), src: src, size: st.Size()})
}

// AddSymlink adds a symbolic link to target.
func (a *Archive) AddSymlink(name, target string) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("archive symlink /%s: target %q is empty or contains NUL", strings.TrimPrefix(name, "/"), target)
	}
	return a.add(name, &entry{mode: modeSymlink | 0o777, data: []byte(target)})
}

// AddCharDevice adds a character device node.
func (a *Archive) AddCharDevice(name string, perm fs.FileMode, major, minor uint32) error {
	return a.add(name, &entry{mode: modeCharDev | permBits(perm), rdevMajor: major, rdevMinor: minor})
}

// complete returns the member names in archive order, with missing parent directories
// added as 0755 directories.
func (a *Archive) complete() []string {
	for n := range a.entries {
		for p := path.Dir(n); p != "."; p = path.Dir(p) {
			if _, ok := a.entries[p]; !ok {
				a.entries[p] = &entry{mode: modeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	// A parent's name is a prefix of its children's, so plain byte order puts every
	// directory before what it contains.
	slices.Sort(names)
	return names
}

// Paths returns the member paths ("/etc/x") in the order WriteTo writes them, including
// parent directories created implicitly.
func (a *Archive) Paths() []string {
	names := a.complete()
	for i, n := range names {
		names[i] = "/" + n
	}
	return names
}

// WriteTo writes the archive, ending with the trailer, and returns the bytes written.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: bufio.NewWriterSize(w, 64<<10)}
	for i, n := range a.complete() {
		e := a.entries[n]
		if err := a.writeEntry(cw, uint32(i+1), n, e); err != nil {
			return cw.n, err
		}
	}
	if err := writeHeader(cw, header{name: trailerName, nlink: 1}); err != nil {
		return cw.n, err
	}
	return cw.n, cw.w.(*bufio.Writer).Flush()
}

func (a *Archive) writeEntry(w *countingWriter, ino uint32, name string, e *entry) error {
	h := header{
		name:      name,
		ino:       ino,
		mode:      e.mode,
		nlink:     1,
		mtime:     a.MTime,
		rdevMajor: e.rdevMajor,
		rdevMinor: e.rdevMinor,
	}
	if e.mode&0o170000 == modeDir {
		h.nlink = 2
	}
	if e.src == "" {
		h.size = uint32(len(e.data))
		if err := writeHeader(w, h); err != nil {
			return err
		}
		if _, err := w.Write(e.data); err != nil {
			return err
		}
		return pad(w)
	}
	f, err := os.Open(e.src)
	if err != nil {
		return fmt.Errorf("archive file /%s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("archive file /%s: %w", name, err)
	}
	if st.Size() != e.size {
		return fmt.Errorf("archive file /%s: source %s changed size from %d to %d bytes after it was added", name, e.src, e.size, st.Size())
	}
	h.size = uint32(e.size)
	if err := writeHeader(w, h); err != nil {
		return err
	}
	if n, err := io.CopyN(w, f, e.size); err != nil {
		return fmt.Errorf("archive file /%s: copy %s: %d of %d bytes: %w", name, e.src, n, e.size, err)
	}
	return pad(w)
}

// header holds the newc header fields that vary; the others are always zero (uid, gid,
// device of the containing file system, checksum).
type header struct {
	name      string
	ino       uint32
	mode      uint32
	nlink     uint32
	mtime     uint32
	size      uint32
	rdevMajor uint32
	rdevMinor uint32
}

// writeHeader writes the 110-byte header, the NUL-terminated name and the padding that
// brings the data to a 4-byte boundary.
func writeHeader(w *countingWriter, h header) error {
	_, err := fmt.Fprintf(w, "%s%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		newcMagic, h.ino, h.mode, 0, 0, h.nlink, h.mtime, h.size, 0, 0, h.rdevMajor, h.rdevMinor,
		len(h.name)+1, 0, h.name)
	if err != nil {
		return err
	}
	return pad(w)
}

// pad writes NULs up to the next multiple of 4 bytes of archive offset.
func pad(w *countingWriter) error {
	if r := w.n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}

// countingWriter tracks the archive offset, which decides the padding.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
