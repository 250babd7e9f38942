package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The README's "cvmboot as PID 1" recipe, run as written: the script between its recipe
// markers builds the disk from the tiny root with standard tools, and the disk must boot with
// every feature of the defaults on (verity, storage, overlay, measurements on the vTPM).
func recipeScenarios() []scenario {
	sc := func(name string, ukify bool) scenario {
		return scenario{
			name: name, root: rootTiny,
			build: func(t *testing.T, e *env, tree, work string) (*harness.Image, error) {
				return buildFromREADME(t, e, tree, work, ukify)
			},
			expect: []string{`stage ok stage=verity`, `encrypted storage ready`, `stage ok stage=overlay`,
				`cvmboot\[1\]: measured event=cvmboot.verity .*pcr=15`, `ROOTCHECK: DONE pass=\d+ fail=0`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
		}
	}
	// The UKI from objcopy on Debian 12's stub, and from ukify 257 on stub 257 (Debian 13's),
	// which passes the kernel its .initrd and a cpio of its .osrel: the reference values
	// predict that initrd, and the verifier accepts the boot's evidence.
	withUkify := sc("readme-recipe-ukify", true)
	withUkify.after = verifiedStub257
	return []scenario{sc("readme-recipe", false), withUkify}
}

// readmeRecipe returns the shell script between the README's recipe markers.
func readmeRecipe() (string, error) {
	repo, err := harness.RepoRoot()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile("(?s)<!-- recipe:begin -->\n```sh\n(.*?)```\n<!-- recipe:end -->").FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("README.md has no recipe between <!-- recipe:begin --> and <!-- recipe:end -->")
	}
	return string(m[1]), nil
}

func buildFromREADME(t *testing.T, e *env, tree, work string, ukify bool) (*harness.Image, error) {
	script, err := readmeRecipe()
	if err != nil {
		return nil, err
	}
	repo, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	out := filepath.Join(work, "out")
	cmd := exec.CommandContext(context.Background(), "sh", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "ROOT="+tree, "KERNEL="+e.kernel.Vmlinuz, "MODULES="+e.kernel.ModulesDir,
		"CVMBOOT="+filepath.Join(repo, "bin", "cvmboot"), "OUT="+out, "UKIFY=",
		// The overlay makes / writable: rootcheck is told so.
		"EXTRA_CMDLINE=rootcheck.expect=root:rw rootcheck.dump=/run/cvmboot/evidence")
	if ukify {
		u, stub, err := e.cache.Ukify(context.Background(), func(f string, a ...any) { t.Logf(f, a...) })
		if err != nil {
			return nil, err
		}
		cmd.Env = append(cmd.Env, "UKIFY="+u, "STUB="+stub)
	}
	o, err := cmd.CombinedOutput()
	t.Logf("README recipe:\n%s", o)
	if err != nil {
		return nil, fmt.Errorf("the README's recipe failed: %v\n%s", err, o)
	}
	hash := regexp.MustCompile(`root hash ([0-9a-f]{64})`).FindStringSubmatch(string(o))
	if hash == nil {
		return nil, fmt.Errorf("the README's recipe printed no root hash:\n%s", o)
	}
	fi, err := os.Stat(filepath.Join(out, "disk.raw"))
	if err != nil {
		return nil, err
	}
	cl, _ := os.ReadFile(filepath.Join(out, "cmdline"))
	return &harness.Image{Disk: &harness.DiskImage{Path: filepath.Join(out, "disk.raw"), Size: fi.Size(), RootHash: hash[1]},
		UKI: filepath.Join(out, "BOOTX64.EFI"), Initramfs: filepath.Join(out, "initramfs.img"), RootHash: hash[1],
		Cmdline: strings.TrimSpace(string(cl))}, nil
}

// verifiedStub257 verifies the boot's evidence against its UKI (stub 257): the kernel's
// initrd event in PCR 9 is the initrd the reference values predict, and the chain holds.
func verifiedStub257(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
	files, err := harness.ExtractFiles(boot.Serial)
	if err != nil {
		return []string{err.Error()}
	}
	dir, err := guestEvidenceDir(t, files)
	if err != nil {
		return []string{err.Error()}
	}
	host, err := hostVerifier()
	if err != nil {
		return []string{err.Error()}
	}
	ref, err := referenceValues(img.UKI)
	if err != nil {
		return []string{err.Error()}
	}
	if ref.Stub.Major != 257 || ref.PCR9.Initrd == "" || ref.PCR9.Value == "" {
		return []string{fmt.Sprintf("reference values of the ukify UKI: stub %d, pcr9 %+v; want stub 257 with its initrd predicted", ref.Stub.Major, ref.PCR9)}
	}
	cmd := exec.Command(host, "evidence", "verify", dir, "--allow-unsigned=tpm", "--expect-uki", img.UKI, "--expect-roothash", img.RootHash)
	out, _ := cmd.CombinedOutput()
	t.Logf("evidence verify (stub 257): exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	var problems []string
	if cmd.ProcessState.ExitCode() != 0 {
		problems = append(problems, fmt.Sprintf("the evidence of the stub-257 boot was refused: exit %d\n%s", cmd.ProcessState.ExitCode(), out))
	}
	for _, claim := range []string{"UKI: PCR 9 " + ref.PCR9.Value + " (as expected: its command line as load options, then its initrd)",
		"uki          holds"} {
		if !strings.Contains(string(out), claim) {
			problems = append(problems, fmt.Sprintf("verifier output lacks the claim %q", claim))
		}
	}
	return problems
}
