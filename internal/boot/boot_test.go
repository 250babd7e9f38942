package boot

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/persist"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/verity"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/report"
)

type fakeMachine struct {
	calls       []string
	devices     map[string]string // spec → node
	mountErr    error
	switchErr   error
	loadedMods  []string
	earlyMounts []string
	mountedAt   map[string]string // target → source
}

func (f *fakeMachine) Early() ([]string, error) {
	f.calls = append(f.calls, "early")
	return f.earlyMounts, nil
}
func (f *fakeMachine) Root(dev, fstype, target, opts string) (string, error) {
	f.calls = append(f.calls, "mount "+dev+" "+fstype+" "+target+" "+opts)
	if fstype == "auto" {
		fstype = "ext4"
	}
	return fstype, f.mountErr
}
func (f *fakeMachine) SwitchRoot(newRoot, init string) error {
	f.calls = append(f.calls, "switch "+newRoot+" "+init)
	return f.switchErr
}
func (f *fakeMachine) Overlay(target, stateDir, size string) error {
	f.calls = append(f.calls, "overlay "+target+" "+stateDir+" "+size)
	return nil
}
func (f *fakeMachine) MountedAt(target string) (string, error) {
	f.calls = append(f.calls, "mountedat "+target)
	return f.mountedAt[target], nil
}
func (f *fakeMachine) Load(_ context.Context, names []string) ([]string, error) {
	f.calls = append(f.calls, "modules "+strings.Join(names, ","))
	return f.loadedMods, nil
}
func (f *fakeMachine) Wait(_ context.Context, spec string, timeout time.Duration) (string, error) {
	f.calls = append(f.calls, "wait "+spec+" "+timeout.String())
	if dev, ok := f.devices[spec]; ok {
		return dev, nil
	}
	return "", errors.New(spec + " did not appear within " + timeout.String())
}

// fakeVerity activates any volume whose root hash is "good…" as /dev/mapper/root.
type fakeVerity struct{ activated []string }

func (f *fakeVerity) Activate(_ context.Context, vol *verity.Volume) (*verity.Result, error) {
	h := hex.EncodeToString(vol.RootHash)
	f.activated = append(f.activated, vol.Name+" "+h)
	if !strings.HasPrefix(h, "00") {
		return nil, errors.New("dm-verity root: hash device /dev/vda3: root hash " + h + " expected, found 00ff…")
	}
	return &verity.Result{Name: vol.Name, DevicePath: "/dev/mapper/" + vol.Name, RootHash: h, HashAlgorithm: "sha256", OnCorruption: "panic",
		Facts: map[string]string{"algorithm": "sha256", "corruption": "panic", "data_device": "/dev/vda2"}}, nil
}

// fakeAttest records measurements; present says whether the machine has a TPM.
type fakeAttest struct {
	present  bool
	measured []string
	evidence bool
	// platforms are what Platforms says (TPM when nil and present); hostConfig the TEE fields.
	platforms  []evidence.Platform
	hostConfig map[evidence.Platform][]byte
	initdata   []eventlog.Initdata
}

func (f *fakeAttest) Platforms() []evidence.Platform {
	if f.platforms == nil && f.present {
		return []evidence.Platform{evidence.PlatformTPM}
	}
	return f.platforms
}

func (f *fakeAttest) HostConfig(_ context.Context, p evidence.Platform) ([]byte, error) {
	v, ok := f.hostConfig[p]
	if !ok {
		return nil, errors.New("no report")
	}
	return v, nil
}

func (f *fakeAttest) Start(require config.AttestRequire) (stage.Facts, bool, error) {
	if !f.present && require != config.AttestNone {
		return nil, false, errors.New("attest.require is " + string(require) + " but this machine has no TPM")
	}
	return stage.Facts{"tpm": map[bool]string{true: "present", false: "absent"}[f.present]}, f.present, nil
}
func (f *fakeAttest) Measure(ev eventlog.Event) error {
	name := ev.Type
	if p, ok := ev.Data.(eventlog.PhaseData); ok {
		name += ":" + p.Phase
	}
	if c, ok := ev.Data.(eventlog.Cmdline); ok && c.Pinned {
		name += ":pinned"
	}
	if d, ok := ev.Data.(eventlog.Initdata); ok {
		f.initdata = append(f.initdata, d)
	}
	f.measured = append(f.measured, name)
	return nil
}
func (f *fakeAttest) Evidence(context.Context, []byte) (stage.Facts, error) {
	f.evidence = true
	return stage.Facts{"evidence": "/run/cvmboot/evidence"}, nil
}

