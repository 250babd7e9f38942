package initramfs

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cvmboot/cvmboot/internal/config"
)

// Program is a dynamically linked helper the boot runs from the initramfs (mke2fs for the
// storage file system), packed with its interpreter and shared libraries.
type Program struct {
	// Name is the program's file name, looked up in ProgramDirs inside the tools root; it
	// goes to the same path in the archive.
	Name string
	// Data are further files it reads, packed when present (mke2fs.conf).
	Data []string
}

// ProgramDirs are searched for programs, in the order internal/storage searches them at
// boot.
var ProgramDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// FeaturePrograms lists the programs the enabled features run in the initramfs: the mkfs
// of storage.filesystem (the boot formats the fresh volume with it, see internal/storage).
func FeaturePrograms(c *config.Config) []Program {
	if !c.Storage.Enabled {
		return nil
	}
	if c.Storage.Filesystem == config.StorageXFS {
		return []Program{{Name: "mkfs.xfs"}}
	}
	return []Program{{Name: "mke2fs", Data: []string{"/etc/mke2fs.conf"}}}
}

// libDirs are searched for DT_NEEDED libraries, after the program's own run path: the
// dynamic loader's default directories with and without the multiarch triplet.
func libDirs(m elf.Machine) []string {
	triplet := map[elf.Machine]string{
		elf.EM_X86_64: "x86_64-linux-gnu", elf.EM_AARCH64: "aarch64-linux-gnu",
		elf.EM_RISCV: "riscv64-linux-gnu", elf.EM_PPC64: "powerpc64le-linux-gnu", elf.EM_S390: "s390x-linux-gnu",
	}[m]
	var dirs []string
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// addPrograms packs each program from root (a file system tree, "/" for the build host)
// with the transitive closure of its shared libraries and its interpreter, at the paths the
// dynamic loader looks at. It returns the archive paths it added.
func addPrograms(a *Archive, root string, progs []Program) ([]string, error) {
	if root == "" {
		root = "/"
	}
	p := &packer{a: a, root: root, done: map[string]bool{}, bySource: map[string]string{}}
	for _, prog := range progs {
		dst := ""
		for _, d := range ProgramDirs {
			if fi, err := os.Stat(filepath.Join(root, d, prog.Name)); err == nil && fi.Mode().IsRegular() {
				dst = path.Join(d, prog.Name)
				break
			}
		}
		if dst == "" {
			return nil, fmt.Errorf("initramfs: program %s not found in %s under %s (install it there, e.g. e2fsprogs or xfsprogs, or pass another tools root)",
				prog.Name, strings.Join(ProgramDirs, ", "), root)
		}
		if err := p.add(dst, true); err != nil {
			return nil, fmt.Errorf("initramfs: program %s from %s: %w", dst, root, err)
		}
		for _, d := range prog.Data {
			src := filepath.Join(root, d)
			if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err := a.AddFileFrom(d, 0o644, src); err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
			p.added = append(p.added, d)
		}
	}
	return p.added, nil
}

type packer struct {
	a        *Archive
	root     string
	done     map[string]bool   // archive paths handled
	bySource map[string]string // resolved source file → the archive path it went to
	added    []string
}

// add packs the ELF file at archive path dst (read from root) and, recursively, what it
// needs.
func (p *packer) add(dst string, executable bool) error {
	if p.done[dst] {
		return nil
	}
	p.done[dst] = true
	src := filepath.Join(p.root, dst)
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return fmt.Errorf("%s is not under %s: %w", dst, p.root, err)
	}
	// The same file under two names (the interpreter as PT_INTERP names it and as libc's
	// DT_NEEDED finds it) is packed once; the second name links to the first.
	if first, ok := p.bySource[real]; ok {
		if err := p.a.AddSymlink(dst, first); err != nil {
			return err
		}
		p.added = append(p.added, dst)
		return nil
	}
	p.bySource[real] = dst
	f, err := elf.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	perm := fs.FileMode(0o644)
	if executable || f.Type == elf.ET_EXEC {
		perm = 0o755
	}
	// AddFileFrom follows symlinks: the archive holds the file itself at the path the
	// loader asks for (/lib64/ld-linux-x86-64.so.2 is a link on most hosts).
	if err := p.a.AddFileFrom(dst, perm, src); err != nil {
		return err
	}
	p.added = append(p.added, dst)
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			return fmt.Errorf("%s: reading PT_INTERP: %w", dst, err)
		}
		interp := strings.TrimRight(string(b), "\x00")
		if !path.IsAbs(interp) {
			return fmt.Errorf("%s: interpreter %q is not an absolute path", dst, interp)
		}
		if err := p.add(interp, true); err != nil {
			return fmt.Errorf("interpreter of %s: %w", dst, err)
		}
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", dst, err)
	}
	var runpath []string
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, _ := f.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				if path.IsAbs(d) { // $ORIGIN-relative entries would need the program's own layout
					runpath = append(runpath, d)
				}
			}
		}
	}
	dirs := append(runpath, libDirs(f.Machine)...)
	for _, lib := range needed {
		found := ""
		for _, d := range dirs {
			cand := path.Join(d, lib)
			if fi, err := os.Stat(filepath.Join(p.root, cand)); err == nil && fi.Mode().IsRegular() && sameClass(filepath.Join(p.root, cand), f.Class) {
				found = cand
				break
			}
		}
		if found == "" {
			return fmt.Errorf("%s needs %s, found in none of %s under %s", dst, lib, strings.Join(dirs, ", "), p.root)
		}
		if err := p.add(found, false); err != nil {
			return err
		}
	}
	return nil
}

// sameClass skips a library of the other word size (/usr/lib32 twins in /lib).
func sameClass(p string, c elf.Class) bool {
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return f.Class == c
}
