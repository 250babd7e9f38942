// Package e2e boots real cvmboot images under qemu (OVMF, swtpm, UKI on a GPT
// disk) and checks what the serial console shows. It only runs with
// CVMBOOT_E2E=1 so that `go test ./...` stays a unit test run.
//
//	CVMBOOT_E2E=1 go test ./test/e2e -run 'TestE2E/plain-tiny-root' -v
//
// Environment:
//
//	CVMBOOT_E2E_ACCEL=kvm|tcg          skip the KVM probe
//	CVMBOOT_E2E_STREAM=1               copy every console line to the test log
//	CVMBOOT_CACHE                      cache directory (kernel, root trees)
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/pkg/reference"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// rootKind picks the root tree of a scenario.
type rootKind string

const (
	rootTiny   rootKind = "tiny"   // rootcheck as /sbin/init
	rootDebian rootKind = "debian" // debootstrap bookworm with systemd
)

// outcome is how a scenario must end.
type outcome string

const (
	// bootedAndChecked: the root's init ran its checks and powered off.
	bootedAndChecked outcome = "booted-and-checked"
	// failureAction: the initramfs stopped with a FATAL line and ran its
	// failure action (poweroff); the root's init never ran.
	failureAction outcome = "failure-action"
	// killedMidway: the host killed qemu while the boot ran (killOn); the scenario's after
	// hook then proves that the next boot recovers.
	killedMidway outcome = "killed-midway"
	// kernelPanic: the kernel stopped the boot (dm-verity's panic-on-corruption policy on a
	// block read at run time); the scenario's command line carries panic=-1 so the guest
	// resets at once and qemu (-no-reboot) exits.
	kernelPanic outcome = "kernel-panic"
)

// badPartUUID names a partition that exists on no disk.
const badPartUUID = "0badc0de-0000-4000-8000-00000000dead"

