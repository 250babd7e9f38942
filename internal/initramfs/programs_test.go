package initramfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func hostProgram(t *testing.T, name string) string {
	t.Helper()
	for _, d := range ProgramDirs {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	t.Skipf("%s is not installed on this machine (make deps installs it)", name)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// extract writes the archive's members into dir, as the kernel unpacks an initramfs.
func extract(t *testing.T, data []byte, dir string) {
	t.Helper()
	members, err := parseNewc(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		p := filepath.Join(dir, m.name)
		switch m.mode & 0o170000 {
		case 0o040000:
			err = os.MkdirAll(p, 0o755)
		case 0o100000:
			err = os.WriteFile(p, m.data, os.FileMode(m.mode&0o777))
		case 0o120000:
			err = os.Symlink(string(m.data), p)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestProgramsRunFromTheArchive packs the build host's mke2fs for a storage config and runs
// it chrooted into the unpacked archive: every library it needs is in, at a path the dynamic
// loader searches.
func TestProgramsRunFromTheArchive(t *testing.T) {
	hostProgram(t, "mke2fs")
	data, sum := buildBytes(t, Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone,
		Config: writeConfig(t, "storage: {enabled: true, filesystem: ext4}\noverlay: {enabled: false}\n")})
	if !slices.ContainsFunc(sum.Programs, func(p string) bool { return strings.HasSuffix(p, "/mke2fs") }) ||
		!slices.ContainsFunc(sum.Programs, func(p string) bool { return strings.Contains(p, "libext2fs.so") }) {
		t.Fatalf("programs %q", sum.Programs)
	}
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	dir := t.TempDir()
	extract(t, data, dir)
	img := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	// The image is bind-visible inside the chroot as a plain file.
	if err := os.Link(img, filepath.Join(dir, "fs.img")); err != nil {
		if err := os.WriteFile(filepath.Join(dir, "fs.img"), make([]byte, 0), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, "fs.img"), 64<<20); err != nil {
			t.Fatal(err)
		}
	}
	mkfs := ""
	for _, p := range sum.Programs {
		if strings.HasSuffix(p, "/mke2fs") {
			mkfs = p
		}
	}
	out, err := exec.Command("chroot", dir, mkfs, "-F", "-q", "-t", "ext4", "/fs.img").CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %s: %v\n%s", dir, mkfs, err, out)
	}
	if out, err := exec.Command("dumpe2fs", "-h", filepath.Join(dir, "fs.img")).CombinedOutput(); err != nil || !strings.Contains(string(out), "extent") {
		t.Errorf("the file system mke2fs made in the chroot: %v\n%s", err, out)
	}
}

func TestProgramsXFS(t *testing.T) {
	hostProgram(t, "mkfs.xfs")
	_, sum := buildBytes(t, Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone,
		Config: writeConfig(t, "storage: {enabled: true, filesystem: xfs}\n")})
	if !slices.ContainsFunc(sum.Programs, func(p string) bool { return strings.HasSuffix(p, "/mkfs.xfs") }) ||
		slices.ContainsFunc(sum.Programs, func(p string) bool { return strings.HasSuffix(p, "/mke2fs") }) {
		t.Fatalf("programs %q", sum.Programs)
	}
}

// TestProgramsMissing: a tools root without the program or without one of its libraries
// fails the build, naming what is missing and where it was looked for.
func TestProgramsMissing(t *testing.T) {
	host := hostProgram(t, "mke2fs")
	cfg := writeConfig(t, "storage: {enabled: true}\n")
	build := func(root string) error {
		_, err := Build(Options{Binary: fakeBinary(t, 10, false), Compression: CompressionNone, Config: cfg, ToolsRoot: root}, new(strings.Builder))
		return err
	}
	empty := t.TempDir()
	if err := build(empty); err == nil || !strings.Contains(err.Error(), "program mke2fs not found in /usr/sbin, /sbin, /usr/bin, /bin under "+empty) {
		t.Errorf("empty root: %v", err)
	}
	root := t.TempDir()
	b, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/mke2fs"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := build(root); err == nil || !strings.Contains(err.Error(), "interpreter of /usr/sbin/mke2fs: /lib64/ld-linux-x86-64.so.2 is not under "+root) {
		t.Errorf("root without libraries: %v", err)
	}
}
