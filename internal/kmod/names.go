// Package kmod resolves the dependency closure of Linux kernel modules from a modules
// directory (/lib/modules/VERSION) and loads modules from PID 1 without modprobe.
//
// The index comes from modules.dep when depmod has run, else from the .modinfo ELF
// section of every module file (Debian's kernel packages ship no modules.dep).
package kmod

import (
	"path"
	"strings"
)

// moduleSuffixes are the file name endings of loadable modules, longest first so that
// ".ko.xz" is not mistaken for ".ko".
var moduleSuffixes = []string{".ko.zst", ".ko.xz", ".ko.gz", ".ko"}

// Normalize returns the kernel's canonical spelling of a module name: the kernel treats
// '-' and '_' as the same character and reports names with '_'.
func Normalize(name string) string {
	return strings.ReplaceAll(strings.TrimSpace(name), "-", "_")
}

// NameFromPath returns the canonical module name of a module file path such as
// "kernel/drivers/md/dm-verity.ko.xz" ("dm_verity"), and false when the path does not
// name a module file.
func NameFromPath(p string) (string, bool) {
	base := path.Base(p)
	for _, suffix := range moduleSuffixes {
		if stem, ok := strings.CutSuffix(base, suffix); ok && stem != "" {
			return Normalize(stem), true
		}
	}
	return "", false
}

// compression returns the compression suffix of a module path ("xz", "zst", "gz") or ""
// for an uncompressed module.
func compression(p string) string {
	switch {
	case strings.HasSuffix(p, ".ko.xz"):
		return "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		return "zst"
	case strings.HasSuffix(p, ".ko.gz"):
		return "gz"
	}
	return ""
}

// validRelPath reports whether p is a clean, relative, slash-separated path that stays
// inside the directory it is relative to; module paths end up as file names in the
// initramfs, so an index must not be able to point outside the modules directory. Spaces,
// control characters and ':' are refused too: modules.dep separates paths with them.
func validRelPath(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == ':' || c == '\\' {
			return false
		}
	}
	if path.Clean(p) != p {
		return false
	}
	return p != ".." && !strings.HasPrefix(p, "../")
}
