// Command rootcheck is the /sbin/init of the e2e tiny root. Running as PID 1
// after cvmboot's switch_root, it checks what cvmboot promised (read-only root,
// API file systems, /run/cvmboot/report.json, no initramfs leftovers), prints
// one "ROOTCHECK:" line per check on the console and powers the machine off.
//
// With rootcheck.mode=initrd on the kernel command line it instead runs as the
// initramfs /init and checks the boot chain (UEFI, TPM, event log).
//
// Extra checks come from rootcheck.expect=KIND:ARG[,KIND:ARG...] (see
// parseExpectation); rootcheck.skip=NAME,... drops default checks.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/persist"
	"github.com/cvmboot/cvmboot/internal/tee"
)

const reportPath = "/run/cvmboot/report.json"

// checker runs checks and prints their outcome.
type checker struct {
	out        io.Writer
	pass, fail int
}

func (c *checker) printf(format string, args ...any) {
	fmt.Fprintf(c.out, "ROOTCHECK: "+format+"\n", args...)
}

// check records one result; err == nil means ok.
func (c *checker) check(name string, err error) {
	if err != nil {
		c.fail++
		c.printf("FAIL %s: %v", name, err)
		return
	}
	c.pass++
	c.printf("ok %s", name)
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "late-record" {
		if err := lateRecord(); err != nil {
			fmt.Fprintf(os.Stderr, "rootcheck late-record: %v\n", err)
			os.Exit(1)
		}
		return
	}
	out := consoleWriter()
	c := &checker{out: out}
	c.printf("START pid=%d", os.Getpid())

	// The command line is needed to know what to check; if /proc is not
	// mounted that is itself a failure, recorded by the mount checks.
	cmdline, procMountedByUs := readCmdline()
	opts := parseOptions(parseCmdline(cmdline))
	for _, e := range opts.Errors {
		c.check("options", errors.New(e))
	}
	switch opts.Mode {
	case "initrd":
		runInitrdChecks(c)
	case "forge":
		runInitrdChecks(c)
		c.check("forge", forgeEvidence(cmdline))
	default:
		runRootChecks(c, opts, procMountedByUs)
		printFirmwareLog(c)
	}
	runExpectations(c, opts.Expect, cmdline)
	for _, dir := range opts.Dump {
		dumpDir(c, dir)
	}
	c.printf("DONE pass=%d fail=%d", c.pass, c.fail)
	finish(c)
}

// consoleWriter writes to /dev/console when available (PID 1 may have been
// started without usable stdio), else stdout.
func consoleWriter() io.Writer {
	if os.Getpid() == 1 {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
			return f
		}
	}
	return os.Stdout
}

// readCmdline returns /proc/cmdline, mounting proc first if it is missing.
func readCmdline() (string, bool) {
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		return string(b), false
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", false
	}
	b, _ := os.ReadFile("/proc/cmdline")
	return string(b), true
}

func runRootChecks(c *checker, opts options, procMountedByUs bool) {
	skip := opts.Skip
	if !skip["pid1"] {
		c.check("pid1", expectPID1())
	}
	rootMode := "ro"
	for _, e := range opts.Expect {
		if e.Kind == expectRoot {
			rootMode = e.Arg
		}
	}
	if !skip["root-"+rootMode] {
		c.check("root-"+rootMode, checkRootMode(rootMode))
	}
	mounts := []struct {
		path  string
		magic int64
	}{
		{"/proc", unix.PROC_SUPER_MAGIC},
		{"/sys", unix.SYSFS_MAGIC},
		{"/dev", unix.TMPFS_MAGIC}, // devtmpfs reports the tmpfs magic
		{"/run", unix.TMPFS_MAGIC},
	}
	for _, m := range mounts {
		name := "mount:" + m.path
		if skip[name] {
			continue
		}
		if m.path == "/proc" && procMountedByUs {
			c.check(name, errors.New("/proc was not mounted when init started"))
			continue
		}
		c.check(name, checkMounted(m.path, m.magic))
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		if m, ok := findMount(parseMountinfo(string(mi)), "/"); ok {
			c.printf("info root source=%s fstype=%s options=%s", m.Source, m.FSType, m.Options)
		}
	}
	if !skip["report"] {
		doc, err := readReport()
		c.check("report", err)
		if err == nil {
			var compact bytes.Buffer
			_ = json.Compact(&compact, doc)
			c.printf("REPORT BEGIN")
			fmt.Fprintf(c.out, "%s\n", compact.Bytes())
			c.printf("REPORT END")
		}
	}
	if !skip["initramfs-gone"] {
		c.check("initramfs-gone", checkAbsent("/init"))
	}
}

func expectPID1() error {
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("running as pid %d, expected 1", pid)
	}
	return nil
}

