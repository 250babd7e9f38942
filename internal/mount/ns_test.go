package mount

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The tests below re-execute the test binary in new mount (and PID)
// namespaces, so that real mounts, mount moves and the root switch happen
// in a private copy of the mount table and never touch this machine's.
const (
	stageEnv     = "CVMBOOT_MOUNT_TEST_STAGE"
	dirEnv       = "CVMBOOT_MOUNT_TEST_DIR"
	parentNSEnv  = "CVMBOOT_MOUNT_TEST_PARENT_MNTNS"
	verifiedMark = "SWITCHROOT-VERIFIED"
	earlyMark    = "EARLY-VERIFIED"
)

func TestMain(m *testing.M) {
	switch os.Getenv(stageEnv) {
	case "":
		os.Exit(m.Run())
	case "early":
		os.Exit(report(childEarly()))
	case "switch":
		os.Exit(report(childSwitch()))
	case "verify":
		os.Exit(report(childVerify()))
	default:
		fmt.Fprintln(os.Stderr, "unknown stage")
		os.Exit(2)
	}
}

func report(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s stage failed: %v\n", os.Getenv(stageEnv), err)
		return 1
	}
	return 0
}

// runNamespaced runs the test binary at stage in new namespaces.
func runNamespaced(t *testing.T, stage string, cloneflags uintptr) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Skipf("no mount namespaces: %v", err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), stageEnv+"="+stage, dirEnv+"="+dir, parentNSEnv+"="+ns)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Skipf("cannot create namespaces here: %v", err)
	}
	if err != nil {
		t.Fatalf("stage %s: %v\n%s", stage, err, out)
	}
	return string(out)
}

// inPrivateNamespace refuses to go on unless this process is in another
// mount namespace than the test that started it, with private propagation.
func inPrivateNamespace() error {
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if parent := os.Getenv(parentNSEnv); parent == "" || ns == parent {
		return fmt.Errorf("not in a new mount namespace (%s); refusing to mount", ns)
	}
	return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
}

func TestEarlyInNamespace(t *testing.T) {
	out := runNamespaced(t, "early", syscall.CLONE_NEWNS)
	if !strings.Contains(out, earlyMark) {
		t.Fatalf("no verification mark:\n%s", out)
	}
	t.Log(strings.TrimSpace(out))
}

// childEarly mounts the API file systems for real below a temporary root,
// then calls Early again and checks that nothing was added.
func childEarly() error {
	if err := inPrivateNamespace(); err != nil {
		return err
	}
	root := os.Getenv(dirEnv)
	log, _ := zap.NewDevelopment()
	m := &Mounter{Root: root, Log: log}
	if _, err := m.Early(); err != nil {
		return err
	}
	before, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for target, fstype := range map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs", "/run": "tmpfs"} {
		mi := Lookup(before, filepath.Join(root, target))
		if mi == nil || mi.FSType != fstype {
			return fmt.Errorf("%s: mount %+v, want %s", target, mi, fstype)
		}
	}
	if _, err := m.Early(); err != nil {
		return fmt.Errorf("second Early: %w", err)
	}
	after, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	if len(after) != len(before) {
		return fmt.Errorf("second Early changed the mount table: %d → %d entries", len(before), len(after))
	}
	fmt.Printf("%s: %d mounts below %s, unchanged by a second call\n", earlyMark, countBelow(after, root), root)
	return nil
}

func countBelow(mounts []MountInfo, root string) int {
	n := 0
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, root+"/") {
			n++
		}
	}
	return n
}

// TestSwitchRootInNamespace performs a complete switch_root as PID 1 of new
// PID and mount namespaces: a tmpfs plays the initramfs, another the new
// root; the new init is this test binary again, which checks the result.
func TestSwitchRootInNamespace(t *testing.T) {
	out := runNamespaced(t, "switch", syscall.CLONE_NEWNS|syscall.CLONE_NEWPID)
	if !strings.Contains(out, verifiedMark) {
		t.Fatalf("new init did not verify:\n%s", out)
	}
	t.Log(strings.TrimSpace(out))
}

