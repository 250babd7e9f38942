package cli

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/pkg/report"
)

// A system booted by the systemd-initrd units would set the request aside at its next boot:
// enroll refuses there, before it writes anything.
func TestEnrollRefusesSystemdInitrdBoot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	if err := (&report.Report{Schema: report.Schema, Mode: "systemd-initrd"}).WriteFile(path); err != nil {
		t.Fatal(err)
	}
	old := enrollReportPath
	enrollReportPath = path
	defer func() { enrollReportPath = old }()
	var stdout, stderr bytes.Buffer
	code := enrollCmd([]string{"--uki", filepath.Join(dir, "next.efi"), "--sha256", strings.Repeat("00", 32)}, &stdout, &stderr)
	if code != ExitFailed || !strings.Contains(stderr.String(), "booted by cvmboot's systemd-initrd units") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}
