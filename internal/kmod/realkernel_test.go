package kmod

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// realModulesDir returns the modules directory of a real kernel named by
// CVMBOOT_TEST_KERNEL_MODULES (…/lib/modules/VERSION), or skips the test.
func realModulesDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CVMBOOT_TEST_KERNEL_MODULES")
	if dir == "" {
		t.Skip("CVMBOOT_TEST_KERNEL_MODULES is not set; set it to an unpacked kernel's lib/modules/VERSION to test against real modules")
	}
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("CVMBOOT_TEST_KERNEL_MODULES: %v", err)
	}
	return dir
}

func TestRealKernelClosure(t *testing.T) {
	dir := realModulesDir(t)
	ix, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d modules from %s, %d warnings", dir, ix.Len(), ix.Source, len(ix.Warnings))
	for _, w := range ix.Warnings {
		t.Log("warning:", w)
	}
	request := []string{"virtio_blk", "dm_verity", "dm_crypt", "dm_integrity", "overlay"}
	r, err := ix.Resolve(request)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load order for %q: %q", request, r.Names())
	t.Logf("built in: %q, missing soft: %q", r.Builtin, r.MissingSoft)
	checkOrder(t, ix, r.Modules)
	for _, want := range []string{"virtio", "virtio_ring", "dm_mod", "dm_bufio", "virtio_blk", "dm_verity", "dm_crypt", "dm_integrity", "overlay"} {
		if !slices.Contains(r.Names(), want) && !slices.Contains(r.Builtin, want) {
			t.Errorf("closure lacks %s", want)
		}
	}
	if _, err := ix.Resolve([]string{"ext4"}); err != nil {
		t.Errorf("ext4 (built in on Debian cloud kernels): %v", err)
	}
}

// TestRealKernelAgainstDepmod compares, for every module, the dependency closure from the
// .modinfo scan with the one depmod computes from symbols.
func TestRealKernelAgainstDepmod(t *testing.T) {
	dir := realModulesDir(t)
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
		t.Skip("the directory already has modules.dep; the scan comparison needs one without")
	}
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		t.Skip("depmod not installed (apt-get install kmod)")
	}
	version := filepath.Base(dir)
	base := t.TempDir()
	copyDir := filepath.Join(base, "lib", "modules", version)
	if err := os.MkdirAll(copyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// depmod follows a symlinked kernel/ directory, which spares copying ~100 MB.
	if err := os.Symlink(filepath.Join(dir, "kernel"), filepath.Join(copyDir, "kernel")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"modules.builtin", "modules.order", "modules.builtin.modinfo"} {
		if data, err := os.ReadFile(filepath.Join(dir, name)); err == nil {
			if err := os.WriteFile(filepath.Join(copyDir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, err := exec.Command(depmod, "-b", base, version).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}

	scan, err := OpenIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	dep, err := OpenIndex(copyDir)
	if err != nil {
		t.Fatal(err)
	}
	if dep.Source != SourceModulesDep {
		t.Fatalf("depmod index source %q", dep.Source)
	}
	if !slices.Equal(scan.Names(), dep.Names()) {
		t.Fatalf("scan found %d modules, depmod %d", scan.Len(), dep.Len())
	}
	differ := 0
	for _, name := range scan.Names() {
		a, errA := scan.Resolve([]string{name})
		b, errB := dep.Resolve([]string{name})
		if errA != nil || errB != nil {
			t.Errorf("%s: scan error %v, depmod error %v", name, errA, errB)
			continue
		}
		// Soft dependencies are resolved identically from both sources, so the sets match
		// exactly when the hard dependencies do.
		sa, sb := slices.Sorted(slices.Values(a.Names())), slices.Sorted(slices.Values(b.Names()))
		if !slices.Equal(sa, sb) {
			differ++
			if differ <= 5 {
				t.Errorf("%s: scan closure %q, depmod closure %q", name, sa, sb)
			}
		}
		checkOrder(t, dep, b.Modules)
	}
	t.Logf("compared the closure of %d modules with depmod: %d differ", scan.Len(), differ)
}
