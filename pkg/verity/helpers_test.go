package verity

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pattern returns n deterministic pseudo-random bytes for seed.
func pattern(seed uint64, n int64) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	r := rand.NewChaCha8(key)
	b := make([]byte, n)
	_, _ = r.Read(b)
	return b
}

// memDev is an in-memory device that grows on write, like a sparse file.
type memDev struct{ b []byte }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, errors.New("memDev: read past end")
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, errors.New("memDev: short read")
	}
	return n, nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func flipBit(b []byte, bit uint64) { b[bit/8] ^= 1 << (bit % 8) }

// asCorruption unwraps a *CorruptionError or fails the test.
func asCorruption(t *testing.T, err error) *CorruptionError {
	t.Helper()
	var ce *CorruptionError
	if !errors.As(err, &ce) {
		t.Fatalf("Verify error = %v (%T), want *CorruptionError", err, err)
	}
	return ce
}

// levelOf returns the tree level holding absolute hash block blk.
func levelOf(g Geometry, blk uint64) int {
	for i, l := range g.Levels {
		if blk >= l.FirstBlock && blk < l.FirstBlock+l.Blocks {
			return i
		}
	}
	return -1
}

// veritysetupPath returns the veritysetup binary or skips the test.
func veritysetupPath(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Skip("veritysetup not installed (Debian: apt-get install cryptsetup-bin); interoperability not checked")
	}
	return path
}

// veritysetupArgs renders p as veritysetup options. With a superblock,
// veritysetup verify reads everything but the offset from it.
func veritysetupArgs(p Params, forVerify bool) []string {
	var a []string
	if !p.NoSuperblock && forVerify {
		if p.HashOffset != 0 {
			a = append(a, fmt.Sprintf("--hash-offset=%d", p.HashOffset))
		}
		return a
	}
	salt := "-"
	if len(p.Salt) > 0 {
		salt = fmt.Sprintf("%x", p.Salt)
	}
	a = append(a,
		"--hash="+p.Algorithm,
		fmt.Sprintf("--format=%d", p.HashType),
		fmt.Sprintf("--data-block-size=%d", p.DataBlockSize),
		fmt.Sprintf("--hash-block-size=%d", p.HashBlockSize),
		"--salt="+salt,
		fmt.Sprintf("--hash-offset=%d", p.HashOffset),
	)
	if p.DataBlocks != 0 {
		a = append(a, fmt.Sprintf("--data-blocks=%d", p.DataBlocks))
	}
	if p.NoSuperblock {
		a = append(a, "--no-superblock")
	} else {
		a = append(a, "--uuid="+FormatUUID(p.UUID))
	}
	return a
}

// veritysetupFormat runs `veritysetup format` and returns the root hash hex.
func veritysetupFormat(t testing.TB, data, hash string, p Params) string {
	t.Helper()
	args := append([]string{"format", data, hash}, veritysetupArgs(p, false)...)
	out, err := exec.Command(veritysetupPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "Root hash" {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("veritysetup %s: no root hash in output:\n%s", strings.Join(args, " "), out)
	return ""
}

// veritysetupVerify runs `veritysetup verify` and reports whether it accepted.
func veritysetupVerify(t testing.TB, data, hash, root string, p Params) (bool, string) {
	t.Helper()
	args := append([]string{"verify", data, hash, root}, veritysetupArgs(p, true)...)
	out, err := exec.Command(veritysetupPath(t), args...).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("veritysetup %s: %v", strings.Join(args, " "), err)
	}
	return err == nil, string(out)
}

func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustEqualFiles(t *testing.T, want, got []byte, what string) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	if len(want) != len(got) {
		t.Errorf("%s: length %d, want %d", what, len(got), len(want))
	}
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			t.Fatalf("%s: first difference at byte %d: got 0x%02x want 0x%02x", what, i, got[i], want[i])
		}
	}
	t.FailNow()
}

// describe renders p compactly for test logs.
func describe(p Params) string {
	sb := "superblock"
	if p.NoSuperblock {
		sb = "no superblock"
	}
	return fmt.Sprintf("type %d %s data %d hash %d blocks %d salt %d bytes %s offset %d",
		p.HashType, p.Algorithm, p.DataBlockSize, p.HashBlockSize, p.DataBlocks, len(p.Salt), sb, p.HashOffset)
}
