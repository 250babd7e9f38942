package boot

import (
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/efivar"
	"github.com/cvmboot/cvmboot/internal/failaction"
)

// StageCmdline names the check of the kernel command line against the image's pin; it runs
// before anything else reads the command line.
const StageCmdline = "cmdline"

// checkPin compares the kernel's command line with the one the image pinned
// (cmdline.PinPath). It returns the pin's digest when they match, "" when the image pins
// none, and a *cmdline.PinMismatch when they differ.
func checkPin(pinPath, raw string) (string, error) {
	if pinPath == "" {
		return "", nil
	}
	pin, ok, err := cmdline.ReadPin(pinPath)
	if err != nil || !ok {
		return "", err
	}
	if err := cmdline.CheckPin(pinPath, pin, raw); err != nil {
		return "", err
	}
	return cmdline.PinDigest(pin), nil
}

// checkEFIOptions refuses, in an image that pins its command line, the SystemdOptions EFI
// variable: systemd (Secure Boot off) reads it as command line before /proc/cmdline, so the
// host could add what the pin keeps out (systemd.unit=, systemd.debug_shell, …).
func checkEFIOptions(efiVarsDir, pin string) error {
	if efiVarsDir == "" || pin == "" {
		return nil
	}
	v, found, err := efivar.SystemdOptions(efiVarsDir)
	if err != nil {
		return fmt.Errorf("the command line is pinned but the firmware variable %s cannot be checked: %w", efivar.SystemdOptionsName, err)
	}
	if found && strings.TrimSpace(v) != "" {
		return fmt.Errorf("the firmware variable %s adds %q to the command line systemd reads: the host writes firmware variables, and only the pinned command line (%s) may configure the boot",
			efivar.SystemdOptionsName, clipOptions(v), pin)
	}
	return nil
}

func clipOptions(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// pinFailureConfig is the config a refused command line stops the boot with: the file's,
// without the command line's cvmboot.* overrides, which the host wrote (it would otherwise
// ask for cvmboot.debug=on cvmboot.failure.action=shell). nil (power off) when unreadable.
func pinFailureConfig(path string) *config.Config {
	cfg, err := config.LoadOrDefault(path)
	if err != nil {
		return nil
	}
	return cfg
}

// failureAction is what a failure does under cfg; nil is the secure default.
func failureAction(cfg *config.Config) failaction.Action {
	if cfg == nil {
		return failaction.Poweroff
	}
	return failaction.Select(string(cfg.Failure.Action), cfg.Debug.Enabled)
}

// errorDetail returns the lines that follow an error's FATAL line (which words of the
// command line differ); none for other errors.
func errorDetail(err error) []string {
	var d interface{ Detail() []string }
	if errors.As(err, &d) {
		return d.Detail()
	}
	return nil
}

// emergencyLines prints the FATAL line and its detail, each a record of its own with the
// cvmboot: prefix, so that no console line is a fragment.
func emergencyLines(emergency func(string), fatal string, err error) {
	if emergency == nil {
		return
	}
	emergency(fmt.Sprintf("cvmboot: FATAL: %s: %v", fatal, err))
	for _, l := range errorDetail(err) {
		emergency("cvmboot: " + l)
	}
}

// logPin says whether the command line was checked against a pin.
func logPin(log *zap.Logger, path, digest string) {
	if digest != "" {
		log.Info("kernel command line matches the pinned one", zap.String("pin", path), zap.String("sha256", digest))
		return
	}
	log.Warn("the kernel command line is not pinned: the image has no " + path + " (cvmboot initramfs --cmdline pins it)")
}
