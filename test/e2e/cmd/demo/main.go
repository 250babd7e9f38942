// Command demo shows what cvmboot does, on one screen: it builds a disk with a dm-verity root
// and free space, boots it under qemu (OVMF, swtpm) with cvmboot as PID 1 — verified root,
// encrypted storage with integrity, tmpfs overlay, measured boot with evidence — verifies the
// evidence on the host against the UKI file, then flips one byte of the root and boots again:
// refused. `make demo` runs it; -v streams the guest's console.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cvmboot/cvmboot/pkg/report"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// demoConfig is the default config with what a plain qemu guest needs: its TPM is swtpm's (no
// TEE to require), and the demo disk's free space is smaller than storage's default minimum.
const demoConfig = `# cvmboot demo: the defaults (verity required, encrypted storage with integrity,
# tmpfs overlay, power off on failure) on a qemu guest with swtpm
attest:
  require: tpm
storage:
  min_size: 256MiB
`

const evidenceDir = "/run/cvmboot/evidence"

func main() {
	verbose := flag.Bool("v", false, "stream the guest's serial console")
	timeout := flag.Duration("timeout", 4*time.Minute, "hard limit for each boot")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	if err := run(ctx, *verbose, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("\n(demo took %.0fs)\n", time.Since(start).Seconds())
}

func step(format string, args ...any) { fmt.Printf("• "+format+"\n", args...) }

func run(ctx context.Context, verbose bool, timeout time.Duration) error {
	logf := func(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) }
	repo, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	host := filepath.Join(repo, "bin", "cvmboot-host")
	if _, err := os.Stat(host); err != nil {
		return fmt.Errorf("%s is missing: run `make build` (make demo does)", host)
	}
	cache, err := harness.OpenCache()
	if err != nil {
		return err
	}
	step("kernel, OVMF and tools (cached in %s after the first run)", cache.Path())
	kernel, err := cache.Kernel(ctx, logf)
	if err != nil {
		return err
	}
	accel, err := cache.DetectAccel(ctx, kernel, logf)
	if err != nil {
		return err
	}
	tools, err := cache.BuildTools(ctx, true)
	if err != nil {
		return err
	}
	tree, err := cache.TinyRoot(ctx)
	if err != nil {
		return err
	}
	work := cache.Path("work", "demo")
	_ = os.RemoveAll(work)
	step("building the image: root file system → dm-verity hash tree (roothash= in the UKI's command line), 320 MiB free space, UKI with cvmboot's initramfs")
	img, err := harness.BuildImage(ctx, harness.ImageSpec{
		WorkDir: work, Kernel: kernel, Tools: tools, Init: harness.InitCvmboot, Config: demoConfig,
		Cmdline: "console=ttyS0 systemd.import_credentials=no roothash={roothash} rootcheck.expect=root:rw rootcheck.dump=" + evidenceDir,
		Recipe:  harness.DiskRecipe{Root: harness.RootSpec{Tree: tree}, Verity: &harness.VeritySpec{}, FreeSpace: 320 * harness.MiB},
	})
	if err != nil {
		return err
	}
	logf("kernel %s, %s, disk %s (%d MiB), root hash %s", kernel.Version, accel, img.Disk.Path, img.Disk.Size/harness.MiB, img.RootHash)

	step("booting it (OVMF + swtpm, cvmboot as PID 1)…")
	res, err := boot(ctx, "demo", work, img, accel, timeout, verbose)
	if err != nil {
		return err
	}
	rep, err := bootReport(res)
	if err != nil {
		return fmt.Errorf("%v (serial log %s)", err, res.SerialLogPath)
	}
	fmt.Printf("  booted to the root's init in %.1fs (%s)\n\n", res.Duration.Seconds(), res.PhaseSummary())
	showBoot(rep)
	fmt.Println("\n`cvmboot status` in the booted system (first fact of each step):")
	showStatus(rep)

	step("verifying the evidence on the host: cvmboot-host evidence verify --expect-uki BOOTX64.EFI --expect-roothash …")
	verdict, err := verify(host, res, img, work)
	if err != nil {
		return err
	}
	fmt.Println(verdict)

	step("the host flips one byte of the root file system (block 0) and boots the same disk again…")
	if err := harness.FlipByte(img.Disk.Path, img.Disk.Root.Start+1024+0x78); err != nil {
		return err
	}
	bad, err := boot(ctx, "demo-tampered", filepath.Join(work, "tampered"), img, accel, timeout, verbose)
	if err != nil {
		return err
	}
	fatal := harness.LinesWithPrefix(bad.Serial, "cvmboot: FATAL")
	action := harness.LinesWithPrefix(bad.Serial, "cvmboot: failure action")
	if len(fatal) == 0 || strings.Contains(bad.Serial, "ROOTCHECK: START") ||
		!strings.Contains(fatal[0], "stage verity failed") || !strings.Contains(fatal[0], "data block 0") {
		return fmt.Errorf("the tampered root was not refused by the verity step for its data block 0 (%q; serial log %s)",
			strings.Join(fatal, " "), bad.SerialLogPath)
	}
	fmt.Println("  refused:")
	for _, l := range append(fatal, action...) {
		fmt.Println("    " + wrap(l, 100, "      "))
	}
	fmt.Printf("  the VM %s after %.1fs; the root's init never ran\n", bad.Reason, bad.Duration.Seconds())
	return nil
}

