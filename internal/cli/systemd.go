package cli

import (
	"fmt"
	"io"

	"github.com/cvmboot/cvmboot/internal/boot"
	"github.com/cvmboot/cvmboot/internal/config"
)

func generatorCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("systemd-generator", "systemd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", `
A systemd generator (systemd.generator(7)); install a script that execs it as
/usr/lib/systemd/system-generators/cvmboot-generator. It writes a drop-in for each
cvmboot unit into NORMAL_DIR with the FailureAction= of the configured failure.action
(poweroff → poweroff-force, reboot → reboot-force, halt → halt-force, panic →
poweroff-immediate, shell (debug only) → none), so that a failed cvmboot unit ends the boot
that way and never in the emergency shell. An unreadable config gives poweroff-force.`, stderr)
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() < 1 || fs.NArg() > 3 {
		return usageError(fs, stderr, "expected 1 to 3 directories, found %d", fs.NArg())
	}
	if err := boot.Generate(boot.Real(), fs.Arg(0), stderr); err != nil {
		fmt.Fprintf(stderr, "cvmboot systemd-generator: %v\n", err)
		return ExitIOError
	}
	return ExitOK
}

func modulesCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("modules", "modules [--config FILE]", `
Prints the kernel modules the config needs, one per line: the config's modules:, the
device-mapper targets and ciphers of the enabled features, the CPU-accelerated ciphers
(loaded when the CPU has them) and the TPM drivers: what "cvmboot initramfs" packs. An initrd generator that is not
"cvmboot initramfs" (dracut's cvmboot module) installs these and writes them to
/etc/cvmboot/modules.load, which "cvmboot run modules" loads.`, stderr)
	path := fs.String("config", config.DefaultPath, "cvmboot config file (defaults when absent)")
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, stderr, "no arguments are taken, found %q", fs.Args())
	}
	cfg, err := config.LoadOrDefault(*path)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot modules: %v\n", err)
		return ExitFailed
	}
	for _, m := range cfg.KernelModules().All() {
		fmt.Fprintln(stdout, m)
	}
	return ExitOK
}
