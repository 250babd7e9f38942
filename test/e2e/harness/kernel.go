package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KernelMetaPackage is the Debian meta package whose Depends names the current
// versioned cloud kernel.
const KernelMetaPackage = "linux-image-cloud-amd64"

// Kernel is an unpacked Debian kernel package in the cache.
type Kernel struct {
	Version    string // e.g. 6.1.0-56-cloud-amd64
	Package    string // e.g. linux-image-6.1.0-56-cloud-amd64
	Root       string // the unpacked package tree
	Vmlinuz    string // Root/boot/vmlinuz-Version
	ModulesDir string // Root/lib/modules/Version, with modules.dep from depmod
}

// Kernel resolves the versioned package behind KernelMetaPackage, downloads and
// unpacks it into cache/kernel/<version>/ once, and returns its paths.
func (c *Cache) Kernel(ctx context.Context, logf Logf) (*Kernel, error) {
	pkg, err := resolveKernelPackage(ctx)
	if err != nil {
		// Offline hosts can still run with a kernel fetched earlier.
		if cached, cerr := c.newestCachedKernel(); cerr == nil {
			logf.printf("kernel: %v; using cached %s", err, cached.Version)
			return cached, nil
		}
		return nil, err
	}
	version := kernelVersionFromPackage(pkg)
	unlock, err := c.Lock("kernel-" + version)
	if err != nil {
		return nil, err
	}
	defer unlock()

	dir := c.Path("kernel", version)
	if k, err := loadKernel(dir, version, pkg); err == nil {
		return k, nil
	}
	logf.printf("kernel: fetching %s", pkg)
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(c.Path(), "kernel-tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	if out, err := runCmd(ctx, tmp, "apt-get", "download", pkg); err != nil {
		return nil, fmt.Errorf("apt-get download %s: %w\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: expected one %s_*.deb in %s, found %d", pkg, pkg, tmp, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := runCmd(ctx, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
	}
	// The package ships no modules.dep; the module loaders need it.
	if out, err := runCmd(ctx, "", "depmod", "-b", root, version); err != nil {
		return nil, fmt.Errorf("depmod -b %s %s: %w\n%s", root, version, err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(root, filepath.Join(dir, "root")); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "package"), []byte(pkg+"\n"), 0o644); err != nil {
		return nil, err
	}
	k, err := loadKernel(dir, version, pkg)
	if err != nil {
		return nil, err
	}
	logf.printf("kernel: %s unpacked into %s", version, dir)
	return k, nil
}

func loadKernel(dir, version, pkg string) (*Kernel, error) {
	root := filepath.Join(dir, "root")
	k := &Kernel{Version: version, Package: pkg, Root: root,
		Vmlinuz: filepath.Join(root, "boot", "vmlinuz-"+version)}
	for _, lib := range []string{"lib", "usr/lib"} {
		md := filepath.Join(root, lib, "modules", version)
		if exists(filepath.Join(md, "modules.dep")) {
			k.ModulesDir = md
			break
		}
	}
	if k.ModulesDir == "" {
		return nil, fmt.Errorf("kernel %s in %s: no lib/modules/%s/modules.dep", version, dir, version)
	}
	if !exists(k.Vmlinuz) {
		return nil, fmt.Errorf("kernel %s: %s missing", version, k.Vmlinuz)
	}
	return k, nil
}

func (c *Cache) newestCachedKernel() (*Kernel, error) {
	entries, err := os.ReadDir(c.Path("kernel"))
	if err != nil {
		return nil, err
	}
	var versions []string
	for _, e := range entries {
		versions = append(versions, e.Name())
	}
	sort.Sort(sort.Reverse(sort.StringSlice(versions)))
	for _, v := range versions {
		pkg, _ := os.ReadFile(c.Path("kernel", v, "package"))
		if k, err := loadKernel(c.Path("kernel", v), v, strings.TrimSpace(string(pkg))); err == nil {
			return k, nil
		}
	}
	return nil, errors.New("no cached kernel")
}

// resolveKernelPackage asks apt which versioned image the meta package depends
// on; if apt-cache has no answer it downloads the meta package and reads its
// control field instead.
func resolveKernelPackage(ctx context.Context) (string, error) {
	out, err := runCmd(ctx, "", "apt-cache", "depends", KernelMetaPackage)
	if err == nil {
		if pkg, perr := ParseAptDepends(out); perr == nil {
			return pkg, nil
		}
	}
	tmp, terr := os.MkdirTemp("", "cvmboot-meta-")
	if terr != nil {
		return "", terr
	}
	defer os.RemoveAll(tmp)
	if dout, derr := runCmd(ctx, tmp, "apt-get", "download", KernelMetaPackage); derr != nil {
		return "", fmt.Errorf("resolve %s: apt-cache depends failed (%v) and apt-get download failed: %w\n%s", KernelMetaPackage, err, derr, dout)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, KernelMetaPackage+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("resolve %s: expected one .deb in %s, found %d", KernelMetaPackage, tmp, len(debs))
	}
	dep, derr := runCmd(ctx, "", "dpkg-deb", "-f", debs[0], "Depends")
	if derr != nil {
		return "", fmt.Errorf("dpkg-deb -f %s Depends: %w", debs[0], derr)
	}
	return ParseControlDepends(dep)
}

// ParseAptDepends extracts the versioned linux-image package from
// `apt-cache depends` output ("  Depends: linux-image-6.1.0-56-cloud-amd64").
func ParseAptDepends(out string) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimLeft(strings.TrimSpace(sc.Text()), "|")
		rest, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		name := strings.TrimSpace(rest)
		if isVersionedImage(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s: no Depends on a versioned linux-image-* package in %q", KernelMetaPackage, truncate(out, 200))
}

// ParseControlDepends extracts the versioned linux-image package from a
// Debian control Depends field ("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)").
func ParseControlDepends(field string) (string, error) {
	for _, alt := range strings.FieldsFunc(field, func(r rune) bool { return r == ',' || r == '|' }) {
		name, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
		name, _, _ = strings.Cut(name, "(")
		if isVersionedImage(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("%s Depends %q names no versioned linux-image-* package", KernelMetaPackage, truncate(field, 200))
}

func isVersionedImage(name string) bool {
	v, ok := strings.CutPrefix(name, "linux-image-")
	if !ok || v == "" || v[0] < '0' || v[0] > '9' {
		return false
	}
	return !strings.ContainsAny(v, " /\t")
}

// kernelVersionFromPackage turns linux-image-6.1.0-56-cloud-amd64[-unsigned]
// into the uname -r string 6.1.0-56-cloud-amd64.
func kernelVersionFromPackage(pkg string) string {
	v := strings.TrimPrefix(pkg, "linux-image-")
	return strings.TrimSuffix(v, "-unsigned")
}

// Module is one kernel module file resolved through modules.dep.
type Module struct {
	Name string // normalised (underscores), e.g. virtio_pci
	Path string // absolute path to the .ko
}

// ModuleSet is the parsed modules.dep and modules.builtin of one kernel.
type ModuleSet struct {
	dir     string
	deps    map[string][]string // name → dependency names, in modules.dep order
	paths   map[string]string   // name → path relative to dir
	builtin map[string]bool
}

// LoadModules reads modulesDir/modules.dep and modules.builtin.
func LoadModules(modulesDir string) (*ModuleSet, error) {
	dep, err := os.ReadFile(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (run depmod first)", err)
	}
	ms, err := ParseModulesDep(string(dep))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(modulesDir, "modules.dep"), err)
	}
	ms.dir = modulesDir
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				ms.builtin[moduleName(line)] = true
			}
		}
	}
	return ms, nil
}

