package luks2

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// memDev is an in-memory device of fixed size.
type memDev struct{ b []byte }

func newMemDev(size int) *memDev { return &memDev{b: make([]byte, size)} }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(m.b[off:], p), nil
}

func randomKey(t testing.TB, n int) []byte {
	t.Helper()
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// fastPBKDF2 and fastArgon2 keep keyslot tests quick.
func fastPBKDF2(pass string) KeyslotSpec {
	return KeyslotSpec{Passphrase: []byte(pass), KDF: KDFPBKDF2, Iterations: 1000}
}

func fastArgon2(pass string) KeyslotSpec {
	return KeyslotSpec{Passphrase: []byte(pass), KDF: KDFArgon2id, Time: 1, MemoryKiB: 64, Parallel: 1}
}

// tempImage creates a sparse file of the given size.
func tempImage(t testing.TB, size int64) (*os.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "luks.img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

// rechecksum recomputes the checksum of the header copy at off in img, for
// tests that edit a header on purpose.
func rechecksum(t testing.TB, img []byte, off uint64) {
	t.Helper()
	bin := decodeBinHeader(img[off:])
	if err := fixChecksum(img[off:off+bin.hdrSize], bin.csumAlg); err != nil {
		t.Fatal(err)
	}
}

func fixChecksum(copyBytes []byte, alg string) error {
	sum, err := headerChecksum(alg, copyBytes)
	if err != nil {
		return err
	}
	clear(copyBytes[offCsum : offCsum+lenCsum])
	copy(copyBytes[offCsum:], sum)
	return nil
}

// replaceJSON swaps the JSON text of the copy at off (keeping the area size)
// and fixes its checksum.
func replaceJSON(t testing.TB, img []byte, off uint64, text []byte) {
	t.Helper()
	bin := decodeBinHeader(img[off:])
	area := img[off+binHeaderSize : off+bin.hdrSize]
	if len(text) >= len(area) {
		t.Fatalf("replacement JSON of %d bytes does not fit %d", len(text), len(area))
	}
	clear(area)
	copy(area, text)
	rechecksum(t, img, off)
}

func jsonText(img []byte, off uint64) []byte {
	bin := decodeBinHeader(img[off:])
	area := img[off+binHeaderSize : off+bin.hdrSize]
	return bytes.Clone(area[:bytes.IndexByte(area, 0)])
}
