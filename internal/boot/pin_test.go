package boot

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/efivar"
	"github.com/cvmboot/cvmboot/pkg/report"
)

const pinnedCmdline = "console=ttyS0 root=/dev/vda2 ro"

// pin writes the image's pinned command line next to the harness's files.
func (h *initHarness) pin(t *testing.T, pinned string) {
	t.Helper()
	h.env.CmdlinePinPath = filepath.Join(filepath.Dir(h.env.ConfigPath), "pinned-cmdline")
	if err := os.WriteFile(h.env.CmdlinePinPath, []byte(pinned+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The host's boot entry adds init=/bin/sh and asks for a debug shell on failure: the boot
// stops before any stage, with the config file's failure action, and init never runs.
func TestRunInitRefusesUnpinnedCmdline(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	h := newInitHarness(t, pinnedCmdline+" init=/bin/sh cvmboot.debug=on cvmboot.failure.action=shell", plainYAML+"failure: {action: halt}\n", m)
	h.pin(t, pinnedCmdline)
	if code := RunInit(h.env); code == 0 {
		t.Fatal("RunInit returned 0")
	}
	if h.execPath != "" || len(m.calls) != 0 {
		t.Fatalf("the boot went on: exec %q, calls %v", h.execPath, m.calls)
	}
	if h.sys.rebootCmd != 0xcdef0123 { // LINUX_REBOOT_CMD_HALT, the file's action, not the shell
		t.Errorf("reboot cmd %#x, want halt", h.sys.rebootCmd)
	}
	got := strings.Join(h.emergency, "\n")
	for _, want := range []string{
		"cvmboot: FATAL: stage cmdline failed: the kernel command line is not the one pinned in " + h.env.CmdlinePinPath +
			": expected " + cmdline.PinDigest(pinnedCmdline) + ", found " + cmdline.PinDigest(pinnedCmdline+" init=/bin/sh cvmboot.debug=on cvmboot.failure.action=shell"),
		`cvmboot: words not in the pinned command line: "init=/bin/sh" "cvmboot.debug=on" "cvmboot.failure.action=shell"`,
		"cvmboot: failure action: halt",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("emergency output lacks %q:\n%s", want, got)
		}
	}
	for _, l := range h.emergency {
		if !strings.HasPrefix(l, "cvmboot: ") || len(l) > 400 {
			t.Errorf("console line without prefix or too long: %q", l)
		}
	}
	rep, err := report.ReadFile(h.env.ReportPath)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failure == nil || rep.Failure.Stage != StageCmdline || rep.Failure.Action != "halt" || rep.CmdlinePinned != "" {
		t.Errorf("report failure %+v pinned %q", rep.Failure, rep.CmdlinePinned)
	}
}

func TestRunInitPinnedCmdlineBoots(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	h := newInitHarness(t, " "+pinnedCmdline+" \t", strings.Replace(plainYAML, "require: none", "require: tpm", 1), m)
	att := &fakeAttest{present: true}
	h.env.Attest = att
	h.pin(t, pinnedCmdline)
	RunInit(h.env)
	if h.execPath != "/sbin/init" {
		t.Fatalf("the pinned command line did not boot: exec %q, emergency %q", h.execPath, h.emergency)
	}
	rep, err := report.ReadFile(h.env.ReportPath)
	if err != nil {
		t.Fatal(err)
	}
	if rep.CmdlinePinned != cmdline.PinDigest(pinnedCmdline) {
		t.Errorf("report cmdline_pinned %q", rep.CmdlinePinned)
	}
	// The measured cmdline event says the line matched a pin.
	if got := strings.Join(att.measured, ","); !strings.Contains(got, "cvmboot.cmdline:pinned") {
		t.Errorf("measured %s", got)
	}
}

// An unreadable config still stops the boot, with the secure default.
func TestRunInitUnpinnedCmdlineBadConfig(t *testing.T) {
	h := newInitHarness(t, pinnedCmdline+" init=/bin/sh", "stroage: {}\n", &fakeMachine{})
	h.pin(t, pinnedCmdline)
	RunInit(h.env)
	if h.sys.rebootCmd != 0x4321fedc || h.execPath != "" {
		t.Errorf("reboot cmd %#x exec %q, want power off", h.sys.rebootCmd, h.execPath)
	}
}

func TestRunUnitsRefusesUnpinnedCmdline(t *testing.T) {
	m := &fakeMachine{}
	h, att, _ := unitHarness(t, pinnedCmdline+" rd.systemd.unit=emergency.target", unitsYAML, m, true)
	h.pin(t, pinnedCmdline)
	var stderr bytes.Buffer
	if code := RunUnits(h.env, []string{"modules", "attest"}, &stderr); code != 1 {
		t.Fatalf("exit %d, stderr %s", code, stderr.String())
	}
	if len(m.calls) != 0 || len(att.measured) != 0 {
		t.Errorf("stages ran: calls %v events %v", m.calls, att.measured)
	}
	got := strings.Join(h.emergency, "\n")
	for _, want := range []string{"cvmboot: FATAL: stage cmdline failed: the kernel command line is not the one pinned",
		`"rd.systemd.unit=emergency.target"`, "cvmboot: failure action: poweroff (FailureAction=poweroff-force)"} {
		if !strings.Contains(got, want) {
			t.Errorf("emergency output lacks %q:\n%s", want, got)
		}
	}
}

// The generator runs before systemd starts any unit: it powers off at once, with the config
// file's action (the command line's overrides ignored), and gives the units that action.
func TestGenerateRefusesUnpinnedCmdline(t *testing.T) {
	h := newInitHarness(t, pinnedCmdline+" systemd.debug_shell=1 cvmboot.failure.action=shell cvmboot.debug=on", "failure: {action: reboot}\n", &fakeMachine{})
	h.pin(t, pinnedCmdline)
	dir := t.TempDir()
	var stderr bytes.Buffer
	err := Generate(h.env, dir, &stderr)
	if err == nil || h.sys.rebootCmd != 0x01234567 { // LINUX_REBOOT_CMD_RESTART
		t.Fatalf("err %v reboot cmd %#x, want a reboot", err, h.sys.rebootCmd)
	}
	b, rerr := os.ReadFile(filepath.Join(dir, UnitNames[0]+".d", GeneratorDropIn))
	if rerr != nil || !strings.Contains(string(b), "FailureAction=reboot-force") {
		t.Errorf("drop-in %q %v", b, rerr)
	}
	if got := strings.Join(h.emergency, "\n"); !strings.Contains(got, "cvmboot: FATAL: stage cmdline failed") || !strings.Contains(got, `"systemd.debug_shell=1"`) {
		t.Errorf("emergency output:\n%s", got)
	}

	// The pinned command line: drop-ins only, nothing stops.
	h = newInitHarness(t, pinnedCmdline, "", &fakeMachine{})
	h.pin(t, pinnedCmdline)
	if err := Generate(h.env, t.TempDir(), &stderr); err != nil || h.sys.rebootCmd != 0 || len(h.emergency) != 0 {
		t.Errorf("pinned: err %v reboot %#x emergency %q", err, h.sys.rebootCmd, h.emergency)
	}
}

// systemdOptions writes the SystemdOptions EFI variable as the host would set it.
func (h *initHarness) systemdOptions(t *testing.T, value string) {
	t.Helper()
	h.env.EFIVarsDir = t.TempDir()
	b := []byte{7, 0, 0, 0}
	for _, c := range utf16.Encode([]rune(value)) {
		b = append(b, byte(c), byte(c>>8))
	}
	if err := os.WriteFile(filepath.Join(h.env.EFIVarsDir, efivar.SystemdOptionsName), append(b, 0, 0), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The host sets SystemdOptions, which systemd reads as more command line: PID 1 refuses it at
// the handoff (efivarfs is mounted by then), the generator at once; an image that pins
// nothing, or an empty variable, boots.
func TestSystemdOptionsRefused(t *testing.T) {
	const want = `the firmware variable SystemdOptions-8cf2644b-4b0b-428f-9387-6d876050dc67 adds "systemd.unit=emergency.target" to the command line systemd reads`
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	h := newInitHarness(t, pinnedCmdline, plainYAML+"failure: {action: halt}\n", m)
	h.pin(t, pinnedCmdline)
	h.systemdOptions(t, "systemd.unit=emergency.target")
	if code := RunInit(h.env); code == 0 || h.execPath != "" {
		t.Fatalf("RunInit: exit %d, exec %q", code, h.execPath)
	}
	// Here efivarfs is readable from the start, so the first check refuses it; in a real
	// PID 1 boot efivarfs is mounted only after the modules step and the handoff refuses.
	if got := strings.Join(h.emergency, "\n"); !strings.Contains(got, "cvmboot: FATAL: stage cmdline failed: "+want) || h.sys.rebootCmd != 0xcdef0123 {
		t.Errorf("reboot cmd %#x, emergency output:\n%s", h.sys.rebootCmd, got)
	}
	b := &Boot{Mounts: m, rootDevice: "/dev/vda2", Plan: &Plan{Init: "/sbin/init"}, EFIVarsDir: h.env.EFIVarsDir, CmdlinePin: "sha256:x"}
	m.calls = nil
	if _, err := b.handoff(context.Background()); err == nil || !strings.Contains(err.Error(), want) || len(m.calls) != 0 {
		t.Errorf("handoff: %v, calls %v", err, m.calls)
	}

	h = newInitHarness(t, pinnedCmdline, "failure: {action: reboot}\n", &fakeMachine{})
	h.pin(t, pinnedCmdline)
	h.systemdOptions(t, "systemd.unit=emergency.target")
	var stderr bytes.Buffer
	if err := Generate(h.env, t.TempDir(), &stderr); err == nil || h.sys.rebootCmd != 0x01234567 {
		t.Errorf("Generate: %v, reboot cmd %#x", err, h.sys.rebootCmd)
	}
	if got := strings.Join(h.emergency, "\n"); !strings.Contains(got, "cvmboot: FATAL: stage cmdline failed: "+want) {
		t.Errorf("emergency output:\n%s", got)
	}

	for _, tc := range []struct{ pinned, value string }{{"", "systemd.unit=emergency.target"}, {pinnedCmdline, ""}} {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		h := newInitHarness(t, pinnedCmdline, plainYAML, m)
		if tc.pinned != "" {
			h.pin(t, tc.pinned)
		}
		h.systemdOptions(t, tc.value)
		RunInit(h.env)
		if h.execPath != "/sbin/init" {
			t.Errorf("pinned %q, SystemdOptions %q: exec %q, emergency %q", tc.pinned, tc.value, h.execPath, h.emergency)
		}
	}
}
