package serve_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/serve"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// verityUevent is a uevent as dm-verity's verity_handle_err sends it for dm-0 (the block layer
// adds MAJOR, MINOR, DEVNAME, DEVTYPE; kobject_uevent adds ACTION, DEVPATH, SUBSYSTEM, SEQNUM).
func verityUevent(value string) []byte {
	return []byte("change@/devices/virtual/block/dm-0\x00ACTION=change\x00DEVPATH=/devices/virtual/block/dm-0\x00" +
		"SUBSYSTEM=block\x00" + "DM_VERITY_ERR_BLOCK_NR=" + value + "\x00MAJOR=253\x00MINOR=0\x00DEVNAME=dm-0\x00DEVTYPE=disk\x00SEQNUM=4242\x00")
}

// fakeSystem records reboots instead of doing them.
type fakeSystem struct{ reboots []int }

func (f *fakeSystem) Sync()                       {}
func (f *fakeSystem) Reboot(cmd int) error        { f.reboots = append(f.reboots, cmd); return unix.EPERM }
func (f *fakeSystem) Exit(int)                    { panic("exit") }
func (f *fakeSystem) Exec(string, []string) error { panic("exec") }
func (f *fakeSystem) rebooted() bool {
	return len(f.reboots) == 1 && f.reboots[0] == unix.LINUX_REBOOT_CMD_RESTART
}

