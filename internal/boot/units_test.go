package boot

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// goodHash is a root hash the fake verity accepts.
var goodHash = "00" + strings.Repeat("ab", 31)

// unitHarness runs `cvmboot run` as the units do: one RunUnits call per unit, sharing the
// report file, the (fake) event log and the machine.
func unitHarness(t *testing.T, cmdline, configYAML string, m *fakeMachine, initrd bool) (*initHarness, *fakeAttest, *fakeStorage) {
	h := newInitHarness(t, cmdline, configYAML, m)
	att := &fakeAttest{present: true}
	fs := &fakeStorage{m: m}
	h.env.Attest, h.env.Verity = att, &fakeVerity{}
	h.env.Storage = func(_ config.Storage, root, targetRoot string) StorageSetup {
		m.calls = append(m.calls, "storage for "+root+" into "+targetRoot)
		fs.rootDevice = root
		return fs
	}
	h.env.InitrdRelease = filepath.Join(t.TempDir(), "initrd-release")
	if initrd {
		if err := os.WriteFile(h.env.InitrdRelease, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return h, att, fs
}

const unitsYAML = `
attest: {require: tpm}
storage: {enabled: true}
overlay: {enabled: true, size: 64MiB}
`

func TestUnitsInitrdSequence(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/mapper/root": "/dev/mapper/root"},
		mountedAt: map[string]string{NewRoot: "/dev/mapper/root"}}
	h, att, _ := unitHarness(t, "roothash="+goodHash+" root=/dev/mapper/root", unitsYAML, m, true)
	units := [][]string{{"modules", "attest", "initdata"}, {"verity"}, {"persistent-root"}, {"root", "storage", "overlay", "binds"}, {"evidence"}}
	for i, unit := range units {
		var stderr bytes.Buffer
		if code := RunUnits(h.env, unit, &stderr); code != 0 {
			t.Fatalf("cvmboot run %v: exit %d: %s", unit, code, stderr.String())
		}
		// The boot is running until its last unit has run: `cvmboot status` must not say ok
		// while a later unit has yet to start.
		rep, err := report.ReadFile(h.env.ReportPath)
		if err != nil {
			t.Fatal(err)
		}
		want := report.OutcomeRunning
		if i == len(units)-1 {
			want = report.OutcomeOK
		}
		if rep.Outcome != want {
			t.Errorf("after cvmboot run %v: outcome %q, want %q", unit, rep.Outcome, want)
		}
	}
	// The first unit's plan is what the later ones loaded.
	dec, err := readDecisions(h.env.DecisionsPath)
	if err != nil || dec.Plan == nil || dec.Plan.RootVolume == nil || dec.Plan.RootVolume.Name != "root" || dec.Plan.Mode != ModeSystemdInitrd {
		t.Errorf("decisions %+v %v", dec, err)
	}
	// Every unit's decision is in the one log, in unit order, bracketed by the phases.
	want := "cvmboot.phase:enter-initrd,cvmboot.config,cvmboot.cmdline,cvmboot.verity,cvmboot.storage,cvmboot.overlay,cvmboot.phase:leave-initrd,cvmboot.handoff"
	if got := strings.Join(att.measured, ","); got != want {
		t.Errorf("measured\n %s\nwant\n %s", got, want)
	}
	if !att.evidence {
		t.Error("no evidence taken")
	}
	calls := strings.Join(m.calls, "|")
	for _, c := range []string{"storage for /dev/mapper/root into /sysroot", "storage setup /dev/mapper/root|overlay /sysroot /run/cvmboot/overlay 67108864|storage into-root"} {
		if !strings.Contains(calls, c) {
			t.Errorf("calls lack %q: %v", c, m.calls)
		}
	}
	rep, err := report.ReadFile(h.env.ReportPath)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, st := range rep.Stages {
		names = append(names, st.Name+"="+string(st.Status))
	}
	if got := strings.Join(names, " "); got != "modules=skipped attest=ok initdata=skipped verity=ok persistent-root=skipped root=ok storage=ok overlay=ok binds=skipped evidence=ok" {
		t.Errorf("report stages %s", got)
	}
	if rep.Mode != "systemd-initrd" || rep.Outcome != report.OutcomeOK {
		t.Errorf("report mode %q outcome %q", rep.Mode, rep.Outcome)
	}
	if f := rep.Stage(StageVerity).Facts; f["root_device"] != "/dev/mapper/root" || f["root_data_device"] != "/dev/vda2" {
		t.Errorf("verity facts %v", f)
	}
}

// With usrhash= in a systemd initrd, the evidence unit (after initrd-fs.target) refuses a
// /sysroot/usr that is not the verified /dev/mapper/usr.
func TestUnitsSysrootUsr(t *testing.T) {
	usrHash := goodHash // the fake verity accepts this hash for any volume
	for _, tt := range []struct {
		name, usr, want string
	}{
		{"verified", "/dev/mapper/usr", ""},
		{"another partition", "/dev/vda5", "/sysroot/usr is mounted from /dev/vda5, not from the verified /dev/mapper/usr (usrhash=" + usrHash + ")"},
		{"not mounted", "", "nothing is mounted at /sysroot/usr"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMachine{devices: map[string]string{"/dev/mapper/root": "/dev/mapper/root"},
				mountedAt: map[string]string{NewRoot: "/dev/mapper/root", NewRoot + "/usr": tt.usr}}
			h, _, _ := unitHarness(t, "roothash="+goodHash+" usrhash="+usrHash+" root=/dev/mapper/root", unitsYAML, m, true)
			for _, unit := range [][]string{{"modules", "attest", "initdata"}, {"verity"}, {"persistent-root"}, {"root", "storage", "overlay", "binds"}} {
				var stderr bytes.Buffer
				if code := RunUnits(h.env, unit, &stderr); code != 0 {
					t.Fatalf("cvmboot run %v: exit %d: %s", unit, code, stderr.String())
				}
			}
			var stderr bytes.Buffer
			code := RunUnits(h.env, []string{"evidence"}, &stderr)
			if tt.want == "" {
				if code != 0 {
					t.Fatalf("evidence: exit %d: %s", code, stderr.String())
				}
				return
			}
			if code != 1 || !strings.Contains(strings.Join(h.emergency, "\n"), tt.want) {
				t.Errorf("evidence: exit %d, emergency lines:\n%s\nwant %q", code, strings.Join(h.emergency, "\n"), tt.want)
			}
		})
	}
}

