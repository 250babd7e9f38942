package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/pkg/report"
)

type fakeSystem struct{ rebootCmd int }

func (f *fakeSystem) Sync()                       {}
func (f *fakeSystem) Reboot(cmd int) error        { f.rebootCmd = cmd; return os.ErrPermission }
func (f *fakeSystem) Exit(int)                    {}
func (f *fakeSystem) Exec(string, []string) error { return os.ErrNotExist }

type initHarness struct {
	env       Env
	sys       *fakeSystem
	emergency []string
	execPath  string
	execArgs  []string
}

func newInitHarness(t *testing.T, cmdline, configYAML string, m *fakeMachine) *initHarness {
	dir := t.TempDir()
	h := &initHarness{sys: &fakeSystem{}}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	h.env = Env{
		Mounts: m, Modules: m, Devices: m, Attest: &fakeAttest{}, System: h.sys,
		Bootstrap: func() ([]string, error) { return []string{"/proc"}, nil },
		Setup:     func(*config.Config) *zap.Logger { return zap.NewNop() },
		Emergency: func(msg string) { h.emergency = append(h.emergency, msg) },
		Exec: func(p string, argv []string) error {
			h.execPath, h.execArgs = p, argv
			return os.ErrPermission
		},
		CmdlinePath:   write("cmdline", cmdline+"\n"),
		ConfigPath:    filepath.Join(dir, "config.yaml"),
		ReportPath:    filepath.Join(dir, "run", "report.json"),
		DecisionsPath: filepath.Join(dir, "run", "decisions.json"),
	}
	if configYAML != "" {
		write("config.yaml", configYAML)
	}
	return h
}

const plainYAML = `
verity: {required: false}
attest: {require: none}
storage: {enabled: false}
overlay: {enabled: false}
`

