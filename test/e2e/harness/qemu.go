package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accel is a qemu accelerator.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// ExitReason says how a boot ended.
type ExitReason string

const (
	ExitPoweredOff ExitReason = "powered-off" // guest asked for ACPI poweroff
	ExitRebooted   ExitReason = "rebooted"    // guest reset; -no-reboot turns it into an exit
	ExitPanicked   ExitReason = "panicked"    // guest panic reported by qemu
	ExitTimeout    ExitReason = "timeout"     // our hard limit killed qemu
	ExitQemuError  ExitReason = "qemu-error"  // qemu failed or exited for another reason
)

// BootSpec is one qemu run.
type BootSpec struct {
	Name      string // used in messages and file names
	WorkDir   string // per-boot files: serial log, OVMF vars, TPM state
	Disk      string // raw disk image attached as virtio-blk; optional
	Accel     Accel  // required; see DetectAccel
	MemoryMiB int    // 1024 when 0
	CPUs      int    // 2 when 0
	NoTPM     bool   // skip swtpm
	// TPMStateDir keeps the TPM's state there across boots (a machine's vTPM); empty: a
	// fresh TPM in WorkDir/tpm.
	TPMStateDir string
	Timeout     time.Duration // hard limit; 3 minutes when 0
	// Kernel boots a kernel directly (no OVMF) with Append as its command
	// line; used by the accelerator probe.
	Kernel, Initrd, Append string
	ExtraArgs              []string
	// OnLine receives every serial console line as it arrives (no newline).
	OnLine func(line string)
}

// BootResult is what happened.
type BootResult struct {
	Reason         ExitReason
	Detail         string // qemu's SHUTDOWN reason, exit status or error
	Duration       time.Duration
	Serial         string // the whole serial console output
	Lines          []TimedLine
	SerialLogPath  string
	QemuArgs       []string // argv including qemu-system-x86_64
	QemuStderr     string
	SwtpmArgs      []string
	SwtpmLogPath   string
	TPMStateDir    string // the TPM's state, for a later boot of the same machine
	ShutdownEvents []string
}

// TimedLine is a console line with the time it arrived, counted from qemu's
// start; it lets benchmarks split a boot into firmware, kernel and init time.
type TimedLine struct {
	At   time.Duration
	Text string
}

// FirstLine returns the first console line matching re.
func (r *BootResult) FirstLine(re *regexp.Regexp) (TimedLine, bool) {
	for _, l := range r.Lines {
		if re.MatchString(l.Text) {
			return l, true
		}
	}
	return TimedLine{}, false
}

