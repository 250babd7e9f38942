package warm

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestFilesOfHost walks this machine's own init (systemd on the CI machines).
func TestFilesOfHost(t *testing.T) {
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		t.Skip("no systemd here")
	}
	files, err := Files("/", "/sbin/init")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%q", files)
	if files[0] != "/usr/lib/systemd/systemd" && files[0] != "/lib/systemd/systemd" {
		t.Errorf("first %q, want systemd itself", files[0])
	}
	want := []string{"libc.so.6", "ld-linux-x86-64.so.2", "libsystemd-shared"}
	for _, w := range want {
		if !slices.ContainsFunc(files, func(f string) bool { return strings.Contains(filepath.Base(f), w) }) {
			t.Errorf("%s is not among %q", w, files)
		}
	}
	if n := Read(context.Background(), files); n < 1<<20 {
		t.Errorf("read %d bytes", n)
	}
}

// TestFilesInTree copies the host's init and what it loads into a tree of its own, with
// the links a merged-/usr Debian root has, and finds the same files there.
func TestFilesInTree(t *testing.T) {
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		t.Skip("no systemd here")
	}
	host, err := Files("/", "/sbin/init")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, l := range [][2]string{{"lib", "usr/lib"}, {"lib64", "usr/lib64"}, {"sbin", "usr/sbin"}} {
		if err := os.Symlink(l[1], filepath.Join(root, l[0])); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/lib/systemd/systemd", filepath.Join(root, "usr/sbin/init")); err != nil {
		t.Fatal(err)
	}
	// The links by which the loader finds them (sonames, /lib64's interpreter) come along.
	for _, dir := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/systemd", "/usr/lib64"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			target, err := filepath.EvalSymlinks(p)
			if e.Type()&os.ModeSymlink == 0 || err != nil || !slices.Contains(host, target) {
				continue
			}
			link, _ := os.Readlink(p)
			if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(link, filepath.Join(root, p)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range host {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Files(root, "/sbin/init")
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	for _, g := range got {
		if !strings.HasPrefix(g, root+"/") {
			t.Errorf("%s is outside the tree", g)
		}
		rel = append(rel, strings.TrimPrefix(g, root))
	}
	if !slices.Equal(rel, host) {
		t.Errorf("in the tree %q\non the host %q", rel, host)
	}
	// A link pointing out of the tree resolves inside it: absent there, no file.
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "usr/sbin/escape")); err != nil {
		t.Fatal(err)
	}
	if _, err := Files(root, "/sbin/escape"); err == nil {
		t.Error("a link to a path absent from the tree was followed")
	}
	if _, err := Files(root, "/usr"); err == nil {
		t.Error("a directory as init: no error")
	}
}
