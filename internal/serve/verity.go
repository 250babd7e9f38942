package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/internal/logging"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// VerityErrEnv is the uevent variable dm-verity sets on a corrupted block (verity_handle_err in
// drivers/md/dm-verity-target.c): "<type>,<block>".
const VerityErrEnv = "DM_VERITY_ERR_BLOCK_NR"

// Block types of VerityErrEnv (enum verity_block_type).
const (
	BlockData     = "data"     // 0: a data block failed its hash
	BlockMetadata = "metadata" // 1: a hash tree block failed its parent's hash
)

// Corruption is one corrupted block dm-verity reported.
type Corruption struct {
	DevPath string // below /sys, e.g. /devices/virtual/block/dm-0
	Device  string // /dev/dm-0 (from DEVNAME), or "" when the event has none
	Type    string // BlockData or BlockMetadata
	Block   uint64 // block number in the data device (data) or hash device (metadata)
}

// ParseCorruption reads a dm-verity corruption out of a uevent. ok is false for every other
// event; an event carrying VerityErrEnv in a shape the kernel never sends is an error.
func ParseCorruption(ev blockdev.Uevent) (c Corruption, ok bool, err error) {
	value, has := ev.Env[VerityErrEnv]
	if !has {
		return c, false, nil
	}
	if ev.Action != "change" {
		return c, false, fmt.Errorf("uevent %s@%s carries %s but is not a change event", ev.Action, ev.DevPath, VerityErrEnv)
	}
	typ, block, found := strings.Cut(value, ",")
	if !found {
		return c, false, fmt.Errorf("uevent %s: %s=%q, expected <type>,<block>", ev.DevPath, VerityErrEnv, value)
	}
	switch typ {
	case "0":
		c.Type = BlockData
	case "1":
		c.Type = BlockMetadata
	default:
		return c, false, fmt.Errorf("uevent %s: %s=%q: block type %q, expected 0 (data) or 1 (metadata)", ev.DevPath, VerityErrEnv, value, typ)
	}
	if c.Block, err = strconv.ParseUint(block, 10, 64); err != nil {
		return c, false, fmt.Errorf("uevent %s: %s=%q: block number %q is not a decimal number", ev.DevPath, VerityErrEnv, value, block)
	}
	c.DevPath = ev.DevPath
	if name := ev.Env["DEVNAME"]; name != "" {
		c.Device = "/dev/" + strings.TrimPrefix(path.Clean("/"+name), "/")
	}
	return c, true, nil
}

// Policy decides what the daemon does about a corrupted block, per device.
type Policy struct {
	// Override is --on-corruption; empty when not given.
	Override config.CorruptionAction
	// Measured maps a verity target ("root", "usr": the dm name) to the on_corruption of the
	// cvmboot.verity event the boot measured for it.
	Measured map[string]config.CorruptionAction
	// Configured is verity.on_corruption of the config file with the command line's overrides.
	Configured config.CorruptionAction
	// ConfigSource says where Configured came from, for the log.
	ConfigSource string
}

// For returns the action for the device named dmName and where it came from.
func (p *Policy) For(dmName string) (config.CorruptionAction, string) {
	if p.Override != "" {
		return p.Override, "--on-corruption"
	}
	if a, ok := p.Measured[dmName]; ok && dmName != "" {
		return a, "the boot's measured cvmboot.verity event for " + dmName
	}
	if p.Configured != "" {
		return p.Configured, p.ConfigSource
	}
	return config.CorruptionPanic, "the default"
}

// ParseCorruptionAction checks a panic|restart|ignore word.
func ParseCorruptionAction(s string) (config.CorruptionAction, error) {
	switch a := config.CorruptionAction(s); a {
	case config.CorruptionPanic, config.CorruptionRestart, config.CorruptionIgnore:
		return a, nil
	}
	return "", fmt.Errorf("corruption action %q: expected panic, restart or ignore", s)
}

// LoadPolicy reads the measured verity events from the event log at eventLogPath and the config
// at configPath with the overrides of the kernel command line at cmdlinePath. What cannot be
// read is left out and reported in warnings; the policy then falls back further.
func LoadPolicy(eventLogPath, configPath, cmdlinePath string) (p *Policy, warnings []string) {
	p = &Policy{Measured: map[string]config.CorruptionAction{}}
	if data, err := readEventLog(eventLogPath); err == nil {
		recs, err := eventlog.ParseLog(data)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("event log %s: %v", eventLogPath, err))
		}
		for i := range recs {
			if recs[i].Type() != eventlog.TypeVerity {
				continue
			}
			var v eventlog.Verity
			if err := json.Unmarshal(recs[i].Data(), &v); err != nil {
				warnings = append(warnings, fmt.Sprintf("event log %s: record %d: %v", eventLogPath, recs[i].RecNum, err))
				continue
			}
			a, err := ParseCorruptionAction(v.OnCorruption)
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("event log %s: record %d (verity %s): %v", eventLogPath, recs[i].RecNum, v.Target, err))
				continue
			}
			p.Measured[v.Target] = a
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		warnings = append(warnings, fmt.Sprintf("event log: %v", err))
	}
	cfg, err := config.LoadOrDefault(configPath)
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("config: %v (using the defaults)", err))
		cfg = config.Default()
	}
	p.ConfigSource = "verity.on_corruption of " + configPath
	if cl, err := cmdline.ReadFile(cmdlinePath); err == nil {
		if overrides := cl.WithPrefix(config.CmdlinePrefix); len(overrides) > 0 {
			if err := cfg.ApplyCmdline(overrides); err != nil {
				warnings = append(warnings, fmt.Sprintf("kernel command line overrides: %v (ignored)", err))
			} else {
				p.ConfigSource += " and the kernel command line"
			}
		}
	} else {
		warnings = append(warnings, fmt.Sprintf("kernel command line: %v", err))
	}
	p.Configured = cfg.Verity.OnCorruption
	return p, warnings
}

