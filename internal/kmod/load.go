package kmod

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// Syscalls are the kernel entry points the Loader uses; tests substitute a fake.
type Syscalls interface {
	FinitModule(fd int, params string, flags int) error
	InitModule(img []byte, params string) error
}

// KernelSyscalls calls finit_module(2) and init_module(2).
type KernelSyscalls struct{}

// FinitModule loads the module in the open file fd.
func (KernelSyscalls) FinitModule(fd int, params string, flags int) error {
	return unix.FinitModule(fd, params, flags)
}

// InitModule loads the module image img.
func (KernelSyscalls) InitModule(img []byte, params string) error {
	return unix.InitModule(img, params)
}

// How a module was handled by Load.
const (
	StatusLoaded        = "loaded"
	StatusAlreadyLoaded = "already loaded"
	StatusBuiltin       = "built in"
	StatusNoDevice      = "no device" // the kernel refused it with ENODEV
)

// How a module image reached the kernel.
const (
	MethodFinit           = "finit_module"
	MethodFinitCompressed = "finit_module(MODULE_INIT_COMPRESSED_FILE)"
	MethodInit            = "init_module" // after decompressing in memory
)

// LoadResult records what Load did with one module.
type LoadResult struct {
	Name     string
	Path     string // file that was loaded, empty when nothing was
	Status   string // StatusLoaded, StatusAlreadyLoaded, StatusBuiltin or StatusNoDevice
	Method   string // Method* when Status is StatusLoaded
	Duration time.Duration
}

// Loader loads modules the way modprobe would, for a PID 1 without modprobe.
// The zero value loads from /lib/modules/$(uname -r) on the running system.
type Loader struct {
	// Root is the file system root under which ModulesDir and /proc/modules are found;
	// "" means "/".
	Root string
	// Sysfs is where sysfs is mounted; "" means Root/sys.
	Sysfs string
	// ModulesDir is the modules directory below Root; "" means /lib/modules/<uname -r>.
	ModulesDir string
	// Sys performs the system calls; nil means KernelSyscalls.
	Sys Syscalls
	// Params holds module parameters ("key=value key2=value") by module name.
	Params map[string]string
	// KernelDecompress first offers a compressed module to finit_module with
	// MODULE_INIT_COMPRESSED_FILE, which needs CONFIG_MODULE_DECOMPRESS (Linux 5.17+),
	// and falls back to decompressing in memory when the kernel answers EINVAL, ENOSYS or
	// EOPNOTSUPP. Off by default: Debian's 6.1 cloud kernel lacks the option, and the
	// fallback costs an extra system call per module.
	KernelDecompress bool
	// Log receives one entry per module; nil discards.
	Log *zap.Logger
}

// Load loads mods in order, skipping built-in modules and modules already loaded
// (/sys/module/NAME or /proc/modules), and stops at the first failure: later modules
// usually depend on it. It returns what it did up to that point.
func (l *Loader) Load(ctx context.Context, mods []Module) ([]LoadResult, error) {
	log := l.Log
	if log == nil {
		log = zap.NewNop()
	}
	sys := l.Sys
	if sys == nil {
		sys = KernelSyscalls{}
	}
	root := l.Root
	if root == "" {
		root = "/"
	}
	sysfs := l.Sysfs
	if sysfs == "" {
		sysfs = filepath.Join(root, "sys")
	}
	modDir, err := l.modulesDir()
	if err != nil {
		return nil, err
	}

	loaded, err := readProcModules(filepath.Join(root, "proc", "modules"))
	if err != nil {
		return nil, err
	}

	results := make([]LoadResult, 0, len(mods))
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return results, fmt.Errorf("load kernel modules: stopped before %s: %w", m.Name, err)
		}
		name := Normalize(m.Name)
		if m.Builtin {
			results = append(results, LoadResult{Name: name, Status: StatusBuiltin})
			log.Debug("kernel module built in", zap.String("module", name))
			continue
		}
		if loaded[name] || exists(filepath.Join(sysfs, "module", name)) {
			results = append(results, LoadResult{Name: name, Status: StatusAlreadyLoaded})
			log.Debug("kernel module already loaded", zap.String("module", name))
			continue
		}
		file := moduleFile(modDir, m)
		start := time.Now()
		method, err := l.loadOne(sys, file, l.Params[name])
		took := time.Since(start)
		if errors.Is(err, unix.EEXIST) {
			// Loaded meanwhile (udev, a racing load) or built in without a sysfs entry.
			results = append(results, LoadResult{Name: name, Path: file, Status: StatusAlreadyLoaded, Duration: took})
			log.Debug("kernel module already loaded", zap.String("module", name), zap.String("path", file))
			continue
		}
		if errors.Is(err, unix.ENODEV) {
			// The module's hardware is absent (a CPU-specific cipher on a CPU without the
			// instructions): nothing to drive, and whatever needed it fails on its own.
			results = append(results, LoadResult{Name: name, Path: file, Status: StatusNoDevice, Duration: took})
			log.Warn("kernel module has no device to drive", zap.String("module", name), zap.String("path", file), zap.Error(err))
			continue
		}
		if err != nil {
			log.Error("kernel module load failed", zap.String("module", name), zap.String("path", file),
				zap.Duration("duration", took), zap.Error(err))
			return results, fmt.Errorf("load kernel module %s (%s): %w", name, file, err)
		}
		loaded[name] = true
		results = append(results, LoadResult{Name: name, Path: file, Status: StatusLoaded, Method: method, Duration: took})
		log.Info("kernel module loaded", zap.String("module", name), zap.String("path", file),
			zap.String("method", method), zap.Duration("duration", took))
	}
	return results, nil
}

