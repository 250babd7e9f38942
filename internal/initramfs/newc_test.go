package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// member is one entry of a newc archive as read back by parseNewc.
type member struct {
	name                 string
	ino, mode, uid, gid  uint32
	nlink, mtime         uint32
	devMajor, devMinor   uint32
	rdevMajor, rdevMinor uint32
	data                 []byte
}

// parseNewc reads a whole newc archive strictly: magic, hex fields, zero checksum, 4-byte
// alignment of names and data, and a trailer followed only by NUL padding.
func parseNewc(b []byte) ([]member, error) {
	var out []member
	off := 0
	for {
		if len(b)-off < 110 {
			return nil, fmt.Errorf("offset %d: truncated header", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != newcMagic {
			return nil, fmt.Errorf("offset %d: magic %q", off, h[:6])
		}
		var f [13]uint32
		for i := range f {
			s := string(h[6+8*i : 14+8*i])
			v, err := strconv.ParseUint(s, 16, 32)
			if err != nil {
				return nil, fmt.Errorf("offset %d: field %d %q: %v", off, i, s, err)
			}
			f[i] = uint32(v)
		}
		if f[12] != 0 {
			return nil, fmt.Errorf("offset %d: checksum %d, want 0", off, f[12])
		}
		nameSize := int(f[11])
		off += 110
		if nameSize < 1 || len(b)-off < nameSize || b[off+nameSize-1] != 0 {
			return nil, fmt.Errorf("offset %d: bad name size %d", off, nameSize)
		}
		m := member{name: string(b[off : off+nameSize-1]), ino: f[0], mode: f[1], uid: f[2], gid: f[3],
			nlink: f[4], mtime: f[5], devMajor: f[7], devMinor: f[8], rdevMajor: f[9], rdevMinor: f[10]}
		off += nameSize
		for ; off%4 != 0; off++ {
			if off >= len(b) || b[off] != 0 {
				return nil, fmt.Errorf("name padding of %s not NUL", m.name)
			}
		}
		size := int(f[6])
		if len(b)-off < size {
			return nil, fmt.Errorf("%s: data truncated", m.name)
		}
		m.data = b[off : off+size]
		off += size
		for ; off%4 != 0; off++ {
			if off >= len(b) || b[off] != 0 {
				return nil, fmt.Errorf("data padding of %s not NUL", m.name)
			}
		}
		if m.name == trailerName {
			if slices.ContainsFunc(b[off:], func(c byte) bool { return c != 0 }) {
				return nil, errors.New("bytes after the trailer")
			}
			return out, nil
		}
		out = append(out, m)
	}
}

// sampleArchive exercises every member type, odd name and data lengths, and implicit parents.
func sampleArchive(t *testing.T, withDevices bool) (*Archive, map[string]string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "big.bin")
	big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), 10000)
	if err := os.WriteFile(src, big, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Archive{MTime: 1700000000}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddFile("/init", 0o755, []byte("#!/bin/true\n")))
	must(a.AddFile("etc/empty", 0o644, nil))
	must(a.AddFile("/etc/a/b/c/deep.txt", 0o640, []byte("x")))
	must(a.AddFile("/etc/a/b/four", 0o644, []byte("four")))
	must(a.AddFileFrom("/usr/lib/big.bin", 0o444, src))
	must(a.AddDir("/tmp", 0o777|fs.ModeSticky))
	must(a.AddDir("/proc", 0o555))
	must(a.AddDir("/etc/a", 0o700))
	must(a.AddSymlink("/etc/os-release", "initrd-release"))
	must(a.AddSymlink("/bin", "usr/bin"))
	if withDevices {
		must(a.AddCharDevice("/dev/console", 0o600, 5, 1))
		must(a.AddCharDevice("/dev/null", 0o666, 1, 3))
	}
	contents := map[string]string{
		"init": "#!/bin/true\n", "etc/empty": "", "etc/a/b/c/deep.txt": "x", "etc/a/b/four": "four",
		"usr/lib/big.bin": string(big),
	}
	return a, contents
}

func TestArchiveFormat(t *testing.T) {
	a, contents := sampleArchive(t, true)
	var buf bytes.Buffer
	n, err := a.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo returned %d, wrote %d", n, buf.Len())
	}
	members, err := parseNewc(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, m := range members {
		names = append(names, "/"+m.name)
		if m.ino != uint32(i+1) || m.uid != 0 || m.gid != 0 || m.mtime != 1700000000 || m.devMajor != 0 {
			t.Errorf("%s: ino %d uid %d gid %d mtime %d dev %d, want ino %d, root, mtime 1700000000, dev 0",
				m.name, m.ino, m.uid, m.gid, m.mtime, m.devMajor, i+1)
		}
		if want, ok := contents[m.name]; ok && string(m.data) != want {
			t.Errorf("%s: content differs (%d bytes, want %d)", m.name, len(m.data), len(want))
		}
	}
	if !slices.Equal(names, a.Paths()) {
		t.Errorf("members = %q\nPaths() = %q", names, a.Paths())
	}
	wantModes := map[string]uint32{
		"dev": 0o040755, "dev/console": 0o020600, "tmp": 0o041777, "etc/a": 0o040700, "etc/a/b": 0o040755,
		"bin": 0o120777, "init": 0o100755, "usr/lib/big.bin": 0o100444,
	}
	for _, m := range members {
		if want, ok := wantModes[m.name]; ok && m.mode != want {
			t.Errorf("%s: mode %o, want %o", m.name, m.mode, want)
		}
		if m.name == "dev/console" && (m.rdevMajor != 5 || m.rdevMinor != 1) {
			t.Errorf("dev/console: rdev %d:%d, want 5:1", m.rdevMajor, m.rdevMinor)
		}
		if m.name == "bin" && string(m.data) != "usr/bin" {
			t.Errorf("bin -> %q, want usr/bin", m.data)
		}
	}
}