// plainConfig turns every feature off: a test turns on the one it looks at.
func plainConfig() *config.Config {
	c := config.Default()
	c.Verity.Required = false
	c.Attest.Require = config.AttestNone
	c.Storage.Enabled = false
	c.Overlay.Enabled = false
	return c
}

func run(t *testing.T, cfg *config.Config, line string, m *fakeMachine) (*Boot, *report.Report, error) {
	t.Helper()
	cl, err := cmdline.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	b := &Boot{Config: cfg, Cmdline: cl, Mounts: m, Modules: m, Devices: m, Attest: &fakeAttest{}, Verity: &fakeVerity{}}
	rep := &report.Report{}
	err = (&stage.Runner{Report: rep}).Run(context.Background(), pid1Stages(b))
	return b, rep, err
}

func TestPlainRootBoot(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"PARTUUID=abc": "/dev/vda2"}, earlyMounts: []string{"/sys", "/run"}, loadedMods: []string{"virtio_blk"}}
	cfg := plainConfig()
	cfg.Modules = []string{"virtio_blk", "dm_mod"}
	cl, _ := cmdline.Parse("console=ttyS0 root=PARTUUID=abc rootflags=noatime init=/bin/myinit -- single")
	// The initramfs's list comes first; the config adds what it lacks.
	b := &Boot{Config: cfg, Cmdline: cl, Mounts: m, Modules: m, Devices: m, Attest: &fakeAttest{}, PackedModules: []string{"virtio_pci", "virtio_blk"}}
	rep := &report.Report{}
	err := (&stage.Runner{Report: rep}).Run(context.Background(), pid1Stages(b))
	if err != nil {
		t.Fatal(err)
	}
	// The API file systems that are modules are mounted once the modules are loaded.
	want := []string{"early", "modules virtio_pci,virtio_blk,dm_mod", "early", "wait PARTUUID=abc 30s", "mount /dev/vda2 auto /sysroot noatime", "switch /sysroot /bin/myinit"}
	if strings.Join(m.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("calls\n got %q\nwant %q", m.calls, want)
	}
	if b.Init() != "/bin/myinit" || strings.Join(b.InitArgs(), " ") != "/bin/myinit single" {
		t.Errorf("init %q args %q", b.Init(), b.InitArgs())
	}
	statuses := map[string]report.Status{}
	for _, s := range rep.Stages {
		statuses[s.Name] = s.Status
	}
	wantStatus := map[string]report.Status{
		StageEarlyMounts: report.StatusOK, StageModules: report.StatusOK, StageRoot: report.StatusOK,
		StageAttest: report.StatusSkipped, StageStorage: report.StatusSkipped, StageOverlay: report.StatusSkipped,
		StageHandoff: report.StatusOK,
	}
	for name, st := range wantStatus {
		if statuses[name] != st {
			t.Errorf("stage %s = %s, want %s", name, statuses[name], st)
		}
	}
	root := rep.Stage(StageRoot)
	if root.Facts["device"] != "/dev/vda2" || root.Facts["fstype"] != "ext4" || root.Facts["spec"] != "PARTUUID=abc" {
		t.Errorf("root facts %v", root.Facts)
	}
}

