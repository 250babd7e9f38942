package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/kmod"
)

// ModulesLoadPath lists, one per line, the modules the initramfs was built with; the
// boot's modules stage loads them together with the config's "modules:" list.
const ModulesLoadPath = "/etc/cvmboot/modules.load"

// Compression names accepted in Options.Compression.
const (
	CompressionGzip = "gzip"
	CompressionZstd = "zstd"
	CompressionNone = "none"
)

// Paths inside the initramfs that the agent and the kernel rely on.
const (
	InitPath          = "/init"
	ConfigPath        = "/etc/cvmboot/config.yaml"
	InitrdReleasePath = "/etc/initrd-release"
)

// Options describes an initramfs.
type Options struct {
	// Binary is the static cvmboot executable; it becomes /init.
	Binary string
	// Config is the optional agent configuration; it becomes /etc/cvmboot/config.yaml.
	// It must pass the agent's parser, and every module its "modules:" list names must be
	// in the module closure.
	Config string
	// KernelModulesDir is the target kernel's modules directory (…/lib/modules/VERSION).
	// Required when modules are wanted.
	KernelModulesDir string
	// Modules are the modules to include with their dependencies. Empty means the
	// config's "modules:" list.
	Modules []string
	// Compression is "gzip" (default), "zstd" or "none".
	Compression string
	// ToolsRoot is the file system tree the programs the enabled features run (mke2fs for
	// storage) and their shared libraries are taken from; "" means "/", the build host.
	// It should match the image's userland (e.g. the root tree the image is built from).
	ToolsRoot string
	// Cmdline is the kernel command line the image is built for (the UKI's .cmdline); it
	// becomes /etc/cvmboot/cmdline (cmdline.PinPath), and the boot refuses any other: the same
	// bytes but for white space around them. Empty pins none.
	Cmdline string
	// ExtraFiles maps archive paths to files on the host to copy there.
	ExtraFiles map[string]string
	// VersionID is VERSION_ID in /etc/initrd-release; empty means "devel".
	VersionID string
}

// Summary describes a built initramfs.
type Summary struct {
	// Files are the archive paths in archive order.
	Files []string
	// Modules are the included modules' names in load order.
	Modules []string
	// Builtin are requested modules compiled into the kernel (not included).
	Builtin []string
	// MissingSoft are optional soft dependencies not found (usually aliases).
	MissingSoft []string
	// Programs are the helper programs, their libraries and data files, by archive path.
	Programs []string
	// KernelVersion is the base name of KernelModulesDir, "" without modules.
	KernelVersion string
	// Compression is the compression used.
	Compression string
	// UncompressedSize is the size of the cpio archive, CompressedSize what was written to out.
	UncompressedSize int64
	CompressedSize   int64
}