type scenario struct {
	name string
	root rootKind
	// recipe adjusts the default disk recipe (nil: defaults).
	recipe func(r *harness.DiskRecipe)
	// cmdline is appended to "console=ttyS0"; {rootpartuuid} and
	// {badpartuuid} are substituted.
	cmdline string
	config  string   // cvmboot config YAML
	modules []string // harness.DefaultModules when nil
	// expect and reject are regular expressions matched against the whole
	// serial log ((?m) is implied); {fatal} becomes "cvmboot: FATAL",
	// {rootpartuuid} and {badpartuuid} the quoted UUIDs.
	expect  []string
	reject  []string
	outcome outcome
	// exit, when set, is how qemu must end instead of the outcome's usual way (a failure
	// action of reboot: rebooted).
	exit      harness.ExitReason
	timeLimit time.Duration
	// initOverride forces an init kind regardless of CVMBOOT_E2E_INIT.
	initOverride harness.InitKind
	// after runs host-side checks on a boot that passed the serial checks (e.g. verifying
	// the evidence the guest printed); it returns problems.
	after func(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string
	// image changes the built image before the boot (a hostile host's edits).
	image func(img *harness.Image) error
	// onLine sees every console line while the guest runs (the host's side of a scenario,
	// such as tampering with the disk image when the guest says where).
	onLine func(t *testing.T, line string, img *harness.Image)
	// testhook boots a cvmboot built with the cvmboot_testhook tag, which reveals the
	// storage volume key in /run/cvmboot-test so the scenario can search for it.
	testhook  bool
	memoryMiB int // 1024 when 0
	// killOn, a regular expression, makes the host kill qemu at a random moment within
	// killWithin of the first console line it matches — and at once when a line matches
	// killBy first, so the kill always lands before the step killBy marks, however fast
	// the machine runs.
	killOn     string
	killWithin time.Duration
	killBy     string
	// debianPackages are installed in the Debian root on top of DefaultDebianInclude (a
	// root cached of its own).
	debianPackages []string
	// loadOptions, when set, boots the UKI the way a host's boot entry does, with these load
	// options (harness.ImageSpec.LoadOptions); placeholders as in cmdline.
	loadOptions string
	// unpinned builds the initramfs with --no-cmdline-pin.
	unpinned bool
	// importCredentials leaves systemd.import_credentials=no (which every other scenario's
	// command line carries, as the README asks of images) off the command line.
	importCredentials bool
	// qemuArgs are more qemu arguments: what the host adds to the VM's configuration.
	qemuArgs []string
	// build, when set, makes the image instead of harness.BuildImage (from the root tree, in
	// work): the README's recipe.
	build func(t *testing.T, e *env, tree, work string) (*harness.Image, error)
	// initdata, when set, is a second virtio disk (/dev/vdb) holding these bytes, read-only:
	// kata's initdata block device.
	initdata []byte
	// shellPrelude are UEFI shell commands run before the UKI (with loadOptions).
	shellPrelude []string
	// initramfs, when set, makes the scenario's initramfs from the prepared root tree (after
	// recipe), instead of `cvmboot initramfs`: a systemd initrd built by dracut. It may change
	// the tree; the initramfs itself is built by the function it returns, once the UKI's
	// command line is known (for its pin).
	initramfs func(t *testing.T, e *env, tree, work string) (func(cmdline string) (string, error), error)
}

// cfg is a scenario's config file: the defaults (config.Default, the secure ones) with the
// edits applied, written with every key (config.Config's MarshalYAML), so that a scenario
// says in Go what it changes and the file is what the boot's strict parser reads.
func cfg(edits ...func(c *config.Config)) string {
	c := config.Default()
	for _, e := range edits {
		e(c)
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		panic("e2e config: " + err.Error())
	}
	return string(b)
}

// Edits of the default config the scenarios share.
var (
	// noVerity allows a plain root=, which these scenarios boot.
	noVerity = func(c *config.Config) { c.Verity.Required = false }
	// tpm: a plain qemu guest has no TEE, its TPM is swtpm's.
	tpm       = func(c *config.Config) { c.Attest.Require = config.AttestTPM }
	noStorage = func(c *config.Config) { c.Storage.Enabled = false }
	// noOverlay keeps the root read-only, so the read-only checks mean something.
	noOverlay = func(c *config.Config) { c.Overlay.Enabled = false }
	// overlay256 gives systemd a writable root: a 256 MiB tmpfs over the read-only one.
	overlay256 = func(c *config.Config) {
		c.Overlay.Enabled = true
		c.Overlay.Size = mustSizeOrPercent("256MiB")
	}
)

func mustSizeOrPercent(s string) config.SizeOrPercent {
	v, err := config.ParseSizeOrPercent(s)
	if err != nil {
		panic(err)
	}
	return v
}

// plainConfig: a plain root, the TPM, no storage, no overlay.
var plainConfig = cfg(noVerity, tpm, noStorage, noOverlay)

// debianConfig: a Debian root with a tmpfs overlay.
var debianConfig = cfg(noVerity, tpm, noStorage, overlay256)

// allScenarios is every scenario `make e2e` boots, in this order: one table of the groups
// each file declares.
func allScenarios() []scenario {
	return slices.Concat(coreScenarios, cmdlineScenarios(), matrixScenarios(), serveScenarios(), storageScenarios(),
		overlayOnStorageScenarios(), dracutScenarios(), scratchStorageScenarios(), verityScenarios(), debianVerityScenarios(),
		initdataScenarios(), recipeScenarios(), mkosiScenarios(), persistentScenarios())
}

// coreScenarios: the plain boots, firmware to init, and the basic refusals.
var coreScenarios = []scenario{
	{
		name:         "uefi-tpm-chain",
		root:         rootTiny,
		cmdline:      "rootcheck.mode=initrd",
		initOverride: harness.InitRootcheck,
		expect: []string{`ROOTCHECK: ok uefi`, `ROOTCHECK: ok tpm-device`, `ROOTCHECK: ok tpm-eventlog`,
			`ROOTCHECK: DONE pass=\d+ fail=0`},
		reject:    []string{`ROOTCHECK: FAIL`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 3 * time.Minute,
	},
	{
		name: "plain-tiny-root",
		root: rootTiny,
		// The boot measured into swtpm and left its event log and evidence in /run.
		cmdline: "root=PARTUUID={rootpartuuid} rootcheck.expect=file:/run/cvmboot/eventlog,file:/run/cvmboot/evidence/evidence.json",
		config:  plainConfig,
		expect: []string{`ROOTCHECK: ok pid1`, `ROOTCHECK: ok report`, `ROOTCHECK: REPORT BEGIN`,
			`ROOTCHECK: ok initramfs-gone`, `ROOTCHECK: ok expect:file:/run/cvmboot/evidence/evidence.json`,
			`cvmboot\[1\]: kernel command line matches the pinned one pin=/etc/cvmboot/cmdline sha256=sha256:[0-9a-f]{64}`,
			`cvmboot\[1\]: measured event=cvmboot.phase .*pcr=11`, `cvmboot\[1\]: measured event=cvmboot.config .*pcr=15`, `ROOTCHECK: DONE pass=\d+ fail=0`},
		reject:    []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 3 * time.Minute,
	},
	{
		// The guest's evidence, taken out through the console, verifies on the host with the
		// real verifier given the very UKI file: the firmware log replays, the UKI's
		// Authenticode, PCR 11 and command line are as expected. Without reference values the
		// chain lacks its UKI link and fails; an edited event, firmware log or nonce is
		// rejected, naming the mismatch.
		name:      "evidence-uki-chain",
		root:      rootTiny,
		recipe:    func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} },
		cmdline:   "roothash={roothash} rootcheck.dump=/run/cvmboot/evidence",
		config:    cfg(tpm, noStorage, noOverlay),
		expect:    []string{`ROOTCHECK: FILE END /run/cvmboot/evidence/evidence.json`, `ROOTCHECK: DONE pass=\d+ fail=0`},
		reject:    []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 3 * time.Minute,
		after:     verifyEvidence,
	},
	{
		// The host boots the same disk with a UKI whose initramfs is not cvmboot: a program
		// that writes a cvmboot-shaped log claiming the genuine root hash, extends the TPM to
		// match and takes evidence with cvmboot's own code, never setting up dm-verity. The
		// verifier, given the genuine UKI, refuses and names PCR 4 and 11.
		name:         "forged-initramfs",
		root:         rootTiny,
		recipe:       func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} },
		initOverride: harness.InitRootcheck,
		cmdline:      "roothash={roothash} rootcheck.mode=forge rootcheck.dump=/run/cvmboot/evidence",
		config:       cfg(tpm, noStorage, noOverlay),
		expect:       []string{`ROOTCHECK: ok forge`, `ROOTCHECK: FILE END /run/cvmboot/evidence/evidence.json`, `ROOTCHECK: DONE pass=\d+ fail=0`},
		reject:       []string{`ROOTCHECK: FAIL`, `Kernel panic`},
		outcome:      bootedAndChecked,
		timeLimit:    3 * time.Minute,
		after:        verifyForgedEvidence,
	},
	{
		name:    "debian-multi-user",
		root:    rootDebian,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config:  debianConfig,
		expect: []string{`E2E-CHECK: BEGIN`, `E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
			`E2E-CHECK: root=overlay overlay rw,.*upperdir=/run/cvmboot/overlay/upper`, `E2E-CHECK: write=ok`, `E2E-CHECK: report=present`,
			`E2E-CHECK: analyze=Startup finished in .* \(kernel\) \+ .* \(initrd\) \+ .* \(userspace\)`,
			`E2E-CHECK: fill=No space left on device`, `E2E-CHECK: after-fill=running`, `E2E-CHECK: DONE`},
		reject:    []string{`{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 5 * time.Minute,
	},
	{
		name:      "root-never-appears",
		root:      rootTiny,
		cmdline:   "root=PARTUUID={badpartuuid}",
		config:    cfg(noVerity, tpm, noStorage, noOverlay, func(c *config.Config) { c.Devices.Timeout = config.Duration(5 * time.Second) }),
		expect:    []string{`(?i){fatal}.*PARTUUID={badpartuuid}`},
		reject:    []string{`ROOTCHECK:`, `Kernel panic`},
		outcome:   failureAction,
		timeLimit: 3 * time.Minute,
	},
	{
		name:      "missing-init",
		root:      rootTiny,
		cmdline:   "root=PARTUUID={rootpartuuid} init=/sbin/nonexistent",
		config:    plainConfig,
		expect:    []string{`{fatal}.*/sbin/nonexistent`},
		reject:    []string{`ROOTCHECK:`, `Kernel panic`},
		outcome:   failureAction,
		timeLimit: 3 * time.Minute,
	},
}

// env is built once per test process and shared by the scenarios.
type env struct {
	cache    *harness.Cache
	kernel   *harness.Kernel
	accel    harness.Accel
	tools    *harness.Tools
	tinyRoot string

	debianMu sync.Mutex
	debian   map[string]*harness.DebianRoot // by the extra packages

	cvmbootErr error // why cvmboot could not be built; scenarios needing it fail with it

	testhookOnce sync.Once
	testhook     string // cvmboot built with the cvmboot_testhook tag
	testhookErr  error
}

// testhookCvmboot builds cvmboot with the cvmboot_testhook tag once per test process.
func (e *env) testhookCvmboot() (string, error) {
	e.testhookOnce.Do(func() {
		e.testhook = e.cache.Path("bin", "cvmboot-testhook")
		e.testhookErr = harness.GoBuild(context.Background(), "./cmd/cvmboot", e.testhook, "cvmboot_testhook")
	})
	return e.testhook, e.testhookErr
}

var (
	envOnce   sync.Once
	sharedEnv *env
	envErr    error
)

func setup(t *testing.T) *env {
	t.Helper()
	envOnce.Do(func() { sharedEnv, envErr = newEnv(t) })
	if envErr != nil {
		t.Fatalf("e2e setup: %v", envErr)
	}
	return sharedEnv
}

func newEnv(t *testing.T) (*env, error) {
	ctx := context.Background()
	logf := harness.Logf(t.Logf)
	e := &env{}
	var err error
	if e.cache, err = harness.OpenCache(); err != nil {
		return nil, err
	}
	start := time.Now()
	if e.kernel, err = e.cache.Kernel(ctx, logf); err != nil {
		return nil, err
	}
	if e.accel, err = e.cache.DetectAccel(ctx, e.kernel, logf); err != nil {
		return nil, err
	}
	if e.tools, err = e.cache.BuildTools(ctx, false); err != nil {
		return nil, err
	}
	e.buildCvmboot(ctx, t)
	if e.tinyRoot, err = e.cache.TinyRoot(ctx); err != nil {
		return nil, err
	}
	t.Logf("e2e setup: kernel %s, accel %s, cache %s (%s)",
		e.kernel.Version, e.accel, e.cache.Dir, time.Since(start).Round(time.Millisecond))
	if ms, err := harness.LoadModules(e.kernel.ModulesDir); err == nil {
		var builtin []string
		for _, m := range []string{"virtio_pci", "virtio_blk", "dm_mod", "dm_verity", "dm_crypt", "dm_integrity", "overlay", "ext4", "tpm_crb"} {
			if ms.Builtin(m) {
				builtin = append(builtin, m)
			}
		}
		t.Logf("e2e setup: built into %s: %s", e.kernel.Version, strings.Join(builtin, " "))
	}
	return e, nil
}

// buildCvmboot builds bin/cvmboot; a build failure fails the scenarios that need it
// (scenarios with their own init still run).
func (e *env) buildCvmboot(ctx context.Context, t *testing.T) {
	start := time.Now()
	bin, err := harness.BuildCvmboot(ctx)
	if err != nil {
		e.cvmbootErr = err
		t.Logf("e2e setup: cvmboot does not build; its scenarios will fail: %v", err)
		return
	}
	e.tools.Cvmboot = bin
	t.Logf("e2e setup: built %s (%s)", bin, time.Since(start).Round(time.Millisecond))
}

func (e *env) debianRoot(t *testing.T, extra ...string) (*harness.DebianRoot, error) {
	e.debianMu.Lock()
	defer e.debianMu.Unlock()
	key := strings.Join(extra, ",")
	if r, ok := e.debian[key]; ok {
		return r, nil
	}
	spec := harness.DebianSpec{}
	if len(extra) > 0 {
		spec.Include = append(append([]string(nil), harness.DefaultDebianInclude...), extra...)
	}
	r, err := e.cache.DebianRoot(context.Background(), spec, harness.Logf(t.Logf))
	if err != nil {
		return nil, err
	}
	state := "built now"
	if r.Cached {
		state = "cached"
	}
	t.Logf("debian root (+%s): %s, debootstrap+setup took %s when built, %d MiB", key, state,
		r.BuildTime.Round(time.Second), r.SizeBytes/harness.MiB)
	if e.debian == nil {
		e.debian = map[string]*harness.DebianRoot{}
	}
	e.debian[key] = r
	return r, nil
}

// result is one scenario's line in the summary.
type result struct {
	name     string
	status   string
	reason   harness.ExitReason
	duration time.Duration // the qemu boot only
	total    time.Duration // including image build
	// firmware: the firmware log rootcheck printed equals the UKI's reference values
	firmware bool
	// failure: the problems and the console's last lines, repeated after the summary so
	// that a CI excerpt, which shows the end of the output, carries them
	failure string
}

func TestE2E(t *testing.T) {
	if os.Getenv("CVMBOOT_E2E") != "1" {
		t.Skip("set CVMBOOT_E2E=1 to boot images under qemu")
	}
	e := setup(t)
	var (
		mu      sync.Mutex
		results []result
	)
	suiteStart := time.Now()
	t.Cleanup(func() {
		t.Logf("scenario summary (accel %s, %s total):", e.accel, time.Since(suiteStart).Round(time.Second))
		matched := 0
		for _, r := range results {
			t.Logf("scenario %-22s %-5s %-12s boot %6.1fs  total %6.1fs", r.name, r.status, r.reason, r.duration.Seconds(), r.total.Seconds())
			if r.firmware {
				matched++
			}
		}
		t.Logf("reference values computed from the UKI file = the firmware log of its boot (PCR 4 applications, PCR 11, PCR 9): %d scenarios", matched)
		for _, r := range results {
			if r.failure != "" {
				t.Logf("scenario %s failed:\n%s", r.name, r.failure)
			}
		}
	})
	for _, sc := range allScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			r := runScenario(t, e, sc)
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		})
	}
}

