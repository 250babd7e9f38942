package cmdkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

func TestParseFlagsAnywhere(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		pos, json string
	}{
		{[]string{"--json", "a", "b"}, "a b", "true"},
		{[]string{"a", "--json", "b"}, "a b", "true"},
		{[]string{"a", "b", "--json"}, "a b", "true"},
		{[]string{"a", "--", "--json", "b"}, "a --json b", "false"},
	} {
		fs := NewFlagSet("x")
		j := fs.Bool("json", false, "")
		var out, errOut bytes.Buffer
		c := Cmd{Name: "cvmboot x", Usage: "Usage: cvmboot x A B", Stdout: &out, Stderr: &errOut}
		pos, code, ok := c.Parse(fs, tt.args, -1)
		if !ok || code != ExitOK || strings.Join(pos, " ") != tt.pos || fmt.Sprint(*j) != tt.json {
			t.Errorf("%q: pos %q json %v code %d ok %v (%s)", tt.args, pos, *j, code, ok, errOut.String())
		}
	}
}

func TestParseHelpAndUsageErrors(t *testing.T) {
	run := func(args []string, nargs int) (int, string, string) {
		fs := NewFlagSet("x")
		var out, errOut bytes.Buffer
		c := Cmd{Name: "cvmboot x", Usage: "Usage: cvmboot x A", Stdout: &out, Stderr: &errOut}
		_, code, _ := c.Parse(fs, args, nargs)
		return code, out.String(), errOut.String()
	}
	if code, out, errOut := run([]string{"--help"}, 1); code != ExitOK || out != "Usage: cvmboot x A\n" || errOut != "" {
		t.Errorf("--help: %d %q %q", code, out, errOut)
	}
	if code, out, errOut := run([]string{"--bogus", "a"}, 1); code != ExitUsage || out != "" || !strings.Contains(errOut, "cvmboot x: flag provided but not defined: -bogus") || !strings.Contains(errOut, "Usage:") {
		t.Errorf("bad flag: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := run([]string{"a", "b"}, 1); code != ExitUsage || !strings.Contains(errOut, "expected 1 arguments, found 2 (a b)") {
		t.Errorf("two args: %d %q", code, errOut)
	}
}

func TestDispatch(t *testing.T) {
	subs := []Sub{NewSub("cvmboot x", "do", "Usage: cvmboot x do", func(c Cmd, args []string) int {
		fmt.Fprintf(c.Stdout, "%s %v", c.Name, args)
		return 7
	})}
	var out, errOut bytes.Buffer
	if code := Dispatch("cvmboot x", "Usage: cvmboot x COMMAND", subs, []string{"do", "a"}, &out, &errOut); code != 7 || out.String() != "cvmboot x do [a]" {
		t.Errorf("do: %d %q", code, out.String())
	}
	for args, want := range map[string]int{"": ExitUsage, "nope": ExitUsage, "--help": ExitOK, "help": ExitOK} {
		out.Reset()
		errOut.Reset()
		a := []string{}
		if args != "" {
			a = []string{args}
		}
		code := Dispatch("cvmboot x", "Usage: cvmboot x COMMAND", subs, a, &out, &errOut)
		if code != want || (want == ExitOK) != strings.Contains(out.String(), "Usage:") {
			t.Errorf("%q: %d, stdout %q stderr %q", args, code, out.String(), errOut.String())
		}
	}
}

func TestCodeOf(t *testing.T) {
	_, err := os.Open("/nonexistent/cvmboot")
	if CodeOf(fmt.Errorf("key file: %w", err)) != ExitIO {
		t.Error("a missing file is not ExitIO")
	}
	if CodeOf(errors.New("invalid header")) != ExitFailed || CodeOf(io.ErrUnexpectedEOF) != ExitFailed {
		t.Error("a format error is not ExitFailed")
	}
}