func TestRootFailsClosed(t *testing.T) {
	cases := []struct {
		name    string
		cfg     func(*config.Config)
		line    string
		machine *fakeMachine
		stage   string
		errHas  string
	}{
		{"verity required without roothash", func(c *config.Config) { c.Verity.Required = true }, "root=/dev/vda2", &fakeMachine{}, "plan", "verity.required is true but the kernel command line has no roothash="},
		{"verity mismatch", nil, "roothash=" + strings.Repeat("ab", 32), &fakeMachine{}, StageVerity, "root hash " + strings.Repeat("ab", 32) + " expected, found 00ff"},
		{"verity disabled but required", func(c *config.Config) { c.Verity.Required = true }, "roothash=" + strings.Repeat("00", 32) + " systemd.verity=0", &fakeMachine{}, "plan", "disables verity but verity.required is true"},
		{"no root at all", nil, "console=ttyS0", &fakeMachine{}, StageRoot, "no root device"},
		{"device never appears", nil, "root=PARTUUID=dead", &fakeMachine{}, StageRoot, "root device: PARTUUID=dead did not appear within 30s"},
		{"mount fails", nil, "root=/dev/vda2", &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}, mountErr: errors.New("mount /dev/vda2 on /sysroot: invalid argument")}, StageRoot, "invalid argument"},
		{"attestation required", func(c *config.Config) { c.Attest.Require = config.AttestTEE }, "root=/dev/vda2", &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}, StageAttest, "attest.require is tee but this machine has no TPM"},
		{"storage enabled without a storage stage", func(c *config.Config) { c.Storage.Enabled = true }, "root=/dev/vda2", &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}, StageStorage, "storage.enabled is true but this environment cannot set up storage"},
		{"overlay upper on storage", func(c *config.Config) { c.Overlay.Enabled = true; c.Overlay.Upper = config.UpperStorage }, "root=/dev/vda2", &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}, StageOverlay, "overlay.upper is storage"},
		{"missing init", nil, "root=/dev/vda2 init=/nope", &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}, switchErr: errors.New(`init "/nope" not found in new root /sysroot`)}, StageHandoff, `init "/nope" not found`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := plainConfig()
			if c.cfg != nil {
				c.cfg(cfg)
			}
			_, rep, err := run(t, cfg, c.line, c.machine)
			var se *stage.Error
			if !errors.As(err, &se) || se.Stage != c.stage || !strings.Contains(err.Error(), c.errHas) {
				t.Fatalf("err = %v, want stage %s error containing %q", err, c.stage, c.errHas)
			}
			if rep.Outcome != report.OutcomeFailed {
				t.Errorf("outcome %s", rep.Outcome)
			}
			for _, call := range c.machine.calls {
				if strings.HasPrefix(call, "switch") && c.stage != StageHandoff {
					t.Errorf("switched root after a failure: %v", c.machine.calls)
				}
			}
		})
	}
}

func TestVerityRoot(t *testing.T) {
	m := &fakeMachine{}
	att := &fakeAttest{present: true}
	v := &fakeVerity{}
	cfg := plainConfig()
	cfg.Verity.Required = true
	cfg.Attest.Require = config.AttestTPM
	hash := strings.Repeat("00", 31) + "11"
	cl, _ := cmdline.Parse("roothash=" + hash + " root=/dev/ignored")
	b := &Boot{Config: cfg, Cmdline: cl, Mounts: m, Modules: m, Devices: m, Attest: att, Verity: v}
	rep := &report.Report{}
	if err := (&stage.Runner{Report: rep}).Run(context.Background(), pid1Stages(b)); err != nil {
		t.Fatal(err)
	}
	// roothash= wins over root=: the root is mounted from the verity device only.
	if len(v.activated) != 1 || v.activated[0] != "root "+hash {
		t.Errorf("activated %v", v.activated)
	}
	calls := strings.Join(m.calls, "|")
	if !strings.Contains(calls, "mount /dev/mapper/root auto /sysroot") || strings.Contains(calls, "wait") {
		t.Errorf("calls %q", calls)
	}
	f := rep.Stage(StageRoot).Facts
	if f["device"] != "/dev/mapper/root" || f["spec"] != "roothash="+hash {
		t.Errorf("root facts %v", f)
	}
	if f := rep.Stage(StageVerity).Facts; f["root_device"] != "/dev/mapper/root" || f["root_data_device"] != "/dev/vda2" {
		t.Errorf("verity facts %v", f)
	}
	if !strings.Contains(strings.Join(att.measured, ","), "cvmboot.verity") {
		t.Errorf("verity decision not measured: %v", att.measured)
	}
}

