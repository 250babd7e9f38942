package failaction

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSelect(t *testing.T) {
	cases := []struct {
		configured string
		debug      bool
		want       Action
	}{
		{"poweroff", false, Poweroff},
		{"reboot", false, Reboot},
		{"halt", false, Halt},
		{"panic", false, Panic},
		{"shell", true, Shell},
		{"shell", false, Poweroff}, // a shell needs debug mode
		{"", false, Poweroff},
		{"sh", true, Poweroff},
		{"POWEROFF", false, Poweroff},
	}
	for _, c := range cases {
		if got := Select(c.configured, c.debug); got != c.want {
			t.Errorf("Select(%q, debug=%v) = %s, want %s", c.configured, c.debug, got, c.want)
		}
	}
}

type fakeSystem struct {
	synced    bool
	rebootCmd int
	rebootErr error
	exitCode  int
	execPath  string
}

func (f *fakeSystem) Sync()                { f.synced = true }
func (f *fakeSystem) Reboot(cmd int) error { f.rebootCmd = cmd; return f.rebootErr }
func (f *fakeSystem) Exit(code int)        { f.exitCode = code }
func (f *fakeSystem) Exec(p string, _ []string) error {
	f.execPath = p
	return errors.New("no such file")
}

func TestExecute(t *testing.T) {
	for _, c := range []struct {
		a   Action
		cmd int
	}{
		{Poweroff, unix.LINUX_REBOOT_CMD_POWER_OFF},
		{Reboot, unix.LINUX_REBOOT_CMD_RESTART},
		{Halt, unix.LINUX_REBOOT_CMD_HALT},
	} {
		f := &fakeSystem{rebootErr: unix.EPERM}
		err := Execute(c.a, f)
		if !f.synced || f.rebootCmd != c.cmd {
			t.Errorf("%s: synced=%v cmd=%#x, want sync and %#x", c.a, f.synced, f.rebootCmd, c.cmd)
		}
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("%s: error %v does not carry the reboot failure", c.a, err)
		}
		// reboot(2) returning success is still a failure to stop the boot.
		if err := Execute(c.a, &fakeSystem{}); err == nil {
			t.Errorf("%s: a returning reboot(2) must be an error", c.a)
		}
	}
	f := &fakeSystem{}
	if err := Execute(Panic, f); err == nil || f.exitCode != 1 {
		t.Errorf("panic: exit code %d err %v", f.exitCode, err)
	}
	f = &fakeSystem{}
	if err := Execute(Shell, f); err == nil || f.execPath != ShellPath {
		t.Errorf("shell: exec %q err %v", f.execPath, err)
	}
}
