package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// fakeKernel stands in for mount(2): it records calls and keeps
// ROOT/proc/self/mountinfo and ROOT/proc/filesystems up to date the way
// the kernel would once /proc is mounted.
type fakeKernel struct {
	t           *testing.T
	root        string
	filesystems string
	mounts      []string // mountinfo lines
	calls       []string
	fail        map[string]error // target (relative) → error
}

func newFakeKernel(t *testing.T, filesystems string) *fakeKernel {
	return &fakeKernel{t: t, root: t.TempDir(), filesystems: filesystems, fail: map[string]error{}}
}

func (k *fakeKernel) mounter() *Mounter {
	return &Mounter{Root: k.root, Log: zaptest.NewLogger(k.t), mount: k.mount}
}

func (k *fakeKernel) mount(source, target, fstype string, flags uintptr, data string) error {
	rel := strings.TrimPrefix(target, k.root)
	if err := k.fail[rel]; err != nil {
		return err
	}
	if _, err := os.Stat(target); err != nil {
		return unix.ENOENT
	}
	k.calls = append(k.calls, fmt.Sprintf("%s %s %#x %s", fstype, rel, flags, data))
	k.mounts = append(k.mounts, fmt.Sprintf("%d 1 0:%d / %s rw - %s %s rw", 30+len(k.mounts), 30+len(k.mounts), strings.ReplaceAll(target, " ", `\040`), fstype, source))
	if rel == "/proc" {
		k.write("proc/filesystems", k.filesystems)
	}
	if _, err := os.Stat(filepath.Join(k.root, "proc")); err == nil && len(k.mounts) > 0 && k.isMounted("/proc") {
		k.write("proc/self/mountinfo", strings.Join(k.mounts, "\n")+"\n")
	}
	if rel == "/sys" {
		// sysfs brings its own directories.
		os.MkdirAll(filepath.Join(k.root, "sys/kernel/security"), 0o755)
		os.MkdirAll(filepath.Join(k.root, "sys/kernel/config"), 0o755)
	}
	return nil
}

func (k *fakeKernel) isMounted(rel string) bool {
	for _, m := range k.mounts {
		if strings.Contains(m, " "+filepath.Join(k.root, rel)+" ") {
			return true
		}
	}
	return false
}

func (k *fakeKernel) write(rel, content string) {
	p := filepath.Join(k.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

const allFilesystems = "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\nnodev\tdevtmpfs\nnodev\tdevpts\nnodev\tsecurityfs\nnodev\tconfigfs\nnodev\tefivarfs\n\text4\n\txfs\n"

func TestEarlyMountsAndIsIdempotent(t *testing.T) {
	k := newFakeKernel(t, allFilesystems)
	m := k.mounter()
	if _, err := m.Early(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"proc /proc 0xe ",
		"sysfs /sys 0xe ",
		"devtmpfs /dev 0x2 mode=0755",
		"devpts /dev/pts 0xa mode=0620,gid=5",
		"tmpfs /dev/shm 0x6 mode=1777",
		"tmpfs /run 0x6 mode=0755",
		"securityfs /sys/kernel/security 0xe ",
		"configfs /sys/kernel/config 0xe ",
		// no efivarfs: /sys/firmware/efi does not exist (BIOS boot)
	}
	if strings.Join(k.calls, "\n") != strings.Join(want, "\n") {
		t.Errorf("mount calls:\n%s\nwant:\n%s", strings.Join(k.calls, "\n"), strings.Join(want, "\n"))
	}
	// Second run: everything is in mountinfo, nothing is mounted again.
	k.calls = nil
	if _, err := m.Early(); err != nil {
		t.Fatal(err)
	}
	if len(k.calls) != 0 {
		t.Errorf("second Early mounted again: %v", k.calls)
	}
}

func TestEarlyKernelVariants(t *testing.T) {
	t.Run("no devtmpfs, no configfs, EFI", func(t *testing.T) {
		k := newFakeKernel(t, "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\nnodev\tdevpts\nnodev\tefivarfs\n")
		if err := os.MkdirAll(filepath.Join(k.root, "sys/firmware/efi/efivars"), 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := k.mounter().Early(); err != nil {
			t.Fatal(err)
		}
		got := strings.Join(k.calls, "\n")
		for _, want := range []string{"tmpfs /dev 0x2 mode=0755", "efivarfs /sys/firmware/efi/efivars 0xe"} {
			if !strings.Contains(got, want) {
				t.Errorf("missing %q in\n%s", want, got)
			}
		}
		for _, unwanted := range []string{"devtmpfs", "configfs", "securityfs"} {
			if strings.Contains(got, unwanted) {
				t.Errorf("%s mounted although the kernel lacks it:\n%s", unwanted, got)
			}
		}
	})
	t.Run("already mounted with another type", func(t *testing.T) {
		k := newFakeKernel(t, allFilesystems)
		// Pretend /proc and a tmpfs /dev are already there.
		os.MkdirAll(filepath.Join(k.root, "proc"), 0o755)
		os.MkdirAll(filepath.Join(k.root, "dev"), 0o755)
		k.mounts = []string{
			fmt.Sprintf("20 1 0:20 / %s rw - proc proc rw", filepath.Join(k.root, "proc")),
			fmt.Sprintf("21 1 0:21 / %s rw - tmpfs tmpfs rw", filepath.Join(k.root, "dev")),
		}
		k.write("proc/self/mountinfo", strings.Join(k.mounts, "\n")+"\n")
		k.write("proc/filesystems", allFilesystems)
		if _, err := k.mounter().Early(); err != nil {
			t.Fatal(err)
		}
		for _, c := range k.calls {
			if strings.HasPrefix(c, "proc ") || strings.Contains(c, " /dev ") {
				t.Errorf("remounted: %s", c)
			}
		}
	})
	t.Run("mandatory failure", func(t *testing.T) {
		k := newFakeKernel(t, allFilesystems)
		k.fail["/run"] = unix.EPERM
		k.fail["/sys/kernel/config"] = unix.EBUSY // optional: logged only
		_, err := k.mounter().Early()
		if err == nil {
			t.Fatal("Early succeeded")
		}
		var me *Error
		if !errors.As(err, &me) || !errors.Is(err, unix.EPERM) {
			t.Fatalf("err = %v", err)
		}
		msg := err.Error()
		want := fmt.Sprintf(`mount tmpfs on %s as tmpfs with options "mode=0755": operation not permitted (EPERM)`, filepath.Join(k.root, "run"))
		if msg != want {
			t.Errorf("message %q\nwant    %q", msg, want)
		}
		// The other mounts still happened.
		if len(k.calls) < 6 {
			t.Errorf("stopped early: %v", k.calls)
		}
	})
	t.Run("unsupported mandatory", func(t *testing.T) {
		k := newFakeKernel(t, "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\nnodev\tdevtmpfs\n")
		_, err := k.mounter().Early()
		if err == nil || !strings.Contains(err.Error(), "does not support devpts") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestReadFilesystems(t *testing.T) {
	p := filepath.Join(t.TempDir(), "filesystems")
	os.WriteFile(p, []byte("nodev\tsysfs\n\text4\n\nnodev\ttmpfs\n\tvfat\ngarbage line here\n"), 0o644)
	fss, err := readFilesystems(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"sysfs": true, "ext4": false, "tmpfs": true, "vfat": false}
	if fmt.Sprint(fss) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", fss, want)
	}
	if _, err := readFilesystems(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("missing file accepted")
	}
}