// modulesDir returns the modules directory on the file system (Root joined).
func (l *Loader) modulesDir() (string, error) {
	dir := l.ModulesDir
	if dir == "" {
		var uts unix.Utsname
		if err := unix.Uname(&uts); err != nil {
			return "", fmt.Errorf("uname: %w", err)
		}
		dir = filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]))
	}
	root := l.Root
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, dir), nil
}

// LoadNames indexes the modules directory, resolves names with their dependencies and
// loads them. It returns the names of the modules it loaded, in order; modules already
// loaded or built in are not listed.
func (l *Loader) LoadNames(ctx context.Context, names []string) ([]string, error) {
	dir, err := l.modulesDir()
	if err != nil {
		return nil, err
	}
	ix, err := OpenIndex(dir)
	if err != nil {
		return nil, err
	}
	r, err := ix.Resolve(names)
	if err != nil {
		return nil, err
	}
	if l.Log != nil {
		for _, w := range ix.Warnings {
			l.Log.Warn("kernel module index", zap.String("warning", w))
		}
		if len(r.MissingSoft) > 0 {
			l.Log.Info("optional soft dependencies not found", zap.Strings("modules", r.MissingSoft))
		}
	}
	mods := r.Modules
	for _, b := range r.Builtin {
		mods = append(mods, Module{Name: b, Builtin: true})
	}
	results, err := l.Load(ctx, mods)
	var loaded []string
	for _, res := range results {
		if res.Status == StatusLoaded {
			loaded = append(loaded, res.Name)
		}
	}
	return loaded, err
}

// loadOne hands one module file to the kernel and returns the method used.
func (l *Loader) loadOne(sys Syscalls, file, params string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	kind := compression(file)
	if kind == "" {
		return MethodFinit, syscallError("finit_module", sys.FinitModule(int(f.Fd()), params, 0))
	}
	if l.KernelDecompress {
		err := sys.FinitModule(int(f.Fd()), params, unix.MODULE_INIT_COMPRESSED_FILE)
		if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) {
			return MethodFinitCompressed, syscallError("finit_module(MODULE_INIT_COMPRESSED_FILE)", err)
		}
	}
	raw, err := readfile.From(f, f.Name(), maxModuleSize)
	if err != nil {
		return "", err
	}
	img, err := decompress(kind, raw)
	if err != nil {
		return "", fmt.Errorf("decompress: %w", err)
	}
	return MethodInit, syscallError("init_module", sys.InitModule(img, params))
}

// syscallError names the call and the errno symbol next to its text, with the usual
// meaning for the errnos that module loading gives a specific sense to. It keeps the
// errno in the chain for errors.Is.
func syscallError(call string, err error) error {
	if err == nil {
		return nil
	}
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("%s: %w", call, err)
	}
	hint := ""
	switch errno {
	case unix.ENOEXEC:
		hint = "; not a module for this kernel or architecture"
	case unix.ENOENT, unix.EINVAL:
		hint = "; unknown symbol or bad parameter, see the kernel log"
	case unix.EKEYREJECTED, unix.ENOKEY, unix.EBADMSG:
		hint = "; module signature rejected"
	case unix.EPERM:
		hint = "; module loading is disabled or needs CAP_SYS_MODULE"
	}
	return fmt.Errorf("%s: %w (%s%s)", call, err, unix.ErrnoName(errno), hint)
}

// readProcModules returns the names listed in /proc/modules; a missing file (proc not
// mounted yet) gives an empty set, since sysfs and EEXIST still catch loaded modules.
func readProcModules(p string) (map[string]bool, error) {
	loaded := map[string]bool{}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return loaded, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, _, ok := strings.Cut(sc.Text(), " "); ok && name != "" {
			loaded[Normalize(name)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return loaded, nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