// hardening is what every image's command line carries unless the scenario is about its
// absence: systemd.import_credentials=no, so that systemd in the booted root does not import
// credentials the host passes through SMBIOS or fw_cfg (systemd before 254 does so in a
// confidential VM too).
func hardening(sc scenario) string {
	if sc.importCredentials {
		return ""
	}
	return "systemd.import_credentials=no "
}

func runScenario(t *testing.T, e *env, sc scenario) result {
	start := time.Now()
	res := result{name: sc.name, status: "FAIL"}
	init := harness.InitCvmboot
	if sc.initOverride != "" {
		init = sc.initOverride
	}
	ctx := context.Background()
	if init == harness.InitCvmboot && e.cvmbootErr != nil {
		t.Fatalf("scenario %s: cvmboot: %v", sc.name, e.cvmbootErr)
	}
	work := e.cache.Path("work", sc.name)
	if err := os.RemoveAll(work); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}

	tree := e.tinyRoot
	if sc.root == rootDebian {
		deb, err := e.debianRoot(t, sc.debianPackages...)
		if err != nil {
			t.Fatalf("debian root: %v", err)
		}
		tree = filepath.Join(work, "root")
		if err := harness.ExtractDebianRoot(ctx, deb, tree); err != nil {
			t.Fatal(err)
		}
		if err := harness.InstallCheckUnit(tree, ""); err != nil {
			t.Fatal(err)
		}
	}

	subst := func(s string, quote bool) string {
		q := func(v string) string {
			if quote {
				return regexp.QuoteMeta(v)
			}
			return v
		}
		return strings.NewReplacer("{rootpartuuid}", q(harness.DefaultRootPartUID),
			"{badpartuuid}", q(badPartUUID), "{fatal}", q("cvmboot: FATAL")).Replace(s)
	}
	cmdline := "console=ttyS0 " + hardening(sc) + subst(sc.cmdline, false)
	recipe := harness.DiskRecipe{
		Root:       harness.RootSpec{Tree: tree},
		VerityRoom: 64 * harness.MiB,
		FreeSpace:  256 * harness.MiB,
	}
	if sc.recipe != nil {
		sc.recipe(&recipe)
	}
	tools := e.tools
	if sc.testhook {
		bin, err := e.testhookCvmboot()
		if err != nil {
			t.Fatalf("scenario %s: %v", sc.name, err)
		}
		th := *e.tools
		th.Cvmboot = bin
		tools = &th
	}
	var prebuilt func(cmdline string) (string, error)
	if sc.initramfs != nil {
		var err error
		if prebuilt, err = sc.initramfs(t, e, recipe.Root.Tree, work); err != nil {
			t.Fatalf("scenario %s: initramfs: %v", sc.name, err)
		}
		init = harness.InitPrebuilt
	}
	var img *harness.Image
	var err error
	if sc.build != nil {
		img, err = sc.build(t, e, recipe.Root.Tree, work)
	} else {
		img, err = harness.BuildImage(ctx, harness.ImageSpec{
			WorkDir: work, Kernel: e.kernel, Tools: tools, Init: init,
			Modules: sc.modules, Config: sc.config, Cmdline: cmdline, Recipe: recipe, InitramfsFor: prebuilt,
			LoadOptions: strings.Replace(subst(sc.loadOptions, false), "console=ttyS0 ", "console=ttyS0 "+hardening(sc), 1), UnpinnedCmdline: sc.unpinned,
			ShellPrelude: sc.shellPrelude, AllowHostCredentials: sc.importCredentials,
		})
	}
	if err != nil {
		t.Fatalf("scenario %s: build image: %v", sc.name, err)
	}
	if sc.image != nil {
		if err := sc.image(img); err != nil {
			t.Fatalf("scenario %s: changing the image: %v", sc.name, err)
		}
	}
	buildTime := time.Since(start)
	var initrdSize int64
	if fi, err := os.Stat(img.Initramfs); err == nil {
		initrdSize = fi.Size()
	}
	if sc.root == rootDebian {
		// The tree is in the image now; the extracted copy only costs disk.
		_ = os.RemoveAll(tree)
	}

	bootCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	boot, err := harness.Boot(bootCtx, bootSpec(t, e, sc, work, img, cancel))
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	res.reason = boot.Reason
	res.duration = boot.Duration

	problems := verify(sc, boot, subst)
	if len(problems) == 0 && sc.after != nil {
		problems = sc.after(t, e, boot, img)
	}
	if len(problems) == 0 {
		res.firmware, problems = checkFirmwareLog(t, boot, img, sc.loadOptions != "")
	}
	res.total = time.Since(start)
	if len(problems) == 0 {
		res.status = "ok"
		t.Logf("scenario %s: ok, %s (%s) boot %.1fs (%s), image build %.1fs, init %s, initramfs %d bytes",
			sc.name, boot.Reason, boot.Detail, boot.Duration.Seconds(), boot.PhaseSummary(), buildTime.Seconds(), init, initrdSize)
		return res
	}
	artifacts := filepath.Join(artifactsDir(t), sc.name)
	notes := map[string]string{"kernel-cmdline.txt": cmdline + "\n", "problems.txt": strings.Join(problems, "\n") + "\n"}
	if err := harness.WriteArtifacts(artifacts, boot, img.Disk.Path, notes); err != nil {
		t.Errorf("artifacts: %v", err)
	}
	for _, p := range problems {
		t.Errorf("scenario %s: %s", sc.name, p)
	}
	t.Errorf("scenario %s: %s after %.1fs (init %s); serial log and qemu command line in %s; last console lines:\n%s",
		sc.name, boot.Reason, boot.Duration.Seconds(), init, artifacts, lastLines(boot.Serial, 25))
	res.failure = fmt.Sprintf("%s\n%s after %.1fs (%s); last console lines:\n%s",
		strings.Join(problems, "\n"), boot.Reason, boot.Duration.Seconds(), boot.PhaseSummary(), lastLines(boot.Serial, 40))
	return res
}

