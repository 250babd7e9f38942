package kmod

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ModInfo is the content of a module's .modinfo section: NUL-separated key=value strings
// written by MODULE_*() macros.
type ModInfo struct {
	// Name is the canonical module name ("name=" key), empty when the section has none.
	Name string
	// Depends are the canonical names of the modules whose symbols this one uses.
	Depends []string
	// SoftPre are modules to load first when they exist ("softdep=pre: ..."); they may be
	// aliases, which this package does not resolve.
	SoftPre []string
	// SoftPost are modules to load afterwards ("softdep=post: ..."); recorded, not loaded.
	SoftPost []string
	// Fields holds every key=value pair in section order (vermagic, alias, license...).
	Fields map[string][]string
}

// Limits that keep a hostile or corrupt file from making the parser allocate much more
// than the file holds.
const (
	maxModinfoSize  = 1 << 20  // real modules carry a few KiB
	maxSectionTable = 16 << 20 // 65535 section headers of 64 bytes fit in 4 MiB
	maxSectionNames = 16 << 20
	maxNameLen      = 255
)

const (
	shnXindex = 0xffff // e_shstrndx escape: the real index is in section 0's sh_link
	shtNobits = 8      // section occupies no file space
)

// ReadModinfo finds the .modinfo section of the ELF file in r (size bytes long) and parses it.
func ReadModinfo(r io.ReaderAt, size int64) (ModInfo, error) {
	data, err := modinfoSection(r, size)
	if err != nil {
		return ModInfo{}, err
	}
	return ParseModinfo(data)
}

// elfLayout is what modinfoSection needs from an ELF header, for either class.
type elfLayout struct {
	order     binary.ByteOrder
	is64      bool
	shoff     uint64
	shentsize uint64
	shnum     uint64
	shstrndx  uint64
}

// sectionHeader holds the fields of one section header that matter here.
type sectionHeader struct {
	name   uint32
	typ    uint32
	offset uint64
	size   uint64
	link   uint32
}

func (l *elfLayout) section(b []byte) sectionHeader {
	if l.is64 {
		return sectionHeader{
			name:   l.order.Uint32(b[0:]),
			typ:    l.order.Uint32(b[4:]),
			offset: l.order.Uint64(b[24:]),
			size:   l.order.Uint64(b[32:]),
			link:   l.order.Uint32(b[40:]),
		}
	}
	return sectionHeader{
		name:   l.order.Uint32(b[0:]),
		typ:    l.order.Uint32(b[4:]),
		offset: uint64(l.order.Uint32(b[16:])),
		size:   uint64(l.order.Uint32(b[20:])),
		link:   l.order.Uint32(b[24:]),
	}
}

func readELFLayout(r io.ReaderAt, size int64) (elfLayout, error) {
	var hdr [64]byte
	if size < 52 {
		return elfLayout{}, fmt.Errorf("not an ELF file: %d bytes, an ELF header needs at least 52", size)
	}
	n := int64(len(hdr))
	if size < n {
		n = size
	}
	if _, err := r.ReadAt(hdr[:n], 0); err != nil && !errors.Is(err, io.EOF) {
		return elfLayout{}, fmt.Errorf("read ELF header: %w", err)
	}
	if !bytes.Equal(hdr[:4], []byte("\x7fELF")) {
		return elfLayout{}, fmt.Errorf("not an ELF file: magic %q, expected %q", hdr[:4], "\x7fELF")
	}
	var l elfLayout
	switch hdr[5] {
	case 1:
		l.order = binary.LittleEndian
	case 2:
		l.order = binary.BigEndian
	default:
		return elfLayout{}, fmt.Errorf("ELF data encoding %d, expected 1 (LSB) or 2 (MSB)", hdr[5])
	}
	switch hdr[4] {
	case 2:
		if size < 64 {
			return elfLayout{}, fmt.Errorf("ELF64 header truncated: %d bytes, expected 64", size)
		}
		l.is64 = true
		l.shoff = l.order.Uint64(hdr[40:])
		l.shentsize = uint64(l.order.Uint16(hdr[58:]))
		l.shnum = uint64(l.order.Uint16(hdr[60:]))
		l.shstrndx = uint64(l.order.Uint16(hdr[62:]))
		if l.shentsize < 64 {
			return elfLayout{}, fmt.Errorf("ELF64 section header size %d, expected at least 64", l.shentsize)
		}
	case 1:
		l.shoff = uint64(l.order.Uint32(hdr[32:]))
		l.shentsize = uint64(l.order.Uint16(hdr[46:]))
		l.shnum = uint64(l.order.Uint16(hdr[48:]))
		l.shstrndx = uint64(l.order.Uint16(hdr[50:]))
		if l.shentsize < 40 {
			return elfLayout{}, fmt.Errorf("ELF32 section header size %d, expected at least 40", l.shentsize)
		}
	default:
		return elfLayout{}, fmt.Errorf("ELF class %d, expected 1 (32-bit) or 2 (64-bit)", hdr[4])
	}
	return l, nil
}

// within reports whether [off, off+n) lies inside a file of size bytes, without overflow.
func within(off, n uint64, size int64) bool {
	return off <= uint64(size) && n <= uint64(size)-off
}