func childSwitch() error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not PID 1 of a new PID namespace (PID %d)", os.Getpid())
	}
	if err := inPrivateNamespace(); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	w := os.Getenv(dirEnv)
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	write := func(p string, mode os.FileMode) {
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte("x"), mode))
	}
	// The "initramfs".
	must(unix.Mount("tmpfs", w, "tmpfs", 0, "size=64m,mode=0755"))
	for _, d := range []string{"dev", "proc", "sys", "run", "sysroot"} {
		must(os.MkdirAll(filepath.Join(w, d), 0o755))
	}
	write(filepath.Join(w, "init"), 0o755)
	write(filepath.Join(w, "etc", "deep", "er", "file"), 0o644)
	must(os.Symlink("/sysroot/keepme", filepath.Join(w, "evil-link")))

	// The new root, with init behind an absolute symlink as on Debian.
	nr := filepath.Join(w, "sysroot")
	must(unix.Mount("tmpfs", nr, "tmpfs", 0, "size=256m,mode=0755"))
	for _, d := range []string{"dev", "proc", "sys", "cvm", "sbin", "oldroot"} { // no run/: created by the move
		must(os.MkdirAll(filepath.Join(nr, d), 0o755))
	}
	must(copyFile(exe, filepath.Join(nr, "cvm", "init")))
	must(os.Symlink("/cvm/init", filepath.Join(nr, "sbin", "init")))
	write(filepath.Join(nr, "keepme", "file"), 0o644)
	if dynamic, err := isDynamic(exe); err != nil {
		return err
	} else if dynamic {
		// A cgo build needs the host's loader and libc in the new root.
		must(shareHostLibs(nr))
	}
	// A window on the old root from the new one, to check the deletion.
	must(unix.Mount(w, filepath.Join(nr, "oldroot"), "", unix.MS_BIND, ""))

	// API mounts as the agent would have them.
	must(unix.Mount("proc", filepath.Join(w, "proc"), "proc", nosuidNodevNoexec, ""))
	must(unix.Mount("sysfs", filepath.Join(w, "sys"), "sysfs", nosuidNodevNoexec, ""))
	must(unix.Mount("/dev", filepath.Join(w, "dev"), "", unix.MS_BIND|unix.MS_REC, ""))
	must(unix.Mount("tmpfs", filepath.Join(w, "run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"))
	write(filepath.Join(w, "run", "marker"), 0o644)

	// Make the tmpfs "/" like the kernel's rootfs.
	must(unix.Chdir(w))
	must(unix.Mount(w, "/", "", unix.MS_MOVE, ""))
	must(unix.Chroot("."))
	must(unix.Chdir("/"))

	log, _ := zap.NewDevelopment()
	s := &Switcher{NewRoot: "/sysroot", Init: "/sbin/init", Args: []string{"arg-one"}, Env: []string{stageEnv + "=verify", "PATH=/cvm"}, Log: log}
	return s.Switch() // returns only on failure
}

func childVerify() error {
	if os.Getpid() != 1 {
		return fmt.Errorf("PID %d, want 1", os.Getpid())
	}
	if !slices.Equal(os.Args, []string{"/sbin/init", "arg-one"}) {
		return fmt.Errorf("argv %q", os.Args)
	}
	if env := os.Environ(); !slices.Equal(env, []string{stageEnv + "=verify", "PATH=/cvm"}) {
		return fmt.Errorf("environment %q", env)
	}
	mounts, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for target, fstype := range map[string]string{"/": "tmpfs", "/proc": "proc", "/sys": "sysfs", "/run": "tmpfs"} {
		if mi := Lookup(mounts, target); mi == nil || mi.FSType != fstype {
			return fmt.Errorf("%s is %+v, want %s", target, mi, fstype)
		}
	}
	if Lookup(mounts, "/dev") == nil {
		return errors.New("/dev not carried over")
	}
	if _, err := os.Stat("/run/marker"); err != nil {
		return fmt.Errorf("/run content lost: %w", err)
	}
	if _, err := os.Stat("/keepme/file"); err != nil {
		return fmt.Errorf("deletion followed a symlink into the new root: %w", err)
	}
	if _, err := os.Stat("/cvm/init"); err != nil {
		return err
	}
	left, err := os.ReadDir("/oldroot")
	if err != nil {
		return err
	}
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	// Only the new root's mount point survives in the old root.
	if !slices.Equal(names, []string{"sysroot"}) {
		return fmt.Errorf("initramfs leftovers: %v", names)
	}
	fmt.Printf("%s: PID 1 exec'd as %q with %d mounts; old root holds %v\n", verifiedMark, os.Args, len(mounts), names)
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	return f.Section(".interp") != nil, nil
}

// shareHostLibs makes the host's /usr, /lib and /lib64 visible read-only
// in root, replicating merged-/usr symlinks.
func shareHostLibs(root string) error {
	for _, d := range []string{"usr", "lib", "lib64"} {
		host := "/" + d
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		dst := filepath.Join(root, d)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(host)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, dst); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(host, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return err
		}
		if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return err
		}
	}
	return nil
}