func TestRunInitHandsOff(t *testing.T) {
	m := &fakeMachine{devices: map[string]string{"/dev/vda2": "/dev/vda2"}}
	h := newInitHarness(t, "root=/dev/vda2 -- --switched", plainYAML, m)
	h.env.ModulesLoadPath = filepath.Join(t.TempDir(), "modules.load")
	if err := os.WriteFile(h.env.ModulesLoadPath, []byte("# comment\nvirtio_pci\n\n virtio_blk \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var atExec report.Outcome
	exec := h.env.Exec
	h.env.Exec = func(p string, argv []string) error {
		if rep, err := report.ReadFile(h.env.ReportPath); err == nil {
			atExec = rep.Outcome
		}
		return exec(p, argv)
	}
	var warmed []string
	h.env.WarmInit = func(root, init string) stage.Facts {
		warmed = append(warmed, root+" "+init)
		return stage.Facts{"read_ahead": "test"}
	}
	RunInit(h.env)
	// The read-ahead starts once, on the mounted root, for the init the handoff executes.
	if strings.Join(warmed, "|") != NewRoot+" /sbin/init" {
		t.Errorf("read-ahead %q, want once for %s /sbin/init", warmed, NewRoot)
	}
	// The handoff is the boot's last step: the report says ok before init runs.
	if atExec != report.OutcomeOK {
		t.Errorf("report outcome at exec %q, want ok", atExec)
	}
	if !strings.Contains(strings.Join(m.calls, "|"), "modules virtio_pci,virtio_blk") {
		t.Errorf("the initramfs's module list was not loaded: %v", m.calls)
	} // the fake exec fails, so it returns after the failure action
	if h.execPath != "/sbin/init" || strings.Join(h.execArgs, " ") != "/sbin/init --switched" {
		t.Fatalf("exec %q %q", h.execPath, h.execArgs)
	}
	rep, err := report.ReadFile(h.env.ReportPath)
	if err != nil {
		t.Fatal(err)
	}
	// The exec failure is the handoff's failure; every stage before it ran.
	if rep.Outcome != report.OutcomeFailed || rep.Failure.Stage != StageHandoff || len(rep.Stages) != len(StepsOf(ModeInitramfs)) {
		t.Fatalf("report %+v", rep)
	}
	if rep.Config == nil || !rep.Config.Found || len(rep.Config.SHA256) != 64 || rep.Cmdline == "" {
		t.Errorf("config info %+v cmdline %q", rep.Config, rep.Cmdline)
	}
	for _, st := range rep.Stages {
		if st.Name == StageRoot && st.Facts["read_ahead"] != "test" {
			t.Errorf("root step facts %v lack the read-ahead", st.Facts)
		}
	}
}

func TestRunInitFailureAction(t *testing.T) {
	m := &fakeMachine{}
	h := newInitHarness(t, "root=PARTUUID=0000 cvmboot.failure.action=reboot", plainYAML, m)
	if code := RunInit(h.env); code == 0 {
		t.Fatal("RunInit returned 0 after a failure")
	}
	if h.execPath != "" {
		t.Fatal("init was executed after a failed stage")
	}
	if h.sys.rebootCmd != 0x01234567 { // LINUX_REBOOT_CMD_RESTART
		t.Errorf("reboot cmd %#x, want restart", h.sys.rebootCmd)
	}
	got := strings.Join(h.emergency, "\n")
	for _, want := range []string{"cvmboot: FATAL: stage root failed: root device: PARTUUID=0000 did not appear within 30s", "cvmboot: failure action: reboot"} {
		if !strings.Contains(got, want) {
			t.Errorf("emergency output lacks %q:\n%s", want, got)
		}
	}
	rep, err := report.ReadFile(h.env.ReportPath)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failure == nil || rep.Failure.Action != "reboot" || rep.Failure.Stage != StageRoot {
		t.Errorf("failure %+v", rep.Failure)
	}
}

func TestRunInitBadConfigPowersOff(t *testing.T) {
	h := newInitHarness(t, "root=/dev/vda2", "stroage: {}\n", &fakeMachine{})
	RunInit(h.env)
	if h.sys.rebootCmd != 0x4321fedc { // LINUX_REBOOT_CMD_POWER_OFF
		t.Errorf("reboot cmd %#x, want power off", h.sys.rebootCmd)
	}
	if got := strings.Join(h.emergency, "\n"); !strings.Contains(got, `stage config failed: `+h.env.ConfigPath+`:1: unknown key "stroage"`) {
		t.Errorf("emergency output:\n%s", got)
	}
}

func TestRunInitBadOverrideNamesKey(t *testing.T) {
	h := newInitHarness(t, "root=/dev/vda2 cvmboot.storage.integrity=x", plainYAML, &fakeMachine{})
	RunInit(h.env)
	if got := strings.Join(h.emergency, "\n"); !strings.Contains(got, `cvmboot.storage.integrity: "x" is not allowed`) {
		t.Errorf("emergency output:\n%s", got)
	}
}

func TestSystemdHandoff(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "lib", "systemd", "systemd")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	init := filepath.Join(dir, "init")
	if err := os.Symlink(bin, init); err != nil {
		t.Fatal(err)
	}
	args, err := systemdHandoffArgs(init, initrdStart{realtime: 1700000000123456, monotonic: 3141592})
	if err != nil || len(args) != 3 || args[0] != "--switched-root" || args[1] != "--system" || !strings.HasPrefix(args[2], "--deserialize=") {
		t.Fatalf("args %q err %v", args, err)
	}
	fd := strings.TrimPrefix(args[2], "--deserialize=")
	state, err := os.ReadFile("/proc/self/fd/" + fd)
	if err != nil || string(state) != "initrd-timestamp=1700000000123456 3141592\n\n" {
		t.Errorf("state %q err %v", state, err)
	}
	// Any other init gets nothing.
	other := filepath.Join(dir, "rootcheck")
	if err := os.WriteFile(other, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if args, err := systemdHandoffArgs(other, initrdStart{}); args != nil || err != nil {
		t.Errorf("non-systemd init: %q %v", args, err)
	}
}
