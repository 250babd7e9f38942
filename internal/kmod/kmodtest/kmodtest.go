// Package kmodtest builds tiny synthetic kernel modules for tests: ELF64 relocatable
// files whose only content is a .modinfo section, enough for indexing and for the
// packaging of modules, not for loading into a kernel.
package kmodtest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ELF returns an ELF64 little-endian relocatable file with a .modinfo section holding
// the given key=value entries (NUL-terminated, as the kernel's build writes them).
func ELF(modinfo ...string) []byte {
	var info bytes.Buffer
	for _, kv := range modinfo {
		info.WriteString(kv)
		info.WriteByte(0)
	}
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const (
		ehsize    = 64
		shentsize = 64
	)
	infoOff := uint64(ehsize)
	strOff := infoOff + uint64(info.Len())
	shoff := (strOff + uint64(len(shstrtab)) + 7) &^ 7

	le := binary.LittleEndian
	out := make([]byte, shoff+3*shentsize)
	copy(out, "\x7fELF")
	out[4] = 2                    // ELFCLASS64
	out[5] = 1                    // ELFDATA2LSB
	out[6] = 1                    // EV_CURRENT
	le.PutUint16(out[16:], 1)     // ET_REL
	le.PutUint16(out[18:], 62)    // EM_X86_64
	le.PutUint32(out[20:], 1)     // EV_CURRENT
	le.PutUint64(out[40:], shoff) // e_shoff
	le.PutUint16(out[52:], ehsize)
	le.PutUint16(out[58:], shentsize)
	le.PutUint16(out[60:], 3) // null, .modinfo, .shstrtab
	le.PutUint16(out[62:], 2) // .shstrtab index
	copy(out[infoOff:], info.Bytes())
	copy(out[strOff:], shstrtab)

	section := func(i int, name, typ uint32, flags, off, size uint64) {
		sh := out[shoff+uint64(i)*shentsize:]
		le.PutUint32(sh[0:], name)
		le.PutUint32(sh[4:], typ)
		le.PutUint64(sh[8:], flags)
		le.PutUint64(sh[24:], off)
		le.PutUint64(sh[32:], size)
		le.PutUint64(sh[48:], 1) // sh_addralign
	}
	section(1, 1, 1 /* SHT_PROGBITS */, 2 /* SHF_ALLOC */, infoOff, uint64(info.Len()))
	section(2, 10, 3 /* SHT_STRTAB */, 0, strOff, uint64(len(shstrtab)))
	return out
}

// Module returns a synthetic module named name depending on deps, with optional
// extra key=value entries (for example "softdep=pre: foo").
func Module(name string, deps []string, extra ...string) []byte {
	entries := append([]string{"license=GPL"}, extra...)
	entries = append(entries, "depends="+strings.Join(deps, ","), "name="+name, "vermagic=6.1.0-test SMP mod_unload")
	return ELF(entries...)
}

// Write writes data to dir/rel, compressing it according to rel's suffix (.xz, .zst, .gz).
func Write(t testing.TB, dir, rel string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	switch {
	case strings.HasSuffix(rel, ".xz"):
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, w, data)
		mustClose(t, w)
	case strings.HasSuffix(rel, ".zst"):
		w, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, w, data)
		mustClose(t, w)
	case strings.HasSuffix(rel, ".gz"):
		w := gzip.NewWriter(&buf)
		mustWrite(t, w, data)
		mustClose(t, w)
	default:
		buf.Write(data)
	}
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Spec describes one synthetic module file for Tree.
type Spec struct {
	Path    string   // relative to the modules directory, e.g. "kernel/drivers/md/dm-mod.ko"
	Depends []string // names, as in depends=
	Extra   []string // further .modinfo entries
}

// Tree writes a synthetic modules directory dir/VERSION holding mods and, when builtin is
// not empty, a modules.builtin listing those paths. It returns the modules directory.
func Tree(t testing.TB, dir, version string, mods []Spec, builtin []string) string {
	t.Helper()
	modDir := filepath.Join(dir, version)
	for _, m := range mods {
		base := filepath.Base(m.Path)
		// The kernel's build writes name= with '_' whatever the file name says.
		name := strings.ReplaceAll(base[:strings.Index(base, ".ko")], "-", "_")
		Write(t, modDir, m.Path, Module(name, m.Depends, m.Extra...))
	}
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if len(builtin) > 0 {
		content := strings.Join(builtin, "\n") + "\n"
		if err := os.WriteFile(filepath.Join(modDir, "modules.builtin"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return modDir
}

func mustWrite(t testing.TB, w interface{ Write([]byte) (int, error) }, data []byte) {
	t.Helper()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
}

func mustClose(t testing.TB, c interface{ Close() error }) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
