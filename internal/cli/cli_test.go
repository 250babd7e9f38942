package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/pkg/report"
)

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut, Commands())
	return code, out.String(), errOut.String()
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range Commands() {
		code, out, errOut := runCLI(c.Name, "--help")
		text := out + errOut
		if code != ExitOK {
			t.Errorf("%s --help exited %d", c.Name, code)
		}
		if !strings.Contains(text, "Usage") && !strings.Contains(text, "usage") {
			t.Errorf("%s --help prints no usage:\n%s", c.Name, text)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	if code, _, errOut := runCLI(); code != ExitUsage || !strings.Contains(errOut, "Commands:") {
		t.Errorf("no args: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI("frobnicate"); code != ExitUsage || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errOut)
	}
	if code, _, _ := runCLI("status", "--bogus"); code != ExitUsage {
		t.Errorf("bad flag: %d", code)
	}
	if code, _, errOut := runCLI("init"); code != ExitUsage || !strings.Contains(errOut, "not PID 1") {
		t.Errorf("init outside PID 1: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI("enroll", "--uki", "x.efi"); code != ExitUsage || !strings.Contains(errOut, "--uki and --sha256 are required") {
		t.Errorf("enroll without --uki: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI("enroll", "--uki", "/nonexistent.efi", "--sha256", "00"); code != ExitFailed || !strings.Contains(errOut, "cvmboot enroll: ") {
		t.Errorf("enroll on a machine without a persistent root: %d %s", code, errOut)
	}
	if code, _, _ := runCLI("run"); code != ExitUsage {
		t.Errorf("run without stages: %d", code)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	if code != ExitOK || !strings.HasPrefix(out, "cvmboot ") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestStatus(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	if code, _, errOut := runCLI("status", "--report", path); code != ExitIOError || !strings.Contains(errOut, "no boot report at "+path) {
		t.Errorf("missing report: %d %q", code, errOut)
	}
	start := time.Date(2026, 11, 26, 18, 0, 0, 0, time.UTC)
	rep := &report.Report{
		Schema: report.Schema, Version: "v1", Mode: "initramfs", Started: start, Finished: start.Add(2 * time.Second),
		Outcome: report.OutcomeOK,
		Config:  &report.Config{Path: "/etc/cvmboot/config.yaml", Found: true, SHA256: "ab"},
		Stages: []report.Stage{
			{Name: "root", Status: report.StatusOK, DurationMS: 1234.5, Facts: map[string]string{"device": "/dev/vda2", "fstype": "ext4"}},
			{Name: "storage", Status: report.StatusSkipped, DurationMS: 0.01, Reason: "storage.enabled is false"},
		},
	}
	if err := rep.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI("status", "--report", path)
	if code != ExitOK {
		t.Fatalf("status exited %d", code)
	}
	for _, want := range []string{"boot ok in 2s", "root", "1.23s", "device=/dev/vda2", "fstype=ext4", "storage", "skipped", "storage.enabled is false"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI("status", "--json", "--report", path)
	if back, err := report.Unmarshal([]byte(out)); code != ExitOK || err != nil || back.Stages[0].Facts["device"] != "/dev/vda2" {
		t.Errorf("status --json: %d %v %q", code, err, out)
	}
	rep.Outcome = report.OutcomeFailed
	rep.Failure = &report.Failure{Stage: "root", Error: "device PARTUUID=x did not appear", Action: "poweroff"}
	if err := rep.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runCLI("status", "--report", path)
	if code != ExitFailed || !strings.Contains(out, "FAILED in stage root: device PARTUUID=x did not appear (action: poweroff)") {
		t.Errorf("failed boot: %d\n%s", code, out)
	}
}

// The command line is pinned by default: an initramfs without a decision is not built.
func TestInitramfsPinRequired(t *testing.T) {
	out := filepath.Join(t.TempDir(), "initramfs.img")
	if code, _, errOut := runCLI("initramfs", "-o", out); code != ExitUsage || !strings.Contains(errOut, "pinned by default") {
		t.Errorf("no pin: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI("initramfs", "-o", out, "--cmdline", "ro", "--no-cmdline-pin"); code != ExitUsage || !strings.Contains(errOut, "exclude each other") {
		t.Errorf("both: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI("initramfs", "-o", out, "--cmdline-file", "/nonexistent"); code != ExitIOError {
		t.Errorf("missing file: %d %q", code, errOut)
	}
	// A pinned line must keep systemd from importing the host's credentials.
	for _, line := range []string{"ro", "ro systemd.import_credentials=no systemd.import_credentials=yes", "systemd.import_credentials"} {
		if code, _, errOut := runCLI("initramfs", "-o", out, "--cmdline", line); code != ExitUsage || !strings.Contains(errOut, "lacks systemd.import_credentials=no") {
			t.Errorf("%q: %d %q", line, code, errOut)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("an initramfs was written for a refused command line")
	}
}
