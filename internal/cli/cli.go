// Package cli is cvmboot's command line: one subcommand per task, each with --help.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
)

// Exit codes shared by every subcommand (internal/cmdkit's).
const (
	ExitOK      = cmdkit.ExitOK
	ExitFailed  = cmdkit.ExitFailed
	ExitUsage   = cmdkit.ExitUsage
	ExitIOError = cmdkit.ExitIO
)

const exitCodesHelp = `Exit codes: 0 success, 1 failure (boot, stage or check failed), 2 usage error,
3 a file or device could not be read or written.`

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string
	Run     func(args []string, stdout, stderr io.Writer) int
}

// Main dispatches args (without the program name) to a subcommand. When the process is
// PID 1 it is the initramfs's /init: it boots whatever the arguments, because the kernel
// passes unrecognized command-line words to init as arguments.
func Main(args []string, stdout, stderr io.Writer, commands []Command) int {
	if os.Getpid() == 1 {
		return find(commands, "init").Run(nil, stdout, stderr)
	}
	if len(args) == 0 {
		usage(stderr, commands)
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout, commands)
		return ExitOK
	}
	c := find(commands, args[0])
	if c == nil {
		fmt.Fprintf(stderr, "cvmboot: unknown command %q\n\n", args[0])
		usage(stderr, commands)
		return ExitUsage
	}
	return c.Run(args[1:], stdout, stderr)
}

func find(commands []Command, name string) *Command {
	for i := range commands {
		if commands[i].Name == name {
			return &commands[i]
		}
	}
	return nil
}

func usage(w io.Writer, commands []Command) {
	fmt.Fprintln(w, "cvmboot: boot agent for confidential-VM images (dm-verity root, encrypted storage, measured boot).")
	fmt.Fprintln(w, "\nUsage: cvmboot COMMAND [options]   (cvmboot COMMAND --help for each)\n\nCommands:")
	sorted := append([]Command(nil), commands...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-10s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintln(w, "\nRun as PID 1 (as /init in an initramfs), cvmboot boots: it runs `cvmboot init`.")
	fmt.Fprintln(w, exitCodesHelp)
}

// newFlags makes a flag set whose usage is the synopsis, the description, the flags and the
// exit codes; parse prints it.
func newFlags(name, synopsis, description string, _ io.Writer) *flag.FlagSet {
	fs := cmdkit.NewFlagSet(name)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: cvmboot %s\n\n%s\n", synopsis, strings.TrimSpace(description))
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(w, "\nOptions:")
			fs.PrintDefaults()
		}
		fmt.Fprintf(w, "\n%s\n", exitCodesHelp)
	}
	return fs
}

// parse parses flags placed before or after the positional arguments (fs.Args() gives
// those); it returns the exit code to use when the command must stop here: 0 after --help
// (usage on stdout), 2 after a usage error (the error and the usage on stderr).
func parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (int, bool) {
	pos, err := cmdkit.SplitArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fs.Usage()
		return ExitOK, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot %s: %v\n\n", fs.Name(), err)
		fs.SetOutput(stderr)
		fs.Usage()
		return ExitUsage, false
	}
	// Re-parse only the positional arguments, so that fs.Args() is them (flags keep their values).
	_ = fs.Parse(append([]string{"--"}, pos...))
	return 0, true
}

// usageError prints a usage error with the usage on stderr and returns ExitUsage.
func usageError(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) int {
	fmt.Fprintf(stderr, "cvmboot %s: %s\n\n", fs.Name(), fmt.Sprintf(format, a...))
	fs.SetOutput(stderr)
	fs.Usage()
	return ExitUsage
}