// bootSpec is the qemu run of a scenario's image (again, for scenarios that reboot it). kill
// cancels the boot; nil leaves killOn out.
func bootSpec(t *testing.T, e *env, sc scenario, work string, img *harness.Image, kill func()) harness.BootSpec {
	stream := os.Getenv("CVMBOOT_E2E_STREAM") == "1"
	var killRe, killByRe *regexp.Regexp
	if sc.killOn != "" && kill != nil {
		killRe = regexp.MustCompile(sc.killOn)
		if sc.killBy != "" {
			killByRe = regexp.MustCompile(sc.killBy)
		}
	}
	var killOnce, killNow sync.Once
	var killTimer *time.Timer
	extra := sc.qemuArgs
	if sc.initdata != nil {
		disk := filepath.Join(work, "initdata.img")
		if err := os.WriteFile(disk, sc.initdata, 0o644); err != nil {
			t.Fatal(err)
		}
		extra = append(slices.Clone(extra), "-drive", "if=none,id=initdata,format=raw,readonly=on,file="+disk,
			"-device", "virtio-blk-pci,drive=initdata")
	}
	return harness.BootSpec{
		Name: sc.name, WorkDir: work, Disk: img.Disk.Path, Accel: e.accel,
		Timeout: sc.timeLimit, MemoryMiB: sc.memoryMiB, ExtraArgs: extra,
		OnLine: func(l string) {
			if stream {
				t.Log(l)
			}
			if sc.onLine != nil {
				sc.onLine(t, l, img)
			}
			if killRe != nil && killRe.MatchString(l) {
				killOnce.Do(func() {
					delay := time.Duration(mathrand.Int64N(int64(sc.killWithin) + 1))
					t.Logf("kill: qemu to be killed %s after %q", delay.Round(time.Millisecond), l)
					killTimer = time.AfterFunc(delay, func() { killNow.Do(kill) })
				})
			}
			if killByRe != nil && killTimer != nil && killByRe.MatchString(l) {
				killNow.Do(func() {
					killTimer.Stop()
					t.Logf("kill: qemu killed at once on %q, before its random moment", l)
					kill()
				})
			}
		},
	}
}

