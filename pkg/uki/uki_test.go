package uki

import (
	"bytes"
	"crypto"
	_ "crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"github.com/cvmboot/cvmboot/pkg/uki/ukitest"
	"io"
	"strings"
	"testing"
)

const magic252 = ukitest.Magic252

func stubUKI(magic string, extra ...testSection) peSpec { return ukitest.UKI(magic, extra...) }

func TestAuthenticodeMatchesPlainComputation(t *testing.T) {
	cases := map[string]peSpec{
		"plain":            stubUKI(magic252, sec(".linux", "kernel")),
		"trailing aligned": {Sections: []testSection{sec(".text", "x")}, Trailing: []byte("12345678")},
		"trailing odd":     {Sections: []testSection{sec(".text", "x")}, Trailing: []byte("abc")},
		"signed":           {Sections: []testSection{sec(".text", "x")}, Trailing: []byte("pad5_"), Cert: []byte("CERTIFICATE-TABLE")},
		"no cert dirent":   {Sections: []testSection{sec(".text", "x")}, Trailing: []byte("zz"), NumDirs: 4},
		"empty section":    {Sections: []testSection{sec(".bss", ""), sec(".text", "y")}},
	}
	for name, spec := range cases {
		t.Run(name, func(t *testing.T) {
			b := spec.Build()
			im := parseBytes(t, b)
			for _, pad := range []bool{false, true} {
				got, err := im.Authenticode(crypto.SHA256, pad)
				if err != nil {
					t.Fatal(err)
				}
				if want := refAuthenticode(t, b, pad); !bytes.Equal(got, want) {
					t.Errorf("pad=%v: %x, want %x", pad, got, want)
				}
				got384, err := im.Authenticode(crypto.SHA384, pad)
				if err != nil {
					t.Fatal(err)
				}
				if want := sha512.Sum384(refAuthenticodeMessage(t, b, pad)); !bytes.Equal(got384, want[:]) {
					t.Errorf("SHA-384 pad=%v: %x, want %x", pad, got384, want)
				}
			}
		})
	}
}

func TestAuthenticodeIgnoresChecksumAndCertificate(t *testing.T) {
	spec := peSpec{Sections: []testSection{sec(".text", "x")}, Trailing: []byte("12345678")}
	unsigned := spec.Build()
	spec.Cert = []byte("a certificate table of some length")
	signed := spec.Build()
	binary.LittleEndian.PutUint32(signed[tOptHdr+64:], 0x12345678) // another CheckSum
	a, _ := parseBytes(t, unsigned).Authenticode(crypto.SHA256, false)
	b, _ := parseBytes(t, signed).Authenticode(crypto.SHA256, false)
	if !bytes.Equal(a, b) {
		t.Fatalf("signing changed the digest: %x vs %x", a, b)
	}
}

func TestPaddingOnlyMattersForUnalignedTrailingData(t *testing.T) {
	for _, tc := range []struct {
		trailing  string
		unaligned bool
	}{{"", false}, {"12345678", false}, {"1", true}, {"123456789", true}} {
		im := parseBytes(t, peSpec{Sections: []testSection{sec(".text", "x")}, Trailing: []byte(tc.trailing)}.Build())
		a, _ := im.Authenticode(crypto.SHA256, false)
		b, _ := im.Authenticode(crypto.SHA256, true)
		if im.TrailingDataUnaligned() != tc.unaligned || bytes.Equal(a, b) == tc.unaligned {
			t.Errorf("trailing %q: unaligned=%v, digests equal=%v", tc.trailing, im.TrailingDataUnaligned(), bytes.Equal(a, b))
		}
	}
}