// sysfsDM makes a sysfs tree in which block device dev is the device-mapper device dmName.
func sysfsDM(t testing.TB, dev, dmName string) string {
	t.Helper()
	sys := t.TempDir()
	dir := filepath.Join(sys, "devices/virtual/block", dev, "dm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "name"), []byte(dmName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return sys
}

func TestParseCorruption(t *testing.T) {
	tests := []struct {
		name    string
		msg     []byte
		ok      bool
		want    serve.Corruption
		wantErr string
	}{
		{"data block", verityUevent("0,1234"), true, serve.Corruption{DevPath: "/devices/virtual/block/dm-0", Device: "/dev/dm-0", Type: serve.BlockData, Block: 1234}, ""},
		{"metadata block", verityUevent("1,18446744073709551615"), true, serve.Corruption{DevPath: "/devices/virtual/block/dm-0", Device: "/dev/dm-0", Type: serve.BlockMetadata, Block: 1<<64 - 1}, ""},
		{"other change", []byte("change@/devices/virtual/block/dm-0\x00ACTION=change\x00SUBSYSTEM=block\x00DM_NAME=root\x00"), false, serve.Corruption{}, ""},
		{"add event", []byte("add@/devices/virtual/block/dm-1\x00ACTION=add\x00SUBSYSTEM=block\x00"), false, serve.Corruption{}, ""},
		{"unknown type", verityUevent("2,5"), false, serve.Corruption{}, `block type "2"`},
		{"no comma", verityUevent("5"), false, serve.Corruption{}, "expected <type>,<block>"},
		{"bad block", verityUevent("0,-1"), false, serve.Corruption{}, `block number "-1"`},
		{"overflow", verityUevent("0,18446744073709551616"), false, serve.Corruption{}, "not a decimal number"},
		{"not change", []byte("add@/devices/virtual/block/dm-0\x00ACTION=add\x00DM_VERITY_ERR_BLOCK_NR=0,1\x00"), false, serve.Corruption{}, "not a change event"},
		{"no DEVNAME", []byte("change@/devices/virtual/block/dm-3\x00DM_VERITY_ERR_BLOCK_NR=0,7\x00"), true, serve.Corruption{DevPath: "/devices/virtual/block/dm-3", Type: serve.BlockData, Block: 7}, ""},
		{"DEVNAME escapes /dev", []byte("change@/devices/virtual/block/dm-3\x00DEVNAME=../../etc/x\x00DM_VERITY_ERR_BLOCK_NR=0,7\x00"), true, serve.Corruption{DevPath: "/devices/virtual/block/dm-3", Device: "/dev/etc/x", Type: serve.BlockData, Block: 7}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := blockdev.ParseUevent(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			c, ok, err := serve.ParseCorruption(ev)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || ok != tt.ok || c != tt.want {
				t.Errorf("got %+v, %v, %v; want %+v, %v", c, ok, err, tt.want, tt.ok)
			}
		})
	}
}

func TestWatcherActions(t *testing.T) {
	tests := []struct {
		name       string
		policy     serve.Policy
		dmName     string
		sender     uint32
		msg        []byte
		wantLogged bool
		wantReboot bool
		wantSource string
	}{
		{"panic: the kernel acts", serve.Policy{Configured: config.CorruptionPanic, ConfigSource: "config"}, "root", 0, verityUevent("0,99"), true, false, "config"},
		{"restart reboots", serve.Policy{Configured: config.CorruptionRestart, ConfigSource: "config"}, "root", 0, verityUevent("1,3"), true, true, "config"},
		{"ignore logs only", serve.Policy{Configured: config.CorruptionIgnore, ConfigSource: "config"}, "root", 0, verityUevent("0,1"), true, false, "config"},
		{"measured wins over config", serve.Policy{Configured: config.CorruptionIgnore, Measured: map[string]config.CorruptionAction{"root": config.CorruptionRestart}}, "root", 0, verityUevent("0,1"), true, true, "measured cvmboot.verity event for root"},
		{"measured for another device", serve.Policy{Configured: config.CorruptionIgnore, ConfigSource: "config", Measured: map[string]config.CorruptionAction{"usr": config.CorruptionRestart}}, "root", 0, verityUevent("0,1"), true, false, "config"},
		{"override wins", serve.Policy{Override: config.CorruptionRestart, Measured: map[string]config.CorruptionAction{"root": config.CorruptionIgnore}}, "root", 0, verityUevent("0,1"), true, true, "--on-corruption"},
		{"no policy: panic default", serve.Policy{}, "", 0, verityUevent("0,1"), true, false, "the default"},
		{"user-space sender ignored", serve.Policy{Configured: config.CorruptionRestart}, "root", 4321, verityUevent("0,1"), false, false, ""},
		{"other events ignored", serve.Policy{Configured: config.CorruptionRestart}, "root", 0, []byte("change@/devices/virtual/block/dm-0\x00ACTION=change\x00"), false, false, ""},
		{"garbage ignored", serve.Policy{Configured: config.CorruptionRestart}, "root", 0, []byte("libudev\x00\xfe\xed"), false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			sys := &fakeSystem{}
			w := &serve.Watcher{Log: zap.New(core), Policy: &tt.policy, SysfsDir: sysfsDM(t, "dm-0", tt.dmName), System: sys}
			c, err := w.HandleMessage(tt.msg, tt.sender)
			if err != nil {
				t.Fatal(err)
			}
			crit := logs.FilterLevelExact(zapcore.DPanicLevel).All()
			if !tt.wantLogged {
				if c != nil || len(crit) != 0 || len(sys.reboots) != 0 {
					t.Fatalf("acted on the message: %+v, %d critical entries, reboots %v", c, len(crit), sys.reboots)
				}
				return
			}
			if c == nil || len(crit) != 1 {
				t.Fatalf("corruption %+v, %d critical entries; want one", c, len(crit))
			}
			fields := crit[0].ContextMap()
			if fields["device"] != "/dev/dm-0" || fields["dm_name"] != tt.dmName || fields["block"] != c.Block || fields["block_type"] != c.Type {
				t.Errorf("critical entry fields %v", fields)
			}
			if src, _ := fields["action_source"].(string); !strings.Contains(src, tt.wantSource) {
				t.Errorf("action source %q, want it to contain %q", src, tt.wantSource)
			}
			if !strings.Contains(crit[0].Message, "block "+verityBlock(tt.msg)) {
				t.Errorf("message %q does not name the block", crit[0].Message)
			}
			if sys.rebooted() != tt.wantReboot {
				t.Errorf("reboots %v, want reboot %v", sys.reboots, tt.wantReboot)
			}
			if tt.wantReboot && logs.FilterMessageSnippet("the reboot failed").Len() != 1 {
				t.Errorf("the failed (fake) reboot was not logged")
			}
		})
	}
}