// verify returns what is wrong with a boot, empty when the scenario passed.
func verify(sc scenario, boot *harness.BootResult, subst func(string, bool) string) []string {
	var problems []string
	wantExit := harness.ExitPoweredOff
	switch sc.outcome {
	case kernelPanic:
		wantExit = harness.ExitRebooted
	case killedMidway:
		wantExit = harness.ExitTimeout // what the harness calls a boot it ended
	}
	if sc.exit != "" {
		wantExit = sc.exit
	}
	if boot.Reason != wantExit && !(sc.outcome == kernelPanic && boot.Reason == harness.ExitPanicked) {
		problems = append(problems, fmt.Sprintf("exit: expected %s (outcome %s), found %s (%s)",
			wantExit, sc.outcome, boot.Reason, boot.Detail))
	}
	expect := append([]string(nil), sc.expect...)
	reject := append([]string(nil), sc.reject...)
	switch sc.outcome {
	case bootedAndChecked:
		if sc.root == rootDebian {
			expect = append(expect, `E2E-CHECK: DONE`)
		} else {
			expect = append(expect, `ROOTCHECK: DONE pass=\d+ fail=0`)
		}
	case failureAction:
		expect = append(expect, `{fatal}`)
		reject = append(reject, `ROOTCHECK: DONE`, `E2E-CHECK:`)
	case killedMidway:
		reject = append(reject, `ROOTCHECK: DONE`, `E2E-CHECK:`)
	case kernelPanic:
		expect = append(expect, `Kernel panic - not syncing`)
		reject = append(reject, `ROOTCHECK:`, `E2E-CHECK:`)
	}
	for _, pat := range expect {
		re, err := regexp.Compile("(?m)" + subst(pat, true))
		if err != nil {
			problems = append(problems, fmt.Sprintf("bad expect pattern %q: %v", pat, err))
			continue
		}
		if !re.MatchString(boot.Serial) {
			problems = append(problems, fmt.Sprintf("expected /%s/ in the serial log, not found", re))
		}
	}
	for _, pat := range reject {
		re, err := regexp.Compile("(?m)" + subst(pat, true))
		if err != nil {
			problems = append(problems, fmt.Sprintf("bad reject pattern %q: %v", pat, err))
			continue
		}
		if m := re.FindString(boot.Serial); m != "" {
			problems = append(problems, fmt.Sprintf("unexpected /%s/ in the serial log: %q", re, m))
		}
	}
	return problems
}

func artifactsDir(t *testing.T) string {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatalf("artifacts: %v", err)
	}
	return filepath.Join(root, "test", "e2e", "artifacts")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r", ""), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// TestVerify runs without qemu: it feeds made-up console logs to the scenario
