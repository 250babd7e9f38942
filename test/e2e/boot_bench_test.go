package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// bootKind is one initramfs the boot benchmark compares, on the same kernel, OVMF, swtpm and
// Debian root (with dracut), with its own disk built once and copied for every run.
type bootKind struct {
	name string
	what string
	// expect are what its boot must show (BENCH-CHECK lines): a kind that did not do its job
	// has no time.
	expect []string
}

var bootKinds = []bootKind{
	{name: "busybox", what: "busybox /init: modules, the plain root read-only, switch_root (the floor)",
		expect: []string{`BENCH-CHECK: root=/dev/vda2 ext4`}},
	{name: "cvmboot", what: "cvmboot as PID 1: verity root, storage with integrity, overlay, TPM measurements and evidence",
		expect: []string{`BENCH-CHECK: root=overlay overlay`, `BENCH-CHECK: dm=crypt integrity verity`,
			`BENCH-CHECK: storage=/dev/mapper/cvmboot-storage`, `BENCH-CHECK: outcome="outcome": *"ok"`,
			`BENCH-CHECK: evidence=.*tpm-quote`}},
	{name: "cvmboot-units", what: "dracut systemd initrd with cvmboot's units: the same job",
		expect: []string{`BENCH-CHECK: root=overlay overlay`, `BENCH-CHECK: dm=crypt integrity verity`,
			`BENCH-CHECK: storage=/dev/mapper/cvmboot-storage`, `BENCH-CHECK: outcome="outcome": *"ok"`,
			`BENCH-CHECK: evidence=.*tpm-quote`}},
	{name: "systemd-initrd", what: "dracut systemd initrd: systemd-veritysetup from roothash=, CoCo-style cryptsetup scratch storage, systemd-pcrphase",
		expect: []string{`BENCH-CHECK: root=/dev/mapper/root ext4`, `BENCH-CHECK: dm=crypt integrity verity`,
			`BENCH-CHECK: storage=/dev/mapper/scratch`, `BENCH-CHECK: pcrphase=.*enter-initrd`}},
}

// benchConfig is what cvmboot does in the benchmark: the secure defaults (verity required,
// storage with hmac-sha256 integrity on the free space) with swtpm as the platform.
var benchConfig = cfg(tpm, overlay256)

// benchPackages are the root's for every kind: dracut and dmsetup (dracut's dm module), and
// what the peer's initrd takes from it: tpm2-tools (dracut's tpm2-tss module, which
// systemd-pcrphase needs) and sfdisk.
var benchPackages = append(append([]string(nil), dracutPackages...), "tpm2-tools", "fdisk")

// benchFreeSpace is the free space every kind turns into encrypted storage.
const benchFreeSpace = 1024 * harness.MiB

