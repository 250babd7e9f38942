package kmod

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
	// Concurrent loads independent modules at the same time (see loadState.concurrent).
	Concurrent bool
}

// Load loads mods in order, skipping built-in modules and modules already loaded
// (/sys/module/NAME or /proc/modules), and stops at the first failure: later modules
// usually depend on it. It returns what it did up to that point. With Concurrent, see
// loadState.concurrent: the results can include modules listed after the failed one.
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

	st := &loadState{l: l, sys: sys, log: log, modDir: modDir, sysfs: sysfs, loaded: loaded}
	if l.Concurrent {
		return st.concurrent(ctx, mods)
	}
	results := make([]LoadResult, 0, len(mods))
	for _, m := range mods {
		if err := ctx.Err(); err != nil {
			return results, fmt.Errorf("load kernel modules: stopped before %s: %w", m.Name, err)
		}
		res, err := st.one(m)
		if err != nil {
			return results, err
		}
		results = append(results, res)
	}
	return results, nil
}

// loadState is one Load call's view: what is loaded, where the files are.
type loadState struct {
	l             *Loader
	sys           Syscalls
	log           *zap.Logger
	modDir, sysfs string
	mu            sync.Mutex
	loaded        map[string]bool
}

func (st *loadState) isLoaded(name string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.loaded[name]
}

// one loads m unless it is built in or already loaded.
func (st *loadState) one(m Module) (LoadResult, error) {
	log := st.log
	name := Normalize(m.Name)
	if m.Builtin {
		log.Debug("kernel module built in", zap.String("module", name))
		return LoadResult{Name: name, Status: StatusBuiltin}, nil
	}
	if st.isLoaded(name) || exists(filepath.Join(st.sysfs, "module", name)) {
		log.Debug("kernel module already loaded", zap.String("module", name))
		return LoadResult{Name: name, Status: StatusAlreadyLoaded}, nil
	}
	file := moduleFile(st.modDir, m)
	start := time.Now()
	method, err := st.l.loadOne(st.sys, file, st.l.Params[name])
	took := time.Since(start)
	if errors.Is(err, unix.EEXIST) {
		// Loaded meanwhile (udev, a racing load) or built in without a sysfs entry.
		log.Debug("kernel module already loaded", zap.String("module", name), zap.String("path", file))
		return LoadResult{Name: name, Path: file, Status: StatusAlreadyLoaded, Duration: took}, nil
	}
	if errors.Is(err, unix.ENODEV) {
		// The module's hardware is absent (a CPU-specific cipher on a CPU without the
		// instructions): nothing to drive, and whatever needed it fails on its own.
		log.Warn("kernel module has no device to drive", zap.String("module", name), zap.String("path", file), zap.Error(err))
		return LoadResult{Name: name, Path: file, Status: StatusNoDevice, Duration: took}, nil
	}
	if err != nil {
		log.Error("kernel module load failed", zap.String("module", name), zap.String("path", file),
			zap.Duration("duration", took), zap.Error(err))
		return LoadResult{}, fmt.Errorf("load kernel module %s (%s): %w", name, file, err)
	}
	st.mu.Lock()
	st.loaded[name] = true
	st.mu.Unlock()
	log.Info("kernel module loaded", zap.String("module", name), zap.String("path", file),
		zap.String("method", method), zap.Duration("duration", took))
	return LoadResult{Name: name, Path: file, Status: StatusLoaded, Method: method, Duration: took}, nil
}

// concurrent loads each module as soon as the ones it depends on (hard or soft, listed
// before it in mods, which is load order) are in: independent chains (virtio's,
// device-mapper's, overlay) load side by side, and a driver's device probe no longer holds
// up the next chain. After a failure nothing new starts; modules depending on the failed one
// are never tried. Results keep mods' order: every module loaded, then the first error.
func (st *loadState) concurrent(ctx context.Context, mods []Module) ([]LoadResult, error) {
	done := make(map[string]chan struct{}, len(mods))
	pos := make(map[string]int, len(mods))
	for i, m := range mods {
		done[Normalize(m.Name)] = make(chan struct{})
		if _, seen := pos[Normalize(m.Name)]; !seen {
			pos[Normalize(m.Name)] = i
		}
	}
	type outcome struct {
		res       LoadResult
		err       error
		attempted bool
	}
	out := make([]outcome, len(mods))
	failed := map[string]bool{}
	var mu sync.Mutex
	stop := false
	var wg sync.WaitGroup
	for i, m := range mods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := Normalize(m.Name)
			if pos[name] != i {
				// Listed twice: the first one loads it, this one reports what the sequential
				// path would (already loaded) once it is in.
				<-done[name]
				mu.Lock()
				if !failed[name] {
					out[i] = outcome{res: LoadResult{Name: name, Status: StatusAlreadyLoaded}, attempted: true}
				}
				mu.Unlock()
				return
			}
			defer close(done[name])
			// Only modules listed earlier are waited for: no cycle can block.
			for _, d := range append(slices.Clone(m.Depends), m.SoftPre...) {
				if j, ok := pos[Normalize(d)]; ok && j < i {
					<-done[Normalize(d)]
				}
			}
			mu.Lock()
			skip := stop || ctx.Err() != nil
			for _, d := range m.Depends {
				skip = skip || failed[Normalize(d)]
			}
			if skip {
				failed[name] = true
				mu.Unlock()
				return
			}
			mu.Unlock()
			res, err := st.one(m)
			mu.Lock()
			out[i] = outcome{res: res, err: err, attempted: true}
			if err != nil {
				failed[name], stop = true, true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	var results []LoadResult
	var first error
	for i, o := range out {
		switch {
		case o.err != nil:
			first = cmp.Or(first, o.err)
		case o.attempted:
			results = append(results, o.res)
		case first == nil && ctx.Err() != nil:
			first = fmt.Errorf("load kernel modules: stopped before %s: %w", mods[i].Name, ctx.Err())
		}
	}
	return results, first
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