func TestUnitsFailClosed(t *testing.T) {
	t.Run("verity mismatch", func(t *testing.T) {
		m := &fakeMachine{}
		h, _, _ := unitHarness(t, "roothash="+strings.Repeat("ff", 32), "failure: {action: reboot}\nattest: {require: none}\n", m, true)
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"verity"}, &stderr); code != 1 {
			t.Fatalf("exit %d", code)
		}
		em := strings.Join(h.emergency, "\n")
		if !strings.Contains(em, "cvmboot: FATAL: stage verity failed: dm-verity root: hash device /dev/vda3") ||
			!strings.Contains(em, "cvmboot: failure action: reboot (FailureAction=reboot-force)") {
			t.Errorf("emergency lines:\n%s", em)
		}
		rep, err := report.ReadFile(h.env.ReportPath)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Outcome != report.OutcomeFailed || rep.Failure == nil || rep.Failure.Stage != StageVerity || rep.Failure.Action != "reboot" {
			t.Errorf("report outcome %q failure %+v", rep.Outcome, rep.Failure)
		}
	})
	t.Run("attest unit missing while a platform is required", func(t *testing.T) {
		m := &fakeMachine{}
		h, att, _ := unitHarness(t, "roothash="+goodHash, "attest: {require: tpm}\n", m, true)
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"verity"}, &stderr); code != 1 {
			t.Fatalf("exit %d", code)
		}
		if !strings.Contains(stderr.String(), "attest.require is tpm but no attest step ran in this boot") {
			t.Errorf("stderr %s", stderr.String())
		}
		if len(att.measured) != 0 {
			t.Errorf("measured %v", att.measured)
		}
	})
	t.Run("root unit before sysroot.mount", func(t *testing.T) {
		m := &fakeMachine{}
		h, _, _ := unitHarness(t, "root=/dev/vda2", "", m, true)
		h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: none}\noverlay: {enabled: true}\n")
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"root", "storage", "overlay", "binds"}, &stderr); code != 1 ||
			!strings.Contains(stderr.String(), "nothing is mounted at /sysroot: the root step must run after sysroot.mount") {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	t.Run("sysroot is not the verified root", func(t *testing.T) {
		// roothash= with root=PARTUUID=…: systemd mounted the unverified partition.
		m := &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/vda2"}}
		h, att, _ := unitHarness(t, "roothash="+goodHash+" root=PARTUUID=0000", "attest: {require: tpm}\n", m, true)
		for _, unit := range [][]string{{"modules", "attest", "initdata"}, {"verity"}} {
			if code := RunUnits(h.env, unit, &bytes.Buffer{}); code != 0 {
				t.Fatalf("%v: exit %d", unit, code)
			}
		}
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"root", "storage", "overlay", "binds"}, &stderr); code != 1 ||
			!strings.Contains(stderr.String(), "stage root failed: /sysroot is mounted from /dev/vda2, not from the verified /dev/mapper/root (roothash="+goodHash+")") {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
		if strings.Contains(strings.Join(att.measured, ","), "cvmboot.storage") {
			t.Errorf("the boot went on: %v", att.measured)
		}
	})
	t.Run("overlay in the booted system", func(t *testing.T) {
		m := &fakeMachine{}
		h, _, _ := unitHarness(t, "root=/dev/vda2", "", m, false)
		h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: none}\noverlay: {enabled: true}\n")
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"overlay"}, &stderr); code != 2 || !strings.Contains(stderr.String(), `step "overlay" is not part of a boot in systemd mode`) {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
}

