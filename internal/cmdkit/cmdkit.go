// Package cmdkit is how every cvmboot command takes its arguments and ends: one set of exit
// codes, flags before or after the positional arguments, --help on stdout with exit 0, a
// usage error on stderr with the usage and exit 2, and subcommands dispatched one way.
// Commands keep their own texts and work; the conventions live here only.
package cmdkit

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Exit codes, the same for every command.
const (
	ExitOK     = 0 // success
	ExitFailed = 1 // the boot, stage, check or verification failed
	ExitUsage  = 2 // bad arguments
	ExitIO     = 3 // a file or device could not be read or written
)

// ExitCodes is the help text of the exit codes; a command appends what failure means for it.
const ExitCodes = "Exit codes: 0 success, 1 failure, 2 usage error, 3 a file or device could not be read or written."

// NewFlagSet is a flag set that prints nothing itself: Parse prints help and usage errors.
func NewFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// SplitArgs parses fs from args with the flags anywhere among the positional arguments
// (the flag package stops at the first positional one); "--" ends the options.
func SplitArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// Cmd is one invocation: the command's full name ("cvmboot verity format"), its usage text
// and where it writes.
type Cmd struct {
	Name           string
	Usage          string // printed for --help and after a usage error
	Stdout, Stderr io.Writer
}

// Parse parses args into fs and checks the number of positional arguments: nargs exactly, or
// any number when nargs < 0. ok false means the command ends with code: 0 after --help
// (the usage on stdout), 2 after a usage error (the error and the usage on stderr).
func (c *Cmd) Parse(fs *flag.FlagSet, args []string, nargs int) (pos []string, code int, ok bool) {
	pos, err := SplitArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(c.Stdout, withNewline(c.Usage))
		return nil, ExitOK, false
	}
	if err == nil && nargs >= 0 && len(pos) != nargs {
		err = fmt.Errorf("expected %d arguments, found %d (%s)", nargs, len(pos), strings.Join(pos, " "))
	}
	if err != nil {
		return nil, c.UsageError("%v", err), false
	}
	return pos, ExitOK, true
}

// UsageError prints the error and the usage and returns ExitUsage.
func (c *Cmd) UsageError(format string, a ...any) int {
	fmt.Fprintf(c.Stderr, "%s: %s\n\n%s", c.Name, fmt.Sprintf(format, a...), withNewline(c.Usage))
	return ExitUsage
}

// Fail prints "NAME: message" and returns code.
func (c *Cmd) Fail(code int, format string, a ...any) int {
	fmt.Fprintf(c.Stderr, "%s: %s\n", c.Name, fmt.Sprintf(format, a...))
	return code
}

// Sub is a subcommand of a Dispatch.
type Sub struct {
	Name string
	Run  func(args []string, stdout, stderr io.Writer) int
}

// Dispatch runs the subcommand args[0] of prog ("cvmboot verity"). No subcommand or an
// unknown one is a usage error; help, -h and --help print usage on stdout.
func Dispatch(prog, usage string, subs []Sub, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, withNewline(usage))
		return ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, withNewline(usage))
		return ExitOK
	}
	for _, s := range subs {
		if s.Name == args[0] {
			return s.Run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n\n%s", prog, args[0], withNewline(usage))
	return ExitUsage
}

func withNewline(s string) string {
	if strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

// CodeOf is the exit code of a failed operation: ExitIO when a file or device could not be
// opened, read or written (an *fs.PathError or *os.SyscallError in the chain), else
// ExitFailed.
func CodeOf(err error) int {
	var pe *fs.PathError
	var se *os.SyscallError
	if errors.As(err, &pe) || errors.As(err, &se) {
		return ExitIO
	}
	return ExitFailed
}

// NewSub is the subcommand NAME of prog: run gets its Cmd (name "prog NAME", usage, streams).
func NewSub(prog, name, usage string, run func(c Cmd, args []string) int) Sub {
	return Sub{Name: name, Run: func(args []string, stdout, stderr io.Writer) int {
		return run(Cmd{Name: prog + " " + name, Usage: usage, Stdout: stdout, Stderr: stderr}, args)
	}}
}
