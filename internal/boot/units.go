package boot

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
)

// InitrdRelease exists in every systemd initrd; the units tell the initrd from the booted
// system by it, as systemd does.
const InitrdRelease = "/etc/initrd-release"

// SystemdFailureAction is the FailureAction= that carries out a failure action for the
// units. The -force variants stop at once without starting other units (no emergency
// shell); systemd has no kernel panic, so panic powers off immediately. A shell (debug
// only) leaves the failure to systemd, whose initrd then starts its emergency target.
func SystemdFailureAction(a failaction.Action) string {
	switch a {
	case failaction.Reboot:
		return "reboot-force"
	case failaction.Halt:
		return "halt-force"
	case failaction.Panic:
		return "poweroff-immediate"
	case failaction.Shell:
		return "none"
	}
	return "poweroff-force"
}

// UnitNames are cvmboot's systemd units (systemd/), which the generator gives their
// FailureAction=.
var UnitNames = []string{"cvmboot-attest.service", "cvmboot-verity.service", "cvmboot-persistent-root.service", "cvmboot-root.service",
	"cvmboot-evidence.service", "cvmboot-scratch-storage.service"}

// GeneratorDropIn is the drop-in `cvmboot systemd-generator` writes for each unit.
const GeneratorDropIn = "50-cvmboot-failure-action.conf"

// Generate is `cvmboot systemd-generator DIR`: it writes a drop-in into DIR for every cvmboot
// unit with the FailureAction= of the configured failure.action, so a failed unit stops the
// boot the configured way instead of reaching the emergency shell. A config or command line
// that cannot be read still gets drop-ins, with the secure default (power off).
//
// Generators run before systemd starts any unit, so the generator is where a command line
// that is not the pinned one stops the boot: `systemd.unit=`, `rd.systemd.debug_shell` or
// `init=` would act before cvmboot's first unit. It prints the FATAL line and carries out the
// failure action of the config file (the command line's overrides are the host's) at once.
func Generate(env Env, dir string, stderr io.Writer) error {
	action, source := failaction.Poweroff, "default (the config could not be read)"
	persistent := false
	cl, raw, err := readCmdline(env.CmdlinePath)
	var pinErr error
	if err == nil {
		var pin string
		if pin, pinErr = checkPin(env.CmdlinePinPath, raw); pinErr == nil {
			pinErr = checkEFIOptions(env.EFIVarsDir, pin)
		}
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "cvmboot systemd-generator: %v: using FailureAction=%s\n", err, SystemdFailureAction(action))
	case pinErr != nil:
		if cfg := pinFailureConfig(env.ConfigPath); cfg != nil {
			action = failureAction(cfg)
			source = "failure.action: " + string(cfg.Failure.Action) + " (the command line is refused)"
		}
	default:
		if cfg, _, err := loadConfig(env.ConfigPath, cl); err != nil {
			fmt.Fprintf(stderr, "cvmboot systemd-generator: %v: using FailureAction=%s\n", err, SystemdFailureAction(action))
		} else {
			action = failaction.Select(string(cfg.Failure.Action), cfg.Debug.Enabled)
			source = "failure.action: " + string(cfg.Failure.Action)
			persistent = cfg.Root.Persistent == config.PersistentEncryptOnFirstBoot
		}
	}
	if err := writeDropIns(dir, source, action); err != nil {
		return err
	}
	if persistent {
		if err := writeInitqueueDropIn(dir); err != nil {
			return err
		}
	}
	if pinErr == nil {
		return nil
	}
	emergencyLines(env.Emergency, "stage "+StageCmdline+" failed", pinErr)
	if env.Emergency != nil {
		env.Emergency(fmt.Sprintf("cvmboot: failure action: %s", action))
	}
	if action == failaction.Shell {
		// Debug images only: the units fail on the same check and systemd's emergency
		// target follows (FailureAction=none).
		return nil
	}
	if action == failaction.Panic {
		action = failaction.Poweroff // a generator's exit panics nothing (poweroff-immediate)
	}
	return failaction.Execute(action, env.System)
}

// InitqueueDropIn orders dracut's initqueue after the persistent root. The initqueue waits
// for root= (/dev/mapper/cvmboot-root) rd.retry seconds (180 by default), then gives up and
// the boot powers off; the first boot's copy of a large root takes longer. Started after
// the conversion, its clock runs only from then on. Only with root.persistent: other roots
// (LVM, MD, network) may need the initqueue before cvmboot's units find them.
const InitqueueDropIn = "dracut-initqueue.service.d/50-cvmboot-persistent-root.conf"

func writeInitqueueDropIn(dir string) error {
	path := filepath.Join(dir, InitqueueDropIn)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte("# Written by cvmboot systemd-generator: root.persistent.\n[Unit]\nAfter=cvmboot-persistent-root.service\n"), 0o644)
}

// writeDropIns gives every cvmboot unit the FailureAction= of action.
func writeDropIns(dir, source string, action failaction.Action) error {
	body := fmt.Sprintf("# Written by cvmboot systemd-generator from %s.\n[Unit]\nFailureAction=%s\n", source, SystemdFailureAction(action))
	for _, unit := range UnitNames {
		d := filepath.Join(dir, unit+".d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, GeneratorDropIn), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
