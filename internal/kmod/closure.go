package kmod

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Resolution is the outcome of resolving module names against an Index.
type Resolution struct {
	// Modules are the modules to load, dependencies first, each once.
	Modules []Module
	// Builtin are requested or depended-on modules compiled into the kernel: nothing to load.
	Builtin []string
	// MissingSoft are soft dependencies that are not in the index ("name (softdep of x)");
	// they are optional and often aliases, which are not resolved.
	MissingSoft []string
}

// Names returns the names of r.Modules in load order.
func (r Resolution) Names() []string {
	names := make([]string, len(r.Modules))
	for i, m := range r.Modules {
		names[i] = m.Name
	}
	return names
}

// Paths returns the file paths of r.Modules, relative to the modules directory, in load order.
func (r Resolution) Paths() []string {
	paths := make([]string, len(r.Modules))
	for i, m := range r.Modules {
		paths[i] = m.Path
	}
	return paths
}

// Closure returns the modules needed to load names, dependencies first, each once.
// Built-in modules are left out (Resolve reports them).
func (ix *Index) Closure(names []string) ([]Module, error) {
	r, err := ix.Resolve(names)
	return r.Modules, err
}

// ClosurePaths indexes the modules directory dir and returns the files, relative to dir
// and in load order, needed to load names.
func ClosurePaths(dir string, names []string) ([]string, error) {
	ix, err := OpenIndex(dir)
	if err != nil {
		return nil, err
	}
	r, err := ix.Resolve(names)
	if err != nil {
		return nil, err
	}
	return r.Paths(), nil
}

// cycleError reports a cycle of hard dependencies, naming every module on it.
type cycleError struct {
	dir  string
	path []string
}

func (e *cycleError) Error() string {
	return fmt.Sprintf("kernel module dependency cycle in %s: %s", e.dir, strings.Join(e.path, " -> "))
}

// visit states of the depth-first walk.
const (
	unvisited = iota
	inProgress
	done
)

// Resolve computes the load order for names: a depth-first walk that emits a module after
// its soft pre-dependencies and hard dependencies. A missing hard dependency or a cycle of
// hard dependencies is an error naming the modules involved.
func (ix *Index) Resolve(names []string) (Resolution, error) {
	var r Resolution
	state := map[string]int{}
	var stack []string

	var visit func(name, neededBy string, soft bool) error
	var visitSoft func(name, neededBy string) error
	visit = func(name, neededBy string, soft bool) error {
		switch state[name] {
		case done:
			return nil
		case inProgress:
			if soft {
				return nil // a soft edge only orders; it must not turn a load order into a cycle
			}
			start := slices.Index(stack, name)
			return &cycleError{dir: ix.Dir, path: append(slices.Clone(stack[start:]), name)}
		}
		if ix.builtin[name] {
			state[name] = done
			r.Builtin = append(r.Builtin, name)
			return nil
		}
		m, ok := ix.modules[name]
		if !ok {
			if soft {
				state[name] = done
				r.MissingSoft = append(r.MissingSoft, fmt.Sprintf("%s (softdep of %s)", name, neededBy))
				return nil
			}
			msg := fmt.Sprintf("kernel module %q not found in %s", name, ix.Dir)
			if neededBy != "" {
				msg += fmt.Sprintf(" (needed by %s)", neededBy)
			}
			if cause := ix.broken[name]; cause != nil {
				return fmt.Errorf("%s: its file is unreadable: %w", msg, cause)
			}
			return fmt.Errorf("%s", msg)
		}
		state[name] = inProgress
		stack = append(stack, name)
		for _, pre := range m.SoftPre {
			if err := visitSoft(pre, name); err != nil {
				return err
			}
		}
		// modules.dep lists dependencies so that the last one is loaded first; walking
		// them backwards reproduces modprobe's order. A .modinfo depends= list has no
		// such order, and walking it backwards is as good as forwards.
		for i := len(m.Depends) - 1; i >= 0; i-- {
			if err := visit(m.Depends[i], name, false); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
		r.Modules = append(r.Modules, m)
		return nil
	}

	// visitSoft walks an optional pre-dependency. If the walk meets a cycle (typically a
	// soft target that hard-depends on the module asking for it), the soft edge is
	// dropped and the walk's partial effects undone: a soft dependency only orders.
	visitSoft = func(name, neededBy string) error {
		savedState := maps.Clone(state)
		savedStack := len(stack)
		nMods, nBuiltin, nSoft := len(r.Modules), len(r.Builtin), len(r.MissingSoft)
		err := visit(name, neededBy, true)
		var cycle *cycleError
		if !errors.As(err, &cycle) {
			return err
		}
		state = savedState
		stack = stack[:savedStack]
		r.Modules, r.Builtin, r.MissingSoft = r.Modules[:nMods], r.Builtin[:nBuiltin], r.MissingSoft[:nSoft]
		r.MissingSoft = append(r.MissingSoft, fmt.Sprintf("%s (softdep of %s, skipped: %v)", name, neededBy, err))
		return nil
	}

	for _, n := range names {
		name := Normalize(n)
		if !validName(name) {
			return Resolution{}, fmt.Errorf("kernel module name %q is not valid: expected letters, digits, '-' or '_'", n)
		}
		if err := visit(name, "", false); err != nil {
			return Resolution{}, err
		}
	}
	return r, nil
}

// ModulesDep renders modules.dep for r.Modules in depmod's format: one line per module in
// load order, "path: deps", listing every transitive dependency so that the last one is
// loaded first. An Index opened on the result reproduces r's order.
func (r Resolution) ModulesDep() []byte {
	byName := make(map[string]Module, len(r.Modules))
	order := make(map[string]int, len(r.Modules))
	for i, m := range r.Modules {
		byName[m.Name] = m
		order[m.Name] = i
	}
	var buf bytes.Buffer
	for _, m := range r.Modules {
		// Collect the transitive hard dependencies that are part of the closure
		// (built-ins have no file and no line).
		deps := map[string]bool{}
		todo := slices.Clone(m.Depends)
		for len(todo) > 0 {
			d := todo[len(todo)-1]
			todo = todo[:len(todo)-1]
			dm, ok := byName[d]
			if !ok || deps[d] {
				continue
			}
			deps[d] = true
			todo = append(todo, dm.Depends...)
		}
		list := make([]string, 0, len(deps))
		for d := range deps {
			list = append(list, d)
		}
		// Reverse load order: depmod's convention, read back by Resolve.
		slices.SortFunc(list, func(a, b string) int { return order[b] - order[a] })
		buf.WriteString(m.Path)
		buf.WriteByte(':')
		for _, d := range list {
			buf.WriteByte(' ')
			buf.WriteString(byName[d].Path)
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// ModulesSoftdep renders modules.softdep lines for the modules of r that have soft
// pre-dependencies, or nil when none has.
func (r Resolution) ModulesSoftdep() []byte {
	var buf bytes.Buffer
	for _, m := range r.Modules {
		if len(m.SoftPre) == 0 {
			continue
		}
		fmt.Fprintf(&buf, "softdep %s pre: %s\n", m.Name, strings.Join(m.SoftPre, " "))
	}
	if buf.Len() == 0 {
		return nil
	}
	return buf.Bytes()
}