// verityBlock returns the block number of a verityUevent message.
func verityBlock(msg []byte) string {
	ev, _ := blockdev.ParseUevent(msg)
	_, block, _ := strings.Cut(ev.Env[serve.VerityErrEnv], ",")
	return block
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "eventlog")
	log, err := measure.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Verity{Target: "root", RootHash: strings.Repeat("ab", 32), HashAlgorithm: "sha256", OnCorruption: "restart"}.Event(),
		eventlog.Verity{Target: "usr", RootHash: strings.Repeat("cd", 32), HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
	} {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("config.yaml", "debug:\n  enabled: true\nverity:\n  on_corruption: ignore\n")
	plain := write("cmdline", "console=ttyS0 root=PARTUUID=x\n")
	override := write("cmdline-override", "console=ttyS0 cvmboot.verity.on_corruption=restart\n")
	badCfg := write("bad.yaml", "verity:\n  on_corruption: explode\n")

	tests := []struct {
		name, eventLog, config, cmdline string
		measured                        map[string]config.CorruptionAction
		configured                      config.CorruptionAction
		warnings                        []string
	}{
		{"everything", logPath, cfg, plain, map[string]config.CorruptionAction{"root": "restart", "usr": "panic"}, "ignore", nil},
		{"command line override", logPath, cfg, override, map[string]config.CorruptionAction{"root": "restart", "usr": "panic"}, "restart", nil},
		{"nothing there", filepath.Join(dir, "none"), filepath.Join(dir, "none.yaml"), plain, map[string]config.CorruptionAction{}, "panic", nil},
		{"bad config", filepath.Join(dir, "none"), badCfg, plain, map[string]config.CorruptionAction{}, "panic", []string{"explode"}},
		{"bad event log", cfg, filepath.Join(dir, "none.yaml"), plain, map[string]config.CorruptionAction{}, "panic", []string{"event log"}},
		{"no command line", filepath.Join(dir, "none"), cfg, filepath.Join(dir, "none"), map[string]config.CorruptionAction{}, "ignore", []string{"kernel command line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, warnings := serve.LoadPolicy(tt.eventLog, tt.config, tt.cmdline)
			if len(p.Measured) != len(tt.measured) {
				t.Errorf("measured %v, want %v", p.Measured, tt.measured)
			}
			for k, v := range tt.measured {
				if p.Measured[k] != v {
					t.Errorf("measured %v, want %v", p.Measured, tt.measured)
				}
			}
			if p.Configured != tt.configured {
				t.Errorf("configured %q, want %q (%s)", p.Configured, tt.configured, p.ConfigSource)
			}
			if len(warnings) != len(tt.warnings) {
				t.Fatalf("warnings %q, want %d", warnings, len(tt.warnings))
			}
			for i, w := range tt.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q does not mention %q", warnings[i], w)
				}
			}
		})
	}
}

func TestParseCorruptionAction(t *testing.T) {
	for _, s := range []string{"panic", "restart", "ignore"} {
		if a, err := serve.ParseCorruptionAction(s); err != nil || string(a) != s {
			t.Errorf("%s: %q %v", s, a, err)
		}
	}
	for _, s := range []string{"", "Panic", "reboot"} {
		if _, err := serve.ParseCorruptionAction(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestWatcherRun opens the real uevent socket (no privilege needed) and stops with its context.
func TestWatcherRun(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	w := &serve.Watcher{Log: zap.New(core), Policy: &serve.Policy{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessageSnippet("watching").Len() == 0 && time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Skipf("no uevent socket here: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// FuzzVerityUevent: uevent bytes never crash the handler, a message is acted on only when it
// carries a well-formed DM_VERITY_ERR_BLOCK_NR, and only a restart policy reboots.
func FuzzVerityUevent(f *testing.F) {
	f.Add(verityUevent("0,1234"), uint32(0))
	f.Add(verityUevent("1,0"), uint32(0))
	f.Add(verityUevent("3,x"), uint32(0))
	f.Add([]byte("change@/devices/virtual/block/dm-0\x00DM_VERITY_ERR_BLOCK_NR=0,1"), uint32(7))
	f.Add([]byte("add@/devices/virtual/block/loop0\x00ACTION=add\x00SUBSYSTEM=block\x00"), uint32(0))
	sys := sysfsDM(f, "dm-0", "root")
	f.Fuzz(func(t *testing.T, msg []byte, sender uint32) {
		fake := &fakeSystem{}
		w := &serve.Watcher{Log: zap.NewNop(), Policy: &serve.Policy{Measured: map[string]config.CorruptionAction{"root": config.CorruptionRestart}}, SysfsDir: sys, System: fake}
		c, err := w.HandleMessage(msg, sender)
		if c == nil {
			if len(fake.reboots) != 0 {
				t.Fatalf("rebooted without a corruption (err %v)", err)
			}
			return
		}
		if sender != 0 || err != nil || (c.Type != serve.BlockData && c.Type != serve.BlockMetadata) {
			t.Fatalf("acted on %+v from %d (err %v)", c, sender, err)
		}
		if c.Device != "" && !strings.HasPrefix(c.Device, "/dev/") {
			t.Fatalf("device %q outside /dev", c.Device)
		}
	})
}
