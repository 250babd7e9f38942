// Package harness builds and boots cvmboot test images under qemu: it fetches a
// Debian cloud kernel, wraps kernel and initramfs into a UKI, lays out GPT disk
// images, prepares root trees and runs qemu with OVMF and a software TPM.
//
// Everything expensive (kernel, root trees, the accelerator verdict) is cached
// outside the repository so repeated test runs only pay for the boots.
package harness

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Logf receives progress messages; nil discards them.
type Logf func(format string, args ...any)

func (l Logf) printf(format string, args ...any) {
	if l != nil {
		l(format, args...)
	}
}

// Cache is the directory holding downloaded and built artifacts that survive
// between runs. It is keyed by content (versions, hashes), never by time.
type Cache struct {
	Dir string
}

// CacheDirFromEnv returns $CVMBOOT_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/cvmboot.
func CacheDirFromEnv() (string, error) {
	if dir := os.Getenv("CVMBOOT_CACHE"); dir != "" {
		return filepath.Abs(dir)
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cache dir: neither CVMBOOT_CACHE, XDG_CACHE_HOME nor HOME is usable: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "cvmboot"), nil
}

// OpenCache creates (if needed) the cache directory chosen by CacheDirFromEnv.
// It refuses a directory inside the repository's tracked tree, because a cached
// kernel or root tree there would end up in commits.
func OpenCache() (*Cache, error) {
	dir, err := CacheDirFromEnv()
	if err != nil {
		return nil, err
	}
	if root, rerr := RepoRoot(); rerr == nil {
		if insideTrackedTree(root, dir) {
			return nil, fmt.Errorf("cache dir %s is inside the repository %s (only the ignored %s/.cache is allowed); set CVMBOOT_CACHE elsewhere", dir, root, root)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir %s: %w", dir, err)
	}
	return &Cache{Dir: dir}, nil
}

// Path joins elements below the cache directory.
func (c *Cache) Path(elem ...string) string {
	return filepath.Join(append([]string{c.Dir}, elem...)...)
}

// Lock takes an exclusive advisory lock named name inside the cache, so that two
// test processes never build the same cached item at once. Call the returned
// function to release it.
func (c *Cache) Lock(name string) (func(), error) {
	lockDir := c.Path("locks")
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("create lock dir %s: %w", lockDir, err)
	}
	path := filepath.Join(lockDir, name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// insideTrackedTree reports whether dir lies in the repository at root but
// outside its git-ignored .cache directory.
func insideTrackedTree(root, dir string) bool {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return false
	}
	return rel != ".cache" && !strings.HasPrefix(rel, ".cache/")
}

// RepoRoot walks up from the working directory to the cvmboot module root.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(string(data)) == "github.com/cvmboot/cvmboot" {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod for module github.com/cvmboot/cvmboot above the working directory")
		}
		dir = parent
	}
}

func modulePath(goMod string) string {
	sc := bufio.NewScanner(strings.NewReader(goMod))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// hashKey returns a short stable key for cache entries derived from parts.
func hashKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// fileSHA256 hashes a file's content.
func fileSHA256(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// exists reports whether path exists (any type).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