func checkRootMode(want string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("statfs /: %w", err)
	}
	got := "rw"
	if st.Flags&unix.ST_RDONLY != 0 {
		got = "ro"
	}
	if got != want {
		return fmt.Errorf("/ is mounted %s, expected %s", got, want)
	}
	return nil
}

// checkMounted requires path to be a mount point (its device differs from its
// parent's) of the file system with the given magic.
func checkMounted(path string, magic int64) error {
	var st, parent unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if err := unix.Stat(path+"/..", &parent); err != nil {
		return fmt.Errorf("stat %s/..: %w", path, err)
	}
	if st.Dev == parent.Dev {
		return fmt.Errorf("%s is not a mount point (same device as /)", path)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if int64(sfs.Type) != magic {
		return fmt.Errorf("%s has file system magic %#x, expected %#x", path, sfs.Type, magic)
	}
	return nil
}

func readReport() ([]byte, error) {
	doc, err := os.ReadFile(reportPath)
	if err != nil {
		return nil, err
	}
	if !json.Valid(doc) {
		return nil, fmt.Errorf("%s (%d bytes) is not valid JSON", reportPath, len(doc))
	}
	return doc, nil
}

func checkAbsent(path string) error {
	_, err := os.Lstat(path)
	if err == nil {
		return fmt.Errorf("%s exists, expected it removed before switching root", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lstat %s: %w", path, err)
	}
	return nil
}

// runInitrdChecks proves the firmware path: booted via UEFI, with a TPM whose
// event log the firmware filled.
func runInitrdChecks(c *checker) {
	c.check("pid1", expectPID1())
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
		{"securityfs", "/sys/kernel/security", "securityfs"},
	} {
		err := unix.Mount(m.src, m.dst, m.fstype, 0, "")
		if errors.Is(err, unix.EBUSY) {
			err = nil
		}
		c.check("mount:"+m.dst, err)
	}
	c.check("uefi", checkExists("/sys/firmware/efi"))
	c.check("tpm-device", waitExists("/dev/tpm0", 5*time.Second))
	c.check("tpm-eventlog", checkNonEmpty("/sys/kernel/security/tpm0/binary_bios_measurements"))
}

func checkExists(path string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	return nil
}

func waitExists(path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := checkExists(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkNonEmpty(path string) error {
	// securityfs reports size 0, so read instead of stat.
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 64)
	n, err := f.Read(buf)
	if n == 0 {
		return fmt.Errorf("%s is empty (%v)", path, err)
	}
	return nil
}

// runExpectations evaluates rootcheck.expect items (root:ro|rw is handled by
// the default root check and skipped here).
func runExpectations(c *checker, exps []expectation, cmdline string) {
	var mounts []mount
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		mounts = parseMountinfo(string(mi))
	}
	var report any
	var reportErr error
	if doc, err := readReport(); err != nil {
		reportErr = err
	} else if err := json.Unmarshal(doc, &report); err != nil {
		reportErr = err
	}
	for _, e := range exps {
		if e.Kind == expectRoot {
			continue
		}
		c.check(e.name(), evalExpectation(e, mounts, report, reportErr, cmdline))
	}
}

// marker prints whether path was there from an earlier boot, and writes it (durably) when
// it was not.
func marker(path string) error {
	if b, err := os.ReadFile(path); err == nil {
		fmt.Printf("ROOTCHECK: marker %s present: %s\n", path, strings.TrimSpace(string(b)))
		return nil
	}
	text := fmt.Sprintf("written at boot %d\n", time.Now().UnixNano())
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err
	}
	unix.Sync()
	fmt.Printf("ROOTCHECK: marker %s written: %s", path, text)
	return nil
}

// churnFor is how long churn writes: longer than the host waits before it kills the VM.
const churnFor = 15 * time.Second

// churnFile is one file churn writes: 256 KiB of its name's SHA-256, repeated.
func churnFile(name string) []byte {
	sum := sha256.Sum256([]byte(name))
	return bytes.Repeat(sum[:], 256<<10/len(sum))
}

// churn reads back every file in dir, then writes files there for d, each to a temporary
// name, synced, renamed and the directory synced. A file under its final name must hold
// what churnFile gives; a temporary one (the write was cut) must read without error.
func churn(dir string, d time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	done, cut := 0, 0
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("reading back %s: %w", e.Name(), err)
		}
		if strings.HasPrefix(e.Name(), ".tmp-") {
			cut++
			continue
		}
		if !bytes.Equal(b, churnFile(e.Name())) {
			return fmt.Errorf("%s: %d bytes that are not what was written and synced", e.Name(), len(b))
		}
		done++
	}
	fmt.Printf("ROOTCHECK: churn read back %d files, %d cut short\n", done, cut)
	fmt.Printf("ROOTCHECK: churn writing in %s for %s\n", dir, d)
	df, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer df.Close()
	n := 0
	for start := time.Now(); time.Since(start) < d && n < 400; n++ {
		name := fmt.Sprintf("f-%d-%03d", time.Now().UnixNano(), n)
		tmp := filepath.Join(dir, ".tmp-"+name)
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		_, err = f.Write(churnFile(name))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, filepath.Join(dir, name))
		}
		if err == nil {
			err = df.Sync()
		}
		if err != nil {
			return err
		}
		if n == 0 {
			fmt.Printf("ROOTCHECK: churn synced its first file %s\n", name)
		}
	}
	fmt.Printf("ROOTCHECK: churn wrote %d files\n", n)
	return nil
}

