package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/stage"
)

// The unit files in systemd/ run stages that exist, in the order UnitStages gives, and
// every unit the generator writes a FailureAction= for is there.
func TestUnitFiles(t *testing.T) {
	dir := "../../systemd"
	for _, unit := range UnitNames {
		b, err := os.ReadFile(filepath.Join(dir, unit))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		var exec string
		for _, l := range strings.Split(text, "\n") {
			if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
				exec = v
			}
		}
		args, ok := strings.CutPrefix(exec, "/usr/bin/cvmboot run ")
		if !ok {
			t.Errorf("%s: ExecStart=%q, want /usr/bin/cvmboot run STAGE...", unit, exec)
			continue
		}
		if _, err := stage.Select((&Boot{}).UnitStages(), strings.Fields(args)); err != nil {
			t.Errorf("%s: %v", unit, err)
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
	// The initrd units are ordered as the stages are.
	after := func(unit string) string {
		b, _ := os.ReadFile(filepath.Join(dir, unit))
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "After="); ok {
				return v
			}
		}
		return ""
	}
	for unit, deps := range map[string][]string{
		"cvmboot-verity.service":   {"cvmboot-attest.service"},
		"cvmboot-overlay.service":  {"sysroot.mount", "cvmboot-verity.service"},
		"cvmboot-storage.service":  {"cvmboot-overlay.service"},
		"cvmboot-evidence.service": {"cvmboot-verity.service", "cvmboot-overlay.service", "cvmboot-storage.service"},
	} {
		for _, d := range deps {
			if !strings.Contains(after(unit), d) {
				t.Errorf("%s is not After=%s", unit, d)
			}
		}
	}
}