func boot(ctx context.Context, name, work string, img *harness.Image, accel harness.Accel, timeout time.Duration, verbose bool) (*harness.BootResult, error) {
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	res, err := harness.Boot(ctx, harness.BootSpec{
		Name: name, WorkDir: work, Disk: img.Disk.Path, Accel: accel, Timeout: timeout,
		OnLine: func(line string) {
			if verbose {
				fmt.Println("  | " + line)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	if res.Reason != harness.ExitPoweredOff {
		return nil, fmt.Errorf("%s: the guest did not power off (%s: %s); serial log %s", name, res.Reason, res.Detail, res.SerialLogPath)
	}
	return res, nil
}

// bootReport is /run/cvmboot/report.json as the root's init (rootcheck) printed it.
func bootReport(res *harness.BootResult) (*report.Report, error) {
	if pass, fail, ok := harness.RootcheckDone(res.Serial); !ok || fail > 0 {
		return nil, fmt.Errorf("the root's checks did not pass (%d passed, %d failed): %s", pass, fail,
			strings.Join(harness.LinesWithPrefix(res.Serial, "ROOTCHECK: FAIL"), "; "))
	}
	raw, err := harness.ExtractReport(res.Serial, harness.RootcheckReportBegin, harness.RootcheckReportEnd)
	if err != nil {
		return nil, fmt.Errorf("no boot report: %w", err)
	}
	return report.Unmarshal(raw)
}

// showBoot says what the boot verified, encrypted and measured, from the report's facts.
func showBoot(rep *report.Report) {
	facts := map[string]map[string]string{}
	for _, s := range rep.Stages {
		facts[s.Name] = s.Facts
	}
	v, st, o, e := facts["verity"], facts["storage"], facts["overlay"], facts["evidence"]
	fmt.Printf("  verified  root %s = dm-verity over %s + %s, root hash %s…, checked before the device existed; a bad block panics the kernel\n",
		v["root_device"], v["root_data_device"], v["root_hash_device"], short(v["root_root_hash"]))
	fmt.Printf("  encrypted %s on %s: %s with integrity %s, a random key that lives only in the kernel, no keyslot; mounted at %s\n",
		st["device"], st["partition"], st["cipher"], st["integrity"], st["mountpoint"])
	fmt.Printf("  writable  / is an overlay: tmpfs (%s of RAM) over the read-only verified root\n", o["size"])
	fmt.Printf("  measured  every decision into TPM PCR 11/15 with a replayable log; evidence: %s (quote bound to the log, sha256 %s…)\n",
		e["attestations"], short(e["event_log_sha256"]))
}

// verify runs the host's verifier over the evidence the guest printed.
func verify(host string, res *harness.BootResult, img *harness.Image, work string) (string, error) {
	files, err := harness.ExtractFiles(res.Serial)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(work, "evidence")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for p, data := range files {
		if name, ok := strings.CutPrefix(p, evidenceDir+"/"); ok && name == filepath.Base(name) {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				return "", err
			}
		}
	}
	// swtpm's attestation key is new in every run, so nobody could have pinned it: its
	// signature is taken as is (--allow-unsigned=tpm), everything else is checked.
	cmd := exec.Command(host, "evidence", "verify", dir, "--expect-uki", img.UKI, "--expect-roothash", img.RootHash,
		"--allow-unsigned=tpm", "--json")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("the verifier refused the genuine evidence: %s", ee.Stderr)
		}
		return "", err
	}
	var c struct {
		Chain struct {
			Verified bool
			Links    []struct {
				Name, Detail, Waived string
				Holds                bool
			}
		} `json:"chain"`
		RootHashExpected bool `json:"root_hash_expected"`
		Storage          *struct {
			Encrypted bool
			Cipher    string
			Integrity string
		} `json:"storage"`
	}
	if err := json.Unmarshal(out, &c); err != nil {
		return "", fmt.Errorf("verifier output: %w", err)
	}
	var b strings.Builder
	for _, l := range c.Chain.Links {
		state := "holds"
		if !l.Holds {
			state = "waived (" + l.Waived + ")"
		}
		fmt.Fprintf(&b, "  %-12s %s: %s\n", l.Name, state, wrap(l.Detail, 90, "                 "))
	}
	switch {
	case c.RootHashExpected && c.Storage != nil && c.Storage.Encrypted:
		b.WriteString("  verdict: verified (the hardware link waived: swtpm's key is new every run): the expected UKI booted,\n" +
			"           the root is the expected root hash's, the storage is encrypted with integrity")
	default:
		return "", fmt.Errorf("the verifier accepted the evidence, but the root hash or the storage is not what the demo booted:\n%s", out)
	}
	return b.String(), nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// wrap breaks s into lines of at most n runes, continuing with prefix.
func wrap(s string, n int, prefix string) string {
	words := strings.Fields(s)
	var b strings.Builder
	line := 0
	for i, w := range words {
		if i > 0 && line+1+len(w) > n {
			b.WriteString("\n" + prefix)
			line = 0
		} else if i > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	return b.String()
}

// showStatus prints `cvmboot status`'s table with one line per step: the lines that continue
// a step (its further facts) are counted, not shown.
func showStatus(rep *report.Report) {
	var b strings.Builder
	_ = rep.WriteTable(&b)
	hidden := 0
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		if strings.HasPrefix(l, " ") {
			hidden++
			continue
		}
		if len(l) > 118 {
			l = l[:117] + "…"
		}
		fmt.Println("  " + l)
	}
	fmt.Printf("  (%d more facts: cvmboot status shows them all)\n", hidden)
}