// modinfoSection returns the bytes of the ".modinfo" section. It reads only the ELF
// header, the section table, the section name table and the section itself, so scanning
// a modules directory does not read whole modules.
func modinfoSection(r io.ReaderAt, size int64) ([]byte, error) {
	l, err := readELFLayout(r, size)
	if err != nil {
		return nil, err
	}
	if l.shoff == 0 {
		return nil, errors.New("ELF file has no section table (e_shoff 0)")
	}
	if !within(l.shoff, l.shentsize, size) {
		return nil, fmt.Errorf("ELF section table at offset %d lies outside the %d-byte file", l.shoff, size)
	}
	// Section 0 carries the real count and name-table index when they overflow 16 bits.
	first := make([]byte, l.shentsize)
	if _, err := r.ReadAt(first, int64(l.shoff)); err != nil {
		return nil, fmt.Errorf("read ELF section header 0: %w", err)
	}
	s0 := l.section(first)
	if l.shnum == 0 {
		l.shnum = s0.size
	}
	if l.shstrndx == shnXindex {
		l.shstrndx = uint64(s0.link)
	}
	if l.shnum == 0 || l.shnum > maxSectionTable/l.shentsize {
		return nil, fmt.Errorf("ELF section count %d out of range (1..%d)", l.shnum, maxSectionTable/l.shentsize)
	}
	tableSize := l.shnum * l.shentsize
	if !within(l.shoff, tableSize, size) {
		return nil, fmt.Errorf("ELF section table (%d entries at offset %d) runs past the end of the %d-byte file", l.shnum, l.shoff, size)
	}
	table := make([]byte, tableSize)
	if _, err := r.ReadAt(table, int64(l.shoff)); err != nil {
		return nil, fmt.Errorf("read ELF section table: %w", err)
	}
	header := func(i uint64) sectionHeader { return l.section(table[i*l.shentsize:]) }

	if l.shstrndx >= l.shnum {
		return nil, fmt.Errorf("ELF section name table index %d, expected below the section count %d", l.shstrndx, l.shnum)
	}
	strtab := header(l.shstrndx)
	if strtab.typ == shtNobits || !within(strtab.offset, strtab.size, size) || strtab.size > maxSectionNames {
		return nil, fmt.Errorf("ELF section name table (offset %d, size %d) lies outside the %d-byte file", strtab.offset, strtab.size, size)
	}
	names := make([]byte, strtab.size)
	if _, err := r.ReadAt(names, int64(strtab.offset)); err != nil {
		return nil, fmt.Errorf("read ELF section name table: %w", err)
	}

	const want = ".modinfo\x00"
	for i := uint64(1); i < l.shnum; i++ {
		sh := header(i)
		if uint64(sh.name) >= uint64(len(names)) || !bytes.HasPrefix(names[sh.name:], []byte(want)) {
			continue
		}
		if sh.typ == shtNobits || !within(sh.offset, sh.size, size) {
			return nil, fmt.Errorf(".modinfo section (offset %d, size %d) lies outside the %d-byte file", sh.offset, sh.size, size)
		}
		if sh.size > maxModinfoSize {
			return nil, fmt.Errorf(".modinfo section is %d bytes, expected at most %d", sh.size, maxModinfoSize)
		}
		data := make([]byte, sh.size)
		if _, err := r.ReadAt(data, int64(sh.offset)); err != nil {
			return nil, fmt.Errorf("read .modinfo section: %w", err)
		}
		return data, nil
	}
	return nil, errors.New("ELF file has no .modinfo section")
}

// ParseModinfo parses the bytes of a .modinfo section.
func ParseModinfo(data []byte) (ModInfo, error) {
	info := ModInfo{Fields: map[string][]string{}}
	for _, entry := range bytes.Split(data, []byte{0}) {
		if len(entry) == 0 {
			continue // sections are padded with NULs between entries
		}
		key, value, ok := strings.Cut(string(entry), "=")
		if !ok || key == "" {
			continue // not a key=value string: nothing the kernel or modprobe would read
		}
		info.Fields[key] = append(info.Fields[key], value)
		switch key {
		case "name":
			name := Normalize(value)
			if !validName(name) {
				return ModInfo{}, fmt.Errorf(".modinfo name=%q is not a valid module name", value)
			}
			info.Name = name
		case "depends":
			for dep := range strings.SplitSeq(value, ",") {
				if dep == "" {
					continue
				}
				name := Normalize(dep)
				if !validName(name) {
					return ModInfo{}, fmt.Errorf(".modinfo depends=%q: %q is not a valid module name", value, dep)
				}
				info.Depends = appendUnique(info.Depends, name)
			}
		case "softdep":
			pre, post := parseSoftdep(strings.Fields(value))
			for _, p := range pre {
				info.SoftPre = appendUnique(info.SoftPre, p)
			}
			for _, p := range post {
				info.SoftPost = appendUnique(info.SoftPost, p)
			}
		}
	}
	return info, nil
}

// parseSoftdep splits softdep tokens ("pre: a b post: c") the way modprobe reads them:
// names before any "pre:"/"post:" marker belong to neither list and are ignored.
func parseSoftdep(tokens []string) (pre, post []string) {
	var target *[]string
	for _, tok := range tokens {
		switch tok {
		case "pre:":
			target = &pre
		case "post:":
			target = &post
		default:
			if target != nil && validSoftName(tok) {
				*target = append(*target, Normalize(tok))
			}
		}
	}
	return pre, post
}

// validName reports whether name is a canonical module name: the kernel builds module
// names from file names of [A-Za-z0-9_-] characters, and generated index files separate
// names by spaces, colons and newlines, so nothing else may appear.
func validName(name string) bool {
	if name == "" || len(name) > maxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// validSoftName accepts softdep targets, which may be aliases ("crypto-crc32c",
// "platform:foo"): any printable non-space ASCII.
func validSoftName(name string) bool {
	if name == "" || len(name) > maxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] >= 0x7f {
			return false
		}
	}
	return true
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