// With the storage before the overlay in one unit, the upper layer can be the storage in a
// systemd initrd as it is for PID 1.
func TestUnitsOverlayOnStorage(t *testing.T) {
	m := &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/vda2"}, devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	h, _, _ := unitHarness(t, "root=/dev/vda2", "", m, true)
	h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: none}\noverlay: {enabled: true, upper: storage}\nstorage: {enabled: true}\n")
	var stderr bytes.Buffer
	if code := RunUnits(h.env, []string{"root", "storage", "overlay", "binds"}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if calls := strings.Join(m.calls, "|"); !strings.Contains(calls, "storage setup /dev/vda2|overlay /sysroot /run/kata-containers/image/.cvmboot-root-overlay |storage into-root") {
		t.Errorf("calls %v", m.calls)
	}
}

func TestUnitsBootedStorage(t *testing.T) {
	// An image that keeps its own initrd: the root is whatever / is mounted from.
	m := &fakeMachine{mountedAt: map[string]string{"/": "/dev/sda1"}}
	h, att, _ := unitHarness(t, "quiet", "", m, false)
	h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: none}\nstorage: {enabled: true}\n")
	var stderr bytes.Buffer
	if code := RunUnits(h.env, []string{"root", "storage", "binds"}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if calls := strings.Join(m.calls, "|"); !strings.Contains(calls, "storage for /dev/sda1 into |storage setup /dev/sda1|storage into-root") {
		t.Errorf("calls %v", m.calls)
	}
	if len(att.measured) != 0 {
		t.Errorf("measured without an attest stage and attest.require none: %v", att.measured)
	}
	rep, _ := report.ReadFile(h.env.ReportPath)
	if rep == nil || rep.Mode != "systemd" {
		t.Errorf("report %+v", rep)
	}
}

