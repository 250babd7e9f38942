package initramfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/kmod"
)

// The module list of a cvmboot image: virtio disk, dm-verity root, dm-crypt and
// dm-integrity scratch space, overlay on the read-only root.
var imageModules = []string{"virtio_pci", "virtio_blk", "dm_mod", "dm_verity", "dm_crypt", "dm_integrity", "overlay"}

// realModulesDir returns the modules directory of a real kernel named by
// CVMBOOT_TEST_KERNEL_MODULES (…/lib/modules/VERSION), or skips the test.
func realModulesDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CVMBOOT_TEST_KERNEL_MODULES")
	if dir == "" {
		t.Skip("CVMBOOT_TEST_KERNEL_MODULES is not set; set it to an unpacked kernel's lib/modules/VERSION to test against real modules")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("CVMBOOT_TEST_KERNEL_MODULES: %v", err)
	}
	return dir
}

// TestBuildRealKernel builds the image's initramfs from a real kernel with a 10 MB
// incompressible stand-in for the agent and reports the sizes per compression.
func TestBuildRealKernel(t *testing.T) {
	dir := realModulesDir(t)
	binary := fakeBinary(t, 10<<20, false)
	// A real static Go program compresses like the agent will; the random stand-in is the
	// worst case.
	if self, err := os.Executable(); err == nil && checkStaticBinary(self) == nil {
		st, _ := os.Stat(self)
		for _, c := range []string{CompressionGzip, CompressionZstd} {
			start := time.Now()
			_, sum := buildBytes(t, Options{Binary: self, KernelModulesDir: dir, Modules: imageModules, Compression: c})
			t.Logf("%s, /init = this test binary (%d bytes): %d bytes uncompressed, %d bytes written, %v",
				c, st.Size(), sum.UncompressedSize, sum.CompressedSize, time.Since(start).Round(time.Millisecond))
		}
	}
	for _, c := range []string{CompressionNone, CompressionGzip, CompressionZstd} {
		start := time.Now()
		data, sum := buildBytes(t, Options{Binary: binary, KernelModulesDir: dir, Modules: imageModules, Compression: c})
		t.Logf("%s, /init = 10 MiB random: %d files, %d bytes uncompressed, %d bytes written, %v", c, len(sum.Files), sum.UncompressedSize, sum.CompressedSize, time.Since(start).Round(time.Millisecond))
		if c != CompressionNone {
			continue
		}
		t.Logf("modules in load order: %q (built in: %q, missing soft: %q)", sum.Modules, sum.Builtin, sum.MissingSoft)
		var modBytes int64
		for _, f := range sum.Files {
			if strings.HasSuffix(f, ".ko") {
				st, err := os.Stat(filepath.Join(dir, strings.TrimPrefix(f, "/lib/modules/"+sum.KernelVersion+"/")))
				if err != nil {
					t.Fatal(err)
				}
				modBytes += st.Size()
			}
		}
		t.Logf("module files: %d bytes", modBytes)
		if cpio, err := exec.LookPath("cpio"); err == nil {
			cmd := exec.Command(cpio, "-it", "--quiet")
			cmd.Stdin = bytes.NewReader(data)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("cpio -it: %v", err)
			}
			var want []string
			for _, f := range sum.Files {
				want = append(want, strings.TrimPrefix(f, "/"))
			}
			if got := strings.Fields(string(out)); !slices.Equal(got, want) {
				t.Errorf("cpio -it lists %d entries, want %d", len(got), len(want))
			}
		}
	}
}

// bootCheckEnv is set on the guest kernel command line; the kernel passes unknown
// name=value parameters to /init as environment variables.
const bootCheckEnv = "cvmboot_bootcheck"

// TestMain turns the test binary into a minimal PID 1 when the QEMU boot test starts it
// as /init of an initramfs built by Build.
func TestMain(m *testing.M) {
	if os.Getpid() == 1 && os.Getenv(bootCheckEnv) == "1" {
		bootCheck()
	}
	os.Exit(m.Run())
}

