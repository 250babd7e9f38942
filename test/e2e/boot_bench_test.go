package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// TestBootBench measures the initramfs time — from the kernel running /init to systemd's
// first message — of cvmboot against a baseline busybox init that only loads the virtio
// modules, mounts the plain root read-only and switches to it: same kernel, UKI, OVMF, swtpm
// and Debian root, alternating, CVMBOOT_BENCH_RUNS runs each (3). cvmboot runs with a plain
// root, the TPM required and measured into, storage and the overlay off (what the baseline
// cannot do). Both times are the guest kernel's own timestamps (under TCG the guest runs
// slower when the host is loaded, hence the alternation and the spread). It also reports the binary and initramfs sizes and cvmboot's peak memory.
// Results: the test log and test/bench/results/boot.json. CVMBOOT_E2E=1 CVMBOOT_E2E_BENCH=1.
func TestBootBench(t *testing.T) {
	e, deb, runs := benchSetup(t, "boot")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("the baseline needs /bin/busybox (busybox-static; make deps installs it): %v", err)
	}
	baseline := filepath.Join(e.cache.Path("work"), "busybox-initramfs.img")
	if err := buildBusyboxInitramfs(e, baseline); err != nil {
		t.Fatal(err)
	}
	type sample struct {
		Init          string  `json:"init"`
		InitramfsSecs float64 `json:"initramfs_seconds"`
		KernelSecs    float64 `json:"kernel_seconds"`
		InitrdBytes   int64   `json:"initramfs_bytes"`
		PeakRSSKiB    int64   `json:"peak_rss_kib,omitempty"`
	}
	var samples []sample
	stageMS := map[string][]float64{} // cvmboot's steps, from its console lines
	var stageOrder []string
	stageRe := regexp.MustCompile(`cvmboot\[1\]: stage (?:ok|skipped[^\n]*?) stage=(\S+) duration_ms=([0-9.]+)`)
	for i := 1; i <= runs; i++ {
		for _, kind := range []string{"cvmboot", "busybox"} {
			work := e.cache.Path("work", "boot-bench-"+kind)
			if err := os.RemoveAll(work); err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(work, "root")
			if err := harness.ExtractDebianRoot(context.Background(), deb, tree); err != nil {
				t.Fatal(err)
			}
			if err := harness.InstallCheckUnit(tree, bootBenchScript); err != nil {
				t.Fatal(err)
			}
			spec := harness.ImageSpec{WorkDir: work, Kernel: e.kernel, Tools: e.tools, Init: harness.InitCvmboot,
				Config: plainConfig, Cmdline: "console=ttyS0 systemd.import_credentials=no root=PARTUUID=" + harness.DefaultRootPartUID,
				Recipe: harness.DiskRecipe{Root: harness.RootSpec{Tree: tree}, FreeSpace: 64 * harness.MiB}}
			if kind == "busybox" {
				spec.Init, spec.Initramfs = harness.InitPrebuilt, baseline
			}
			img, err := harness.BuildImage(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			boot, err := harness.Boot(context.Background(), harness.BootSpec{Name: "boot-bench-" + kind, WorkDir: work,
				Disk: img.Disk.Path, Accel: e.accel, Timeout: 5 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			initAt, systemdAt, err := initramfsSpan(boot.Serial)
			if err != nil || boot.Reason != harness.ExitPoweredOff {
				t.Fatalf("%s run %d: %v (%s); last lines:\n%s", kind, i, err, boot.Reason, lastLines(boot.Serial, 20))
			}
			s := sample{Init: kind, InitramfsSecs: systemdAt - initAt, KernelSecs: initAt}
			if fi, err := os.Stat(img.Initramfs); err == nil {
				s.InitrdBytes = fi.Size()
			}
			if kind == "cvmboot" {
				for _, m := range stageRe.FindAllStringSubmatch(boot.Serial, -1) {
					ms, _ := strconv.ParseFloat(m[2], 64)
					if _, seen := stageMS[m[1]]; !seen {
						stageOrder = append(stageOrder, m[1])
					}
					stageMS[m[1]] = append(stageMS[m[1]], ms)
				}
			}
			if m := regexp.MustCompile(`peak_rss_kib[=":\s]+(\d+)`).FindStringSubmatch(boot.Serial); m != nil {
				s.PeakRSSKiB, _ = strconv.ParseInt(m[1], 10, 64)
			}
			t.Logf("run %d %-7s: /init → systemd %.3fs (kernel to /init %.3fs), initramfs %d bytes, peak RSS %d KiB",
				i, kind, s.InitramfsSecs, s.KernelSecs, s.InitrdBytes, s.PeakRSSKiB)
			samples = append(samples, s)
			_ = os.RemoveAll(work)
		}
	}
	var ours, base []float64
	var peak, ourInitrd, baseInitrd int64
	for _, s := range samples {
		if s.Init == "cvmboot" {
			ours, peak, ourInitrd = append(ours, s.InitramfsSecs), max(peak, s.PeakRSSKiB), s.InitrdBytes
		} else {
			base, baseInitrd = append(base, s.InitramfsSecs), s.InitrdBytes
		}
	}
	o, b := spreadOf(ours), spreadOf(base)
	var bin int64
	if fi, err := os.Stat(e.tools.Cvmboot); err == nil {
		bin = fi.Size()
	}
	t.Logf("initramfs time (/init → systemd), %d runs each, accel %s:", runs, e.accel)
	t.Logf("  cvmboot / busybox: %.2f× (cvmboot %.3fs median, %.3f–%.3f; busybox %.3fs, %.3f–%.3f); cvmboot costs %+.3fs",
		o.Median/b.Median, o.Median, o.Min, o.Max, b.Median, b.Min, b.Max, o.Median-b.Median)
	// Where cvmboot's time goes: each step's median, in boot order.
	timeline := map[string]float64{}
	var line string
	for _, st := range stageOrder {
		timeline[st] = spreadOf(stageMS[st]).Median
		line += fmt.Sprintf(" %s %.0f ms,", st, timeline[st])
	}
	t.Logf("  cvmboot steps (median):%s", strings.TrimSuffix(line, ","))
	t.Logf("  binary %d bytes (%.1f MiB of the 12 MiB budget); initramfs %d bytes (busybox baseline %d); cvmboot peak RSS %d KiB",
		bin, float64(bin)/(1<<20), ourInitrd, baseInitrd, peak)
	writeBenchResults(t, e, "boot", map[string]any{
		"benchmark": "initramfs-time", "runs": samples, "cvmboot_seconds": o, "busybox_seconds": b,
		"ratio_median": o.Median / b.Median, "binary_bytes": bin, "initramfs_bytes": ourInitrd,
		"busybox_initramfs_bytes": baseInitrd, "peak_rss_kib": peak, "cvmboot_step_ms": timeline,
	})
}

// bootBenchScript powers off as soon as systemd runs it: the bench only needs systemd's start.
const bootBenchScript = `#!/bin/sh
exec >/dev/console 2>&1
echo "E2E-CHECK: DONE"
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// busyboxInit is the baseline /init: modules, the plain root read-only, switch_root.
const busyboxInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in /harness/modules/*.ko; do /bin/busybox insmod "$m"; done
# The harness's disks have the root at partition 2 (busybox's findfs knows no PARTUUID=).
i=0
while [ ! -b /dev/vda2 ]; do
  i=$((i+1)); [ $i -gt 3000 ] && { echo "busybox-init: no /dev/vda2"; /bin/busybox poweroff -f; }
  /bin/busybox usleep 10000
done
/bin/busybox mount -t ext4 -o ro /dev/vda2 /sysroot
/bin/busybox mount --move /dev /sysroot/dev
/bin/busybox umount /proc /sys
exec /bin/busybox switch_root /sysroot /sbin/init
`

func buildBusyboxInitramfs(e *env, out string) error {
	dir, err := os.MkdirTemp("", "busybox-init-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	initPath := filepath.Join(dir, "init")
	if err := os.WriteFile(initPath, []byte(busyboxInit), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	_, err = harness.BuildPlainInitramfs(context.Background(), harness.PlainInitramfs{
		Init: initPath, Kernel: e.kernel, Modules: harness.DefaultModules,
		Files: map[string]string{"/bin/busybox": "/bin/busybox"},
	}, out)
	return err
}

var (
	runInitRe = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] Run /init as init process`)
	systemdRe = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] systemd\[1\]: `)
)

// initramfsSpan returns the kernel timestamps of "Run /init" and of systemd's first message.
func initramfsSpan(serial string) (float64, float64, error) {
	a := runInitRe.FindStringSubmatch(serial)
	b := systemdRe.FindStringSubmatch(serial)
	if a == nil || b == nil {
		return 0, 0, fmt.Errorf("the console lacks %q or systemd's first message", "Run /init as init process")
	}
	x, _ := strconv.ParseFloat(a[1], 64)
	y, _ := strconv.ParseFloat(b[1], 64)
	if y < x {
		return 0, 0, fmt.Errorf("systemd's first message at %.6f s comes before /init at %.6f s", y, x)
	}
	return x, y, nil
}

func TestInitramfsSpan(t *testing.T) {
	x, y, err := initramfsSpan("[    2.873668] Run /init as init process\r\n[    3.1] cvmboot[1]: stage ok\r\n[    5.704190] systemd[1]: Failed to find module 'autofs4'\r\n")
	if err != nil || x != 2.873668 || y != 5.704190 {
		t.Errorf("%v %v %v", x, y, err)
	}
	if _, _, err := initramfsSpan("[ 1.0] Run /init as init process\n"); err == nil {
		t.Error("no systemd line: no error")
	}
}