// Build writes the initramfs described by o to out.
//
// The archive holds /init, the configuration, /etc/initrd-release (systemd and other tools
// recognise an initrd by it), the module closure under /lib/modules/VERSION with a
// modules.dep generated for exactly those modules (so the agent resolves the load order
// without scanning), the mount points the agent uses and /dev/console: the kernel opens
// it for PID 1's stdin/stdout/stderr before any devtmpfs exists, and without it /init
// runs with no console output at all.
func Build(o Options, out io.Writer) (Summary, error) {
	compression := o.Compression
	switch compression {
	case "", "gz":
		compression = CompressionGzip
	case "zst":
		compression = CompressionZstd
	case CompressionGzip, CompressionZstd, CompressionNone:
	default:
		return Summary{}, fmt.Errorf("initramfs compression %q is not supported: expected gzip, zstd or none", o.Compression)
	}
	sum := Summary{Compression: compression}

	mtime, err := sourceDateEpoch()
	if err != nil {
		return Summary{}, err
	}
	a := &Archive{MTime: mtime}

	if err := checkStaticBinary(o.Binary); err != nil {
		return Summary{}, err
	}
	if err := a.AddFileFrom(InitPath, 0o755, o.Binary); err != nil {
		return Summary{}, err
	}

	var configModules []string
	// Without a config file the boot runs with the defaults, so their features count.
	cfg := config.Default()
	if o.Config != "" {
		data, err := os.ReadFile(o.Config)
		if err != nil {
			return Summary{}, fmt.Errorf("initramfs config: %w", err)
		}
		// The agent's own strict parser: a config it would refuse at boot fails the build.
		cfg, err = config.Parse(o.Config, data)
		if err != nil {
			return Summary{}, fmt.Errorf("initramfs config: %w", err)
		}
		configModules = cfg.Modules
		if err := a.AddFile(ConfigPath, 0o644, data); err != nil {
			return Summary{}, err
		}
	}

	if o.Cmdline != "" {
		if err := cmdline.CheckPinnable(o.Cmdline); err != nil {
			return Summary{}, fmt.Errorf("initramfs: %w", err)
		}
		if err := a.AddFile(cmdline.PinPath, 0o644, []byte(cmdline.Trim(o.Cmdline)+"\n")); err != nil {
			return Summary{}, err
		}
	}

	release, err := initrdRelease(o.VersionID)
	if err != nil {
		return Summary{}, err
	}
	if err := a.AddFile(InitrdReleasePath, 0o644, release); err != nil {
		return Summary{}, err
	}
	// Tools that only look at os-release get the same answer.
	if err := a.AddSymlink("/etc/os-release", "initrd-release"); err != nil {
		return Summary{}, err
	}
	for _, d := range []struct {
		path string
		perm fs.FileMode
	}{
		{"/dev", 0o755}, {"/proc", 0o555}, {"/sys", 0o555}, {"/run", 0o755},
		{"/sysroot", 0o755}, {"/tmp", 0o777 | fs.ModeSticky}, {"/etc", 0o755},
	} {
		if err := a.AddDir(d.path, d.perm); err != nil {
			return Summary{}, err
		}
	}
	if err := a.AddCharDevice("/dev/console", 0o600, 5, 1); err != nil {
		return Summary{}, err
	}
	if err := a.AddCharDevice("/dev/null", 0o666, 1, 3); err != nil {
		return Summary{}, err
	}

	// The boot loads what the image builder named and what the config needs (image builders
	// should not have to know that the overlay or dm-verity are modules in their kernel), so
	// all of it goes in: config.KernelModules decides, as for `cvmboot modules`.
	mods := cfg.KernelModules(o.Modules...)
	if o.KernelModulesDir == "" {
		// No kernel to pack for: only modules asked for by name are an error.
		mods = config.KernelModules{Required: appendMissing(o.Modules, configModules)}
	}
	if len(mods.Required) > 0 {
		if err := addModules(a, o.KernelModulesDir, mods.Required, mods.Optional, &sum); err != nil {
			return Summary{}, err
		}
	}

	if progs := FeaturePrograms(cfg); len(progs) > 0 {
		if sum.Programs, err = addPrograms(a, o.ToolsRoot, progs); err != nil {
			return Summary{}, err
		}
	}

	dests := slices.Sorted(func(yield func(string) bool) {
		for d := range o.ExtraFiles {
			if !yield(d) {
				return
			}
		}
	})
	for _, dest := range dests {
		src := o.ExtraFiles[dest]
		st, err := os.Stat(src)
		if err != nil {
			return Summary{}, fmt.Errorf("initramfs extra file %s: %w", dest, err)
		}
		if err := a.AddFileFrom(dest, st.Mode(), src); err != nil {
			return Summary{}, fmt.Errorf("initramfs extra file: %w", err)
		}
	}

	sum.Files = a.Paths()
	compressed := &countingWriter{w: out}
	var cw io.WriteCloser
	switch compression {
	case CompressionGzip:
		// Level 9 saves about 0.1% on a Go binary plus modules at five times the time.
		gz, err := gzip.NewWriterLevel(compressed, gzip.DefaultCompression)
		if err != nil {
			return Summary{}, err
		}
		cw = gz
	case CompressionZstd:
		// One encoder goroutine: deterministic output and modest memory on a build host.
		// "Better" is ~2% smaller than the default level for ~4x the (sub-second) time.
		zw, err := zstd.NewWriter(compressed, zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
			zstd.WithEncoderConcurrency(1))
		if err != nil {
			return Summary{}, err
		}
		cw = zw
	default:
		cw = nopCloser{compressed}
	}
	n, err := a.WriteTo(cw)
	if err != nil {
		return Summary{}, fmt.Errorf("write initramfs: %w", err)
	}
	if err := cw.Close(); err != nil {
		return Summary{}, fmt.Errorf("write initramfs: %s: %w", compression, err)
	}
	sum.UncompressedSize = n
	sum.CompressedSize = compressed.n
	return sum, nil
}

