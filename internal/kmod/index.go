package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Module is one loadable module of a modules directory.
type Module struct {
	// Name is the canonical name ('_' form).
	Name string
	// Path is the module file relative to the modules directory, slash-separated
	// ("kernel/drivers/md/dm-verity.ko").
	Path string
	// Depends are hard dependencies by canonical name. From modules.dep this is the full
	// transitive list, from a .modinfo scan only the direct one; both order correctly.
	Depends []string
	// SoftPre are optional modules to load before this one (softdep pre:).
	SoftPre []string
	// Builtin marks a module compiled into the kernel; it has no file and is never loaded.
	Builtin bool
}

// Where an Index got its dependency data.
const (
	SourceModulesDep = "modules.dep"
	SourceModinfo    = "modinfo scan"
)

// Index knows the modules of one modules directory.
type Index struct {
	// Dir is the modules directory as given to OpenIndex.
	Dir string
	// Version is the kernel release, the base name of Dir.
	Version string
	// Source is SourceModulesDep or SourceModinfo.
	Source string
	// Warnings lists files skipped or shadowed while indexing, for the caller to log.
	Warnings []string

	modules map[string]Module
	builtin map[string]bool
	// broken maps a module name to why its file could not be indexed, so that asking for
	// it reports the cause instead of "not found".
	broken map[string]error
}

// maxIndexFile bounds the size of modules.dep and friends read into memory (a full
// distribution kernel's modules.dep is a few hundred KiB).
const maxIndexFile = 64 << 20

// OpenIndex indexes the modules directory dir (/lib/modules/VERSION): from modules.dep
// (and modules.softdep) when present, else by reading the .modinfo section of every
// *.ko, *.ko.xz, *.ko.zst and *.ko.gz file. modules.builtin, when present, marks the
// modules compiled into the kernel.
func OpenIndex(dir string) (*Index, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("kernel modules directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("kernel modules directory %s is a %s, expected a directory", dir, st.Mode().Type())
	}
	ix := &Index{
		Dir:     dir,
		Version: filepath.Base(filepath.Clean(dir)),
		modules: map[string]Module{},
		builtin: map[string]bool{},
		broken:  map[string]error{},
	}

	if data, err := readIndexFile(filepath.Join(dir, "modules.builtin")); err == nil {
		names, err := parseModulesBuiltin(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "modules.builtin"), err)
		}
		for _, n := range names {
			ix.builtin[n] = true
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}

	depFile := filepath.Join(dir, "modules.dep")
	data, err := readIndexFile(depFile)
	switch {
	case err == nil:
		ix.Source = SourceModulesDep
		mods, warnings, err := parseModulesDep(data, dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", depFile, err)
		}
		ix.Warnings = append(ix.Warnings, warnings...)
		for _, m := range mods {
			ix.modules[m.Name] = m
		}
		softFile := filepath.Join(dir, "modules.softdep")
		if soft, err := readIndexFile(softFile); err == nil {
			for name, pre := range parseModulesSoftdep(soft) {
				if m, ok := ix.modules[name]; ok {
					m.SoftPre = pre
					ix.modules[name] = m
				}
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		ix.Source = SourceModinfo
		if err := ix.scan(); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	return ix, nil
}

func readIndexFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIndexFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxIndexFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, maxIndexFile)
	}
	return data, nil
}

// Module returns the indexed module called name ('-' and '_' are equivalent).
func (ix *Index) Module(name string) (Module, bool) {
	m, ok := ix.modules[Normalize(name)]
	return m, ok
}

// IsBuiltin reports whether modules.builtin lists name.
func (ix *Index) IsBuiltin(name string) bool { return ix.builtin[Normalize(name)] }

// Len returns the number of loadable modules indexed.
func (ix *Index) Len() int { return len(ix.modules) }