func TestVerityUsr(t *testing.T) {
	m := &fakeMachine{}
	att := &fakeAttest{present: true}
	v := &fakeVerity{}
	cfg := plainConfig()
	cfg.Attest.Require = config.AttestTPM
	cfg.Overlay.Enabled = true
	root, usr := strings.Repeat("00", 31)+"11", strings.Repeat("00", 31)+"22"
	cl, _ := cmdline.Parse("roothash=" + root + " usrhash=" + usr)
	b := &Boot{Config: cfg, Cmdline: cl, Mounts: m, Modules: m, Devices: m, Attest: att, Verity: v}
	// The init is on /usr: its read-ahead starts once /usr is mounted, not with the root.
	b.WarmInit = func(root, init string) stage.Facts { return stage.Facts{"read_ahead": init} }
	rep := &report.Report{}
	if err := (&stage.Runner{Report: rep}).Run(context.Background(), pid1Stages(b)); err != nil {
		t.Fatal(err)
	}
	if rep.Stage(StageRoot).Facts["read_ahead"] != "" || rep.Stage(StageUsr).Facts["read_ahead"] != "/sbin/init" {
		t.Errorf("read-ahead: root step %v, usr step %v; want it in the usr step only", rep.Stage(StageRoot).Facts, rep.Stage(StageUsr).Facts)
	}
	if strings.Join(v.activated, ",") != "root "+root+",usr "+usr {
		t.Errorf("activated %v", v.activated)
	}
	// /usr goes on after the overlay: mounted before it, the overlay would hide it.
	if calls := strings.Join(m.calls, "|"); !strings.Contains(calls, "mount /dev/mapper/root auto /sysroot |overlay /sysroot /run/cvmboot/overlay 50%|mount /dev/mapper/usr auto /sysroot/usr |switch /sysroot /sbin/init") {
		t.Errorf("calls %v", calls)
	}
	if f := rep.Stage(StageUsr).Facts; f["device"] != "/dev/mapper/usr" || f["root_hash"] != usr || f["target"] != "/sysroot/usr" {
		t.Errorf("usr facts %v", f)
	}
	if n := strings.Count(strings.Join(att.measured, ","), "cvmboot.verity"); n != 2 {
		t.Errorf("verity events measured %d, want 2: %v", n, att.measured)
	}
}

func TestOverlayStage(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	cfg := plainConfig()
	cfg.Overlay.Enabled = true
	_, rep, err := run(t, cfg, "root=/dev/vda2", m)
	if err != nil {
		t.Fatal(err)
	}
	calls := strings.Join(m.calls, "|")
	// The overlay goes on after the root and before the switch.
	if !strings.Contains(calls, "mount /dev/vda2 auto /sysroot |overlay /sysroot /run/cvmboot/overlay 50%|switch /sysroot /sbin/init") {
		t.Errorf("calls %q", calls)
	}
	if f := rep.Stage(StageOverlay).Facts; f["upper"] != "tmpfs" || f["size"] != "50%" || f["lower"] != "/dev/vda2" {
		t.Errorf("overlay facts %v", f)
	}
}

func TestMeasuredBoot(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	att := &fakeAttest{present: true}
	cfg := plainConfig()
	cfg.Attest.Require = config.AttestTPM
	cfg.Overlay.Enabled = true
	cl, _ := cmdline.Parse("root=/dev/vda2")
	b := &Boot{Config: cfg, Cmdline: cl, CmdlineRaw: "root=/dev/vda2\n", Mounts: m, Modules: m, Devices: m, Attest: att}
	rep := &report.Report{}
	if err := (&stage.Runner{Report: rep}).Run(context.Background(), pid1Stages(b)); err != nil {
		t.Fatal(err)
	}
	// Every decision is measured, in boot order, and evidence is taken before the switch.
	want := "cvmboot.phase:enter-initrd,cvmboot.config,cvmboot.cmdline,cvmboot.storage,cvmboot.overlay,cvmboot.phase:leave-initrd,cvmboot.handoff"
	if got := strings.Join(att.measured, ","); got != want {
		t.Errorf("measured %s\nwant     %s", got, want)
	}
	if !att.evidence {
		t.Error("no evidence collected")
	}
	if f := rep.Stage(StageEvidence).Facts; f["evidence"] == "" {
		t.Errorf("evidence facts %v", f)
	}
	if f := rep.Stage(StageHandoff).Facts; f["init"] != "/sbin/init" {
		t.Errorf("handoff facts %v", f)
	}
	if f := rep.Stage(StageAttest).Facts; f["measured"] != "3" || f["tpm"] != "present" {
		t.Errorf("attest facts %v", f)
	}
}

