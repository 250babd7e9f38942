package mount

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// apiMount is one of the kernel API file systems PID 1 mounts itself.
type apiMount struct {
	target   string // absolute, below Mounter.Root
	fstype   string
	flags    uintptr
	data     string
	fallback string // fstype to use when fstype is not supported (devtmpfs → tmpfs)
	// optional mounts are skipped when the kernel lacks the file system or
	// the mount point does not exist (sysfs directories cannot be created).
	optional bool
}

const (
	nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	// ttyGID is the "tty" group systemd and Debian use for /dev/pts.
	ttyGID = 5
)

// earlyMounts is the order PID 1 needs them: /proc first (mountinfo and
// /proc/filesystems come from it), /sys before its subdirectories.
var earlyMounts = []apiMount{
	{target: "/proc", fstype: "proc", flags: nosuidNodevNoexec},
	{target: "/sys", fstype: "sysfs", flags: nosuidNodevNoexec},
	{target: "/dev", fstype: "devtmpfs", flags: unix.MS_NOSUID, data: "mode=0755", fallback: "tmpfs"},
	{target: "/dev/pts", fstype: "devpts", flags: unix.MS_NOSUID | unix.MS_NOEXEC, data: fmt.Sprintf("mode=0620,gid=%d", ttyGID)},
	{target: "/dev/shm", fstype: "tmpfs", flags: unix.MS_NOSUID | unix.MS_NODEV, data: "mode=1777"},
	{target: "/run", fstype: "tmpfs", flags: unix.MS_NOSUID | unix.MS_NODEV, data: "mode=0755"},
	{target: "/sys/kernel/security", fstype: "securityfs", flags: nosuidNodevNoexec, optional: true},
	{target: "/sys/kernel/config", fstype: "configfs", flags: nosuidNodevNoexec, optional: true},
	{target: "/sys/firmware/efi/efivars", fstype: "efivarfs", flags: nosuidNodevNoexec, optional: true},
}

// Mounter performs mounts below Root; tests point Root at a temporary
// directory and replace the system calls.
type Mounter struct {
	Root string      // "/" when empty
	Log  *zap.Logger // no logging when nil

	mount func(source, target, fstype string, flags uintptr, data string) error
}

func (m *Mounter) root() string {
	if m.Root == "" {
		return "/"
	}
	return m.Root
}

func (m *Mounter) log() *zap.Logger {
	if m.Log == nil {
		return zap.NewNop()
	}
	return m.Log
}

func (m *Mounter) sysMount(source, target, fstype string, flags uintptr, data string) error {
	if m.mount != nil {
		return m.mount(source, target, fstype, flags, data)
	}
	return unix.Mount(source, target, fstype, flags, data)
}

func (m *Mounter) path(p string) string { return filepath.Join(m.root(), p) }

// Early mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and, when the
// kernel has them, securityfs, configfs and efivarfs.
func Early(log *zap.Logger) ([]string, error) { return (&Mounter{Log: log}).Early() }

// Early mounts the API file systems below m.Root. Anything already
// mounted is left alone, so calling it twice is harmless. Missing
// mandatory mounts are reported together; optional ones only logged. It
// returns the targets it mounted.
func (m *Mounter) Early() ([]string, error) {
	var errs []error
	var mounted []string
	for _, am := range earlyMounts {
		did, err := m.mountAPI(am)
		if did {
			mounted = append(mounted, m.path(am.target))
		}
		if err != nil {
			if am.optional {
				m.log().Warn("optional mount failed", zap.String("target", m.path(am.target)), zap.Error(err))
				continue
			}
			errs = append(errs, err)
		}
	}
	return mounted, errors.Join(errs...)
}

// mountAPI mounts one API file system; it reports whether it mounted it.
func (m *Mounter) mountAPI(am apiMount) (bool, error) {
	target := m.path(am.target)
	log := m.log().With(zap.String("target", target), zap.String("fstype", am.fstype))
	// Re-read each time: /proc appears only after the first step.
	mounts, err := ReadMountInfo(m.path("/proc/self/mountinfo"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("reading mount table before mounting %s: %w", target, err)
	}
	if mi := Lookup(mounts, target); mi != nil {
		if mi.FSType != am.fstype && mi.FSType != am.fallback {
			log.Warn("already mounted with another file system type, leaving it", zap.String("found", mi.FSType))
		} else {
			log.Debug("already mounted")
		}
		return false, nil
	}
	fstype := am.fstype
	if fss, err := readFilesystems(m.path("/proc/filesystems")); err == nil {
		if _, ok := fss[fstype]; !ok {
			switch {
			case am.fallback != "":
				log.Warn("file system not supported by the kernel, using fallback", zap.String("fallback", am.fallback))
				fstype = am.fallback
			case am.optional:
				log.Debug("file system not supported by the kernel, skipped")
				return false, nil
			default:
				return false, fmt.Errorf("mounting %s on %s: the kernel does not support %s (not in /proc/filesystems)", am.fstype, target, am.fstype)
			}
		}
	}
	if am.optional {
		if st, err := os.Stat(target); err != nil || !st.IsDir() {
			log.Debug("mount point missing, skipped")
			return false, nil
		}
	} else if err := os.MkdirAll(target, 0o755); err != nil {
		return false, fmt.Errorf("creating mount point %s: %w", target, err)
	}
	if err := m.sysMount(fstype, target, fstype, am.flags, am.data); err != nil {
		if am.optional && (errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)) {
			log.Debug("not available", zap.Error(err))
			return false, nil
		}
		return false, &Error{Op: "mount", Source: fstype, Target: target, FSType: fstype, Options: am.data, Err: err}
	}
	log.Info("mounted", zap.String("options", am.data))
	return true, nil
}

// readFilesystems parses /proc/filesystems into name → "nodev" flag.
func readFilesystems(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 1:
			out[fields[0]] = false
		case len(fields) == 2 && fields[0] == "nodev":
			out[fields[1]] = true
		}
	}
	return out, sc.Err()
}

// Error is a failed mount(2): it names the device, file system type,
// target, options and the errno.
type Error struct {
	Op      string // "mount", "move", …
	Source  string
	Target  string
	FSType  string
	Options string
	Err     error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s on %s", e.Op, e.Source, e.Target)
	if e.FSType != "" {
		fmt.Fprintf(&b, " as %s", e.FSType)
	}
	if e.Options != "" {
		fmt.Fprintf(&b, " with options %q", e.Options)
	}
	b.WriteString(": ")
	b.WriteString(errnoText(e.Err))
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// errnoText renders an errno with its symbolic name ("invalid argument
// (EINVAL)"); names are what people search for.
func errnoText(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return fmt.Sprintf("%v (%s)", err, name)
		}
	}
	return err.Error()
}