// Watcher handles dm-verity corruption uevents.
type Watcher struct {
	Log      *zap.Logger
	Policy   *Policy
	SysfsDir string            // default /sys; the dm name is read from <dev>/dm/name there
	System   failaction.System // carries out a reboot; default the kernel
}

func (w *Watcher) sysfs() string {
	if w.SysfsDir == "" {
		return "/sys"
	}
	return w.SysfsDir
}

// dmName returns the device-mapper name of the device at devPath, or "" when sysfs does not
// say.
func (w *Watcher) dmName(devPath string) string {
	clean := path.Clean("/" + devPath)
	data, err := os.ReadFile(filepath.Join(w.sysfs(), clean, "dm", "name"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// HandleMessage handles one netlink message from sender (the netlink port id: 0 is the
// kernel). It returns the corruption it acted on, if any. Messages from user space are ignored:
// any process could otherwise make the daemon reboot the machine.
func (w *Watcher) HandleMessage(msg []byte, sender uint32) (*Corruption, error) {
	if sender != 0 {
		return nil, nil
	}
	ev, err := blockdev.ParseUevent(msg)
	if err != nil {
		return nil, nil // not a kernel uevent; nothing of ours
	}
	c, ok, err := ParseCorruption(ev)
	if err != nil || !ok {
		return nil, err
	}
	w.Handle(c)
	return &c, nil
}

// Handle logs a corruption at critical priority and applies the device's policy.
func (w *Watcher) Handle(c Corruption) {
	name := w.dmName(c.DevPath)
	action, source := w.Policy.For(name)
	device := c.Device
	if device == "" {
		device = c.DevPath
	}
	fields := []zap.Field{
		zap.String(logging.KeyDevice, device), zap.String("dm_name", name),
		zap.String("block_type", c.Type), zap.Uint64("block", c.Block),
		zap.String("action", string(action)), zap.String("action_source", source),
	}
	// DPanic is the critical priority (journal PRIORITY=2); the logger is not in development
	// mode, so it does not panic.
	w.Log.DPanic(fmt.Sprintf("dm-verity: %s block %d of %s (%s) failed its hash check: the disk was modified", c.Type, c.Block, device, orUnknown(name)), fields...)
	switch action {
	case config.CorruptionRestart:
		// reboot(2) right away, as the kernel's restart_on_corruption does: an orderly shutdown
		// would keep running code from a root that has been tampered with.
		w.Log.Error("dm-verity corruption: rebooting (on_corruption restart)", fields...)
		sys := w.System
		if sys == nil {
			sys = failaction.Kernel{}
		}
		if err := failaction.Execute(failaction.Reboot, sys); err != nil {
			w.Log.Error("dm-verity corruption: the reboot failed", append(fields, zap.Error(err))...)
		}
	case config.CorruptionIgnore:
		w.Log.Warn("dm-verity corruption ignored (on_corruption ignore, a debug setting): the corrupted block is readable", fields...)
	default:
		w.Log.Warn("dm-verity corruption: on_corruption panic, the kernel panics on it (panic_on_corruption)", fields...)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "dm name unknown"
	}
	return s
}

// maxUeventSize bounds one uevent message (the kernel's environment buffer is 2 KiB).
const maxUeventSize = 8192

// Run listens for kernel uevents until ctx ends, handling each dm-verity corruption.
func (w *Watcher) Run(ctx context.Context) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return fmt.Errorf("opening a NETLINK_KOBJECT_UEVENT socket: %w", err)
	}
	defer unix.Close(fd)
	// Group 1: the kernel's own broadcasts (udevd re-broadcasts on group 2).
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		return fmt.Errorf("binding the uevent socket to the kernel group: %w", err)
	}
	// A burst of unrelated events must not push a corruption out of the buffer.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<20)
	w.Log.Info("watching dm-verity corruption events")
	buf := make([]byte, maxUeventSize+1)
	for ctx.Err() == nil {
		// Poll with a timeout so that the loop sees ctx end; recvfrom would block forever.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(time.Second/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("polling the uevent socket: %w", err)
		}
		if n <= 0 {
			continue
		}
		m, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			w.Log.Error("uevents were lost (receive buffer overflow): a dm-verity corruption may have gone unseen; the verity target's status (C: corrupted) still tells")
			continue
		case err != nil:
			return fmt.Errorf("reading the uevent socket: %w", err)
		}
		nl, ok := from.(*unix.SockaddrNetlink)
		if !ok || m > maxUeventSize {
			continue
		}
		if _, err := w.HandleMessage(buf[:m], nl.Pid); err != nil {
			w.Log.Error("malformed dm-verity uevent", zap.Error(err))
		}
	}
	return nil
}