// pid1Stages readies b for a PID 1 boot as Run does and returns its stages; a plan the
// config and command line cannot make fails as the first stage.
func pid1Stages(b *Boot) []stage.Stage {
	b.Mode, b.dec = ModeInitramfs, &Decisions{}
	p, err := NewPlan(ModeInitramfs, b.Config, b.Cmdline)
	if err != nil {
		return []stage.Stage{{Name: "plan", Required: true, Run: func(context.Context) (stage.Facts, error) { return nil, err }}}
	}
	b.Plan = p
	return b.stages(StepsOf(ModeInitramfs))
}

// One sequence: every mode's steps in one order, which is the measured order.
func TestSequence(t *testing.T) {
	names := func(m Mode) string {
		var n []string
		for _, s := range StepsOf(m) {
			n = append(n, s.Name)
		}
		return strings.Join(n, " ")
	}
	for mode, want := range map[Mode]string{
		ModeInitramfs:     "early-mounts modules attest initdata verity persistent-root root storage overlay usr binds evidence handoff",
		ModeSystemdInitrd: "modules attest initdata verity persistent-root root storage overlay binds evidence",
		ModeSystemd:       "modules attest initdata root storage binds",
	} {
		if got := names(mode); got != want {
			t.Errorf("%s: %s\nwant %s", mode, got, want)
		}
	}
	if got := UnitStepNames(); got != "modules, attest, initdata, verity, persistent-root, root, storage, overlay, binds, evidence" {
		t.Errorf("unit steps %q", got)
	}
	for _, tt := range []struct {
		mode  Mode
		names []string
		err   string
	}{
		{ModeSystemdInitrd, []string{"root", "storage", "overlay", "binds"}, ""},
		{ModeSystemdInitrd, []string{"overlay", "storage"}, `step "storage" comes before "overlay"`},
		{ModeSystemdInitrd, []string{"handoff"}, `step "handoff" is not part of a boot in systemd-initrd mode`},
		{ModeSystemd, []string{"verity"}, `step "verity" is not part of a boot in systemd mode`},
		{ModeSystemd, []string{"frobnicate"}, `unknown step "frobnicate"`},
	} {
		_, err := selectSteps(tt.mode, tt.names)
		if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s %v: %v, want %q", tt.mode, tt.names, err, tt.err)
		}
	}
}

// fakeStorage records the storage stage's calls into the machine's call list.
type fakeStorage struct {
	m          *fakeMachine
	rootDevice string
	setupErr   error
	intoErr    error
	pending    bool // the mount point is inside the root: not mounted until MountIntoRoot
}

func (f *fakeStorage) Setup(context.Context) (*storage.Result, error) {
	f.m.calls = append(f.m.calls, "storage setup "+f.rootDevice)
	if f.setupErr != nil {
		return nil, f.setupErr
	}
	if f.pending {
		return &storage.Result{Facts: stage.Facts{}, Encrypted: true, Mountpoint: "/sysroot/var/lib/cvmboot-storage"}, nil
	}
	return &storage.Result{Facts: stage.Facts{"device": "/dev/mapper/cvmboot-storage"}, Encrypted: true,
		Cipher: "aes-xts-plain64", KeyBits: 768, Integrity: "hmac-sha256", SectorSize: 4096, Filesystem: "ext4",
		Mountpoint: "/run/kata-containers/image", PartUUID: "11111111-2222-4333-8444-555555555555", LUKSUUID: "l",
		Mounted: []string{"/run/kata-containers/image"}}, nil
}
func (f *fakeStorage) MountIntoRoot(*storage.Result) error {
	f.m.calls = append(f.m.calls, "storage into-root")
	return f.intoErr
}
func (f *fakeStorage) Abort(*storage.Result) { f.m.calls = append(f.m.calls, "storage abort") }

