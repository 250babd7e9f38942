package mount

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// newRootTree builds a small root file system:
//
//	/lib/systemd/systemd   executable
//	/sbin/init -> /lib/systemd/systemd (absolute, as Debian ships it)
//	/bin/rel -> ../lib/systemd/systemd
//	/bin/escape -> ../../../../../lib/systemd/systemd (".." stops at root)
//	/bin/noexec            mode 0644
//	/bin/dir/              a directory
//	/bin/loop1 <-> /bin/loop2
//	/bin/dangling -> /nowhere
//	/bin/viafile -> /bin/noexec/x
func newRootTree(t *testing.T) string {
	root := t.TempDir()
	mk := func(p string, mode os.FileMode) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte("#!/bin/true\n"), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(full, mode)
	}
	ln := func(target, p string) {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.Symlink(target, full); err != nil {
			t.Fatal(err)
		}
	}
	mk("lib/systemd/systemd", 0o755)
	mk("bin/noexec", 0o644)
	os.MkdirAll(filepath.Join(root, "bin/dir"), 0o755)
	ln("/lib/systemd/systemd", "sbin/init")
	ln("../lib/systemd/systemd", "bin/rel")
	ln("../../../../../lib/systemd/systemd", "bin/escape")
	ln("loop2", "bin/loop1")
	ln("loop1", "bin/loop2")
	ln("/nowhere", "bin/dangling")
	ln("/bin/noexec/x", "bin/viafile")
	ln("/lib", "usrlib") // directory symlink in the middle of a path
	return root
}

func TestCheckInit(t *testing.T) {
	root := newRootTree(t)
	tests := []struct {
		init string
		want string // resolved path, or error substring after the common prefix
		err  bool
	}{
		{init: "/sbin/init", want: "/lib/systemd/systemd"},
		{init: "/lib/systemd/systemd", want: "/lib/systemd/systemd"},
		{init: "/bin/rel", want: "/lib/systemd/systemd"},
		{init: "/bin/escape", want: "/lib/systemd/systemd"},
		{init: "/usrlib/systemd/../systemd/systemd", want: "/lib/systemd/systemd"},
		{init: "/../../sbin/init", want: "/lib/systemd/systemd"},
		{init: "/sbin/missing", want: "no such file or directory", err: true},
		{init: "/bin/noexec", want: "is not executable (mode 0644)", err: true},
		{init: "/bin/dir", want: "is not a regular file", err: true},
		{init: "/bin/loop1", want: "too many levels of symbolic links", err: true},
		{init: "/bin/dangling", want: "no such file or directory", err: true},
		{init: "/bin/viafile", want: "/bin/noexec is not a directory", err: true},
		{init: "sbin/init", want: "must be an absolute path", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.init, func(t *testing.T) {
			got, err := CheckInit(root, tc.init)
			if tc.err {
				prefix := `init "` + tc.init + `" not found in new root ` + root + ": "
				if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want %q…%q", err, prefix, tc.want)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("CheckInit = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestSwitchRootRefusesEarly checks the failures that must happen before
// anything is moved or deleted. (A full switch runs in TestSwitchRootInNamespace.)
func TestSwitchRootRefusesEarly(t *testing.T) {
	root := newRootTree(t)
	err := SwitchRoot(root, "/sbin/nothing", nil, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), `init "/sbin/nothing" not found in new root `+root) {
		t.Fatalf("missing init: %v", err)
	}
	if os.Getpid() != 1 {
		err = SwitchRoot(root, "/sbin/init", []string{"--x"}, zaptest.NewLogger(t))
		if err == nil || !strings.Contains(err.Error(), "must run as PID 1") {
			t.Fatalf("not PID 1: %v", err)
		}
	}
}

// mountTmpfs mounts a fresh tmpfs on a new temporary directory and
// detaches it (with anything below) when the test ends.
func mountTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("cannot mount tmpfs here: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func listTree(t *testing.T, root string) []string {
	var out []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

func TestDeleteTree(t *testing.T) {
	fs := mountTmpfs(t)
	tree := filepath.Join(fs, "root") // what is deleted
	sameFSSrc := filepath.Join(fs, "src")
	outside := t.TempDir() // on another file system: must survive
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string) {
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte("x"), 0o644))
	}
	write(filepath.Join(outside, "precious"))
	write(filepath.Join(outside, "sub", "precious2"))
	write(filepath.Join(tree, "init"))
	write(filepath.Join(tree, "etc", "deep", "er", "file"))
	must(os.Symlink(outside, filepath.Join(tree, "link-to-outside")))
	must(os.Symlink(filepath.Join(outside, "precious"), filepath.Join(tree, "etc", "link-to-file")))
	must(unix.Mkfifo(filepath.Join(tree, "fifo"), 0o644))
	// Another tmpfs mounted inside: a different device.
	inner := filepath.Join(tree, "mnt", "inner")
	must(os.MkdirAll(inner, 0o755))
	must(unix.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"))
	write(filepath.Join(inner, "keep-inner"))
	// A bind mount from the outside directory.
	bind := filepath.Join(tree, "bind")
	must(os.MkdirAll(bind, 0o755))
	must(unix.Mount(filepath.Join(outside, "sub"), bind, "", unix.MS_BIND, ""))
	// A bind mount of a directory of the same tmpfs, from outside the
	// tree: same device number, another mount; only the mount ID tells.
	write(filepath.Join(sameFSSrc, "keep-same"))
	samefs := filepath.Join(tree, "var", "samefs")
	must(os.MkdirAll(samefs, 0o755))
	must(unix.Mount(sameFSSrc, samefs, "", unix.MS_BIND, ""))
	// The new root, which must be skipped by name.
	write(filepath.Join(tree, "sysroot", "lib", "systemd", "systemd"))

	var st unix.Stat_t
	must(unix.Stat(tree, &st))
	err := DeleteTree(tree, st.Dev, filepath.Join(tree, "sysroot"))
	// Unmount before looking, so the listing shows what DeleteTree left in
	// the tmpfs itself.
	_, haveMntID := mountID(unix.AT_FDCWD, tree)
	for _, m := range []string{samefs, bind, inner} {
		must(unix.Unmount(m, 0))
	}
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(listTree(t, tree), " ")
	want := "bind mnt mnt/inner sysroot sysroot/lib sysroot/lib/systemd sysroot/lib/systemd/systemd var var/samefs"
	if got != want {
		t.Errorf("left in the tree:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(sameFSSrc, "keep-same")); err != nil {
		if haveMntID {
			t.Errorf("entered a bind mount of the same file system: %v", err)
		} else {
			t.Logf("kernel without STATX_MNT_ID: same-device bind mounts are not detected")
		}
	}
	for _, p := range []string{"precious", "sub/precious2"} {
		if _, err := os.Stat(filepath.Join(outside, p)); err != nil {
			t.Errorf("followed a link or entered a bind mount: %s: %v", p, err)
		}
	}
}

func TestDeleteTreeRefusesOtherDevice(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	err := DeleteTree(dir, st.Dev+1)
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
		t.Error("deleted despite refusing")
	}
	if err := DeleteTree(filepath.Join(dir, "f"), st.Dev); err == nil {
		t.Error("a file accepted as a tree")
	}
}
