package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// TestPersistBench measures the persistent root on a 2 GiB root file system: the first boot's
// conversion (the persistent-root stage: header, copy through dm-verity into dm-crypt over
// dm-integrity, seal, reactivation) against a plain copy of the same bytes in the same VM
// (dd from the same dm-verity device to a second disk, O_DIRECT, run by the booted Debian
// once the conversion is done), and a later boot's unlock (the stage's cost; PID 1 mode
// without a persistent root has no such stage). Goals: conversion ≤ 1.5× the plain copy,
// unlock ≤ 300 ms. It runs only with CVMBOOT_E2E_BENCH=1 (make bench); results in the test
// log and test/bench/results/persistent.json.
//
// The plain copy reads the dm-verity device after the conversion read it: its data blocks
// are read again from the disk (O_DIRECT), its hash blocks may still sit in dm-verity's
// buffer cache, which favours the plain copy.
func TestPersistBench(t *testing.T) {
	e, deb, runs := benchSetup(t, "persistent root")
	const rootSize = 2 << 30
	var results []persistBenchRun
	for i := 1; i <= runs; i++ {
		work := e.cache.Path("work", fmt.Sprintf("persist-bench-%d", i))
		if err := os.RemoveAll(work); err != nil {
			t.Fatal(err)
		}
		tree := filepath.Join(work, "root")
		if err := harness.ExtractDebianRoot(context.Background(), deb, tree); err != nil {
			t.Fatal(err)
		}
		if err := harness.InstallCheckUnit(tree, persistBenchScript); err != nil {
			t.Fatal(err)
		}
		img, err := harness.BuildImage(context.Background(), harness.ImageSpec{
			WorkDir: work, Kernel: e.kernel, Tools: e.tools, Init: harness.InitCvmboot,
			Config: persistentConfig, Cmdline: "console=ttyS0 systemd.import_credentials=no roothash={roothash}",
			Recipe: harness.DiskRecipe{Root: harness.RootSpec{Tree: tree, Size: rootSize}, Verity: &harness.VeritySpec{},
				FreeSpace: rootSize + rootSize/4},
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = os.RemoveAll(tree)
		plain := filepath.Join(work, "plain-copy.raw")
		if err := os.WriteFile(plain, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(plain, rootSize+64<<20); err != nil {
			t.Fatal(err)
		}
		first, err := harness.Boot(context.Background(), harness.BootSpec{
			Name: "persist-bench", WorkDir: filepath.Join(work, "boot1"), Disk: img.Disk.Path, Accel: e.accel,
			Timeout: 30 * time.Minute, MemoryMiB: 2048,
			ExtraArgs: []string{"-drive", "if=none,id=disk1,format=raw,file=" + plain, "-device", "virtio-blk-pci,drive=disk1"},
		})
		if err != nil {
			t.Fatal(err)
		}
		second, err := harness.Boot(context.Background(), harness.BootSpec{
			Name: "persist-bench-unlock", WorkDir: filepath.Join(work, "boot2"), Disk: img.Disk.Path, Accel: e.accel,
			Timeout: 10 * time.Minute, MemoryMiB: 2048, TPMStateDir: first.TPMStateDir,
		})
		if err != nil {
			t.Fatal(err)
		}
		r, err := parsePersistBench(first.Serial, second.Serial)
		if err != nil {
			t.Fatalf("run %d: %v (first boot %s, second %s); last lines of the first:\n%s\nof the second:\n%s",
				i, err, first.Reason, second.Reason, lastLines(first.Serial, 20), lastLines(second.Serial, 20))
		}
		t.Logf("run %d: conversion %.2fs (copy %.2fs) of %d MiB, plain copy %.2fs: %.2f× the plain copy; unlock %.3fs (%s)",
			i, r.Conversion.Seconds, r.Conversion.CopySeconds, r.Bytes>>20, r.PlainCopy.Seconds, r.Conversion.Seconds/r.PlainCopy.Seconds,
			r.Unlock.Seconds, r.Unlock.Steps)
		results = append(results, r)
		_ = os.RemoveAll(work)
	}
	var conv, plainS, ratio, unlock []float64
	for _, r := range results {
		conv, plainS, unlock = append(conv, r.Conversion.Seconds), append(plainS, r.PlainCopy.Seconds), append(unlock, r.Unlock.Seconds)
		ratio = append(ratio, r.Conversion.Seconds/r.PlainCopy.Seconds)
	}
	sum := map[string]spread{"conversion_seconds": spreadOf(conv), "plain_copy_seconds": spreadOf(plainS),
		"conversion_over_plain": spreadOf(ratio), "unlock_seconds": spreadOf(unlock)}
	t.Logf("persistent root, %d MiB root, %d runs, accel %s:", results[0].Bytes>>20, runs, e.accel)
	t.Logf("  conversion / plain copy ratio: median %.2f× (min %.2f×, max %.2f×); goal ≤ 1.5×", sum["conversion_over_plain"].Median, sum["conversion_over_plain"].Min, sum["conversion_over_plain"].Max)
	t.Logf("  conversion: median %.2fs; plain copy: median %.2fs", sum["conversion_seconds"].Median, sum["plain_copy_seconds"].Median)
	t.Logf("  unlock (later boot) ratio to the 0.3 s goal: median %.3fs (min %.3fs, max %.3fs)", sum["unlock_seconds"].Median, sum["unlock_seconds"].Min, sum["unlock_seconds"].Max)
	writeBenchResults(t, e, "persistent", map[string]any{
		"benchmark": "persistent-root", "root_bytes": results[0].Bytes, "integrity": "hmac-sha256",
		"runs": results, "summary": sum,
	})
}

// persistBenchScript runs in the booted Debian: after the boot that converted, it copies the
// dm-verity device cvmboot copied from (/dev/mapper/root; the test checks its size against
// the stage's source_bytes) to the second disk with dd and prints the time; after any boot
// it powers off.
const persistBenchScript = `#!/bin/bash
exec >/dev/console 2>&1
say() { printf 'BENCH: %s\n' "$*"; }
timeout 240 systemctl is-system-running --wait >/dev/null 2>&1
if grep -q '"action": *"converted"' /run/cvmboot/report.json; then
  src=/dev/mapper/root
  bytes=$(blockdev --getsize64 "$src")
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(date +%s%N)
  dd if="$src" of=/dev/vdb bs=1M count=$((bytes >> 20)) iflag=direct oflag=direct status=none || say "plain copy failed"
  sync
  t1=$(date +%s%N)
  say "plain-copy source=$src bytes=$bytes ms=$(( (t1 - t0) / 1000000 ))"
fi
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

type persistBenchSide struct {
	Seconds     float64 `json:"seconds"`
	CopySeconds float64 `json:"copy_seconds,omitempty"`
	Steps       string  `json:"steps_ms,omitempty"`
}

type persistBenchRun struct {
	Bytes      int64            `json:"root_bytes"`
	Conversion persistBenchSide `json:"conversion"`
	PlainCopy  persistBenchSide `json:"plain_copy"`
	Unlock     persistBenchSide `json:"unlock"`
}

var (
	persistStageRe = regexp.MustCompile(`stage ok stage=persistent-root (.*)`)
	plainCopyRe    = regexp.MustCompile(`BENCH: plain-copy source=\S+ bytes=(\d+) ms=(\d+)`)
	factRe         = regexp.MustCompile(`(\w+)=("[^"]*"|\S+)`)
)

// stageFacts reads the persistent-root stage line's facts.
func stageFacts(serial string) map[string]string {
	m := persistStageRe.FindStringSubmatch(serial)
	if m == nil {
		return nil
	}
	facts := map[string]string{}
	for _, f := range factRe.FindAllStringSubmatch(m[1], -1) {
		facts[f[1]] = f[2]
	}
	return facts
}

func msFact(facts map[string]string, key string) (float64, error) {
	v, err := strconv.ParseFloat(facts[key], 64)
	if err != nil {
		return 0, fmt.Errorf("the persistent-root stage has no %s (%q)", key, facts[key])
	}
	return v / 1000, nil
}

func parsePersistBench(first, second string) (persistBenchRun, error) {
	var r persistBenchRun
	conv, unl := stageFacts(first), stageFacts(second)
	if conv["action"] != "converted" || unl["action"] != "unlocked" {
		return r, fmt.Errorf("the boots did not convert then unlock (actions %q, %q)", conv["action"], unl["action"])
	}
	var err error
	if r.Conversion.Seconds, err = msFact(conv, "total_ms"); err != nil {
		return r, err
	}
	if r.Conversion.CopySeconds, err = msFact(conv, "copy_ms"); err != nil {
		return r, err
	}
	r.Conversion.Steps = fmt.Sprintf("header:%s,activate:%s,copy:%s,seal:%s,reactivate:%s", conv["header_ms"], conv["activate_ms"], conv["copy_ms"], conv["seal_ms"], conv["reactivate_ms"])
	if r.Unlock.Seconds, err = msFact(unl, "total_ms"); err != nil {
		return r, err
	}
	// The TPM's primary key and session are made beside the header read (tpm_prime); the
	// unseal's TPM part is what is left once the token is known.
	r.Unlock.Steps = fmt.Sprintf("prime:%s|unseal:%s(tpm:%s,keyslot:%s)|integrity:%s,crypt:%s", unl["tpm_prime_ms"], unl["unseal_ms"], unl["tpm_unseal_ms"], unl["keyslot_ms"], unl["integrity_ms"], unl["crypt_ms"])
	m := plainCopyRe.FindStringSubmatch(first)
	if m == nil {
		return r, fmt.Errorf("the booted system printed no plain-copy line")
	}
	r.Bytes, _ = strconv.ParseInt(m[1], 10, 64)
	ms, _ := strconv.ParseFloat(m[2], 64)
	r.PlainCopy.Seconds = ms / 1000
	if src, _ := strconv.ParseInt(conv["source_bytes"], 10, 64); src != r.Bytes || r.PlainCopy.Seconds <= 0 {
		return r, fmt.Errorf("the plain copy moved %d bytes in %.3fs, the conversion %d", r.Bytes, r.PlainCopy.Seconds, src)
	}
	return r, nil
}

func TestParsePersistBench(t *testing.T) {
	first := "[ 27.4] cvmboot[1]: stage ok stage=persistent-root duration_ms=17658.4 action=converted activate_ms=555 copy_ms=13408 header_ms=1741 reactivate_ms=288 seal_ms=1271 source_bytes=2147483648 total_ms=17541 tpm=insecure-unvouched tpm_unvouched_reason=\"no TEE\"\r\n" +
		"BENCH: plain-copy source=/dev/mapper/root bytes=2147483648 ms=9000\r\n"
	second := "[ 7.7] cvmboot[1]: stage ok stage=persistent-root duration_ms=1228.3 action=unlocked crypt_ms=25 integrity_ms=500 keyslot_ms=343 total_ms=1191 tpm_prime_ms=61 tpm_unseal_ms=198 unseal_ms=565\r\n"
	r, err := parsePersistBench(first, second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Conversion.Seconds != 17.541 || r.PlainCopy.Seconds != 9 || r.Unlock.Seconds != 1.191 || r.Bytes != 2<<30 ||
		r.Unlock.Steps != "prime:61|unseal:565(tpm:198,keyslot:343)|integrity:500,crypt:25" {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := parsePersistBench(first, first); err == nil {
		t.Fatal("two conversions parsed as conversion and unlock")
	}
	if _, err := parsePersistBench(second, second); err == nil {
		t.Fatal("no plain copy parsed")
	}
}