func TestSectionReaderLoadsAsFirmware(t *testing.T) {
	// VirtualSize larger than the file data: zeros follow; smaller: the file data is cut.
	spec := peSpec{Sections: []testSection{
		{Name: ".big", Data: []byte("abc"), VSize: 0x300},
		{Name: ".small", Data: []byte("abcdef"), VSize: 2},
		{Name: ".nofile", Data: nil, VSize: 5},
	}}
	im := parseBytes(t, spec.Build())
	read := func(name string) []byte {
		b, err := io.ReadAll(im.SectionReader(im.Lookup(name)[0]))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := append([]byte("abc"), make([]byte, 0x300-3)...)
	if got := read(".big"); !bytes.Equal(got, want) {
		t.Errorf(".big: %d bytes %q…, want abc and zeros to 0x300", len(got), got[:8])
	}
	if got := read(".small"); string(got) != "ab" {
		t.Errorf(".small: %q", got)
	}
	if got := read(".nofile"); !bytes.Equal(got, make([]byte, 5)) {
		t.Errorf(".nofile: %q", got)
	}
}

func TestStub(t *testing.T) {
	for magic, want := range map[string]int{
		magic252 + "\x00": 252,
		"#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####": 257,
		"#### LoaderInfo: systemd-stub 256~rc1 ####":          256,
	} {
		st, err := parseBytes(t, stubUKI(magic).Build()).Stub()
		if err != nil || st.Major != want {
			t.Errorf("%q: %+v, %v", magic, st, err)
		}
	}
	for _, magic := range []string{"", "#### LoaderInfo: systemd-boot 252 ####", "#### LoaderInfo: ubustub 258 ####", "systemd-stub 252"} {
		if _, err := parseBytes(t, stubUKI(magic).Build()).Stub(); !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v, want a format error", magic, err)
		}
	}
	if _, err := parseBytes(t, peSpec{Sections: []testSection{sec(".text", "x")}}.Build()).Stub(); err == nil || !strings.Contains(err.Error(), "no .sdmagic") {
		t.Errorf("no .sdmagic: %v", err)
	}
}

func TestStubSectionsByVersion(t *testing.T) {
	for major, want := range map[int]string{
		252: ".linux .osrel .cmdline .initrd .splash .dtb .pcrpkey",
		253: ".linux .osrel .cmdline .initrd .splash .dtb .pcrpkey",
		254: ".linux .osrel .cmdline .initrd .splash .dtb .uname .sbat .pcrpkey",
		255: ".linux .osrel .cmdline .initrd .splash .dtb .uname .sbat .pcrpkey",
		256: ".linux .osrel .cmdline .initrd .ucode .splash .dtb .uname .sbat .pcrpkey",
		257: ".linux .osrel .cmdline .initrd .ucode .splash .dtb .uname .sbat .pcrpkey .profile .dtbauto .hwids",
	} {
		got, err := StubSections(major)
		if err != nil || strings.Join(got, " ") != want {
			t.Errorf("%d: %v %v", major, got, err)
		}
	}
	for _, major := range []int{0, 251, 258} {
		if _, err := StubSections(major); err == nil {
			t.Errorf("%d: no error", major)
		}
	}
}

func sum(s string) string {
	h := crypto.SHA256.New()
	h.Write([]byte(s))
	return hex.EncodeToString(h.Sum(nil))
}

func TestStubEvents(t *testing.T) {
	// File order differs from the stub's; .pcrsig and an empty .splash are not measured;
	// .sbat is measured from 254 on only.
	spec := stubUKI(magic252, sec(".cmdline", "console=ttyS0"), sec(".pcrsig", "{}"), sec(".osrel", "ID=x\n"),
		testSection{Name: ".splash", VSize: 0}, sec(".linux", "KERNEL"), sec(".initrd", "CPIO"))
	im := parseBytes(t, spec.Build())
	ev, err := im.StubEvents(252)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ev {
		got = append(got, e.Section+"="+hex.EncodeToString(e.DataDigest[:]))
		if hex.EncodeToString(e.NameDigest[:]) != sum(e.Section+"\x00") {
			t.Errorf("%s: name digest %x", e.Section, e.NameDigest)
		}
	}
	want := []string{".linux=" + sum("KERNEL"), ".osrel=" + sum("ID=x\n"), ".cmdline=" + sum("console=ttyS0"), ".initrd=" + sum("CPIO")}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events\n%v\nwant\n%v", got, want)
	}
	// Replay by hand.
	var pcr [32]byte
	for _, e := range ev {
		for _, d := range [][32]byte{e.NameDigest, e.DataDigest} {
			h := crypto.SHA256.New()
			h.Write(pcr[:])
			h.Write(d[:])
			copy(pcr[:], h.Sum(nil))
		}
	}
	if Replay(ev) != pcr {
		t.Errorf("Replay %x, want %x", Replay(ev), pcr)
	}
	// The SHA-384 digests are of the same bytes; RTMR 2 is replayed the same way.
	data := map[string]string{".linux": "KERNEL", ".osrel": "ID=x\n", ".cmdline": "console=ttyS0", ".initrd": "CPIO"}
	var mr [48]byte
	for _, e := range ev {
		if e.NameDigest384 != sha512.Sum384([]byte(e.Section+"\x00")) || e.DataDigest384 != sha512.Sum384([]byte(data[e.Section])) {
			t.Errorf("%s: SHA-384 digests %x %x", e.Section, e.NameDigest384, e.DataDigest384)
		}
		for _, d := range [][48]byte{e.NameDigest384, e.DataDigest384} {
			mr = sha512.Sum384(append(mr[:], d[:]...))
		}
	}
	if Replay384(ev) != mr {
		t.Errorf("Replay384 %x, want %x", Replay384(ev), mr)
	}
	// Computed with Python's hashlib: the four events above, name then data, extended into a
	// zero 48-byte register with SHA-384.
	const golden = "b806451daa043b2a504d5fe0f6a0cf29958ac461d0df5d087c99078f86b2e16df1c98f9d53a3419d0cfbbc5e5c281bef"
	if got := Replay384(ev); hex.EncodeToString(got[:]) != golden {
		t.Errorf("Replay384 %x, hashlib says %s", got, golden)
	}
	ev254, _ := im.StubEvents(254)
	if len(ev254) != 5 || ev254[4].Section != ".sbat" {
		t.Errorf("254: %+v", ev254)
	}
}

