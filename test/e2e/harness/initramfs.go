package harness

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// PlainModulesDir is where BuildPlainInitramfs puts kernel modules, named
// NN-name.ko so that lexical order is load order.
const PlainModulesDir = "harness/modules"

// PlainInitramfs is an initramfs the harness builds on its own (with the cpio
// tool) around another /init: rootcheck proving firmware, UKI and TPM, or the busybox
// baseline the benchmarks compare with.
type PlainInitramfs struct {
	Init    string            // host binary installed as /init
	Kernel  *Kernel           // source of Modules
	Modules []string          // loaded with their dependencies, dependencies first
	Files   map[string]string // extra files: path in the initramfs → host path
}

// BuildPlainInitramfs writes an uncompressed newc cpio to out and returns
// the module files it contains in load order.
func BuildPlainInitramfs(ctx context.Context, spec PlainInitramfs, out string) ([]string, error) {
	stage, err := os.MkdirTemp(filepath.Dir(out), ".initramfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"dev", "proc", "sys", "run", "sysroot", "tmp", PlainModulesDir} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return nil, err
		}
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs exists.
	if err := unix.Mknod(filepath.Join(stage, "dev/console"), unix.S_IFCHR|0o600, int(unix.Mkdev(5, 1))); err != nil {
		return nil, fmt.Errorf("mknod dev/console in %s: %w", stage, err)
	}
	if err := copyFile(spec.Init, filepath.Join(stage, "init"), 0o755); err != nil {
		return nil, err
	}
	var loaded []string
	if len(spec.Modules) > 0 {
		if spec.Kernel == nil {
			return nil, fmt.Errorf("plain initramfs: modules %v requested without a kernel", spec.Modules)
		}
		ms, err := LoadModules(spec.Kernel.ModulesDir)
		if err != nil {
			return nil, err
		}
		mods, _, err := ms.Closure(spec.Modules)
		if err != nil {
			return nil, err
		}
		for i, m := range mods {
			if !strings.HasSuffix(m.Path, ".ko") {
				return nil, fmt.Errorf("module %s: %s is compressed; the harness packs only plain .ko", m.Name, m.Path)
			}
			name := fmt.Sprintf("%02d-%s.ko", i, m.Name)
			if err := copyFile(m.Path, filepath.Join(stage, PlainModulesDir, name), 0o644); err != nil {
				return nil, err
			}
			loaded = append(loaded, name)
		}
	}
	for dst, src := range spec.Files {
		p := filepath.Join(stage, filepath.Clean("/"+dst))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := copyFile(src, p, 0o755); err != nil {
			return nil, err
		}
	}
	if err := writeCpio(ctx, stage, out); err != nil {
		return nil, err
	}
	return loaded, nil
}

// writeCpio archives dir as newc with root ownership.
func writeCpio(ctx context.Context, dir, out string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	cmd.Stdout = f
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio -o -H newc of %s: %w: %s", dir, err, stderr.String())
	}
	return f.Close()
}
