// Package cli is cvmboot's command line: one subcommand per task, each with --help.
package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Exit codes shared by every subcommand.
const (
	ExitOK      = 0 // success
	ExitFailed  = 1 // the boot, stage or check failed
	ExitUsage   = 2 // bad arguments
	ExitIOError = 3 // a file or device could not be read or written
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

// newFlags makes a flag set whose --help prints the synopsis, the description, the flags
// and the exit codes.
func newFlags(name, synopsis, description string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
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

// parse parses flags; it returns the exit code to use when the command must stop here.
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return ExitOK, false
		}
		return ExitUsage, false
	}
	return 0, true
}