func TestStubMeasuresCC(t *testing.T) {
	for major := MinStubMajor; major <= MaxStubMajor; major++ {
		if got, want := StubMeasuresCC(major), major >= 256; got != want {
			t.Errorf("StubMeasuresCC(%d) = %v, want %v", major, got, want)
		}
	}
}

func TestStubEventsRefusesAmbiguity(t *testing.T) {
	for name, tc := range map[string]struct {
		spec  peSpec
		major int
		want  string
	}{
		"duplicate":    {stubUKI(magic252, sec(".linux", "a"), sec(".linux", "b")), 252, "2 sections named .linux"},
		"dup pcrsig":   {stubUKI(magic252, sec(".linux", "a"), sec(".pcrsig", "1"), sec(".pcrsig", "2")), 252, "2 sections named .pcrsig"},
		"prefix":       {stubUKI(magic252, sec(".linux", "a"), sec(".linuxX", "b")), 252, `".linuxX" starts with`},
		"dtbauto old":  {stubUKI(magic252, sec(".linux", "a"), sec(".dtbauto", "b")), 252, `".dtbauto" starts with`},
		"profile 257":  {stubUKI(magic252, sec(".linux", "a"), sec(".profile", "ID=p")), 257, "has a .profile section"},
		"too new":      {stubUKI(magic252, sec(".linux", "a")), 258, "newer than"},
		"before 252":   {stubUKI(magic252, sec(".linux", "a")), 251, "began with 252"},
		"dtbauto 257":  {stubUKI(magic252, sec(".linux", "a"), sec(".dtbauto", "b")), 257, `".dtbauto" starts with`},
		"profile ok <": {stubUKI(magic252, sec(".linux", "a"), sec(".profile", "x")), 256, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseBytes(t, tc.spec.Build()).StubEvents(tc.major)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// corrupt returns a copy of b with f applied.
func corrupt(b []byte, f func(b []byte) []byte) []byte { return f(append([]byte(nil), b...)) }

func TestParseRejects(t *testing.T) {
	good := stubUKI(magic252, sec(".linux", "kernel"), sec(".initrd", "cpio")).Build()
	le := binary.LittleEndian
	secHdr := func(i int) int { return tSecTable + 40*i }
	cases := map[string]struct {
		b    []byte
		want string
	}{
		"empty":            {nil, "smaller than a DOS header"},
		"not MZ":           {corrupt(good, func(b []byte) []byte { b[0] = 'X'; return b }), "no MZ signature"},
		"lfanew outside":   {corrupt(good, func(b []byte) []byte { le.PutUint32(b[0x3c:], 0xfffffff0); return b }), "outside the file"},
		"lfanew at end":    {corrupt(good, func(b []byte) []byte { le.PutUint32(b[0x3c:], uint32(len(b)-2)); return b }), "truncated"},
		"not PE":           {corrupt(good, func(b []byte) []byte { b[tLfanew] = 'X'; return b }), "no PE signature"},
		"zero sections":    {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+2:], 0); return b }), "no sections"},
		"huge sections":    {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+2:], 0xffff); return b }), "NumberOfSections is 65535"},
		"97 sections":      {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+2:], 97); return b }), "more than the 96"},
		"table past hdrs":  {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+2:], 96); return b }), "ends past SizeOfHeaders"},
		"no opt header":    {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+16:], 0); return b }), "needs an optional header"},
		"short opt header": {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tFileHdr+16:], 100); return b }), "smaller than the 112 bytes"},
		"bad opt magic":    {corrupt(good, func(b []byte) []byte { le.PutUint16(b[tOptHdr:], 0x107); return b }), "optional header magic 0x107"},
		"17 dirs":          {corrupt(good, func(b []byte) []byte { le.PutUint32(b[tOptHdr+108:], 17); return b }), "NumberOfRvaAndSizes is 17"},
		"dirs past opt": {corrupt(good, func(b []byte) []byte {
			le.PutUint16(b[tFileHdr+16:], 112+8*8)
			return b
		}), "16 data directories need 240 bytes"},
		"hdrs past end": {corrupt(good, func(b []byte) []byte { le.PutUint32(b[tOptHdr+60:], uint32(len(b)+1)); return b }), "SizeOfHeaders"},
		"section past end": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[secHdr(3)+20:], uint32(len(b)-0x100))
			return b
		}), `section 3 ".linux": file data`},
		"section size huge": {corrupt(good, func(b []byte) []byte { le.PutUint32(b[secHdr(4)+16:], 0xffffffff); return b }), "ends past the end of the file"},
		"section in hdrs":   {corrupt(good, func(b []byte) []byte { le.PutUint32(b[secHdr(0)+20:], 0x10); return b }), "overlaps the headers"},
		"overlap": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[secHdr(4)+20:], le.Uint32(b[secHdr(3)+20:])+0x100)
			return b
		}), `sections ".linux" [`},
		"va overflow":      {corrupt(good, func(b []byte) []byte { le.PutUint32(b[secHdr(1)+12:], 0xffffffff); return b }), "ends past SizeOfImage"},
		"past SizeOfImage": {corrupt(good, func(b []byte) []byte { le.PutUint32(b[tOptHdr+56:], 0x2000); return b }), `".sbat": [0x2000, 0x2007) in memory ends past SizeOfImage 0x2000`},
		"huge VirtualSize": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[tOptHdr+56:], 0xffffffff)
			le.PutUint32(b[secHdr(3)+8:], 0xfff00000)
			return b
		}), "more than 16777216 bytes beyond their file data"},
		"cert not at end": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[tCertEntry:], uint32(len(b)-8))
			le.PutUint32(b[tCertEntry+4:], 4)
			return b
		}), "does not end at the end of the file"},
		"cert over data": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[tCertEntry:], uint32(len(b)-0x300))
			le.PutUint32(b[tCertEntry+4:], 0x300)
			return b
		}), "overlaps the headers or section data"},
		"cert beyond": {corrupt(good, func(b []byte) []byte {
			le.PutUint32(b[tCertEntry:], uint32(len(b)))
			le.PutUint32(b[tCertEntry+4:], 0xffffffff)
			return b
		}), "does not end at the end of the file"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(bytes.NewReader(tc.b), int64(len(tc.b)))
			if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrFormat with %q", err, tc.want)
			}
		})
	}
}