func TestArchiveDeterministic(t *testing.T) {
	build := func(reverse bool) []byte {
		a := &Archive{}
		ops := []func() error{
			func() error { return a.AddFile("/b/file", 0o644, []byte("b")) },
			func() error { return a.AddDir("/a", 0o755) },
			func() error { return a.AddSymlink("/a/link", "../b/file") },
			func() error { return a.AddFile("/a-b", 0o600, []byte("ab")) },
		}
		if reverse {
			slices.Reverse(ops)
		}
		for _, op := range ops {
			if err := op(); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if _, err := a.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	first, second := build(false), build(true)
	if !bytes.Equal(first, second) {
		t.Error("archive bytes depend on the order members were added")
	}
}

func TestArchiveErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "f")
	if err := os.WriteFile(src, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		op      func(a *Archive) error
		wantErr string
	}{
		{"dotdot", func(a *Archive) error { return a.AddFile("/a/../../etc", 0o644, nil) }, "not a file path inside the archive"},
		{"root", func(a *Archive) error { return a.AddDir("/", 0o755) }, "not a file path inside the archive"},
		{"trailer name", func(a *Archive) error { return a.AddFile("TRAILER!!!", 0o644, nil) }, "not a file path"},
		{"below the trailer name", func(a *Archive) error { return a.AddDir("/TRAILER!!!/x", 0o755) }, "not a file path"},
		{"nul", func(a *Archive) error { return a.AddFile("a\x00b", 0o644, nil) }, "NUL"},
		{"duplicate file", func(a *Archive) error {
			_ = a.AddFile("/x", 0o644, nil)
			return a.AddFile("x", 0o644, nil)
		}, "/x added twice"},
		{"file under file", func(a *Archive) error {
			_ = a.AddFile("/x", 0o644, nil)
			return a.AddFile("/x/y", 0o644, nil)
		}, "needs /x to be a directory"},
		{"file over directory contents", func(a *Archive) error {
			_ = a.AddFile("/x/y", 0o644, nil)
			return a.AddSymlink("/x", "z")
		}, "/x/y is below it"},
		{"missing source", func(a *Archive) error { return a.AddFileFrom("/x", 0o644, filepath.Join(dir, "none")) }, "no such file"},
		{"directory source", func(a *Archive) error { return a.AddFileFrom("/x", 0o644, dir) }, "expected a regular file"},
		{"empty symlink", func(a *Archive) error { return a.AddSymlink("/x", "") }, "target"},
		{"source changed", func(a *Archive) error {
			if err := a.AddFileFrom("/x", 0o644, src); err != nil {
				return err
			}
			if err := os.WriteFile(src, []byte("abcdef"), 0o644); err != nil {
				return err
			}
			_, err := a.WriteTo(&bytes.Buffer{})
			return err
		}, "changed size from 3 to 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op(&Archive{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	// Re-adding a directory, also one created implicitly, only changes its permissions.
	a := &Archive{}
	if err := a.AddFile("/d/f", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	a.Paths()
	if err := a.AddDir("/d", 0o700); err != nil {
		t.Errorf("AddDir over an implicit parent: %v", err)
	}
	if err := a.AddDir("/d", 0o750); err != nil {
		t.Errorf("AddDir twice: %v", err)
	}
}

// TestArchiveWithCpio lists and extracts the archive with GNU cpio and compares the tree.
func TestArchiveWithCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("cpio not installed (apt-get install cpio)")
	}
	root := os.Geteuid() == 0 // creating device nodes needs CAP_MKNOD
	a, contents := sampleArchive(t, root)
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}

	list := exec.Command(cpio, "-it", "--quiet")
	list.Stdin = bytes.NewReader(buf.Bytes())
	out, err := list.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	var want []string
	for _, p := range a.Paths() {
		want = append(want, strings.TrimPrefix(p, "/"))
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("cpio -it = %q\nwant       %q", got, want)
	}

	dir := t.TempDir()
	extract := exec.Command(cpio, "-idm", "--quiet", "--no-absolute-filenames")
	extract.Dir = dir
	extract.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := extract.CombinedOutput(); err != nil {
		t.Fatalf("cpio -idm: %v\n%s", err, out)
	}
	for name, content := range contents {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != content {
			t.Errorf("%s: read %d bytes (err %v), want %d", name, len(got), err, len(content))
		}
	}
	modes := map[string]fs.FileMode{
		"init": 0o755, "usr/lib/big.bin": 0o444, "etc/a": fs.ModeDir | 0o700, "etc/a/b/c/deep.txt": 0o640,
		"tmp": fs.ModeDir | fs.ModeSticky | 0o777, "proc": fs.ModeDir | 0o555, "bin": fs.ModeSymlink | 0o777,
	}
	if root {
		modes["dev/console"] = fs.ModeDevice | fs.ModeCharDevice | 0o600
	}
	for name, want := range modes {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, st.Mode(), want)
		}
		if name == "init" && st.ModTime().Unix() != 1700000000 {
			t.Errorf("init: mtime %d, want 1700000000", st.ModTime().Unix())
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "etc/os-release")); err != nil || target != "initrd-release" {
		t.Errorf("etc/os-release -> %q (%v), want initrd-release", target, err)
	}
	if root {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, "dev/null"), &st); err != nil {
			t.Fatal(err)
		}
		if unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
			t.Errorf("dev/null: %d:%d, want 1:3", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	} else {
		t.Log("not root: device nodes left out of the extraction test")
	}
}
