package uki

import (
	"bytes"
	"crypto"
	"errors"
	"io"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse and, when they parse, to every reader of the image:
// errors are fine, panics and hangs are not, and a parsed image's digests must be computable.
func FuzzParse(f *testing.F) {
	f.Add(stubUKI(magic252, sec(".linux", "kernel"), sec(".osrel", "ID=x\n"), sec(".cmdline", "quiet"),
		sec(".initrd", "cpio"), sec(".pcrsig", "{}")).Build())
	f.Add(peSpec{Sections: []testSection{sec(".text", "x")}, Trailing: []byte("abc"), Cert: []byte("certificate")}.Build())
	f.Add(peSpec{Sections: []testSection{{Name: ".big", Data: []byte("abc"), VSize: 0x2000}}, NumDirs: 2}.Build())
	f.Add(stubUKI("#### LoaderInfo: systemd-stub 257.1 ####", sec(".linux", "k"), sec(".hwids", "h"), sec(".ucode", "u")).Build())
	f.Add(stubUKI(magic252, sec(".linux", "k"), sec(".linux", "k2")).Build())
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		im, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("an in-memory image gave a non-format error: %v", err)
			}
			return
		}
		if _, err := im.Authenticode(crypto.SHA256, true); err != nil {
			t.Fatalf("parsed but Authenticode fails: %v", err)
		}
		if _, err := im.Authenticode(crypto.SHA384, false); err != nil {
			t.Fatalf("parsed but the SHA-384 Authenticode fails: %v", err)
		}
		for i := range im.Sections {
			s := &im.Sections[i]
			n, err := io.Copy(io.Discard, im.SectionReader(s))
			if err != nil || n != int64(s.VirtualSize) {
				t.Fatalf("section %q: read %d of %d: %v", s.Name, n, s.VirtualSize, err)
			}
			if sub, err := im.SectionImage(s); err == nil {
				if _, err := sub.Authenticode(crypto.SHA256, false); err != nil {
					t.Fatalf("section %q parses as a PE but does not digest: %v", s.Name, err)
				}
			}
		}
		if st, err := im.Stub(); err == nil {
			_, _ = im.StubEvents(st.Major)
		}
		for _, major := range []int{252, 254, 256, 257} {
			_, _ = im.StubEvents(major)
		}
	})
}