// checks so that expectations and outcomes are themselves tested.
func TestVerify(t *testing.T) {
	byName := map[string]scenario{}
	for _, sc := range allScenarios() {
		byName[sc.name] = sc
	}
	subst := func(s string, quote bool) string {
		fatal := "cvmboot: FATAL"
		if quote {
			fatal = regexp.QuoteMeta(fatal)
		}
		return strings.NewReplacer("{rootpartuuid}", harness.DefaultRootPartUID, "{badpartuuid}", badPartUUID, "{fatal}", fatal).Replace(s)
	}
	debianOK := "E2E-CHECK: BEGIN\nE2E-CHECK: system-state=running\nE2E-CHECK: failed-units=none\n" +
		"E2E-CHECK: root=overlay overlay rw,relatime,lowerdir=/sysroot,upperdir=/run/cvmboot/overlay/upper,workdir=/run/cvmboot/overlay/work\n" +
		"E2E-CHECK: write=ok\nE2E-CHECK: analyze=Startup finished in 2.7s (kernel) + 7.1s (initrd) + 9.4s (userspace) = 19.2s\n" +
		"E2E-CHECK: fill=No space left on device\nE2E-CHECK: after-fill=running\nE2E-CHECK: report=present\nE2E-CHECK: DONE\n"
	tinyOK := "[ 3.0] cvmboot[1]: kernel command line matches the pinned one pin=/etc/cvmboot/cmdline sha256=sha256:" + strings.Repeat("ab", 32) + "\n" +
		"[ 3.1] cvmboot[1]: measured event=cvmboot.phase recnum=0 pcr=11\n[ 3.2] cvmboot[1]: measured event=cvmboot.config recnum=1 pcr=15\n" +
		"ROOTCHECK: START pid=1\nROOTCHECK: ok pid1\nROOTCHECK: ok report\nROOTCHECK: REPORT BEGIN\n{}\nROOTCHECK: REPORT END\n" +
		"ROOTCHECK: ok initramfs-gone\nROOTCHECK: ok expect:file:/run/cvmboot/evidence/evidence.json\nROOTCHECK: DONE pass=3 fail=0\n"
	tests := []struct {
		scenario string
		reason   harness.ExitReason
		serial   string
		problems int
	}{
		{"plain-tiny-root", harness.ExitPoweredOff, tinyOK, 0},
		{"plain-tiny-root", harness.ExitTimeout, tinyOK, 1},
		{"plain-tiny-root", harness.ExitPoweredOff, tinyOK + "ROOTCHECK: FAIL root-ro: / is mounted rw\n", 1},
		{"plain-tiny-root", harness.ExitPoweredOff, strings.Replace(tinyOK, "fail=0", "fail=1", 1), 2},
		{"root-never-appears", harness.ExitPoweredOff, "[ 9.1] cvmboot: FATAL devices: PARTUUID=" + badPartUUID + " did not appear\n", 0},
		{"root-never-appears", harness.ExitPoweredOff, "cvmboot: FATAL devices: PARTUUID=" + badPartUUID + "\n" + tinyOK, 2},
		{"root-never-appears", harness.ExitRebooted, "Kernel panic - not syncing\n", 4},
		{"missing-init", harness.ExitPoweredOff, "cvmboot: FATAL switch-root: init /sbin/nonexistent not found\n", 0},
		{"missing-init", harness.ExitPoweredOff, "cvmboot: FATAL switch-root: init /sbin/init not found\n", 1},
		{"debian-multi-user", harness.ExitPoweredOff, debianOK, 0},
		{"debian-multi-user", harness.ExitPoweredOff, strings.NewReplacer("running", "maintenance", "units=none", "units=foo.service", "report=present", "report=missing").Replace(debianOK), 4},
		{"debian-multi-user", harness.ExitPoweredOff, strings.Replace(debianOK, "root=overlay overlay rw", "root=/dev/vda2 ext4 ro", 1), 1},
	}
	for i, tt := range tests {
		sc, ok := byName[tt.scenario]
		if !ok {
			t.Fatalf("no scenario %s", tt.scenario)
		}
		got := verify(sc, &harness.BootResult{Reason: tt.reason, Serial: tt.serial}, subst)
		if len(got) != tt.problems {
			t.Errorf("case %d (%s): %d problems, want %d:\n  %s", i, tt.scenario, len(got), tt.problems, strings.Join(got, "\n  "))
		}
	}
}