// bootCheck runs inside the guest: it loads the modules named in the config with the
// kmod loader, reports on the console and powers the VM off.
func bootCheck() {
	report := func(format string, args ...any) { fmt.Printf("CVMBOOT-BOOTCHECK "+format+"\n", args...) }
	defer func() {
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		select {}
	}()
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			report("FAIL mount %s: %v", m.dst, err)
			return
		}
	}
	release, _ := os.ReadFile("/etc/initrd-release")
	report("initrd-release %q", release)
	cfg, err := config.Load(ConfigPath)
	if err != nil {
		report("FAIL %v", err)
		return
	}
	names := cfg.Modules
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	ix, err := kmod.OpenIndex("/lib/modules/" + unix.ByteSliceToString(uts.Release[:]))
	if err != nil {
		report("FAIL %v", err)
		return
	}
	r, err := ix.Resolve(names)
	if err != nil {
		report("FAIL %v", err)
		return
	}
	l := &kmod.Loader{}
	results, err := l.Load(context.Background(), r.Modules)
	for _, res := range results {
		report("module %s %s %s %v", res.Name, res.Status, res.Method, res.Duration.Round(time.Microsecond))
	}
	if err != nil {
		report("FAIL %v", err)
		return
	}
	// A second pass must find everything loaded and call nothing.
	again, err := l.Load(context.Background(), r.Modules)
	for _, res := range again {
		if res.Status != kmod.StatusAlreadyLoaded {
			report("FAIL second load of %s: %s", res.Name, res.Status)
			return
		}
	}
	if err != nil {
		report("FAIL second load: %v", err)
		return
	}
	for _, n := range names {
		if _, err := os.Stat("/sys/module/" + kmod.Normalize(n)); err != nil {
			report("FAIL %v", err)
			return
		}
	}
	report("OK %d modules", len(results))
}

// TestBootQEMU boots the real kernel in QEMU (TCG) with an initramfs whose /init is this
// test binary, once per compression, and checks that the kernel unpacks the archive,
// gives /init a console, and that the kmod loader loads the module closure.
func TestBootQEMU(t *testing.T) {
	if os.Getenv("CVMBOOT_TEST_QEMU") != "1" {
		t.Skip("CVMBOOT_TEST_QEMU=1 not set (boots a VM, ~10-30 s per compression)")
	}
	dir := realModulesDir(t)
	version := filepath.Base(dir)
	kernel := os.Getenv("CVMBOOT_TEST_KERNEL")
	if kernel == "" {
		kernel = filepath.Join(dir, "..", "..", "..", "boot", "vmlinuz-"+version)
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Skipf("kernel image: %v (set CVMBOOT_TEST_KERNEL)", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkStaticBinary(self); err != nil {
		t.Skipf("the test binary cannot be /init: %v (run with CGO_ENABLED=0)", err)
	}
	config := writeConfig(t, "modules: ["+strings.Join(imageModules, ", ")+"]\n")
	for _, c := range []string{CompressionGzip, CompressionZstd} {
		t.Run(c, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "initramfs.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			sum, err := Build(Options{Binary: self, Config: config, KernelModulesDir: dir, Compression: c}, f)
			if err1 := f.Close(); err == nil {
				err = err1
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("initramfs %s: %d bytes, modules %q", c, sum.CompressedSize, sum.Modules)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
				"-nographic", "-no-reboot", "-kernel", kernel, "-initrd", img,
				"-append", "console=ttyS0 panic=-1 loglevel=4 "+bootCheckEnv+"=1")
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("qemu ran %v", time.Since(start).Round(time.Millisecond))
			var lines []string
			for _, line := range strings.Split(string(out), "\n") {
				// Kernel messages may precede the marker on the same console line.
				if i := strings.Index(line, "CVMBOOT-BOOTCHECK"); i >= 0 {
					lines = append(lines, strings.TrimSpace(line[i:]))
					t.Log(strings.TrimSpace(line[i:]))
				}
			}
			if err != nil || !slices.ContainsFunc(lines, regexp.MustCompile(`CVMBOOT-BOOTCHECK OK \d+ modules`).MatchString) {
				t.Fatalf("boot check failed (qemu: %v); console:\n%s", err, out)
			}
		})
	}
}