// Names returns the names of all loadable modules, sorted.
func (ix *Index) Names() []string {
	names := make([]string, 0, len(ix.modules))
	for n := range ix.modules {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// relModulePath turns a path from an index file into a validated path relative to dir.
// depmod writes relative paths; very old versions wrote absolute ones under dir.
func relModulePath(p, dir string) (string, string, error) {
	if strings.HasPrefix(p, "/") {
		prefix := filepath.ToSlash(filepath.Clean(dir)) + "/"
		rel, ok := strings.CutPrefix(p, prefix)
		if !ok {
			return "", "", fmt.Errorf("module path %q is absolute and not under %s", p, dir)
		}
		p = rel
	}
	if !validRelPath(p) {
		return "", "", fmt.Errorf("module path %q is not a clean relative path inside the modules directory", p)
	}
	name, ok := NameFromPath(p)
	if !ok || !validName(name) {
		return "", "", fmt.Errorf("module path %q does not name a module file (*.ko, *.ko.xz, *.ko.zst, *.ko.gz)", p)
	}
	return p, name, nil
}

// parseModulesDep parses depmod's modules.dep ("path: dep1 dep2", one module per line).
// A second line for an already-seen module name is ignored with a warning, as modprobe
// uses the first.
func parseModulesDep(data []byte, dir string) ([]Module, []string, error) {
	var mods []Module
	var warnings []string
	seen := map[string]string{}
	for i, raw := range bytes.Split(data, []byte{'\n'}) {
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lineNo := i + 1
		head, tail, ok := strings.Cut(line, ":")
		if !ok {
			return nil, nil, fmt.Errorf("line %d: %q has no ':' after the module path", lineNo, line)
		}
		p, name, err := relModulePath(strings.TrimSpace(head), dir)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", lineNo, err)
		}
		m := Module{Name: name, Path: p}
		for _, dep := range strings.Fields(tail) {
			_, depName, err := relModulePath(dep, dir)
			if err != nil {
				return nil, nil, fmt.Errorf("line %d (%s): %w", lineNo, name, err)
			}
			if depName == name {
				return nil, nil, fmt.Errorf("line %d: module %s depends on itself", lineNo, name)
			}
			m.Depends = appendUnique(m.Depends, depName)
		}
		if prev, dup := seen[name]; dup {
			warnings = append(warnings, fmt.Sprintf("modules.dep line %d: module %s (%s) already listed as %s; ignored", lineNo, name, p, prev))
			continue
		}
		seen[name] = p
		mods = append(mods, m)
	}
	return mods, warnings, nil
}

// parseModulesBuiltin parses modules.builtin: one path per line of a module compiled in.
func parseModulesBuiltin(data []byte) ([]string, error) {
	var names []string
	for i, raw := range bytes.Split(data, []byte{'\n'}) {
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, ok := NameFromPath(line)
		if !ok || !validName(name) {
			return nil, fmt.Errorf("line %d: %q does not name a module file", i+1, line)
		}
		names = append(names, name)
	}
	return names, nil
}

// parseModulesSoftdep parses depmod's modules.softdep ("softdep NAME pre: a b post: c")
// into the pre: lists by module name. Malformed lines are ignored, as modprobe does.
func parseModulesSoftdep(data []byte) map[string][]string {
	out := map[string][]string{}
	for raw := range bytes.SplitSeq(data, []byte{'\n'}) {
		f := strings.Fields(string(raw))
		if len(f) < 3 || f[0] != "softdep" {
			continue
		}
		name := Normalize(f[1])
		if !validName(name) {
			continue
		}
		pre, _ := parseSoftdep(f[2:])
		for _, p := range pre {
			out[name] = appendUnique(out[name], p)
		}
	}
	return out
}

// scan indexes every module file under ix.Dir from its .modinfo section.
func (ix *Index) scan() error {
	root := filepath.Clean(ix.Dir)
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("scan kernel modules: %w", err)
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		name, ok := NameFromPath(rel)
		if !ok {
			return nil
		}
		if !validName(name) || !validRelPath(rel) {
			ix.Warnings = append(ix.Warnings, fmt.Sprintf("%q: path holds characters modules.dep cannot represent; skipped", rel))
			return nil
		}
		info, err := readModinfoFile(p)
		if err != nil {
			ix.broken[name] = fmt.Errorf("%s: %w", rel, err)
			ix.Warnings = append(ix.Warnings, fmt.Sprintf("%s: %v; skipped", rel, err))
			return nil
		}
		if info.Name != "" && info.Name != name {
			ix.Warnings = append(ix.Warnings, fmt.Sprintf("%s: .modinfo name=%s differs from the file name; using %s as modprobe does", rel, info.Name, name))
		}
		m := Module{Name: name, Path: rel, SoftPre: info.SoftPre}
		for _, dep := range info.Depends {
			if dep != name {
				m.Depends = append(m.Depends, dep)
			}
		}
		if prev, dup := ix.modules[name]; dup {
			keep, drop := prev, m
			if modulePriority(m.Path) < modulePriority(prev.Path) ||
				modulePriority(m.Path) == modulePriority(prev.Path) && m.Path < prev.Path {
				keep, drop = m, prev
			}
			ix.Warnings = append(ix.Warnings, fmt.Sprintf("module %s exists twice: using %s, ignoring %s", name, keep.Path, drop.Path))
			ix.modules[name] = keep
			return nil
		}
		delete(ix.broken, name)
		ix.modules[name] = m
		return nil
	})
}

// modulePriority orders duplicate module files like depmod's default search order:
// updates/ overrides everything else.
func modulePriority(rel string) int {
	if strings.HasPrefix(rel, "updates/") {
		return 0
	}
	return 1
}

// readModinfoFile reads the .modinfo of a module file, decompressing it first if needed.
func readModinfoFile(p string) (ModInfo, error) {
	f, err := os.Open(p)
	if err != nil {
		return ModInfo{}, err
	}
	defer f.Close()
	if kind := compression(p); kind != "" {
		raw, err := io.ReadAll(io.LimitReader(f, maxModuleSize+1))
		if err != nil {
			return ModInfo{}, fmt.Errorf("read: %w", err)
		}
		img, err := decompress(kind, raw)
		if err != nil {
			return ModInfo{}, err
		}
		return ReadModinfo(bytes.NewReader(img), int64(len(img)))
	}
	st, err := f.Stat()
	if err != nil {
		return ModInfo{}, err
	}
	return ReadModinfo(f, st.Size())
}

// moduleFile returns the absolute path of m inside the modules directory dir.
func moduleFile(dir string, m Module) string {
	return filepath.Join(dir, filepath.FromSlash(path.Clean(m.Path)))
}
