package mount

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// movedMounts are carried from the initramfs into the new root.
var movedMounts = []string{"/dev", "/proc", "/sys", "/run"}

// maxSymlinkHops matches the kernel's MAXSYMLINKS (40).
const maxSymlinkHops = 40

// Switcher hands PID 1 over to the real init in NewRoot.
type Switcher struct {
	NewRoot string   // mount point of the new root, e.g. /sysroot
	Init    string   // path inside NewRoot, e.g. /sbin/init
	Args    []string // arguments after argv[0]
	Env     []string // the new init's environment
	Log     *zap.Logger
}

// DefaultEnv is the small environment given to the new init: PATH and the
// kernel-provided TERM.
func DefaultEnv() []string {
	term := os.Getenv("TERM")
	if term == "" {
		term = "linux"
	}
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=" + term}
}

// SwitchRoot moves /dev, /proc, /sys and /run into newRoot, deletes the
// initramfs, makes newRoot the root and executes init with args and
// DefaultEnv. It returns only on failure.
func SwitchRoot(newRoot, init string, args []string, log *zap.Logger) error {
	return (&Switcher{NewRoot: newRoot, Init: init, Args: args, Env: DefaultEnv(), Log: log}).Switch()
}

// Switch performs the hand-off; it returns only on failure.
func (s *Switcher) Switch() error {
	if err := s.Enter(); err != nil {
		return err
	}
	return s.Exec()
}

// Enter does everything up to the exec: after it, "/" is the new root with
// /dev, /proc, /sys and /run in it, and the caller can still record the
// hand-off (in /run) before calling Exec. Everything that can be checked is
// checked before the first destructive step.
func (s *Switcher) Enter() error {
	log := s.Log
	if log == nil {
		log = zap.NewNop()
	}
	newRoot := filepath.Clean(s.NewRoot)
	log = log.With(zap.String("new_root", newRoot), zap.String("init", s.Init))

	// 1. Checks.
	resolved, err := CheckInit(newRoot, s.Init)
	if err != nil {
		return err
	}
	log.Info("new init found", zap.String("resolved", resolved))
	if pid := os.Getpid(); pid != 1 {
		return fmt.Errorf("switch root to %s: must run as PID 1, running as PID %d", newRoot, pid)
	}
	var rootSt, newSt unix.Stat_t
	if err := unix.Stat("/", &rootSt); err != nil {
		return fmt.Errorf("switch root: stat /: %w", err)
	}
	if err := unix.Stat(newRoot, &newSt); err != nil {
		return fmt.Errorf("switch root: stat new root %s: %w", newRoot, err)
	}
	if newSt.Dev == rootSt.Dev {
		return fmt.Errorf("switch root: new root %s is not a mount point (same device %d:%d as /)", newRoot, unix.Major(rootSt.Dev), unix.Minor(rootSt.Dev))
	}

	// 2. Carry the API mounts over.
	for _, p := range movedMounts {
		if err := moveMount(p, newRoot, rootSt.Dev, newSt.Dev, log); err != nil {
			return err
		}
	}

	// 3. Free the initramfs: its memory is not released otherwise.
	var sfs unix.Statfs_t
	if err := unix.Statfs("/", &sfs); err != nil {
		log.Warn("statfs / failed, initramfs not deleted", zap.Error(err))
	} else if sfs.Type != unix.RAMFS_MAGIC && sfs.Type != unix.TMPFS_MAGIC {
		log.Warn("/ is neither ramfs nor tmpfs, not deleting it", zap.String("magic", fmt.Sprintf("%#x", sfs.Type)))
	} else if err := DeleteTree("/", rootSt.Dev, newRoot); err != nil {
		// Leftovers only cost memory; the boot goes on.
		log.Warn("initramfs not fully deleted", zap.Error(err))
	} else {
		log.Info("initramfs deleted")
	}

	// 4. Make the new root "/".
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return &Error{Op: "move", Source: newRoot, Target: "/", Err: err}
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot into %s: %w", newRoot, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: chdir / after chroot: %w", err)
	}
	log.Info("root switched")
	return nil
}

// Exec becomes the new init (step 5); it returns only on failure.
func (s *Switcher) Exec() error {
	if s.Log != nil {
		s.Log.Info("executing init", zap.String("init", s.Init), zap.Strings("args", s.Args))
		_ = s.Log.Sync()
	}
	argv := append([]string{s.Init}, s.Args...)
	err := unix.Exec(s.Init, argv, s.Env)
	return fmt.Errorf("switch root: exec %s in %s: %w", s.Init, filepath.Clean(s.NewRoot), err)
}

// moveMount moves the mount at p to newRoot+p. A p that is not a mount
// point is skipped; a target that already carries a mount keeps it and the
// initramfs copy is detached, as switch_root(8) does.
func moveMount(p, newRoot string, rootDev, newRootDev uint64, log *zap.Logger) error {
	dst := filepath.Join(newRoot, p)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil || st.Dev == rootDev {
		log.Info("not a mount point, not moved", zap.String("path", p))
		return nil
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("switch root: creating %s to move %s there: %w", dst, p, err)
	}
	var dst2 unix.Stat_t
	if err := unix.Stat(dst, &dst2); err != nil {
		return fmt.Errorf("switch root: stat %s: %w", dst, err)
	}
	if dst2.Dev != newRootDev {
		log.Warn("target already mounted, detaching the initramfs copy", zap.String("path", p), zap.String("target", dst))
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return &Error{Op: "detach", Source: p, Target: p, Err: err}
		}
		return nil
	}
	if err := unix.Mount(p, dst, "", unix.MS_MOVE, ""); err != nil {
		return &Error{Op: "move", Source: p, Target: dst, Err: err}
	}
	log.Info("moved mount", zap.String("from", p), zap.String("to", dst))
	return nil
}

// CheckInit resolves init inside root the way the kernel will after the
// chroot (absolute symlinks are relative to root, ".." stops at root) and
// checks that it is an executable regular file. It returns the resolved
// path relative to root.
func CheckInit(root, init string) (string, error) {
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("init %q not found in new root %s: %w", init, root, err)
	}
	if !path.IsAbs(init) {
		return fail(errors.New("init must be an absolute path"))
	}
	resolved, err := resolveInRoot(root, init)
	if err != nil {
		return fail(err)
	}
	var st unix.Stat_t
	full := filepath.Join(root, resolved)
	if err := unix.Lstat(full, &st); err != nil {
		return fail(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(fmt.Errorf("%s is not a regular file (mode %#o)", resolved, st.Mode&unix.S_IFMT))
	}
	if st.Mode&0o111 == 0 {
		return fail(fmt.Errorf("%s is not executable (mode %#o)", resolved, st.Mode&0o7777))
	}
	return resolved, nil
}

// resolveInRoot follows symlinks in p component by component, treating
// root as "/". The result is an absolute path inside root without
// symlinks (the last component may not exist; the caller stats it).
func resolveInRoot(root, p string) (string, error) {
	hops := 0
	todo := strings.Split(strings.TrimPrefix(p, "/"), "/")
	resolved := "/"
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved) // path.Dir("/") is "/": ".." stops at root
			continue
		}
		next := path.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if len(todo) > 0 && !fi.IsDir() {
				return "", fmt.Errorf("%s is not a directory", next)
			}
			resolved = next
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return "", fmt.Errorf("too many levels of symbolic links resolving %s", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			resolved = "/"
		}
		todo = append(strings.Split(strings.TrimPrefix(target, "/"), "/"), todo...)
	}
	return resolved, nil
}
