// Package failaction carries out what the boot does when a required stage fails.
//
// The host is the attacker, so a failed boot must never go on and never offer a shell unless
// the image builder asked for one in debug mode. The default is to power off.
package failaction

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Action is one of the failure actions.
type Action string

const (
	Poweroff Action = "poweroff"
	Reboot   Action = "reboot"
	Halt     Action = "halt"
	Panic    Action = "panic"
	Shell    Action = "shell"
)

// Select returns the action to take for the configured one. A shell is only granted in debug
// mode; anything unknown becomes a power off: this is the last line of defence, so it does
// not trust that the configuration was validated.
func Select(configured string, debug bool) Action {
	switch a := Action(configured); a {
	case Poweroff, Reboot, Halt, Panic:
		return a
	case Shell:
		if debug {
			return Shell
		}
	}
	return Poweroff
}

// System is what an action needs from the kernel; tests pass a fake.
type System interface {
	Sync()
	Reboot(cmd int) error
	// Exit ends the process; as PID 1 this makes the kernel panic.
	Exit(code int)
	// Exec replaces the process with a program; it returns only on failure.
	Exec(path string, argv []string) error
}

// ShellPath is the shell started in debug mode.
const ShellPath = "/bin/sh"

// Execute carries out the action. It returns only when the action could not be carried out,
// with the error saying why; the caller must then stop the boot another way (as PID 1: exit,
// which panics the kernel).
func Execute(a Action, sys System) error {
	sys.Sync()
	switch a {
	case Poweroff:
		return wrap(a, sys.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF))
	case Reboot:
		return wrap(a, sys.Reboot(unix.LINUX_REBOOT_CMD_RESTART))
	case Halt:
		return wrap(a, sys.Reboot(unix.LINUX_REBOOT_CMD_HALT))
	case Panic:
		sys.Exit(1)
		return fmt.Errorf("failure action panic: process did not exit")
	case Shell:
		err := sys.Exec(ShellPath, []string{ShellPath})
		return fmt.Errorf("failure action shell: exec %s: %w", ShellPath, err)
	}
	return fmt.Errorf("unknown failure action %q", a)
}

func wrap(a Action, err error) error {
	if err == nil {
		// reboot(2) does not return on success; if it did, the boot must still stop.
		return fmt.Errorf("failure action %s: reboot(2) returned", a)
	}
	return fmt.Errorf("failure action %s: %w", a, err)
}

// Kernel is the real System.
type Kernel struct{}

func (Kernel) Sync()                { unix.Sync() }
func (Kernel) Reboot(cmd int) error { return unix.Reboot(cmd) }
func (Kernel) Exit(code int)        { os.Exit(code) }
func (Kernel) Exec(p string, argv []string) error {
	return unix.Exec(p, argv, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"})
}
