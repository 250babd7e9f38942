// Package warm has the kernel read the new root's init and the shared objects it loads into
// the page cache while the boot still has other work to do. On a dm-verity root every block
// is hashed on its first read; read ahead while storage is set up, the blocks the init
// starts with are verified by the time it runs. Nothing measured or checked changes: the
// blocks pass the same verification, earlier (a corrupted one stops the boot at that read,
// as it would have at the init's).
package warm

import (
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// libDirs are where the dynamic loader looks after DT_RUNPATH (Debian's multiarch first).
var libDirs = []string{"/lib/" + multiarch(), "/usr/lib/" + multiarch(), "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

func multiarch() string {
	if runtime.GOARCH == "arm64" {
		return "aarch64-linux-gnu"
	}
	return "x86_64-linux-gnu"
}

// maxFiles bounds the walk: a init with more shared objects than this is not a boot's.
const maxFiles = 256

// Files returns the files init loads, as paths under root: the executable, its
// interpreter and every DT_NEEDED object found, transitively, in load order. Symbolic links
// resolve inside root. An object not found is left out: the loader will say so.
func Files(root, init string) ([]string, error) {
	first, err := resolve(root, init)
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	queue := []string{first}
	for len(queue) > 0 && len(out) < maxFiles {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, filepath.Join(root, p))
		f, err := elf.Open(filepath.Join(root, p))
		if err != nil {
			if len(out) == 1 {
				return nil, err
			}
			continue
		}
		interp, needed, runpath := dynamic(f)
		f.Close()
		if interp != "" {
			if q, err := resolve(root, interp); err == nil {
				queue = append(queue, q)
			}
		}
		dirs := append(expandOrigin(runpath, path.Dir(p)), libDirs...)
		for _, n := range needed {
			for _, d := range dirs {
				if q, err := resolve(root, path.Join(d, n)); err == nil {
					queue = append(queue, q)
					break
				}
			}
		}
	}
	return out, nil
}

func dynamic(f *elf.File) (interp string, needed, runpath []string) {
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			if b, err := io.ReadAll(io.LimitReader(p.Open(), 4096)); err == nil {
				interp = strings.TrimRight(string(b), "\x00")
			}
		}
	}
	needed, _ = f.DynString(elf.DT_NEEDED)
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		if v, err := f.DynString(tag); err == nil {
			for _, s := range v {
				runpath = append(runpath, strings.Split(s, ":")...)
			}
		}
	}
	return interp, needed, runpath
}

func expandOrigin(dirs []string, origin string) []string {
	var out []string
	for _, d := range dirs {
		d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
		if path.IsAbs(d) {
			out = append(out, d)
		}
	}
	return out
}

// resolve follows symbolic links of p (absolute, inside root) as if root were "/", and
// returns the final path relative to root's view. It fails for anything but a regular file.
func resolve(root, p string) (string, error) {
	cur := path.Clean("/" + p)
	for hops := 0; hops < 40; hops++ {
		// Resolve each component, so that a link in a directory (/lib → usr/lib) counts.
		parts := strings.Split(strings.TrimPrefix(cur, "/"), "/")
		resolved := "/"
		changed := false
		for i, part := range parts {
			next := path.Join(resolved, part)
			fi, err := os.Lstat(filepath.Join(root, next))
			if err != nil {
				return "", err
			}
			if fi.Mode()&os.ModeSymlink != 0 {
				target, err := os.Readlink(filepath.Join(root, next))
				if err != nil {
					return "", err
				}
				if !path.IsAbs(target) {
					target = path.Join(resolved, target)
				}
				cur = path.Clean(path.Join(append([]string{target}, parts[i+1:]...)...))
				changed = true
				break
			}
			resolved = next
		}
		if !changed {
			fi, err := os.Stat(filepath.Join(root, resolved))
			if err != nil {
				return "", err
			}
			if !fi.Mode().IsRegular() {
				return "", errors.New(resolved + " is not a regular file")
			}
			return resolved, nil
		}
	}
	return "", errors.New(p + ": too many symbolic links")
}

// Read reads files through until ctx ends, and returns how many bytes it read.
func Read(ctx context.Context, files []string) int64 {
	buf := make([]byte, 256<<10)
	var n int64
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		for ctx.Err() == nil {
			m, err := f.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		f.Close()
		if ctx.Err() != nil {
			break
		}
	}
	return n
}

// Advise asks the kernel to read files in (POSIX_FADV_WILLNEED, the whole file): the reads
// and their verification run in the kernel's own workers while the caller goes on. The
// kernel reads at most its readahead window per call from the start of each file (about
// 1.25 MiB on a virtio disk and the dm devices over it): the start of each library, not all
// of it, which is what was measured to help. It returns how many files it asked for and
// their size.
func Advise(files []string) (int, int64) {
	var n int
	var size int64
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if fi, err := f.Stat(); err == nil && unix.Fadvise(int(f.Fd()), 0, fi.Size(), unix.FADV_WILLNEED) == nil {
			n, size = n+1, size+fi.Size()
		}
		f.Close()
	}
	return n, size
}