// ParseModulesDep parses depmod's "path.ko: dep1.ko dep2.ko" lines.
func ParseModulesDep(text string) (*ModuleSet, error) {
	ms := &ModuleSet{deps: map[string][]string{}, paths: map[string]string{}, builtin: map[string]bool{}}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, rest, ok := strings.Cut(line, ":")
		path = strings.TrimSpace(path)
		if !ok || path == "" {
			return nil, fmt.Errorf("line %d: expected \"module.ko: deps\", found %q", i+1, truncate(line, 80))
		}
		name := moduleName(path)
		ms.paths[name] = path
		for _, d := range strings.Fields(rest) {
			ms.deps[name] = append(ms.deps[name], moduleName(d))
		}
	}
	return ms, nil
}

// moduleName maps "kernel/drivers/virtio/virtio-pci.ko[.xz]" to "virtio_pci".
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// Builtin reports whether name is compiled into the kernel.
func (ms *ModuleSet) Builtin(name string) bool { return ms.builtin[moduleName(name)] }

// Closure returns the modules needed to load names, dependencies before their
// users, each once. Built-in names are skipped and returned separately.
func (ms *ModuleSet) Closure(names []string) (load []Module, builtin []string, err error) {
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle through %s (required by %s)", name, from)
		case 2:
			return nil
		}
		rel, ok := ms.paths[name]
		if !ok {
			if ms.builtin[name] {
				state[name] = 2
				builtin = append(builtin, name)
				return nil
			}
			if from == "" {
				return fmt.Errorf("module %s: not in modules.dep nor modules.builtin of %s", name, ms.dir)
			}
			return fmt.Errorf("module %s (needed by %s): not in modules.dep of %s", name, from, ms.dir)
		}
		state[name] = 1
		for _, d := range ms.deps[name] {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		load = append(load, Module{Name: name, Path: filepath.Join(ms.dir, rel)})
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n), ""); err != nil {
			return nil, nil, err
		}
	}
	return load, builtin, nil
}

// runCmd runs a command and returns its combined output.
func runCmd(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