func TestGenerate(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"failure: {action: reboot}\n", "FailureAction=reboot-force"},
		{"failure: {action: halt}\n", "FailureAction=halt-force"},
		{"failure: {action: panic}\n", "FailureAction=poweroff-immediate"},
		{"failure: {action: shell}\n", "FailureAction=poweroff-force"}, // a shell needs debug.enabled
		{"failure: {action: shell}\ndebug: {enabled: true}\n", "FailureAction=none"},
		{"", "FailureAction=poweroff-force"},
		{"failure: {action: reboot\n", "FailureAction=poweroff-force"}, // unreadable: the secure default
	} {
		h := newInitHarness(t, "quiet", tt.yaml, &fakeMachine{})
		dir := t.TempDir()
		var stderr bytes.Buffer
		if err := Generate(h.env, dir, &stderr); err != nil {
			t.Fatal(err)
		}
		for _, unit := range UnitNames {
			b, err := os.ReadFile(filepath.Join(dir, unit+".d", GeneratorDropIn))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "[Unit]\n"+tt.want+"\n") {
				t.Errorf("%q: %s drop-in:\n%s", tt.yaml, unit, b)
			}
		}
	}
	if got := SystemdFailureAction(failaction.Poweroff); got != "poweroff-force" {
		t.Errorf("poweroff → %s", got)
	}
}