// enroll mounts dev and leaves an enrollment request for the UKI at path on it, as `cvmboot
// enroll --uki --sha256` does (persist.Enroll), and prints the predicted values. The UKI's
// SHA-256 is the owner's to give; here it is read from path with the extension .SHA next to
// it, where the harness, playing both host and owner, puts it.
func enroll(dev, path string) error {
	dir := "/run/rootcheck-enroll"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, "vfat", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, dir, err)
	}
	defer unix.Unmount(dir, 0)
	sum, err := os.ReadFile(filepath.Join(dir, strings.TrimSuffix(path, filepath.Ext(path))+".SHA"))
	if err != nil {
		return err
	}
	req, part, err := persist.Enroll(persist.EnrollOptions{UKI: filepath.Join(dir, path), SHA256: strings.TrimSpace(string(sum)), FirmwareLog: tee.FirmwareLogPath})
	if err != nil {
		return err
	}
	unix.Sync()
	fmt.Printf("ROOTCHECK: enroll request for UKI %s on %s: PCRs %v = %s\n", req.UKISHA256, part, req.PCRs, strings.Join(req.Values, " "))
	return nil
}

// evalExpectation is pure so that it can be tested without a booted system,
// except for the file kinds which stat the path.
func evalExpectation(e expectation, mounts []mount, report any, reportErr error, cmdline string) error {
	switch e.Kind {
	case expectRootFS:
		m, ok := findMount(mounts, "/")
		if !ok {
			return errors.New("no mount at / in /proc/self/mountinfo")
		}
		if m.FSType != e.Arg {
			return fmt.Errorf("/ is %s (source %s), expected %s", m.FSType, m.Source, e.Arg)
		}
	case expectMount:
		m, ok := findMount(mounts, e.Arg)
		if !ok {
			return fmt.Errorf("%s is not a mount point", e.Arg)
		}
		if e.HasValue && m.FSType != e.Value {
			return fmt.Errorf("%s is %s (source %s), expected %s", e.Arg, m.FSType, m.Source, e.Value)
		}
	case expectFile:
		if _, err := os.Lstat(e.Arg); err != nil {
			return err
		}
	case expectNoFile:
		if _, err := os.Lstat(e.Arg); err == nil {
			return fmt.Errorf("%s exists, expected absent", e.Arg)
		}
	case expectMarker:
		return marker(e.Arg)
	case expectEnroll:
		return enroll(e.Arg, e.Value)
	case expectChurn:
		return churn(e.Arg, churnFor)
	case expectReport:
		if reportErr != nil {
			return reportErr
		}
		v, err := lookupJSON(report, e.Arg)
		if err != nil {
			return fmt.Errorf("report %s: %w", e.Arg, err)
		}
		if e.HasValue {
			if got := jsonScalarString(v); got != e.Value {
				return fmt.Errorf("report %s = %q, expected %q", e.Arg, got, e.Value)
			}
		}
	case expectCmdline:
		for _, p := range parseCmdline(cmdline) {
			w := p.Key
			if p.HasValue {
				w += "=" + p.Value
			}
			if w == e.Arg {
				return nil
			}
		}
		return fmt.Errorf("%q not on the kernel command line", e.Arg)
	default:
		return fmt.Errorf("unknown expectation kind %q", e.Kind)
	}
	return nil
}

// finish powers the machine off when running as PID 1 (returning would panic
// the kernel); otherwise it exits non-zero on failures.
func finish(c *checker) {
	if os.Getpid() != 1 {
		if c.fail > 0 {
			os.Exit(1)
		}
		os.Exit(0)
	}
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	c.printf("FAIL poweroff: %v", err)
	for {
		time.Sleep(time.Hour)
	}
}

// dumpDir prints every regular file below dir in base64 between FILE markers, so the host can
// take files out of the guest's tmpfs (the evidence) through the serial console.
func dumpDir(c *checker, dir string) {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		c.printf("FILE BEGIN %s %d", p, len(data))
		enc := base64.StdEncoding.EncodeToString(data)
		for len(enc) > 0 {
			n := min(len(enc), 76)
			c.printf("B64 %s", enc[:n])
			enc = enc[n:]
		}
		c.printf("FILE END %s", p)
		return nil
	})
	c.check("dump:"+dir, err)
}