// guestEvidenceDir writes the files rootcheck.dump printed from /run/cvmboot/evidence into a
// new directory, for the host's verifier.
func guestEvidenceDir(t *testing.T, files map[string][]byte) (string, error) {
	dir := t.TempDir()
	for p, data := range files {
		name, ok := strings.CutPrefix(p, "/run/cvmboot/evidence/")
		if !ok {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// verifyEvidence writes the evidence the guest printed into a directory and runs the host
// build's `cvmboot evidence verify` on it, then on tampered copies.
func verifyEvidence(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
	files, err := harness.ExtractFiles(boot.Serial)
	if err != nil {
		return []string{err.Error()}
	}
	const guestDir = "/run/cvmboot/evidence/"
	write := func(edit func(name string, data []byte) []byte) string {
		dir := t.TempDir()
		for p, data := range files {
			name := strings.TrimPrefix(p, guestDir)
			if edit != nil {
				data = edit(name, data)
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	host, err := hostVerifier()
	if err != nil {
		return []string{err.Error()}
	}
	// swtpm's attestation key is new every run, so it cannot be pinned ahead: the signature
	// is checked against the key in the evidence (--allow-unsigned=tpm), everything else
	// fully, against the reference values of the UKI file that booted (--expect-uki).
	run := func(dir string, args ...string) (int, string) {
		cmd := exec.Command(host, append([]string{"evidence", "verify", dir, "--allow-unsigned=tpm"}, args...)...)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	var problems []string
	ref, err := referenceValues(img.UKI)
	if err != nil {
		return []string{err.Error()}
	}
	code, out := run(write(nil), "--expect-uki", img.UKI, "--expect-roothash", img.RootHash)
	t.Logf("evidence verify (untouched, --expect-uki %s --expect-roothash %s): exit %d\n%s", img.UKI, img.RootHash, code, out)
	if code != 0 {
		problems = append(problems, fmt.Sprintf("untouched evidence rejected (exit %d): %s", code, out))
	}
	// The reference values computed from the file equal what the firmware log of the real
	// boot shows: the verifier printed them as expected.
	for _, claim := range []string{"root: dm-verity root hash " + img.RootHash + " (as expected, enforced)", "storage: NOT encrypted",
		"UKI: Authenticode " + ref.UKI.AuthenticodeSHA256 + " in pcr4:sha256 (as expected)",
		"UKI: PCR 11 after systemd-stub " + ref.PCR11.Value + " (as expected)",
		"UKI: PCR 9 " + ref.PCR9.Value + " (as expected: its command line as load options, then its initrd)",
		"UKI: command line as expected: the kernel's load options (PCR 9) are the UKI's .cmdline; so is cvmboot's cvmboot.cmdline record",
		"firmware-log holds", "uki          holds", "cvmboot-log  holds", "hardware     MISSING, waived by --allow-unsigned=tpm"} {
		if !strings.Contains(out, claim) {
			problems = append(problems, fmt.Sprintf("verifier output lacks the claim %q", claim))
		}
	}
	// Without reference values the chain has no UKI link: not verified, unless waived by name.
	if code, out := run(write(nil)); code != 1 || !strings.Contains(out, "uki (no reference values given") {
		problems = append(problems, fmt.Sprintf("evidence checked without reference values: exit %d, want 1 naming the uki link: %s", code, out))
	} else {
		t.Logf("evidence verify (no --expect-uki): exit 1: %s", strings.TrimSpace(out))
	}
	if code, out := run(write(nil), "--allow-unknown-uki"); code != 0 || !strings.Contains(out, "uki          MISSING, waived by --allow-unknown-uki") {
		problems = append(problems, fmt.Sprintf("evidence checked with --allow-unknown-uki: exit %d, want 0 with the uki link waived: %s", code, out))
	}
	// A firmware log edited by the host (one digest of the UKI's event) no longer replays.
	fwName := "tpm-firmware-log.bin"
	fwLog := files[guestDir+fwName]
	authBytes, _ := hex.DecodeString(ref.UKI.AuthenticodeSHA256)
	if i := bytes.Index(fwLog, authBytes); i < 0 || len(authBytes) == 0 {
		problems = append(problems, "the firmware log does not hold the UKI's Authenticode digest")
	} else {
		forged := bytes.Clone(fwLog)
		forged[i] ^= 1
		o, f := sha256.Sum256(fwLog), sha256.Sum256(forged)
		dir := write(func(name string, data []byte) []byte {
			switch name {
			case fwName:
				return forged
			case "evidence.json":
				return bytes.ReplaceAll(data, []byte(hex.EncodeToString(o[:])), []byte(hex.EncodeToString(f[:])))
			}
			return data
		})
		if code, out := run(dir, "--expect-uki", img.UKI); code != 1 || !strings.Contains(out, "PCR 4 is") {
			problems = append(problems, fmt.Sprintf("evidence with an edited firmware log: exit %d, want 1 naming PCR 4: %s", code, out))
		} else {
			t.Logf("evidence verify (edited firmware log): exit 1: %s", strings.TrimSpace(out))
		}
	}
	other := strings.Repeat("0", 64)
	if code, out := run(write(nil), "--expect-uki", img.UKI, "--expect-roothash", other); code != 1 {
		problems = append(problems, fmt.Sprintf("evidence checked against another root hash: exit %d, want 1: %s", code, out))
	} else {
		t.Logf("evidence verify (another root hash): exit 1: %s", strings.TrimSpace(out))
	}
	// The forger's edit: one hex digit of the measured config digest changes (same length),
	// and evidence.json is made consistent with the edited log, so only the binding to the
	// quote (REPORT_DATA, the replayed PCR) can tell.
	origLog := files[guestDir+"eventlog"]
	forgedLog := bytes.Clone(origLog)
	if i := bytes.Index(forgedLog, []byte(`"sha256":"`)); i >= 0 {
		j := i + len(`"sha256":"`)
		forgedLog[j] = map[bool]byte{true: 'f', false: '0'}[forgedLog[j] == '0']
	} else {
		return []string{"no measured config digest in the event log"}
	}
	origSum, forgedSum := sha256.Sum256(origLog), sha256.Sum256(forgedLog)
	edited := write(func(name string, data []byte) []byte {
		switch name {
		case "eventlog":
			return forgedLog
		case "evidence.json":
			return bytes.ReplaceAll(data, []byte(hex.EncodeToString(origSum[:])), []byte(hex.EncodeToString(forgedSum[:])))
		}
		return data
	})
	if code, out := run(edited, "--expect-uki", img.UKI); code != 1 {
		problems = append(problems, fmt.Sprintf("evidence with an edited event: exit %d, want 1: %s", code, out))
	} else {
		t.Logf("evidence verify (edited event, evidence.json consistent): exit 1: %s", strings.TrimSpace(out))
	}
	if code, out := run(write(nil), "--expect-uki", img.UKI, "--nonce", "0000000000000000"); code != 1 {
		problems = append(problems, fmt.Sprintf("evidence checked with another nonce: exit %d, want 1: %s", code, out))
	} else {
		t.Logf("evidence verify (other nonce): exit 1: %s", strings.TrimSpace(out))
	}
	return problems
}

// verifyForgedEvidence runs the verifier on the forger's evidence with the genuine UKI (the
// same kernel and command line around cvmboot's initramfs): it must refuse, naming PCR 4 and
// PCR 11 with their expected and found values. With the UKI link waived by name the same
// evidence passes, and the output says the link is missing.
func verifyForgedEvidence(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
	files, err := harness.ExtractFiles(boot.Serial)
	if err != nil {
		return []string{err.Error()}
	}
	dir := t.TempDir()
	for p, data := range files {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	genuine, err := genuineUKI(t, e, img, cfg(tpm, noStorage, noOverlay))
	if err != nil {
		return []string{err.Error()}
	}
	host, err := hostVerifier()
	if err != nil {
		return []string{err.Error()}
	}
	ref, err := referenceValues(genuine)
	if err != nil {
		return []string{err.Error()}
	}
	forgedRef, err := referenceValues(img.UKI)
	if err != nil {
		return []string{err.Error()}
	}
	run := func(args ...string) (int, string) {
		cmd := exec.Command(host, append([]string{"evidence", "verify", dir, "--allow-unsigned=tpm"}, args...)...)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	var problems []string
	code, out := run("--expect-uki", genuine, "--expect-roothash", img.RootHash)
	t.Logf("evidence verify (forged initramfs, --expect-uki genuine): exit %d\n%s", code, out)
	if code != 1 {
		problems = append(problems, fmt.Sprintf("forged evidence with the genuine UKI: exit %d, want 1", code))
	}
	for _, want := range []string{"NOT VERIFIED", "has digest " + forgedRef.UKI.AuthenticodeSHA256 + ", which is neither the UKI's Authenticode " + ref.UKI.AuthenticodeSHA256,
		"an application other than the UKI ran first", "PCR 11 after systemd-stub is " + forgedRef.PCR11.Value + ", expected " + ref.PCR11.Value} {
		if !strings.Contains(out, want) {
			problems = append(problems, fmt.Sprintf("the refusal lacks %q", want))
		}
	}
	code, out = run("--allow-unknown-uki", "--expect-roothash", img.RootHash)
	t.Logf("evidence verify (forged initramfs, --allow-unknown-uki): exit %d\n%s", code, out)
	if code != 0 || !strings.Contains(out, "uki          MISSING, waived by --allow-unknown-uki") {
		problems = append(problems, fmt.Sprintf("forged evidence with the UKI link waived: exit %d, want 0 with the waiver shown", code))
	}
	return problems
}

// genuineUKI builds the UKI the host replaced: the image's kernel and command line around
// cvmboot's initramfs with config.
func genuineUKI(t *testing.T, e *env, img *harness.Image, config string) (string, error) {
	if e.cvmbootErr != nil || e.tools.Cvmboot == "" {
		return "", fmt.Errorf("cvmboot is not built: %v", e.cvmbootErr)
	}
	dir := t.TempDir()
	cfgPath, initrd, out := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "initramfs.img"), filepath.Join(dir, "genuine.efi")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return "", err
	}
	cmd := exec.Command(e.tools.Cvmboot, "initramfs", "--kernel-modules", e.kernel.ModulesDir, "--modules", strings.Join(harness.DefaultModules, ","),
		"--config", cfgPath, "--cmdline", img.Cmdline, "-o", initrd)
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cvmboot initramfs: %v\n%s", err, o)
	}
	if _, err := harness.BuildUKI(context.Background(), harness.UKISpec{Kernel: e.kernel.Vmlinuz, Initrd: initrd, Cmdline: img.Cmdline}, out); err != nil {
		return "", err
	}
	return out, nil
}

// checkFirmwareLog compares what rootcheck printed of the firmware's TPM log (a boot that
// reached the tiny root) with the reference values `cvmboot-host reference-values` computes
// from the UKI file: the boot applications of PCR 4 (the UKI, then its kernel), PCR 11 after
// systemd-stub, PCR 9 after the kernel's EFI stub. It reports whether it compared. A UKI the
// UEFI shell started with the host's load options (viaShell) is not compared: the shell is
// the first application and the load options are the host's.
func checkFirmwareLog(t *testing.T, boot *harness.BootResult, img *harness.Image, viaShell bool) (bool, []string) {
	if viaShell {
		return false, nil
	}
	var line string
	for _, l := range harness.LinesWithPrefix(boot.Serial, "ROOTCHECK: FIRMWARE-LOG ") {
		line = strings.TrimPrefix(l, "ROOTCHECK: FIRMWARE-LOG ")
	}
	if line == "" || strings.HasPrefix(line, "unavailable") {
		if line != "" {
			t.Logf("firmware log: %s", line)
		}
		return false, nil
	}
	ref, err := referenceValues(img.UKI)
	if err != nil {
		return false, []string{err.Error()}
	}
	got := map[string]string{}
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		got[k] = v
	}
	apps := strings.Split(got["pcr4-apps"], ",")
	var problems []string
	if apps[0] != ref.UKI.AuthenticodeSHA256 {
		problems = append(problems, fmt.Sprintf("PCR 4: the firmware started %s, the UKI's reference Authenticode is %s", apps[0], ref.UKI.AuthenticodeSHA256))
	}
	for _, a := range apps[1:] {
		if a != ref.UKI.LinuxAuthenticodeSHA256 {
			problems = append(problems, fmt.Sprintf("PCR 4: a later application %s, the kernel's reference Authenticode is %s", a, ref.UKI.LinuxAuthenticodeSHA256))
		}
	}
	if got["pcr11"] != ref.PCR11.Value {
		problems = append(problems, fmt.Sprintf("PCR 11 after systemd-stub is %s in the firmware log, the reference value %s", got["pcr11"], ref.PCR11.Value))
	}
	if ref.PCR9.Value != "" && got["pcr9"] != ref.PCR9.Value {
		problems = append(problems, fmt.Sprintf("PCR 9 is %s in the firmware log, the reference value %s", got["pcr9"], ref.PCR9.Value))
	}
	if len(problems) == 0 {
		t.Logf("firmware log = reference values of %s: Authenticode %s, PCR 11 %s, PCR 9 %s", filepath.Base(img.UKI), ref.UKI.AuthenticodeSHA256, ref.PCR11.Value, ref.PCR9.Value)
	}
	return len(problems) == 0, problems
}

// referenceValues runs the host build's `cvmboot-host reference-values` on a UKI.
func referenceValues(ukiPath string) (*reference.Values, error) {
	host, err := hostVerifier()
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(host, "reference-values", ukiPath).Output()
	if err != nil {
		return nil, fmt.Errorf("cvmboot-host reference-values %s: %v", ukiPath, err)
	}
	var v reference.Values
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, fmt.Errorf("cvmboot-host reference-values %s: %v", ukiPath, err)
	}
	return &v, nil
}

var hostVerifierOnce struct {
	sync.Once
	path string
	err  error
}

// hostVerifier builds the host build of cvmboot (with `evidence verify`) once per test run.
func hostVerifier() (string, error) {
	v := &hostVerifierOnce
	v.Do(func() {
		repo, err := harness.RepoRoot()
		if err != nil {
			v.err = err
			return
		}
		dir, err := os.MkdirTemp("", "cvmboot-host-")
		if err != nil {
			v.err = err
			return
		}
		v.path = filepath.Join(dir, "cvmboot-host")
		build := exec.Command("go", "build", "-o", v.path, "./cmd/cvmboot-host")
		build.Dir = repo
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			v.err = fmt.Errorf("building the host verifier: %v\n%s", err, out)
		}
	})
	return v.path, v.err
}

// Every scenario's config is one the boot's strict parser takes, and says what its edits say.
func TestScenarioConfigs(t *testing.T) {
	for _, sc := range allScenarios() {
		if _, err := config.Parse(sc.name, []byte(sc.config)); err != nil {
			t.Errorf("scenario %s: config: %v", sc.name, err)
		}
	}
	c, err := config.Parse("plain", []byte(plainConfig))
	if err != nil || c.Verity.Required || c.Attest.Require != config.AttestTPM || c.Storage.Enabled || c.Overlay.Enabled {
		t.Errorf("plainConfig parses to %+v, %v", c, err)
	}
}