func TestStorageStage(t *testing.T) {
	boot := func(t *testing.T, fs *fakeStorage, upper ...config.OverlayUpper) (*fakeAttest, error) {
		m := fs.m
		att := &fakeAttest{present: true}
		cfg := plainConfig()
		cfg.Attest.Require = config.AttestTPM
		cfg.Storage.Enabled = true
		cfg.Overlay.Enabled = true
		if len(upper) > 0 {
			cfg.Overlay.Upper = upper[0]
		}
		cl, _ := cmdline.Parse("root=/dev/vda2")
		b := &Boot{Config: cfg, Cmdline: cl, Mounts: m, Modules: m, Devices: m, Attest: att,
			Storage: func(c config.Storage, root, _ string) StorageSetup { fs.rootDevice = root; return fs }}
		return att, (&stage.Runner{Report: &report.Report{}}).Run(context.Background(), pid1Stages(b))
	}
	t.Run("order and measurement", func(t *testing.T) {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		att, err := boot(t, &fakeStorage{m: m})
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, c := range m.calls {
			if strings.HasPrefix(c, "storage") || strings.HasPrefix(c, "overlay") || strings.HasPrefix(c, "switch") {
				order = append(order, strings.Fields(c)[0]+" "+strings.Fields(c)[1])
			}
		}
		// The binds inside the root come after the overlay (which would hide them), before the switch.
		if got := strings.Join(order, "|"); got != "storage setup|overlay /sysroot|storage into-root|switch /sysroot" {
			t.Errorf("order %q (calls %v)", got, m.calls)
		}
		if !strings.Contains(strings.Join(att.measured, ","), eventlog.TypeStorage) {
			t.Errorf("storage not measured: %v", att.measured)
		}
	})
	t.Run("overlay upper on the storage", func(t *testing.T) {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		if _, err := boot(t, &fakeStorage{m: m}, config.UpperStorage); err != nil {
			t.Fatal(err)
		}
		// No tmpfs (no size): the upper and work directories are on the encrypted volume.
		if !strings.Contains(strings.Join(m.calls, "|"), "overlay /sysroot /run/kata-containers/image/.cvmboot-root-overlay |") {
			t.Errorf("calls %v", m.calls)
		}
	})
	t.Run("overlay upper on a storage not mounted yet", func(t *testing.T) {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		_, err := boot(t, &fakeStorage{m: m, pending: true}, config.UpperStorage)
		var se *stage.Error
		if !errors.As(err, &se) || se.Stage != StageOverlay || !strings.Contains(err.Error(), "no storage is mounted under /run") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("setup fails closed", func(t *testing.T) {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		_, err := boot(t, &fakeStorage{m: m, setupErr: errors.New("disk /dev/vda: GPT entry 2 overlaps entry 1")})
		var se *stage.Error
		if !errors.As(err, &se) || se.Stage != StageStorage || !strings.Contains(err.Error(), "overlaps") {
			t.Fatalf("err %v", err)
		}
		if strings.Contains(strings.Join(m.calls, "|"), "switch") {
			t.Errorf("switched after a storage failure: %v", m.calls)
		}
	})
	t.Run("mounts inside the root fail closed", func(t *testing.T) {
		m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
		_, err := boot(t, &fakeStorage{m: m, intoErr: errors.New("mount /sysroot/var/lib/containers: read-only file system")})
		if err == nil || !strings.Contains(err.Error(), "storage mounts inside the root: mount /sysroot/var/lib/containers") {
			t.Fatalf("err %v", err)
		}
		calls := strings.Join(m.calls, "|")
		if !strings.Contains(calls, "storage abort") || strings.Contains(calls, "switch") {
			t.Errorf("calls %v", m.calls)
		}
	})
}

func TestPeakRSS(t *testing.T) {
	kib, err := peakRSSKiB("/proc/self/status")
	if err != nil || kib <= 0 {
		t.Fatalf("own VmHWM: %d, %v", kib, err)
	}
	p := filepath.Join(t.TempDir(), "status")
	os.WriteFile(p, []byte("Name:\tcvmboot\nVmPeak:\t  9000 kB\nVmHWM:\t    4242 kB\n"), 0o644)
	if kib, err := peakRSSKiB(p); err != nil || kib != 4242 {
		t.Errorf("VmHWM %d, %v", kib, err)
	}
	os.WriteFile(p, []byte("Name:\tcvmboot\n"), 0o644)
	if _, err := peakRSSKiB(p); err == nil || !strings.Contains(err.Error(), "has no VmHWM line") {
		t.Errorf("missing line: %v", err)
	}
}

// root.persistent is resolved in the plan: in the initrd (PID 1 or units) with a verified
// root only.
func TestPlanPersistent(t *testing.T) {
	hash := strings.Repeat("00", 32)
	cfg := config.Default()
	cfg.Storage.Enabled = false
	cfg.Root.Persistent = config.PersistentEncryptOnFirstBoot
	for _, tt := range []struct {
		mode       Mode
		line, want string
	}{
		{ModeInitramfs, "roothash=" + hash, ""},
		{ModeSystemdInitrd, "roothash=" + hash, ""},
		{ModeSystemd, "roothash=" + hash, "is made in the initrd"},
		{ModeInitramfs, "root=/dev/vda2", "the command line has no roothash="},
		{ModeInitramfs, "roothash=" + hash + " usrhash=" + hash, "with usrhash= is not supported"},
	} {
		cl, err := cmdline.Parse(tt.line)
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Clone()
		if !strings.Contains(tt.line, "roothash") {
			c.Verity.Required = false
		}
		p, err := NewPlan(tt.mode, c, cl)
		switch {
		case tt.want == "" && (err != nil || !p.Persistent):
			t.Errorf("%s %q: %v, persistent %v", tt.mode, tt.line, err, p != nil && p.Persistent)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s %q: %v, want %q", tt.mode, tt.line, err, tt.want)
		}
	}
}

// fakePersist records whether the persistent root was opened and grown, and forgotten.
type fakePersist struct {
	opened, forgotten int
	grown, maintained []string
	keys              *eventlog.PersistentRootKeys // what MaintainMounted changed
}

func (f *fakePersist) Open(context.Context, string, string) (*persist.Result, error) {
	f.opened++
	return &persist.Result{Device: "/dev/mapper/cvmboot-root", Facts: map[string]string{},
		Partition: &disk.Partition{Path: "/dev/vda4", PartUUID: "0fc2a1b6-7c0e-4d6a-9c1e-2a4f5b6c7d8e"}, KeyDigest: "d1",
		Event: eventlog.PersistentRoot{LUKSUUID: "6f1c0d52-0000-4000-8000-000000000001"}}, nil
}
func (f *fakePersist) MountRoot(*persist.Result, string) (map[string]string, error) { return nil, nil }
func (f *fakePersist) Forget()                                                      { f.forgotten++ }
func (f *fakePersist) GrowMounted(dev, target string) (map[string]string, error) {
	f.grown = append(f.grown, dev+" "+target)
	return map[string]string{"device": dev}, nil
}
func (f *fakePersist) MaintainMounted(part *disk.Partition, luksUUID, keyDigest, target string, _ map[string]string) (*eventlog.PersistentRootKeys, error) {
	f.maintained = append(f.maintained, part.Path+" "+part.PartUUID+" "+luksUUID+" "+keyDigest+" "+target)
	return f.keys, nil
}

// In a systemd initrd the persistent-root unit opens the root, forgets the key, and leaves
// the device to sysroot.mount; the root unit (another process, reading the decisions) checks
// that /sysroot is that device and grows it, and the overlay stays off.
func TestPersistSystemdInitrd(t *testing.T) {
	fp, att := &fakePersist{}, &fakeAttest{present: true}
	dec := &Decisions{Attested: true, Measuring: true, Verity: []VerityVolume{{Name: "root", Device: "/dev/mapper/root", RootHash: "00"}}}
	b := &Boot{Config: config.Default(), Mode: ModeSystemdInitrd, Attest: att, Plan: &Plan{Persistent: true}, CmdlinePin: "sha256:00",
		measuring: true, Persist: func() PersistentRoot { return fp }, dec: dec}
	if _, err := b.persist(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fp.forgotten != 1 || b.persistRes != nil || dec.Persistent == nil || dec.Persistent.Device != "/dev/mapper/cvmboot-root" {
		t.Fatalf("after the persistent-root step: forgotten %d, held %v, decision %+v", fp.forgotten, b.persistRes != nil, dec.Persistent)
	}
	noStep := &Boot{Config: config.Default(), Mode: ModeSystemdInitrd, Plan: &Plan{Persistent: true},
		Mounts: &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/mapper/root"}}, dec: &Decisions{}}
	if _, err := noStep.root(context.Background()); err == nil || !strings.Contains(err.Error(), "no persistent-root step activated") {
		t.Errorf("root.persistent without the persistent-root step: %v", err)
	}
	// The root unit retires a keyslot: measured.
	fp.keys = &eventlog.PersistentRootKeys{LUKSUUID: dec.Persistent.LUKSUUID, Retired: []int{0}}
	for _, tt := range []struct{ mounted, want string }{
		{"/dev/mapper/root", "not from the persistent root /dev/mapper/cvmboot-root"},
		{"", "nothing is mounted at /sysroot"},
		{"/dev/mapper/cvmboot-root", ""},
	} {
		m := &fakeMachine{mountedAt: map[string]string{NewRoot: tt.mounted}}
		fp.grown, fp.maintained, att.measured = nil, nil, nil
		root := &Boot{Config: config.Default(), Mode: ModeSystemdInitrd, Plan: &Plan{Persistent: true}, Mounts: m, Attest: att,
			Persist: func() PersistentRoot { return fp }, dec: dec}
		facts, err := root.root(context.Background())
		switch {
		case tt.want == "" && (err != nil || len(fp.grown) != 1 || facts["mounted_by"] == "" ||
			!slices.Equal(fp.maintained, []string{"/dev/vda4 0fc2a1b6-7c0e-4d6a-9c1e-2a4f5b6c7d8e 6f1c0d52-0000-4000-8000-000000000001 d1 " + NewRoot}) ||
			!slices.Equal(att.measured, []string{eventlog.TypePersistentRootKeys})):
			t.Errorf("/sysroot from %q: %v, grown %v, keys maintained %v, measured %v", tt.mounted, err, fp.grown, fp.maintained, att.measured)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || len(fp.grown) != 0):
			t.Errorf("/sysroot from %q: %v, grown %v; want %q", tt.mounted, err, fp.grown, tt.want)
		}
		if tt.want == "" {
			var skip *stage.SkipError
			if _, err := root.overlay(context.Background()); !errors.As(err, &skip) {
				t.Errorf("overlay over the persistent root: %v", err)
			}
		}
	}
	// A decision without the key digest, and a boot that measures nothing: refused before
	// the root is grown or a keyslot touched.
	noMeasure := config.Default()
	noMeasure.Attest.Require = config.AttestNone
	full := *dec.Persistent
	noDigest := full
	noDigest.KeyDigest = ""
	for _, tt := range []struct {
		cfg  *config.Config
		dec  *Decisions
		want string
	}{
		{config.Default(), &Decisions{Attested: true, Measuring: true, Persistent: &noDigest}, "no partition or key digest"},
		{noMeasure, &Decisions{Attested: true, Persistent: &full}, "this boot measures nothing"},
	} {
		fp.grown, fp.maintained = nil, nil
		root := &Boot{Config: tt.cfg, Mode: ModeSystemdInitrd, Plan: &Plan{Persistent: true}, Attest: att,
			Mounts:  &fakeMachine{mountedAt: map[string]string{NewRoot: "/dev/mapper/cvmboot-root"}},
			Persist: func() PersistentRoot { return fp }, dec: tt.dec}
		if _, err := root.root(context.Background()); err == nil || !strings.Contains(err.Error(), tt.want) || len(fp.grown)+len(fp.maintained) != 0 {
			t.Errorf("root: %v (grown %v, maintained %v), want %q", err, fp.grown, fp.maintained, tt.want)
		}
	}
}

// The persistent root is never opened for a command line the host may change, nor when
// cvmboot's leave-initrd will not reach the TPM.
func TestPersistRefusals(t *testing.T) {
	for _, tt := range []struct {
		pin       string
		measuring bool
		want      string
	}{
		{"", true, "needs a pinned command line"},
		{"sha256:00", false, "needs cvmboot's measurements in the TPM"},
		{"sha256:00", true, ""},
	} {
		fp, att := &fakePersist{}, &fakeAttest{present: true}
		b := &Boot{Config: config.Default(), Mode: ModeInitramfs, Attest: att, Plan: &Plan{Persistent: true}, CmdlinePin: tt.pin,
			measuring: tt.measuring, Persist: func() PersistentRoot { return fp },
			dec: &Decisions{Verity: []VerityVolume{{Name: "root", Device: "/dev/mapper/root", RootHash: "00"}}}}
		_, err := b.persist(context.Background())
		switch {
		case tt.want == "" && (err != nil || fp.opened != 1 || len(att.measured) != 1):
			t.Errorf("pin %q measuring %v: %v, opened %d", tt.pin, tt.measuring, err, fp.opened)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || fp.opened != 0):
			t.Errorf("pin %q measuring %v: %v, opened %d; want %q", tt.pin, tt.measuring, err, fp.opened, tt.want)
		}
	}
}