// addModules adds the closure of request from modDir under /lib/modules/VERSION together
// with generated index files and the boot's load list.
//
// optional modules join the request only where this kernel has them (CPU-specific
// implementations another architecture lacks).
func addModules(a *Archive, modDir string, request, optional []string, sum *Summary) error {
	if modDir == "" {
		return fmt.Errorf("initramfs: modules %q requested but no kernel modules directory given", request)
	}
	ix, err := kmod.OpenIndex(modDir)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	for _, m := range optional {
		if _, ok := ix.Module(m); ok || ix.IsBuiltin(m) {
			request = appendMissing(request, []string{m})
		}
	}
	r, err := ix.Resolve(request)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	base := path.Join("/lib/modules", ix.Version)
	for _, m := range r.Modules {
		src := filepath.Join(modDir, filepath.FromSlash(m.Path))
		if err := a.AddFileFrom(path.Join(base, m.Path), 0o644, src); err != nil {
			return fmt.Errorf("initramfs: kernel module %s: %w", m.Name, err)
		}
	}
	if err := a.AddFile(path.Join(base, "modules.dep"), 0o644, r.ModulesDep()); err != nil {
		return err
	}
	if soft := r.ModulesSoftdep(); soft != nil {
		if err := a.AddFile(path.Join(base, "modules.softdep"), 0o644, soft); err != nil {
			return err
		}
	}
	// Built-in and order lists are small and let the agent tell "built in" from "missing".
	for _, name := range []string{"modules.builtin", "modules.order"} {
		src := filepath.Join(modDir, name)
		if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := a.AddFileFrom(path.Join(base, name), 0o644, src); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	// The boot loads what the image builder asked for, not only what the config lists.
	var load strings.Builder
	load.WriteString("# kernel modules cvmboot loads at boot (written by cvmboot initramfs)\n")
	for _, m := range request {
		load.WriteString(kmod.Normalize(m) + "\n")
	}
	if err := a.AddFile(ModulesLoadPath, 0o644, []byte(load.String())); err != nil {
		return err
	}
	sum.Modules = r.Names()
	sum.Builtin = r.Builtin
	sum.MissingSoft = r.MissingSoft
	sum.KernelVersion = ix.Version
	return nil
}

// checkStaticBinary refuses a missing, non-ELF or dynamically linked /init: the initramfs
// has no dynamic loader, and the kernel would only say "No working init found".
func checkStaticBinary(p string) error {
	if p == "" {
		return errors.New("initramfs: no init binary given")
	}
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("initramfs init binary %s: expected a static ELF executable: %w", p, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("initramfs init binary %s: ELF type %s, expected an executable", p, f.Type)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("initramfs init binary %s is dynamically linked (has an ELF interpreter); build it with CGO_ENABLED=0", p)
		}
	}
	return nil
}

// initrdRelease renders /etc/initrd-release in os-release format.
func initrdRelease(versionID string) ([]byte, error) {
	if versionID == "" {
		versionID = "devel"
	}
	for _, c := range versionID {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return nil, fmt.Errorf("initramfs VERSION_ID %q: os-release allows only 0-9, a-z, '.', '_' and '-'", versionID)
		}
	}
	var b bytes.Buffer
	b.WriteString("NAME=cvmboot\n")
	b.WriteString("ID=cvmboot\n")
	b.WriteString("VERSION_ID=" + versionID + "\n")
	b.WriteString("PRETTY_NAME=\"cvmboot initrd " + versionID + "\"\n")
	return b.Bytes(), nil
}

// sourceDateEpoch returns SOURCE_DATE_EPOCH (reproducible-builds.org) as the archive's
// modification time, or 0 when unset.
func sourceDateEpoch() (uint32, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("SOURCE_DATE_EPOCH=%q: expected seconds since 1970 that fit in 32 bits (newc's mtime field): %w", v, err)
	}
	return uint32(n), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// appendMissing appends the names of add that list lacks (module names compared
// normalized).
func appendMissing(list, add []string) []string {
	out := slices.Clone(list)
	for _, a := range add {
		if !slices.ContainsFunc(out, func(m string) bool { return kmod.Normalize(m) == kmod.Normalize(a) }) {
			out = append(out, a)
		}
	}
	return out
}
