package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"slices"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/kmod/kmodtest"
)

// elf32BE builds a big-endian ELF32 relocatable with a .modinfo section, to seed the
// fuzzer with the other class and byte order.
func elf32BE(modinfo string) []byte {
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	infoOff := uint32(52)
	strOff := infoOff + uint32(len(modinfo))
	shoff := (strOff + uint32(len(shstrtab)) + 3) &^ 3
	be := binary.BigEndian
	out := make([]byte, shoff+3*40)
	copy(out, "\x7fELF\x01\x02\x01")
	be.PutUint16(out[16:], 1)
	be.PutUint16(out[18:], 8) // EM_MIPS
	be.PutUint32(out[20:], 1)
	be.PutUint32(out[32:], shoff)
	be.PutUint16(out[40:], 52)
	be.PutUint16(out[46:], 40)
	be.PutUint16(out[48:], 3)
	be.PutUint16(out[50:], 2)
	copy(out[infoOff:], modinfo)
	copy(out[strOff:], shstrtab)
	put := func(i int, name, typ, off, size uint32) {
		sh := out[shoff+uint32(i)*40:]
		be.PutUint32(sh[0:], name)
		be.PutUint32(sh[4:], typ)
		be.PutUint32(sh[16:], off)
		be.PutUint32(sh[20:], size)
	}
	put(1, 1, 1, infoOff, uint32(len(modinfo)))
	put(2, 10, 3, strOff, uint32(len(shstrtab)))
	return out
}

func TestELF32BigEndian(t *testing.T) {
	data := elf32BE("name=be_mod\x00depends=a,b\x00")
	info, err := ReadModinfo(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "be_mod" || !slices.Equal(info.Depends, []string{"a", "b"}) {
		t.Errorf("got %+v", info)
	}
}

// FuzzModinfo feeds arbitrary bytes to the ELF section reader and the .modinfo parser.
// Besides not panicking, whenever both this parser and debug/elf accept a file they must
// agree on the bytes of the .modinfo section.
func FuzzModinfo(f *testing.F) {
	f.Add(kmodtest.Module("dm_verity", []string{"dm_mod", "dm_bufio"}, "softdep=pre: crc32c"))
	f.Add(kmodtest.ELF())
	f.Add(kmodtest.ELF("name=x", "depends=", "alias=pci:v*", "softdep=post: y"))
	f.Add(elf32BE("name=be_mod\x00depends=a,b\x00"))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ReadModinfo(bytes.NewReader(data), int64(len(data)))
		if err == nil {
			for _, d := range append([]string{info.Name}, info.Depends...) {
				if d != "" && !validName(d) {
					t.Fatalf("accepted invalid module name %q", d)
				}
			}
			for _, s := range append(slices.Clone(info.SoftPre), info.SoftPost...) {
				if !validSoftName(s) {
					t.Fatalf("accepted invalid softdep name %q", s)
				}
			}
		}
		ours, ourErr := modinfoSection(bytes.NewReader(data), int64(len(data)))
		ef, err := elf.NewFile(bytes.NewReader(data))
		if ourErr != nil || err != nil {
			return
		}
		// The first .modinfo after section 0, as the kernel and kmod look it up (debug/elf's
		// Section also matches section 0, which names nothing).
		var sec *elf.Section
		for _, s := range ef.Sections[min(1, len(ef.Sections)):] {
			if s.Name == ".modinfo" {
				sec = s
				break
			}
		}
		if sec == nil || sec.Flags&elf.SHF_COMPRESSED != 0 || sec.Type == elf.SHT_NOBITS {
			return
		}
		theirs, err := sec.Data()
		if err != nil {
			return
		}
		if !bytes.Equal(ours, theirs) {
			t.Fatalf(".modinfo differs from debug/elf: %q vs %q", ours, theirs)
		}
	})
}

// FuzzModulesDep feeds arbitrary text to the modules.dep parser. Accepted input must give
// clean relative paths and valid names; when its modules resolve, the modules.dep written
// back must resolve to the same order.
func FuzzModulesDep(f *testing.F) {
	f.Add("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\nkernel/drivers/md/dm-mod.ko:\nkernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n")
	f.Add("a.ko: b.ko\nb.ko: a.ko\n")
	f.Add("/lib/modules/6.1.0-test/kernel/a.ko.xz: /lib/modules/6.1.0-test/kernel/b.ko.zst\n# c\n")
	f.Add("x.ko:\nx.ko.gz: y.ko\n../y.ko:\n")
	f.Fuzz(func(t *testing.T, data string) {
		const dir = "/lib/modules/6.1.0-test"
		mods, _, err := parseModulesDep([]byte(data), dir)
		if err != nil {
			return
		}
		ix := &Index{Dir: dir, modules: map[string]Module{}, builtin: map[string]bool{}, broken: map[string]error{}}
		var names []string
		for _, m := range mods {
			if !validRelPath(m.Path) || !validName(m.Name) {
				t.Fatalf("accepted module %q at %q", m.Name, m.Path)
			}
			if strings.ContainsAny(m.Path, " :\n") {
				t.Fatalf("accepted path %q that modules.dep cannot represent", m.Path)
			}
			ix.modules[m.Name] = m
			names = append(names, m.Name)
		}
		r, err := ix.Resolve(names)
		if err != nil {
			return
		}
		mods2, _, err := parseModulesDep(r.ModulesDep(), dir)
		if err != nil {
			t.Fatalf("generated modules.dep does not parse: %v\n%s", err, r.ModulesDep())
		}
		ix2 := &Index{Dir: dir, modules: map[string]Module{}, builtin: map[string]bool{}, broken: map[string]error{}}
		for _, m := range mods2 {
			ix2.modules[m.Name] = m
		}
		r2, err := ix2.Resolve(names)
		if err != nil {
			t.Fatalf("generated modules.dep does not resolve: %v", err)
		}
		if !slices.Equal(r.Paths(), r2.Paths()) {
			t.Fatalf("order changed through modules.dep: %q vs %q", r.Paths(), r2.Paths())
		}
	})
}
