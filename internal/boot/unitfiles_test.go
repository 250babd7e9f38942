package boot

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdline"
)

// The unit files in systemd/ run the steps Sequence assigns them, in its order: together the
// initrd units run every step of a systemd-initrd boot, cvmboot-scratch-storage every step of
// a booted-system one; every unit the generator gives a FailureAction= is there.
func TestUnitFiles(t *testing.T) {
	dir := "../../systemd"
	read := func(unit, key string) string {
		b, err := os.ReadFile(filepath.Join(dir, unit))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, key+"="); ok {
				return v
			}
		}
		return ""
	}
	ran := map[Mode][]string{}
	for _, unit := range UnitNames {
		b, err := os.ReadFile(filepath.Join(dir, unit))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		args, ok := strings.CutPrefix(read(unit, "ExecStart"), "/usr/bin/cvmboot run ")
		if !ok {
			t.Errorf("%s: ExecStart=%q, want /usr/bin/cvmboot run STEP...", unit, read(unit, "ExecStart"))
			continue
		}
		mode := ModeSystemdInitrd
		if !strings.Contains(text, "\nConditionPathExists=/etc/initrd-release\n") {
			mode = ModeSystemd
		}
		steps, err := selectSteps(mode, strings.Fields(args))
		if err != nil {
			t.Errorf("%s: %v", unit, err)
		}
		for _, s := range steps {
			if mode == ModeSystemdInitrd && s.Unit != unit {
				t.Errorf("%s runs step %s, which Sequence gives to %s", unit, s.Name, s.Unit)
			}
			ran[mode] = append(ran[mode], s.Name)
		}
		for _, want := range []string{"DefaultDependencies=no", "Type=oneshot", "RemainAfterExit=yes"} {
			if !strings.Contains(text, "\n"+want+"\n") {
				t.Errorf("%s lacks %s", unit, want)
			}
		}
		if strings.Contains(text, "\nFailureAction=") {
			t.Errorf("%s sets FailureAction= itself: the generator owns it", unit)
		}
	}
	for _, mode := range []Mode{ModeSystemdInitrd, ModeSystemd} {
		var want []string
		for _, s := range StepsOf(mode) {
			want = append(want, s.Name)
		}
		if strings.Join(ran[mode], " ") != strings.Join(want, " ") {
			t.Errorf("the %s units run %v, the sequence is %v", mode, ran[mode], want)
		}
	}
	// The initrd units are ordered as the steps are.
	for unit, deps := range map[string][]string{
		"cvmboot-verity.service":          {"cvmboot-attest.service"},
		"cvmboot-persistent-root.service": {"cvmboot-verity.service"},
		"cvmboot-root.service":            {"sysroot.mount", "cvmboot-attest.service", "cvmboot-verity.service", "cvmboot-persistent-root.service"},
		"cvmboot-evidence.service":        {"cvmboot-verity.service", "cvmboot-persistent-root.service", "cvmboot-root.service"},
	} {
		for _, d := range deps {
			if !strings.Contains(read(unit, "After"), d) {
				t.Errorf("%s is not After=%s", unit, d)
			}
		}
	}
}

// The dracut module reads systemd.import_credentials as cmdline.ImportsCredentials does.
func TestDracutModuleImportsCredentials(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	for _, line := range []string{"ro", "a systemd.import_credentials=no", "systemd.import_credentials=no systemd.import_credentials=1",
		`systemd.import_credentials="off" x`, "systemd.import_credentials", "systemd.import_credentials=FALSE", "rd.systemd.import_credentials=no",
		"systemd.import_credentials=no systemd.import-credentials=yes", "systemd.import-credentials=no",
		"systemd.import_credentials=no -- systemd.import_credentials=yes", "-- systemd.import_credentials=no"} {
		c, err := cmdline.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		err = exec.Command(bash, "-c", `source ../../systemd/dracut/90cvmboot/module-setup.sh && cvmboot_imports_credentials "$1"`, "test", line).Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		if got := err == nil; got != c.ImportsCredentials() {
			t.Errorf("%q: the dracut module says imports=%v, cmdline.ImportsCredentials %v", line, got, c.ImportsCredentials())
		}
	}
}