// TestParseTruncated parses every prefix of an image: each is an error or, when what was cut
// is trailing data, a valid image; none panics.
func TestParseTruncated(t *testing.T) {
	b := stubUKI(magic252, sec(".linux", "kernel")).Build()
	for n := range len(b) {
		im, err := Parse(bytes.NewReader(b[:n]), int64(n))
		if err == nil {
			if _, err := im.Authenticode(crypto.SHA256, false); err != nil {
				t.Fatalf("prefix %d parsed but does not digest: %v", n, err)
			}
			continue
		}
		if !errors.Is(err, ErrFormat) {
			t.Fatalf("prefix %d: %v is not a format error", n, err)
		}
	}
}

// lyingReader claims more bytes than it has: a file that shrinks while being read.
type lyingReader struct{ b []byte }

func (l lyingReader) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(l.b).ReadAt(p, off)
}

func TestShrinkingFile(t *testing.T) {
	b := stubUKI(magic252, sec(".linux", strings.Repeat("k", 5000))).Build()
	short := b[:len(b)-1000]
	im, err := Parse(lyingReader{short}, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Authenticode(crypto.SHA256, false); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("Authenticode: %v", err)
	}
	if _, err := im.StubEvents(252); err == nil {
		t.Errorf("StubEvents on a shrunk file: no error")
	}
}

type failingReader struct{}

var errDisk = errors.New("disk on fire")

func (failingReader) ReadAt([]byte, int64) (int, error) { return 0, errDisk }

func TestReadErrorsPassThrough(t *testing.T) {
	if _, err := Parse(failingReader{}, 4096); !errors.Is(err, errDisk) || errors.Is(err, ErrFormat) {
		t.Errorf("Parse: %v", err)
	}
}
