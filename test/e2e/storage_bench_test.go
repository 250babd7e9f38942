package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// TestStorageBench measures storage-ready time (partition → mounted) on a 100 GiB sparse
// disk with integrity on, cvmboot against a reference script that does what the CoCo
// peer-pod image does, in the same VM and run: cvmboot sets up the boot disk's free space in
// the initramfs; once the Debian root is up, the reference runs on a second, equally large
// sparse disk. Each run is a fresh image. It runs only with CVMBOOT_E2E_BENCH=1 (make bench).
//
//	CVMBOOT_E2E=1 CVMBOOT_E2E_BENCH=1 go test ./test/e2e -run TestStorageBench -v -timeout 60m
//
// CVMBOOT_BENCH_RUNS sets the number of runs (3). Results: the test log and
// test/bench/results/storage.json.
func TestStorageBench(t *testing.T) {
	e, deb, runs := benchSetup(t, "storage")
	const diskSize = 100 << 30
	var results []benchRun
	for i := 1; i <= runs; i++ {
		work := e.cache.Path("work", fmt.Sprintf("storage-bench-%d", i))
		if err := os.RemoveAll(work); err != nil {
			t.Fatal(err)
		}
		tree := filepath.Join(work, "root")
		if err := harness.ExtractDebianRoot(context.Background(), deb, tree); err != nil {
			t.Fatal(err)
		}
		if err := harness.InstallCheckUnit(tree, storageBenchScript); err != nil {
			t.Fatal(err)
		}
		img, err := harness.BuildImage(context.Background(), harness.ImageSpec{
			WorkDir: work, Kernel: e.kernel, Tools: e.tools, Init: harness.InitCvmboot,
			Config: storageBenchConfig, Cmdline: "console=ttyS0 systemd.import_credentials=no root=PARTUUID=" + harness.DefaultRootPartUID,
			Recipe: harness.DiskRecipe{Root: harness.RootSpec{Tree: tree}, VerityRoom: 64 * harness.MiB, FreeSpace: diskSize},
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = os.RemoveAll(tree)
		ref := filepath.Join(work, "reference.raw")
		if err := os.WriteFile(ref, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(ref, diskSize); err != nil {
			t.Fatal(err)
		}
		boot, err := harness.Boot(context.Background(), harness.BootSpec{
			Name: "storage-bench", WorkDir: work, Disk: img.Disk.Path, Accel: e.accel,
			Timeout: 20 * time.Minute, MemoryMiB: 2048,
			ExtraArgs: []string{"-drive", "if=none,id=disk1,format=raw,file=" + ref, "-device", "virtio-blk-pci,drive=disk1"},
		})
		if err != nil {
			t.Fatal(err)
		}
		r, err := parseBenchRun(boot.Serial)
		if err != nil {
			_ = os.WriteFile(filepath.Join(work, "serial.log"), []byte(boot.Serial), 0o644)
			t.Fatalf("run %d: %v (%s); last lines:\n%s", i, err, boot.Reason, lastLines(boot.Serial, 30))
		}
		t.Logf("run %d: cvmboot %.2fs (%d MiB written), reference %.2fs (%d MiB written; %s), %.1f×",
			i, r.Ours.Seconds, r.Ours.WrittenMiB, r.Reference.Seconds, r.Reference.WrittenMiB, r.Reference.Steps, r.Reference.Seconds/r.Ours.Seconds)
		results = append(results, r)
		_ = os.RemoveAll(work) // 200 GiB of sparse images
	}
	sum := summarize(results)
	t.Logf("storage-ready on a %d GiB sparse disk, integrity hmac-sha256, %d runs, accel %s:", diskSize>>30, runs, e.accel)
	t.Logf("  ratio (reference / cvmboot): median %.1f× (min %.1f×, max %.1f×)", sum.Ratio.Median, sum.Ratio.Min, sum.Ratio.Max)
	t.Logf("  cvmboot:   median %.2fs (min %.2fs, max %.2fs), %d MiB written", sum.Ours.Median, sum.Ours.Min, sum.Ours.Max, results[0].Ours.WrittenMiB)
	t.Logf("  reference: median %.2fs (min %.2fs, max %.2fs), %d MiB written, integrity errors in the kernel log while it formats: %d",
		sum.Reference.Median, sum.Reference.Min, sum.Reference.Max, results[0].Reference.WrittenMiB, results[0].Reference.IntegrityErrors)
	writeBenchResults(t, e, "storage", map[string]any{
		"benchmark": "storage-ready", "disk_bytes": int64(diskSize), "integrity": "hmac-sha256",
		"runs": results, "summary": sum,
	})
}

// benchSetup skips unless the benchmarks were asked for, and returns the e2e environment,
// the Debian root and the number of runs (CVMBOOT_BENCH_RUNS, 3).
func benchSetup(t *testing.T, what string) (*env, *harness.DebianRoot, int) {
	t.Helper()
	if os.Getenv("CVMBOOT_E2E") != "1" || os.Getenv("CVMBOOT_E2E_BENCH") != "1" {
		t.Skipf("set CVMBOOT_E2E=1 CVMBOOT_E2E_BENCH=1 to run the %s benchmark under qemu", what)
	}
	runs := 3
	if v := os.Getenv("CVMBOOT_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("CVMBOOT_BENCH_RUNS=%q", v)
		}
		runs = n
	}
	e := setup(t)
	deb, err := e.debianRoot(t)
	if err != nil {
		t.Fatal(err)
	}
	return e, deb, runs
}

// writeBenchResults writes test/bench/results/NAME.json with the run's date, accelerator
// and kernel added.
func writeBenchResults(t *testing.T, e *env, name string, results map[string]any) {
	t.Helper()
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(repo, "test", "bench", "results", name+".json")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	results["date"], results["accel"], results["kernel"] = time.Now().UTC().Format(time.RFC3339), e.accel, e.kernel.Version
	b, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("results in %s", out)
}

// storageBenchConfig: the secure storage defaults; no overlay bind, nothing else to wait for.
var storageBenchConfig = cfg(noVerity, tpm, overlay256)

// storageBenchScript is the reference: what the CoCo peer-pod image's storage script does
// for a fresh disk with integrity (LUKS2 with a passphrase key file and cryptsetup's default
// KDF, 4 KiB sectors, no wipe, no integrity journal as confidential-data-hub's formatter and
// cvmboot; open; a dry-run mkfs.ext4 to learn the backup superblocks;
// zero block 0 and those blocks; mkfs.ext4 with lazy journal init; mount), timed step by
// step. It also prints cvmboot's own storage facts from the boot report.
const storageBenchScript = `#!/bin/bash
exec >/dev/console 2>&1
say() { printf 'BENCH: %s\n' "$*"; }
D=/dev/vdb
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
written() { awk '{print $7}' /sys/block/vdb/stat; }
timeout 240 systemctl is-system-running --wait >/dev/null 2>&1
r=/run/cvmboot/report.json
fact() { grep -o "\"$1\": *\"[0-9]*\"" $r | grep -o '[0-9]*"$' | tr -d '"'; }
say "ours ready_ms=$(fact ready_ms) written_bytes=$(fact written_bytes) steps=partition:$(fact partition_ms),activate:$(fact activate_ms)(header:$(fact luks2_header_ms),integrity:$(fact integrity_setup_ms)),probe:$(fact probe_regions_ms),mkfs:$(fact mkfs_ms),mount:$(fact mount_ms)"
dmesg -c >/dev/null
w0=$(written)
head -c 32 /dev/urandom > /run/reference.key
t0=$(now)
cryptsetup --batch-mode luksFormat --type luks2 $D --sector-size 4096 --cipher aes-xts-plain64 --integrity hmac-sha256 /run/reference.key --integrity-no-wipe --integrity-no-journal || say "luksFormat failed"
t1=$(now)
cryptsetup luksOpen --integrity-no-journal -d /run/reference.key $D reference || say "open failed"
rm /run/reference.key
t2=$(now)
out=$(mkfs.ext4 /dev/mapper/reference -F -n)
blocks=$(echo "$out" | sed -n '/Superblock backups stored on blocks:/,$p' | grep -Eo '[0-9]{4,}' | sort -n)
for b in 0 $blocks; do dd if=/dev/zero bs=4k count=1 oflag=direct of=/dev/mapper/reference seek=$b status=none; done
t3=$(now)
mkfs.ext4 -q /dev/mapper/reference -E lazy_journal_init < /dev/null || say "mkfs failed"
t4=$(now)
mkdir -p /mnt/reference && mount /dev/mapper/reference /mnt/reference || say "mount failed"
t5=$(now)
sync
say "reference ready_ms=$(ms $t0 $t5) written_bytes=$(( ($(written) - w0) * 512 )) steps=luksFormat:$(ms $t0 $t1),open:$(ms $t1 $t2),prepare:$(ms $t2 $t3),mkfs:$(ms $t3 $t4),mount:$(ms $t4 $t5) integrity_errors=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') kdf=$(cryptsetup luksDump $D | sed -n 's/^\s*PBKDF:\s*//p' | head -1)"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

type benchSide struct {
	Seconds         float64 `json:"seconds"`
	WrittenMiB      int64   `json:"written_mib"`
	Steps           string  `json:"steps_ms"`
	IntegrityErrors int     `json:"integrity_errors,omitempty"`
	KDF             string  `json:"kdf,omitempty"`
}

type benchRun struct {
	Ours      benchSide `json:"cvmboot"`
	Reference benchSide `json:"reference"`
}

var benchLineRe = regexp.MustCompile(`(?m)^BENCH: (ours|reference) ready_ms=(\d+) written_bytes=(\d+) steps=(\S+)(?: integrity_errors=(\d+))?(?: kdf=(\S*))?`)

func parseBenchRun(serial string) (benchRun, error) {
	var r benchRun
	seen := 0
	for _, m := range benchLineRe.FindAllStringSubmatch(serial, -1) {
		ms, _ := strconv.ParseInt(m[2], 10, 64)
		w, _ := strconv.ParseInt(m[3], 10, 64)
		side := benchSide{Seconds: float64(ms) / 1000, WrittenMiB: w >> 20, Steps: m[4], KDF: m[6]}
		side.IntegrityErrors, _ = strconv.Atoi(m[5])
		if m[1] == "ours" {
			r.Ours = side
		} else {
			r.Reference = side
		}
		seen++
	}
	if seen != 2 || r.Ours.Seconds <= 0 || r.Reference.Seconds <= 0 {
		return r, fmt.Errorf("the guest printed %d BENCH result lines, want both sides with times", seen)
	}
	if strings.Contains(serial, "BENCH: luksFormat failed") || strings.Contains(serial, "BENCH: mkfs failed") ||
		strings.Contains(serial, "BENCH: open failed") || strings.Contains(serial, "BENCH: mount failed") {
		return r, fmt.Errorf("a reference step failed")
	}
	return r, nil
}

type spread struct{ Median, Min, Max float64 }

func spreadOf(v []float64) spread {
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{Median: med, Min: s[0], Max: s[len(s)-1]}
}

type benchSummary struct {
	Ours      spread `json:"cvmboot_seconds"`
	Reference spread `json:"reference_seconds"`
	Ratio     spread `json:"ratio"`
}

func summarize(runs []benchRun) benchSummary {
	var ours, ref, ratio []float64
	for _, r := range runs {
		ours = append(ours, r.Ours.Seconds)
		ref = append(ref, r.Reference.Seconds)
		ratio = append(ratio, r.Reference.Seconds/r.Ours.Seconds)
	}
	return benchSummary{Ours: spreadOf(ours), Reference: spreadOf(ref), Ratio: spreadOf(ratio)}
}

func TestParseBenchRun(t *testing.T) {
	serial := "BENCH: ours ready_ms=2500 written_bytes=104857600 steps=partition:100,activate:800,probe:400,mkfs:1100,mount:20\r\n" +
		"BENCH: reference ready_ms=30000 written_bytes=209715200 steps=luksFormat:18000,open:3000,prepare:500,mkfs:8000,mount:500 integrity_errors=3 kdf=argon2id\r\n"
	r, err := parseBenchRun(serial)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ours.Seconds != 2.5 || r.Ours.WrittenMiB != 100 || r.Reference.Seconds != 30 || r.Reference.IntegrityErrors != 3 || r.Reference.KDF != "argon2id" {
		t.Errorf("%+v", r)
	}
	if s := summarize([]benchRun{r, r, {Ours: benchSide{Seconds: 1}, Reference: benchSide{Seconds: 30}}}); s.Ratio.Median != 12 || s.Ratio.Max != 30 {
		t.Errorf("summary %+v", s)
	}
	if _, err := parseBenchRun("BENCH: ours ready_ms=1 written_bytes=1 steps=x\n"); err == nil {
		t.Error("one side only: no error")
	}
}