// With root.persistent the generator orders dracut's initqueue after the conversion, whose
// copy may outlast the initqueue's wait for root=; without it, it leaves the initqueue alone.
func TestGenerateOrdersInitqueueAfterPersistentRoot(t *testing.T) {
	for _, tt := range []struct {
		yaml string
		want bool
	}{
		{"root: {persistent: encrypt-on-first-boot}\nstorage: {enabled: false}\n", true},
		{"", false},
		{"root: {persistent: encrypt-on-first-boot\n", false}, // unreadable: the units fail closed anyway
	} {
		h := newInitHarness(t, "quiet", tt.yaml, &fakeMachine{})
		dir := t.TempDir()
		if err := Generate(h.env, dir, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, InitqueueDropIn))
		switch {
		case tt.want && (err != nil || !strings.Contains(string(b), "[Unit]\nAfter=cvmboot-persistent-root.service\n")):
			t.Errorf("%q: %v %s", tt.yaml, err, b)
		case !tt.want && err == nil:
			t.Errorf("%q: the initqueue is ordered after the persistent root: %s", tt.yaml, b)
		}
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnitsBootedStorageMeasured(t *testing.T) {
	m := &fakeMachine{mountedAt: map[string]string{"/": "/dev/sda1"}}
	h, att, _ := unitHarness(t, "quiet", "", m, false)
	h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: tpm}\nstorage: {enabled: true}\n")
	var stderr bytes.Buffer
	if code := RunUnits(h.env, []string{"modules", "attest", "initdata", "root", "storage", "binds"}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	// Past the initrd: no phase event, the decisions only.
	if got := strings.Join(att.measured, ","); got != "cvmboot.config,cvmboot.cmdline,cvmboot.storage" {
		t.Errorf("measured %s", got)
	}
	// The storage unit is the booted system's only one: its end is the boot's.
	if rep, err := report.ReadFile(h.env.ReportPath); err != nil || rep.Outcome != report.OutcomeOK {
		t.Errorf("report %+v %v", rep, err)
	}
}

// Features turned off are decisions too: measured by their units, with nothing mounted.
func TestUnitsDisabledFeaturesMeasured(t *testing.T) {
	m := &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/vda2"}}
	h, att, _ := unitHarness(t, "quiet", "", m, true)
	h.env.ConfigPath = writeTemp(t, "verity: {required: false}\nattest: {require: tpm}\nstorage: {enabled: false}\noverlay: {enabled: false}\n")
	for _, unit := range [][]string{{"attest"}, {"root", "storage", "overlay", "binds"}} {
		var stderr bytes.Buffer
		if code := RunUnits(h.env, unit, &stderr); code != 0 {
			t.Fatalf("cvmboot run %v: exit %d: %s", unit, code, stderr.String())
		}
	}
	if got := strings.Join(att.measured, ","); got != "cvmboot.phase:enter-initrd,cvmboot.config,cvmboot.cmdline,cvmboot.storage,cvmboot.overlay" {
		t.Errorf("measured %s", got)
	}
}

// Later units take the plan the first unit resolved, and only for the command line and config
// it was resolved from: decisions made from another are refused.
func TestUnitsLoadThePlan(t *testing.T) {
	m := &fakeMachine{}
	h, _, _ := unitHarness(t, "roothash="+goodHash, "attest: {require: none}\n", m, true)
	if code := RunUnits(h.env, []string{"modules", "attest", "initdata"}, &bytes.Buffer{}); code != 0 {
		t.Fatalf("attest unit: exit %d", code)
	}
	if err := os.WriteFile(h.env.CmdlinePath, []byte("quiet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := RunUnits(h.env, []string{"verity"}, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "stage plan failed: the decisions of earlier units") {
		t.Fatalf("verity unit with another command line: exit %d: %s", code, stderr.String())
	}
	if v := h.env.Verity.(*fakeVerity); len(v.activated) != 0 {
		t.Errorf("activated %v", v.activated)
	}
}

// A decisions file cannot make a later unit skip what the config requires or what the plan
// names: a required TPM is opened again, a planned verity root must have been activated, and
// the evidence step refuses a boot that skipped a step.
func TestUnitsDecisionsCannotWaive(t *testing.T) {
	t.Run("measuring off in the file", func(t *testing.T) {
		m := &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/vda2"}}
		h, att, _ := unitHarness(t, "root=/dev/vda2", "verity: {required: false}\nattest: {require: tpm}\nstorage: {enabled: false}\n", m, true)
		if code := RunUnits(h.env, []string{"modules", "attest", "initdata"}, &bytes.Buffer{}); code != 0 {
			t.Fatal("attest unit failed")
		}
		dec, _ := readDecisions(h.env.DecisionsPath)
		dec.Measuring = false
		if err := dec.write(h.env.DecisionsPath); err != nil {
			t.Fatal(err)
		}
		if code := RunUnits(h.env, []string{"verity"}, &bytes.Buffer{}); code != 0 {
			t.Fatal("verity unit failed")
		}
		if code := RunUnits(h.env, []string{"root", "storage", "overlay", "binds"}, &bytes.Buffer{}); code != 0 {
			t.Fatal("root unit failed")
		}
		if got := strings.Join(att.measured, ","); !strings.Contains(got, "cvmboot.storage,cvmboot.overlay") {
			t.Errorf("decisions went unmeasured: %s", got)
		}
	})
	t.Run("planned verity root not activated", func(t *testing.T) {
		m := &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/sda2"}}
		h, _, _ := unitHarness(t, "roothash="+goodHash, "attest: {require: none}\n", m, true)
		if code := RunUnits(h.env, []string{"modules", "attest", "initdata"}, &bytes.Buffer{}); code != 0 {
			t.Fatal("attest unit failed")
		}
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"root", "storage", "overlay", "binds"}, &stderr); code != 1 ||
			!strings.Contains(stderr.String(), "no verity step activated it in this boot") {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
	t.Run("evidence after a skipped unit", func(t *testing.T) {
		m := &fakeMachine{}
		h, att, _ := unitHarness(t, "root=/dev/vda2", "verity: {required: false}\nattest: {require: tpm}\n", m, true)
		if code := RunUnits(h.env, []string{"modules", "attest", "initdata"}, &bytes.Buffer{}); code != 0 {
			t.Fatal("attest unit failed")
		}
		var stderr bytes.Buffer
		if code := RunUnits(h.env, []string{"evidence"}, &stderr); code != 1 ||
			!strings.Contains(stderr.String(), "the steps verity, persistent-root, root, storage, overlay, binds did not run in this boot") {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
		if att.evidence {
			t.Error("evidence taken")
		}
		rep, _ := report.ReadFile(h.env.ReportPath)
		if rep == nil || rep.Outcome != report.OutcomeFailed {
			t.Errorf("report %+v", rep)
		}
	})
}
