package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cvmboot/cvmboot/internal/boot"
	"github.com/cvmboot/cvmboot/internal/logging"
	"github.com/cvmboot/cvmboot/internal/luks2cli"
	"github.com/cvmboot/cvmboot/internal/serve"
	"github.com/cvmboot/cvmboot/internal/veritycli"
	"github.com/cvmboot/cvmboot/internal/version"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// WithCommand returns commands with c in place of the command of the same name (or added).
func WithCommand(commands []Command, c Command) []Command {
	out := append([]Command(nil), commands...)
	for i := range out {
		if out[i].Name == c.Name {
			out[i] = c
			return out
		}
	}
	return append(out, c)
}

// Commands returns every subcommand of the guest binary (cmd/cvmboot).
func Commands() []Command {
	return []Command{
		{Name: "init", Summary: "boot the machine as PID 1 (the initramfs's /init)", Run: initCmd},
		{Name: "run", Summary: "run named boot stages (from systemd units)", Run: runCmd},
		{Name: "status", Summary: "show the current boot's report", Run: statusCmd},
		{Name: "journal-import", Summary: "send the initramfs's log records to the journal (a unit of the booted system)", Run: journalImportCmd},
		{Name: "version", Summary: "print the version", Run: versionCmd},
		{Name: "initramfs", Summary: "write an initramfs with cvmboot as /init (for image builders)", Run: initramfsCmd},
		{Name: "verity", Summary: "format, verify and dump dm-verity hash trees (veritysetup-compatible)", Run: veritycli.Main},
		evidenceCommand,
		{Name: "serve", Summary: "serve the boot report, event log and fresh evidence on a local socket; watch dm-verity", Run: serve.Main},
		{Name: "luks2", Summary: "format and dump LUKS2 headers", Run: luks2cli.Main},
		{Name: "systemd-generator", Summary: "write the FailureAction= drop-ins of cvmboot's units (a systemd generator)", Run: generatorCmd},
		{Name: "modules", Summary: "print the kernel modules the config needs (for initrd generators such as dracut)", Run: modulesCmd},
		{Name: "enroll", Summary: "prepare the persistent root for a new UKI (root.persistent)", Run: enrollCmd},
	}
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("version", "version", "Prints the version of this cvmboot build.", stderr)
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintf(stdout, "cvmboot %s\n", version.Version)
	return ExitOK
}

func initCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("init", "init", `
Boots the machine: the PID 1 entry point, run as /init in an initramfs. The binary enters it
by itself when it runs as PID 1. It mounts the API file systems, loads kernel modules, mounts
the verified root, runs the capability stages, switches into the new root and executes the
real init. A failing stage runs the configured failure action (default: power off).`, stderr)
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(stderr, "cvmboot init: refusing to run: not PID 1 (it would switch this machine's root)")
		return ExitUsage
	}
	return boot.RunInit(boot.Real())
}

func runCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("run", "run STAGE...", `
Runs the named steps of the boot sequence, in boot order, for systemd units in a systemd
initrd or in the booted system (ModeSystemd): systemd/cvmboot-*.service name theirs. The steps
append to the boot report; the last unit's step sets its outcome. Steps: `+boot.UnitStepNames(), stderr)
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() == 0 {
		return usageError(fs, stderr, "no step named")
	}
	return boot.RunUnits(boot.Real(), fs.Args(), stderr)
}

func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("status", "status [--json] [--report PATH]", `
Shows the current boot's report: every stage with its status, duration and the facts it
established (devices, file systems, mount points). Exits 1 when the boot failed.`, stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	path := fs.String("report", report.DefaultPath, "report file")
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	rep, err := report.ReadFile(*path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stderr, "cvmboot status: no boot report at %s: this boot did not run cvmboot\n", *path)
		} else {
			fmt.Fprintf(stderr, "cvmboot status: %v\n", err)
		}
		return ExitIOError
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return ExitIOError
		}
	} else if err := rep.WriteTable(stdout); err != nil {
		return ExitIOError
	}
	if rep.Outcome == report.OutcomeFailed {
		return ExitFailed
	}
	return ExitOK
}

func journalImportCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("journal-import", "journal-import [--spool PATH] [--journal SOCKET]", `
Sends the log records cvmboot kept as PID 1 in the initramfs (where no journal runs) to
journald, with all their CVMBOOT_* fields and CVMBOOT_SOURCE=initramfs; the time each was
logged is in CVMBOOT_LOGGED_AT. The spool is renamed to PATH.imported afterwards, so a second
run sends nothing twice. cvmboot-journal-import.service runs it early in the booted system.`, stderr)
	spool := fs.String("spool", logging.SpoolPath, "spool file the initramfs left")
	journal := fs.String("journal", logging.DefaultJournalPath, "journald's native socket")
	if code, ok := parse(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, stderr, "no arguments are taken, found %q", fs.Args())
	}
	n, err := logging.ImportSpool(*spool, *journal)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && n == 0 {
			fmt.Fprintf(stderr, "cvmboot journal-import: no spool at %s: this boot did not run cvmboot as PID 1, or it was imported already\n", *spool)
			return ExitIOError
		}
		fmt.Fprintf(stderr, "cvmboot journal-import: %v (%d records sent)\n", err, n)
		return ExitFailed
	}
	fmt.Fprintf(stdout, "cvmboot journal-import: %d records from %s sent to %s\n", n, *spool, *journal)
	return ExitOK
}
