// Package ukitest builds small synthetic PE32+ images and UKIs for tests: the headers a
// linker writes, sections padded to the file alignment, optional trailing data and
// certificate table. The images are not executable.
package ukitest

import (
	"encoding/binary"
)

// Section is one section: its data in the file and a VirtualSize, len(Data) when negative.
type Section struct {
	Name  string
	Data  []byte
	VSize int
}

// S is a section whose VirtualSize is the length of its data.
func S(name, data string) Section { return Section{Name: name, Data: []byte(data), VSize: -1} }

// Spec describes an image.
type Spec struct {
	Sections []Section
	Trailing []byte // after the last section
	Cert     []byte // appended as the certificate table when not nil
	NumDirs  uint32 // NumberOfRvaAndSizes; 16 when zero
}

// UKI is a spec with the sections of a systemd-stub whose .sdmagic is magic, then extra.
func UKI(magic string, extra ...Section) Spec {
	s := Spec{Sections: []Section{S(".text", "code"), S(".sbat", "sbat,1\n"), S(".sdmagic", magic)}}
	s.Sections = append(s.Sections, extra...)
	return s
}

// Magic252 is the .sdmagic of Debian 12's systemd-stub.
const Magic252 = "#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####"

// File offsets in the images Build makes.
const (
	FileAlign        = 0x200
	Lfanew           = 0x40
	FileHeader       = Lfanew + 4
	OptHeader        = FileHeader + 20
	OptHeaderSize    = 240
	SectionTable     = OptHeader + OptHeaderSize
	CertTableEntry   = OptHeader + 112 + 4*8
	SectionHeaderLen = 40
)

func alignUp(n, a int) int { return (n + a - 1) / a * a }

// Build returns the image's bytes.
func (s Spec) Build() []byte {
	nd := s.NumDirs
	if nd == 0 {
		nd = 16
	}
	le := binary.LittleEndian
	hdrSize := alignUp(SectionTable+SectionHeaderLen*len(s.Sections), FileAlign)
	b := make([]byte, hdrSize)
	b[0], b[1] = 'M', 'Z'
	le.PutUint32(b[0x3c:], Lfanew)
	copy(b[Lfanew:], "PE\x00\x00")
	le.PutUint16(b[FileHeader:], 0x8664)
	le.PutUint16(b[FileHeader+2:], uint16(len(s.Sections)))
	le.PutUint16(b[FileHeader+16:], OptHeaderSize)
	le.PutUint16(b[FileHeader+18:], 0x2022)
	le.PutUint16(b[OptHeader:], 0x20b)
	le.PutUint32(b[OptHeader+32:], 0x1000)    // SectionAlignment
	le.PutUint32(b[OptHeader+36:], FileAlign) // FileAlignment
	le.PutUint32(b[OptHeader+60:], uint32(hdrSize))
	le.PutUint32(b[OptHeader+64:], 0xdeadbeef) // CheckSum: not part of the digest
	le.PutUint16(b[OptHeader+68:], 10)         // EFI application
	le.PutUint32(b[OptHeader+108:], nd)
	va := 0x1000
	for i, ts := range s.Sections {
		h := SectionTable + SectionHeaderLen*i
		copy(b[h:h+8], ts.Name)
		vs := ts.VSize
		if vs < 0 {
			vs = len(ts.Data)
		}
		raw := alignUp(len(ts.Data), FileAlign)
		le.PutUint32(b[h+8:], uint32(vs))
		le.PutUint32(b[h+12:], uint32(va))
		le.PutUint32(b[h+16:], uint32(raw))
		if raw > 0 {
			le.PutUint32(b[h+20:], uint32(len(b)))
		}
		le.PutUint32(b[h+36:], 0x40000040)
		va += alignUp(max(vs, raw, 1), 0x1000)
		b = append(b, ts.Data...)
		b = append(b, make([]byte, raw-len(ts.Data))...)
	}
	le.PutUint32(b[OptHeader+56:], uint32(va)) // SizeOfImage
	b = append(b, s.Trailing...)
	if s.Cert != nil {
		le.PutUint32(b[CertTableEntry:], uint32(len(b)))
		le.PutUint32(b[CertTableEntry+4:], uint32(len(s.Cert)))
		b = append(b, s.Cert...)
	}
	return b
}