// TestBootBench boots each kind of initramfs CVMBOOT_BENCH_RUNS times (3), alternating, and
// reports from the guest kernel's own timestamps: kernel start → /init, /init → the root's
// systemd ("systemd N running in system mode" from the real root: the moment the switch is
// over, the same event for all kinds), kernel start → multi-user (a unit ordered after
// multi-user.target writes to /dev/kmsg), the initramfs size, and cvmboot's step medians.
// Every boot must show it did its job (verity root, storage, measurements) or the bench
// fails. Under TCG the guest runs slower when the host is loaded, hence the alternation and
// the spread. Results: the test log and test/bench/results/boot.json (and each boot's serial
// log beside it). CVMBOOT_E2E=1 CVMBOOT_E2E_BENCH=1.
func TestBootBench(t *testing.T) {
	e, _, runs := benchSetup(t, "boot")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("the baseline needs /bin/busybox (busybox-static; make deps installs it): %v", err)
	}
	deb, err := e.debianRoot(t, benchPackages...)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	resultsDir := filepath.Join(repo, "test", "bench", "results")
	old, _ := filepath.Glob(filepath.Join(resultsDir, "boot-*.serial.log"))
	for _, f := range old {
		_ = os.Remove(f) // an earlier run's: this one writes its own
	}
	kinds := bootKinds
	if only := os.Getenv("CVMBOOT_BENCH_KINDS"); only != "" {
		// A subset while working on one kind; the table needs them all.
		kinds = slices.DeleteFunc(slices.Clone(bootKinds), func(k bootKind) bool { return !slices.Contains(strings.Fields(only), k.name) })
	}
	images := map[string]*harness.Image{}
	for _, k := range kinds {
		start := time.Now()
		img, err := buildBenchImage(t, e, deb, repo, k.name)
		if err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		images[k.name] = img
		t.Logf("%s: image built in %s", k.name, time.Since(start).Round(time.Second))
	}
	type sample struct {
		Init          string  `json:"init"`
		KernelSecs    float64 `json:"kernel_to_init_seconds"`
		InitramfsSecs float64 `json:"init_to_root_systemd_seconds"`
		HandoffSecs   float64 `json:"init_to_handoff_seconds"`
		SwitchSecs    float64 `json:"kernel_to_root_systemd_seconds"`
		MultiUserSecs float64 `json:"kernel_to_multi_user_seconds"`
		InitrdBytes   int64   `json:"initramfs_bytes"`
		PeakRSSKiB    int64   `json:"peak_rss_kib,omitempty"`
	}
	var samples []sample
	stageMS := map[string][]float64{} // cvmboot's steps in PID 1 mode, from its console lines
	var stageOrder []string
	stageRe := regexp.MustCompile(`cvmboot\[1\]: stage (?:ok|skipped[^\n]*?) stage=(\S+) duration_ms=([0-9.]+)`)
	for i := 1; i <= runs; i++ {
		for _, k := range kinds {
			img := images[k.name]
			work := e.cache.Path("work", "boot-bench-run-"+k.name)
			if err := os.RemoveAll(work); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(work, 0o755); err != nil {
				t.Fatal(err)
			}
			disk := filepath.Join(work, "disk.raw")
			if o, err := runTool(context.Background(), "cp", "--sparse=always", img.Disk.Path, disk); err != nil {
				t.Fatalf("copy disk: %v\n%s", err, o)
			}
			boot, err := harness.Boot(context.Background(), harness.BootSpec{Name: "boot-bench-" + k.name, WorkDir: work,
				Disk: disk, Accel: e.accel, Timeout: 8 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			_ = os.WriteFile(filepath.Join(resultsDir, fmt.Sprintf("boot-%s-run%d.serial.log", k.name, i)), []byte(boot.Serial), 0o644)
			span, err := bootSpan(boot.Serial)
			if err == nil {
				err = expectAll(boot.Serial, k.expect)
			}
			if err != nil || boot.Reason != harness.ExitPoweredOff {
				t.Fatalf("%s run %d: %v (%s); last lines:\n%s", k.name, i, err, boot.Reason, lastLines(boot.Serial, 30))
			}
			s := sample{Init: k.name, KernelSecs: span.init, InitramfsSecs: span.rootSystemd - span.init, HandoffSecs: span.handoff - span.init,
				SwitchSecs: span.rootSystemd, MultiUserSecs: span.multiUser}
			if fi, err := os.Stat(img.Initramfs); err == nil {
				s.InitrdBytes = fi.Size()
			}
			if k.name == "cvmboot" {
				for _, m := range stageRe.FindAllStringSubmatch(boot.Serial, -1) {
					ms, _ := strconv.ParseFloat(m[2], 64)
					if _, seen := stageMS[m[1]]; !seen {
						stageOrder = append(stageOrder, m[1])
					}
					stageMS[m[1]] = append(stageMS[m[1]], ms)
				}
				if m := regexp.MustCompile(`peak_rss_kib[=":\s]+(\d+)`).FindStringSubmatch(boot.Serial); m != nil {
					s.PeakRSSKiB, _ = strconv.ParseInt(m[1], 10, 64)
				}
			}
			t.Logf("run %d %-14s: kernel → /init %.3fs, /init → handoff %.3fs, /init → root systemd %.3fs, kernel → multi-user %.3fs, initramfs %d bytes",
				i, k.name, s.KernelSecs, s.HandoffSecs, s.InitramfsSecs, s.MultiUserSecs, s.InitrdBytes)
			samples = append(samples, s)
			_ = os.RemoveAll(work)
		}
	}
	type row struct {
		Init          string `json:"init"`
		What          string `json:"what"`
		Initramfs     spread `json:"init_to_root_systemd_seconds"`
		Handoff       spread `json:"init_to_handoff_seconds"`
		Switch        spread `json:"kernel_to_root_systemd_seconds"`
		MultiUser     spread `json:"kernel_to_multi_user_seconds"`
		InitrdBytes   int64  `json:"initramfs_bytes"`
		PeakRSSKiB    int64  `json:"peak_rss_kib,omitempty"`
		KernelToInitS spread `json:"kernel_to_init_seconds"`
	}
	rows := map[string]row{}
	t.Logf("boot times, %d runs each, accel %s (median, min–max; the guest kernel's timestamps):", runs, e.accel)
	for _, k := range kinds {
		var a, b, c, d, h []float64
		r := row{Init: k.name, What: k.what}
		for _, s := range samples {
			if s.Init == k.name {
				a, b, c, d = append(a, s.InitramfsSecs), append(b, s.SwitchSecs), append(c, s.MultiUserSecs), append(d, s.KernelSecs)
				h = append(h, s.HandoffSecs)
				r.InitrdBytes, r.PeakRSSKiB = s.InitrdBytes, max(r.PeakRSSKiB, s.PeakRSSKiB)
			}
		}
		r.Initramfs, r.Switch, r.MultiUser, r.KernelToInitS, r.Handoff = spreadOf(a), spreadOf(b), spreadOf(c), spreadOf(d), spreadOf(h)
		rows[k.name] = r
		t.Logf("  %-14s /init → root systemd %.3fs (%.3f–%.3f), of which /init → handoff %.3fs; kernel → root systemd %.3fs; kernel → multi-user %.3fs (%.3f–%.3f); initramfs %d bytes",
			k.name, r.Initramfs.Median, r.Initramfs.Min, r.Initramfs.Max, r.Handoff.Median, r.Switch.Median, r.MultiUser.Median, r.MultiUser.Min, r.MultiUser.Max, r.InitrdBytes)
	}
	if len(kinds) != len(bootKinds) {
		return
	}
	ratio := func(a, b string) float64 { return rows[a].Initramfs.Median / rows[b].Initramfs.Median }
	handoffRatio := rows["cvmboot"].Handoff.Median / rows["busybox"].Handoff.Median
	t.Logf("  cvmboot / busybox: %.2f× (/init → root systemd; goal ≤ 1.15×); %.2f× (/init → handoff: the initramfs's own work)",
		ratio("cvmboot", "busybox"), handoffRatio)
	t.Logf("  systemd-initrd / cvmboot: %.2f× (/init → root systemd; goal ≥ 5×); systemd-initrd / cvmboot-units: %.2f×",
		ratio("systemd-initrd", "cvmboot"), ratio("systemd-initrd", "cvmboot-units"))
	timeline := map[string]float64{}
	var line string
	for _, st := range stageOrder {
		timeline[st] = spreadOf(stageMS[st]).Median
		line += fmt.Sprintf(" %s %.0f ms,", st, timeline[st])
	}
	t.Logf("  cvmboot steps (median):%s", strings.TrimSuffix(line, ","))
	var bin int64
	if fi, err := os.Stat(e.tools.Cvmboot); err == nil {
		bin = fi.Size()
	}
	t.Logf("  binary %d bytes (%.1f MiB of the 12 MiB budget); cvmboot peak RSS %d KiB", bin, float64(bin)/(1<<20), rows["cvmboot"].PeakRSSKiB)
	writeBenchResults(t, e, "boot", map[string]any{
		"benchmark": "boot-time", "runs": samples, "kinds": rows, "binary_bytes": bin, "cvmboot_step_ms": timeline,
		"ratio_cvmboot_busybox":        ratio("cvmboot", "busybox"),
		"ratio_systemd_initrd_cvmboot": ratio("systemd-initrd", "cvmboot"),
		"ratio_systemd_initrd_units":   ratio("systemd-initrd", "cvmboot-units"),
	})
}

// buildBenchImage builds kind's disk once, on the Debian root with dracut.
func buildBenchImage(t *testing.T, e *env, deb *harness.DebianRoot, repo, kind string) (*harness.Image, error) {
	ctx := context.Background()
	work := e.cache.Path("work", "boot-bench-"+kind)
	if err := os.RemoveAll(work); err != nil {
		return nil, err
	}
	tree := filepath.Join(work, "root")
	if err := harness.ExtractDebianRoot(ctx, deb, tree); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree) // in the image once it is built
	if err := harness.InstallCheckUnit(tree, bootBenchScript); err != nil {
		return nil, err
	}
	const base = "console=ttyS0 systemd.import_credentials=no "
	spec := harness.ImageSpec{WorkDir: work, Kernel: e.kernel, Tools: e.tools, Init: harness.InitPrebuilt,
		Cmdline: base + "roothash={roothash} root=/dev/mapper/root ro",
		Recipe:  harness.DiskRecipe{Root: harness.RootSpec{Tree: tree}, Verity: &harness.VeritySpec{}, FreeSpace: benchFreeSpace}}
	dracut := harness.DracutSpec{Tree: tree, Kernel: e.kernel, Repo: repo, Out: filepath.Join(work, "dracut-initramfs.img")}
	if kind == "cvmboot-units" || kind == "systemd-initrd" {
		// In a systemd initrd "Switching root." goes to the journal, not the console: a
		// drop-in marks the moment in the kernel log, as busybox's /init does.
		if err := writeDracutModule(tree, "90bench-mark", map[string]string{"module-setup.sh": benchMarkModuleSetup,
			"bench-mark.conf": benchMarkDropIn}); err != nil {
			return nil, err
		}
		dracut.Add = []string{"bench-mark"}
	}
	switch kind {
	case "busybox":
		spec.Initramfs = filepath.Join(work, "busybox-initramfs.img")
		if err := buildBusyboxInitramfs(e, spec.Initramfs); err != nil {
			return nil, err
		}
		spec.Cmdline = base + "root=PARTUUID=" + harness.DefaultRootPartUID
		spec.Recipe.Verity = nil
	case "cvmboot":
		spec.Init, spec.Config, spec.Cmdline = harness.InitCvmboot, benchConfig, base+"roothash={roothash}"
	case "cvmboot-units":
		dracut.Cvmboot, dracut.Config = e.tools.Cvmboot, benchConfig
		if err := harness.InstallCvmboot(ctx, dracut); err != nil {
			return nil, err
		}
	case "systemd-initrd":
		spec.Cmdline += " rd.shell=0 rd.emergency=poweroff"
		dracut.Add = append(dracut.Add, "systemd-veritysetup", "systemd-pcrphase", "coco-scratch")
		if err := writeDracutModule(tree, "90coco-scratch", map[string]string{"module-setup.sh": peerModuleSetup,
			"coco-scratch.sh": peerScratchScript, "coco-scratch.service": peerScratchUnit}); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	if kind == "cvmboot-units" || kind == "systemd-initrd" {
		spec.InitramfsFor = func(cmdline string) (string, error) {
			dracut.Cmdline = cmdline
			if err := harness.BuildDracutInitramfs(ctx, dracut, harness.Logf(t.Logf)); err != nil {
				return "", err
			}
			return dracut.Out, nil
		}
	}
	return harness.BuildImage(ctx, spec)
}

// writeDracutModule writes a dracut module into the tree; scripts are executable.
func writeDracutModule(tree, name string, files map[string]string) error {
	dir := filepath.Join(tree, "usr/lib/dracut/modules.d", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for file, body := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(file, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(body), mode); err != nil {
			return err
		}
	}
	return nil
}

const benchMarkModuleSetup = `#!/bin/bash
check() { return 255; }
depends() { echo systemd; return 0; }
install() {
    inst_simple "$moddir/bench-mark.conf" "$systemdsystemunitdir/initrd-switch-root.service.d/bench-mark.conf"
}
`

const benchMarkDropIn = `[Service]
ExecStartPre=/bin/sh -c 'echo "bench: switching root" > /dev/kmsg'
`

// bootBenchScript runs after multi-user.target: it marks the moment in the kernel log, then
// shows what the boot did, and powers off.
const bootBenchScript = `#!/bin/sh
echo "cvmboot-bench: multi-user" > /dev/kmsg
exec >/dev/console 2>&1
say() { echo "BENCH-CHECK: $*"; }
say "root=$(findmnt -n -o SOURCE,FSTYPE / 2>&1)"
say "dm=$(dmsetup table 2>/dev/null | awk '{print $4}' | sort -u | tr '\n' ' ')"
say "storage=$(awk '$1 ~ /^\/dev\/mapper\/(cvmboot-storage|scratch)$/ {print $1 " " $3; exit}' /proc/mounts)"
say "outcome=$(grep -o '"outcome": *"[^"]*"' /run/cvmboot/report.json 2>&1)"
say "evidence=$(ls /run/cvmboot/evidence 2>&1 | tr '\n' ' ')"
say "pcrphase=$(journalctl -b -o cat --no-pager 2>/dev/null | grep -E 'enter-initrd|leave-initrd' | tr '\n' ' ')"
say "scratch=$(journalctl -b -o cat --no-pager -t coco-scratch 2>/dev/null | tr '\n' ' ')"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// The benchmark's peer storage: a dracut module whose unit does in the systemd initrd what
// the CoCo peer-pod image's storage script does (as TestStorageBench's reference): a
// partition on the boot disk's free space, LUKS2 with hmac-sha256 integrity and a random key
// file (cryptsetup's default KDF, 4 KiB sectors, no wipe, no integrity journal as
// confidential-data-hub's formatter and cvmboot), open, zero the blocks mkfs.ext4
// reads, mkfs.ext4 with lazy journal init, mount under /run (which survives the switch).
const peerModuleSetup = `#!/bin/bash
check() { return 255; }
depends() { echo systemd crypt dm; return 0; }
# dracut's systemd-veritysetup module installs no dm-verity: the peer adds it here.
installkernel() { hostonly='' instmods dm_verity dm_crypt dm_integrity ext4; }
install() {
    inst_multiple cryptsetup mkfs.ext4 sfdisk partx dd sed grep sort head rm mkdir mount udevadm logger
    inst_simple "$moddir/coco-scratch.sh" /usr/sbin/coco-scratch
    inst_simple "$moddir/coco-scratch.service" "$systemdsystemunitdir/coco-scratch.service"
    $SYSTEMCTL -q --root "$initdir" enable coco-scratch.service
}
`

const peerScratchUnit = `[Unit]
Description=CoCo-style scratch storage (benchmark peer)
DefaultDependencies=no
Requires=dev-vda.device
# sfdisk holds the whole disk exclusively while it writes: after the root's verity device.
After=dev-vda.device systemd-udevd.service veritysetup.target
Before=initrd.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/coco-scratch
StandardOutput=journal+console

[Install]
WantedBy=initrd.target
`

const peerScratchScript = `#!/bin/bash
set -euo pipefail
D=/dev/vda P=/dev/vda4
echo ',,' | sfdisk --append --no-reread --quiet $D
partx -a --nr 4 $D 2>/dev/null || true
udevadm settle
head -c 32 /dev/urandom > /run/scratch.key
cryptsetup --batch-mode luksFormat --type luks2 $P --sector-size 4096 --cipher aes-xts-plain64 --integrity hmac-sha256 --integrity-no-wipe --integrity-no-journal /run/scratch.key
cryptsetup luksOpen --integrity-no-journal -d /run/scratch.key $P scratch
rm /run/scratch.key
out=$(mkfs.ext4 /dev/mapper/scratch -F -n)
blocks=$(echo "$out" | sed -n '/Superblock backups stored on blocks:/,$p' | grep -Eo '[0-9]{4,}' | sort -n)
for b in 0 $blocks; do dd if=/dev/zero bs=4k count=1 oflag=direct of=/dev/mapper/scratch seek=$b status=none; done
mkfs.ext4 -q /dev/mapper/scratch -E lazy_journal_init < /dev/null
mkdir -p /run/scratch && mount /dev/mapper/scratch /run/scratch
logger -t coco-scratch "scratch storage ready on $P"
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
/bin/busybox umount /proc /sys
echo "busybox-init: switching root" > /dev/kmsg
/bin/busybox mount --move /dev /sysroot/dev
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
	runInitRe     = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] Run /init as init process`)
	rootSystemdRe = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] systemd\[1\]: systemd \S+ running in system mode`)
	multiUserRe   = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] cvmboot-bench: multi-user`)
	// The initramfs's last word before the root's init runs: cvmboot's, busybox's, systemd's.
	handoffRe = regexp.MustCompile(`(?m)^\[\s*(\d+\.\d+)\] (?:cvmboot\[1\]: handing off to init|busybox-init: switching root|bench: switching root)`)
)

type span struct{ init, handoff, rootSystemd, multiUser float64 }

// bootSpan returns the kernel timestamps of "Run /init", of the last "systemd … running in
// system mode" (a systemd initrd's own comes first; the root's is the last) and of the
// bench unit's multi-user mark.
func bootSpan(serial string) (span, error) {
	a := runInitRe.FindStringSubmatch(serial)
	bs := rootSystemdRe.FindAllStringSubmatch(serial, -1)
	c := multiUserRe.FindStringSubmatch(serial)
	h := handoffRe.FindStringSubmatch(serial)
	if a == nil || bs == nil || c == nil || h == nil {
		return span{}, fmt.Errorf("the console lacks %q, the initramfs's handoff line, systemd's \"running in system mode\" or the multi-user mark", "Run /init as init process")
	}
	var s span
	s.init, _ = strconv.ParseFloat(a[1], 64)
	s.handoff, _ = strconv.ParseFloat(h[1], 64)
	s.rootSystemd, _ = strconv.ParseFloat(bs[len(bs)-1][1], 64)
	s.multiUser, _ = strconv.ParseFloat(c[1], 64)
	if s.handoff < s.init || s.rootSystemd < s.handoff || s.multiUser < s.rootSystemd {
		return span{}, fmt.Errorf("timestamps out of order: /init %.6f, handoff %.6f, root systemd %.6f, multi-user %.6f", s.init, s.handoff, s.rootSystemd, s.multiUser)
	}
	return s, nil
}

func expectAll(serial string, patterns []string) error {
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(serial) {
			return fmt.Errorf("the boot did not show %q", p)
		}
	}
	return nil
}

func runTool(ctx context.Context, name string, args ...string) (string, error) {
	o, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(o), err
}

func TestBootSpan(t *testing.T) {
	serial := "[    2.873668] Run /init as init process\r\n[    3.1] systemd[1]: systemd 252.39-1~deb12u2 running in system mode (+PAM)\r\n" +
		"[    4.5] bench: switching root\r\n" +
		"[    5.704190] systemd[1]: systemd 252.39-1~deb12u2 running in system mode (+PAM)\r\n[   9.5] cvmboot-bench: multi-user\r\n"
	s, err := bootSpan(serial)
	if err != nil || s.init != 2.873668 || s.handoff != 4.5 || s.rootSystemd != 5.704190 || s.multiUser != 9.5 {
		t.Errorf("%+v %v", s, err)
	}
	if _, err := bootSpan("[ 1.0] Run /init as init process\n"); err == nil {
		t.Error("no systemd line: no error")
	}
	if _, err := bootSpan("[ 3.0] Run /init as init process\n[ 3.5] cvmboot[1]: handing off to init\n[ 2.0] systemd[1]: systemd 252 running in system mode\n[ 4.0] cvmboot-bench: multi-user\n"); err == nil {
		t.Error("out of order: no error")
	}
}
