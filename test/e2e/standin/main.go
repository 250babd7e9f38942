// Command standin is a deliberately small initramfs /init used by the e2e
// harness until cvmboot's own PID 1 path exists. It loads the kernel modules
// the harness packed under /standin/modules, waits for root= (PARTUUID= or a
// /dev path), mounts it read-only, writes /run/cvmboot/report.json, switches
// root and execs init=. It logs to /dev/kmsg as "standin: ..." and on failure
// prints "standin: FATAL ..." and powers off.
//
// It is test scaffolding, not a model for cvmboot: no verity, no encryption,
// no measurements.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	modulesDir = "/standin/modules"
	newRoot    = "/sysroot"
)

var kmsg *os.File

func logf(format string, args ...any) {
	msg := fmt.Sprintf("standin: "+format, args...)
	if kmsg != nil {
		// <5> notice: shown on the console at Debian's default log level.
		if _, err := kmsg.WriteString("<5>" + msg + "\n"); err == nil {
			return
		}
	}
	fmt.Println(msg)
}

func fatal(stage string, err error) {
	logf("FATAL %s: %v", stage, err)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

type report struct {
	Producer   string   `json:"producer"`
	RootSpec   string   `json:"root_spec"`
	RootDevice string   `json:"root_device"`
	RootFSType string   `json:"root_fstype"`
	Modules    []string `json:"modules"`
	Init       string   `json:"init"`
	ElapsedMS  int64    `json:"elapsed_ms"`
}

func main() {
	start := time.Now()
	for _, m := range []struct{ src, dst, fstype string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fatal("mount "+m.dst, err)
		}
	}
	kmsg, _ = os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fatal("cmdline", err)
	}
	args := parseArgs(string(cmdline))
	rootSpec := args["root"]
	if rootSpec == "" {
		fatal("cmdline", errors.New("no root= on the kernel command line"))
	}
	initPath := args["init"]
	if initPath == "" {
		initPath = "/sbin/init"
	}
	timeout := 30 * time.Second
	if v := args["standin.timeout"]; v != "" {
		if s, err := strconv.Atoi(v); err == nil && s > 0 {
			timeout = time.Duration(s) * time.Second
		}
	}

	mods, err := loadModules()
	if err != nil {
		fatal("modules", err)
	}
	logf("loaded modules %s", strings.Join(mods, " "))

	dev, err := waitForRoot(rootSpec, timeout)
	if err != nil {
		fatal("root device", err)
	}
	fstype, err := mountRoot(dev, args["rootfstype"])
	if err != nil {
		fatal("mount root", err)
	}
	logf("mounted %s (%s, %s) read-only on %s", rootSpec, dev, fstype, newRoot)

	rep := report{Producer: "e2e-standin", RootSpec: rootSpec, RootDevice: dev, RootFSType: fstype,
		Modules: mods, Init: initPath, ElapsedMS: time.Since(start).Milliseconds()}
	if err := writeReport(rep); err != nil {
		fatal("report", err)
	}
	if err := switchRoot(); err != nil {
		fatal("switch_root", err)
	}
	if _, err := os.Stat(initPath); err != nil {
		fatal("init", fmt.Errorf("init %s in new root: %w", initPath, err))
	}
	logf("exec %s", initPath)
	err = unix.Exec(initPath, []string{initPath}, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=linux"})
	fatal("exec init", fmt.Errorf("%s: %w", initPath, err))
}

// parseArgs maps command line keys to their last value (quotes removed).
func parseArgs(cmdline string) map[string]string {
	out := map[string]string{}
	for _, w := range splitCmdline(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		out[k] = v
	}
	return out
}

// splitCmdline splits on blanks outside double quotes and drops the quotes.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == 0):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

func loadModules() ([]string, error) {
	entries, err := os.ReadDir(modulesDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(modulesDir, n)
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("finit_module %s: %w", p, err)
		}
	}
	return names, nil
}

// waitForRoot polls until the device named by spec exists.
func waitForRoot(spec string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev, err := resolveRoot(spec)
		if err == nil {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("root=%s did not appear within %s: %v", spec, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func resolveRoot(spec string) (string, error) {
	if strings.HasPrefix(spec, "/dev/") {
		if _, err := os.Stat(spec); err != nil {
			return "", err
		}
		return spec, nil
	}
	want, ok := strings.CutPrefix(spec, "PARTUUID=")
	if !ok {
		return "", fmt.Errorf("unsupported root=%s (want PARTUUID= or /dev/...)", spec)
	}
	want = strings.ToLower(want)
	disks, err := os.ReadDir("/sys/block")
	if err != nil {
		return "", err
	}
	for _, d := range disks {
		f, err := os.Open("/dev/" + d.Name())
		if err != nil {
			continue
		}
		entries, err := readGPT(f)
		f.Close()
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.PartUUID != want {
				continue
			}
			if name, err := partitionName(d.Name(), e.Index); err == nil {
				return "/dev/" + name, nil
			}
		}
	}
	return "", fmt.Errorf("no partition with PARTUUID %s on %d block devices", want, len(disks))
}

// partitionName finds the sysfs child of disk whose partition number is n.
func partitionName(disk string, n int) (string, error) {
	children, err := os.ReadDir("/sys/block/" + disk)
	if err != nil {
		return "", err
	}
	for _, c := range children {
		b, err := os.ReadFile(filepath.Join("/sys/block", disk, c.Name(), "partition"))
		if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(n) {
			if _, err := os.Stat("/dev/" + c.Name()); err == nil {
				return c.Name(), nil
			}
		}
	}
	return "", fmt.Errorf("%s has no partition %d yet", disk, n)
}

func mountRoot(dev, fstype string) (string, error) {
	types := []string{"ext4", "erofs"}
	if fstype != "" {
		types = []string{fstype}
	}
	var errs []string
	for _, t := range types {
		err := unix.Mount(dev, newRoot, t, unix.MS_RDONLY, "")
		if err == nil {
			return t, nil
		}
		errs = append(errs, t+": "+err.Error())
	}
	return "", fmt.Errorf("mount %s on %s: %s", dev, newRoot, strings.Join(errs, "; "))
}

func writeReport(r report) error {
	if err := os.MkdirAll("/run/cvmboot", 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile("/run/cvmboot/report.json", append(b, '\n'), 0o644)
}

// switchRoot moves the API mounts into the new root, deletes the initramfs
// contents (they would otherwise pin memory) and makes /sysroot the root.
func switchRoot() error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		if err := unix.Mount(m, newRoot+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s to %s%s: %w", m, newRoot, m, err)
		}
	}
	var rootSt unix.Stat_t
	if err := unix.Stat("/", &rootSt); err != nil {
		return err
	}
	removeSameDevice("/", rootSt.Dev)
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

// removeSameDevice deletes everything below dir that lives on device dev
// (the initramfs), never crossing into other mounts such as /sysroot.
func removeSameDevice(dir string, dev uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			removeSameDevice(p, dev)
			_ = unix.Rmdir(p)
			continue
		}
		_ = unix.Unlink(p)
	}
}
