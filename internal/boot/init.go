package boot

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// Env is what a boot needs from the machine. Real() gives the real one.
type Env struct {
	Mounts  Mounts
	Modules Modules
	Devices Devices
	Attest  Attestation
	Verity  Verity
	// InitdataSource finds and installs Confidential Containers' initdata.
	InitdataSource InitdataSource
	// Storage builds the storage stage for the config, the root device and the root the
	// mounts outside /run go into.
	Storage func(cfg config.Storage, rootDevice, targetRoot string) StorageSetup
	// Persist builds the persistent root's stage (root.persistent) for the config.
	Persist func(cfg *config.Config) PersistentRoot
	System  failaction.System
	// Bootstrap mounts what reading the command line and logging need (/proc, /dev) before
	// anything else runs; it returns what it mounted.
	Bootstrap func() ([]string, error)
	// Setup builds the boot's logger and hands the effective config to the machine, once
	// the command line and config are known.
	Setup func(cfg *config.Config) *zap.Logger
	// Emergency prints a line at emergency priority to the console and the kernel log.
	Emergency func(msg string)
	// Exec replaces the process with the real init; it returns only on failure.
	Exec func(path string, argv []string) error
	// WarmInit asks the kernel to read the new root's init and the shared objects it loads
	// (PID 1 mode, once the root is mounted) and returns what it asked for; nil does nothing.
	WarmInit func(root, init string) stage.Facts
	// HandoffArgs returns extra arguments for init after the switch (systemd's
	// --switched-root and state); nil for an init that needs none.
	HandoffArgs func(init string, start initrdStart) ([]string, error)

	CmdlinePath string
	// CmdlinePinPath is the command line the image was built for (cmdline.PinPath); absent
	// when the image pins none.
	CmdlinePinPath string
	// EFIVarsDir is efivarfs, where the host-writable SystemdOptions variable would add to the
	// command line systemd reads; "" checks nothing.
	EFIVarsDir      string
	ConfigPath      string
	ModulesLoadPath string // the initramfs's module list; absent means none
	ReportPath      string
	DecisionsPath   string // what a unit's steps decided, for the later units (DecisionsPath)
	InitrdRelease   string // exists in a systemd initrd (units only)
	Clock           stage.Clock
}

// readModulesLoad reads the module list the initramfs builder wrote: one name per line,
// '#' comments. A missing file means the initramfs carries no modules.
func readModulesLoad(path string) ([]string, error) {
	if path == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("module list %s: %w", path, err)
	}
	var names []string
	for _, line := range strings.Split(string(raw), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			names = append(names, line)
		}
	}
	return names, nil
}

func readCmdline(path string) (*cmdline.Cmdline, string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("kernel command line: %w", err)
	}
	cl, err := cmdline.Parse(string(raw))
	return cl, string(raw), err
}

// loadConfig reads the config file (defaults when absent) and applies the command line's
// cvmboot.* overrides.
func loadConfig(path string, cl *cmdline.Cmdline) (*config.Config, *report.Config, error) {
	_, statErr := os.Stat(path)
	cfg, err := config.LoadOrDefault(path)
	if err != nil {
		return nil, nil, err
	}
	overrides := cl.WithPrefix(config.CmdlinePrefix)
	if err := cfg.ApplyCmdline(overrides); err != nil {
		return nil, nil, err
	}
	info := &report.Config{Path: path, Found: statErr == nil}
	d := cfg.Digest()
	info.SHA256 = fmt.Sprintf("%x", d[:])
	for _, kv := range overrides {
		info.Overrides = append(info.Overrides, kv.Key+"="+kv.Value)
	}
	return cfg, info, nil
}

// uptimeSeconds reads CLOCK_BOOTTIME: how long the kernel ran before cvmboot started.
func uptimeSeconds() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// bootstrapMounts mounts /proc and /dev when they are not there yet: the command line and
// the kernel log need them before the boot sequence can even be configured. The
// early-mounts stage finds them mounted and does the rest.
func bootstrapMounts() ([]string, error) {
	var mounted []string
	for _, m := range []struct{ fstype, target, check, data string }{
		{"proc", "/proc", "/proc/self", ""},
		{"devtmpfs", "/dev", "/dev/kmsg", "mode=0755"},
	} {
		if _, err := os.Stat(m.check); err == nil {
			continue
		}
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return mounted, fmt.Errorf("bootstrap: %w", err)
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return mounted, fmt.Errorf("bootstrap: mount %s on %s: %w", m.fstype, m.target, err)
		}
		mounted = append(mounted, m.target)
	}
	return mounted, nil
}

// emergency writes msg at priority 0 to the kernel log (which prints it on every console)
// and straight to /dev/console, in case the kernel log is unwritable.
func emergency(msg string) {
	msg = strings.TrimRight(msg, "\n")
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		for len(msg) > 0 {
			n := min(len(msg), 900) // under the kernel's per-record limit
			f.Write([]byte("<0>" + msg[:n] + "\n"))
			msg = msg[n:]
		}
		f.Close()
		return
	}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		f.Write([]byte(msg + "\n"))
		f.Close()
	}
}