// Boot runs qemu until the guest exits or the timeout hits. qemu and swtpm each
// run in their own process group, and both groups are killed before Boot
// returns, whatever happened. The error is only for failures to set up the run.
func Boot(ctx context.Context, spec BootSpec) (*BootResult, error) {
	if spec.Accel == "" {
		return nil, errors.New("boot: Accel is empty (use DetectAccel)")
	}
	if spec.MemoryMiB == 0 {
		spec.MemoryMiB = 1024
	}
	if spec.CPUs == 0 {
		spec.CPUs = 2
	}
	if spec.Timeout == 0 {
		spec.Timeout = 3 * time.Minute
	}
	if err := os.MkdirAll(spec.WorkDir, 0o755); err != nil {
		return nil, err
	}
	// Unix socket paths are limited to 108 bytes, so sockets live in a short
	// private directory rather than in WorkDir.
	sockDir, err := os.MkdirTemp("", "cvmq-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)

	res := &BootResult{SerialLogPath: filepath.Join(spec.WorkDir, "serial.log")}
	qmpPath := filepath.Join(sockDir, "qmp")
	args := []string{"qemu-system-x86_64",
		"-nodefaults", "-no-user-config", "-no-reboot",
		// SMM only serves Secure Boot variable protection, which these images
		// do not use; without it OVMF starts seconds faster under TCG.
		"-machine", "q35,smm=off", "-accel", string(spec.Accel),
		"-m", fmt.Sprint(spec.MemoryMiB), "-smp", fmt.Sprint(spec.CPUs),
		"-display", "none", "-vga", "none", "-monitor", "none",
		"-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
		"-qmp", "unix:" + qmpPath + ",server=on,wait=on",
	}
	if spec.Accel == AccelKVM {
		args = append(args, "-cpu", "host")
	} else {
		args = append(args, "-cpu", "max")
	}
	if spec.Kernel != "" {
		args = append(args, "-kernel", spec.Kernel, "-append", spec.Append)
		if spec.Initrd != "" {
			args = append(args, "-initrd", spec.Initrd)
		}
	} else {
		vars, err := CopyOVMFVars(spec.WorkDir)
		if err != nil {
			return nil, err
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	if spec.Disk != "" {
		args = append(args, "-drive", "if=none,id=disk0,format=raw,file="+spec.Disk,
			"-device", "virtio-blk-pci,drive=disk0")
	}

	var swtpm *exec.Cmd
	if !spec.NoTPM {
		ctrl := filepath.Join(sockDir, "tpm")
		stateDir := spec.TPMStateDir
		if stateDir == "" {
			stateDir = filepath.Join(spec.WorkDir, "tpm")
			_ = os.RemoveAll(stateDir)
		}
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return nil, err
		}
		res.SwtpmLogPath = filepath.Join(spec.WorkDir, "swtpm.log")
		res.TPMStateDir = stateDir
		res.SwtpmArgs = []string{"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + stateDir,
			"--ctrl", "type=unixio,path=" + ctrl, "--terminate",
			"--log", "file=" + res.SwtpmLogPath + ",truncate"}
		swtpm = exec.Command(res.SwtpmArgs[0], res.SwtpmArgs[1:]...)
		swtpm.SysProcAttr = ownGroup()
		var swtpmOut bytes.Buffer
		swtpm.Stdout, swtpm.Stderr = &swtpmOut, &swtpmOut
		if err := swtpm.Start(); err != nil {
			return nil, fmt.Errorf("start swtpm: %w", err)
		}
		defer func() {
			killGroup(swtpm)
			_ = swtpm.Wait()
		}()
		if err := waitForPath(ctrl, 10*time.Second); err != nil {
			return nil, fmt.Errorf("swtpm control socket %s: %w (output: %s)", ctrl, err, swtpmOut.String())
		}
		args = append(args, "-chardev", "socket,id=chrtpm,path="+ctrl,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0")
	}
	args = append(args, spec.ExtraArgs...)
	res.QemuArgs = args

	logFile, err := os.Create(res.SerialLogPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	qemu := exec.Command(args[0], args[1:]...)
	qemu.SysProcAttr = ownGroup()
	stdout, err := qemu.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	qemu.Stderr = &stderr
	start := time.Now()
	if err := qemu.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	defer killGroup(qemu)

	var serial bytes.Buffer
	serialDone := make(chan struct{})
	go func() {
		defer close(serialDone)
		copySerial(stdout, logFile, &serial, func(line string) {
			res.Lines = append(res.Lines, TimedLine{At: time.Since(start), Text: line})
			if spec.OnLine != nil {
				spec.OnLine(line)
			}
		})
	}()

	var waitErr error
	exited := make(chan struct{})
	go func() {
		<-serialDone // stdout must be drained before Wait closes it
		waitErr = qemu.Wait()
		close(exited)
	}()

	var events qmpEvents
	qmpDone := make(chan struct{})
	go func() {
		defer close(qmpDone)
		events.follow(qmpPath, exited)
	}()

	timer := time.NewTimer(spec.Timeout)
	defer timer.Stop()
	select {
	case <-exited:
	case <-timer.C:
		res.Reason = ExitTimeout
		res.Detail = fmt.Sprintf("no exit within %s", spec.Timeout)
	case <-ctx.Done():
		res.Reason = ExitTimeout
		res.Detail = "cancelled: " + ctx.Err().Error()
	}
	if res.Reason == ExitTimeout {
		killGroup(qemu)
		<-exited
	}
	res.Duration = time.Since(start)
	<-qmpDone
	<-serialDone
	res.Serial = serial.String()
	res.QemuStderr = stderr.String()
	res.ShutdownEvents = events.list()
	if res.Reason == "" {
		res.Reason, res.Detail = classifyExit(res.ShutdownEvents, waitErr)
	}
	return res, nil
}

// classifyExit maps qemu's shutdown events and exit status to an ExitReason.
func classifyExit(events []string, waitErr error) (ExitReason, string) {
	for _, ev := range events {
		switch ev {
		case "guest-panic", "GUEST_PANICKED":
			return ExitPanicked, ev
		}
	}
	if len(events) > 0 {
		last := events[len(events)-1]
		switch last {
		case "guest-shutdown":
			return ExitPoweredOff, last
		case "guest-reset":
			return ExitRebooted, last
		}
		return ExitQemuError, "shutdown reason " + last
	}
	if waitErr != nil {
		return ExitQemuError, waitErr.Error()
	}
	return ExitQemuError, "qemu exited without a shutdown event"
}

// copySerial tees the console into the log file and buffer and hands complete
// lines to onLine.
func copySerial(r io.Reader, log io.Writer, buf *bytes.Buffer, onLine func(string)) {
	br := bufio.NewReaderSize(r, 64*1024)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			_, _ = io.WriteString(log, line)
			buf.WriteString(line)
			if onLine != nil {
				onLine(strings.TrimRight(line, "\r\n"))
			}
		}
		if err != nil {
			return
		}
	}
}

// qmpEvents collects SHUTDOWN reasons and GUEST_PANICKED from qemu's QMP socket.
type qmpEvents struct {
	mu     sync.Mutex
	events []string
}

func (q *qmpEvents) list() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.events...)
}

// follow connects to the QMP socket (qemu waits for it before starting the
// guest), enables events and records them until qemu closes the socket.
func (q *qmpEvents) follow(path string, exited <-chan struct{}) {
	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-exited:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		return
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if ev := ParseQMPEvent(sc.Bytes()); ev != "" {
			q.mu.Lock()
			q.events = append(q.events, ev)
			q.mu.Unlock()
		}
	}
}

// ParseQMPEvent returns the SHUTDOWN reason ("guest-shutdown", "guest-reset",
// "guest-panic", ...) or "GUEST_PANICKED" for a QMP message, or "" for
// anything else.
func ParseQMPEvent(line []byte) string {
	var msg struct {
		Event string `json:"event"`
		Data  struct {
			Reason string `json:"reason"`
		} `json:"data"`
	}
	if json.Unmarshal(line, &msg) != nil {
		return ""
	}
	switch msg.Event {
	case "SHUTDOWN":
		if msg.Data.Reason == "" {
			return "unknown"
		}
		return msg.Data.Reason
	case "GUEST_PANICKED":
		return "GUEST_PANICKED"
	}
	return ""
}

// ownGroup puts a child in its own process group, and has the kernel kill it
// if this process dies first, so no qemu or swtpm outlives a test.
func ownGroup() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// killGroup kills the child's whole process group; safe to call repeatedly.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

func waitForPath(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !exists(path) {
		if time.Now().After(deadline) {
			return fmt.Errorf("did not appear within %s", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func execCommand(ctx context.Context, dir, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	return cmd
}

// ShellQuote renders argv for a shell, for artifacts and logs.
func ShellQuote(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:@+", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
