package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// MkosiSuite is the Debian suite whose mkosi builds the e2e's mkosi images: Debian 12 has
// mkosi 14, bookworm-backports mkosi 24.3 (which needs the host's systemd upgraded to 254, and
// with it the stub the other scenarios boot), Debian 13 mkosi 25.3 with systemd-repart and
// ukify 257. It runs chrooted in a debootstrapped tree of that suite, kept in the cache;
// nothing is installed on the machine.
const MkosiSuite = "trixie"

// mkosiToolPackages are installed in the tools tree on top of debootstrap's minbase: mkosi and
// the programs it runs to build a Debian disk image with a verity root and a UKI.
var mkosiToolPackages = []string{"mkosi", "systemd-repart", "systemd-ukify", "systemd-boot-efi", "bubblewrap",
	"dosfstools", "mtools", "e2fsprogs", "cryptsetup-bin", "zstd", "xz-utils", "cpio", "kmod", "python3-pefile",
	"debian-archive-keyring"}

// MkosiTools returns a Debian MkosiSuite tree with mkosi installed, debootstrapped into the
// cache the first time (about a minute), and mkosi's version.
func (c *Cache) MkosiTools(ctx context.Context, logf Logf) (tree, version string, err error) {
	pkgs := append([]string(nil), mkosiToolPackages...)
	sort.Strings(pkgs)
	dir := c.Path("mkosi-tools-" + MkosiSuite + "-" + hashKey(MkosiSuite, strings.Join(pkgs, ",")))
	tree = filepath.Join(dir, "tree")
	unlock, err := c.Lock("mkosi-tools")
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if v, err := os.ReadFile(filepath.Join(dir, "version")); err == nil {
		return tree, strings.TrimSpace(string(v)), nil
	}
	start := time.Now()
	mirror := debianMirror()
	detachMountsBelow(dir)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	logf.printf("mkosi tools: debootstrap %s from %s, then apt-get install %s (first run only)", MkosiSuite, mirror, strings.Join(pkgs, " "))
	if o, err := runCmd(ctx, "", "debootstrap", "--variant=minbase", MkosiSuite, tree, mirror); err != nil {
		detachMountsBelow(dir)
		return "", "", fmt.Errorf("debootstrap %s: %w\n%s", MkosiSuite, err, tail(o, 3000))
	}
	detachMountsBelow(tree)
	script := "apt-get -o APT::Sandbox::User=root -qq update && DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root " +
		"install -y -qq --no-install-recommends " + strings.Join(pkgs, " ") + " && apt-get clean && mkosi --version"
	o, err := chrootRun(ctx, tree, nil, script)
	if err != nil {
		return "", "", fmt.Errorf("mkosi tools: installing %s in the %s tree: %w\n%s", strings.Join(pkgs, " "), MkosiSuite, err, tail(o, 3000))
	}
	version = ""
	if m := regexp.MustCompile(`(?m)^mkosi (\S+)$`).FindStringSubmatch(o); m != nil {
		version = m[1]
	}
	if version == "" {
		return "", "", fmt.Errorf("mkosi tools: mkosi --version printed no version:\n%s", tail(o, 2000))
	}
	if err := os.WriteFile(filepath.Join(dir, "version"), []byte(version+"\n"), 0o644); err != nil {
		return "", "", err
	}
	logf.printf("mkosi tools: mkosi %s in %s, built in %s", version, tree, time.Since(start).Round(time.Second))
	return tree, version, nil
}

// chrootRun runs a shell script chrooted in tree, in a mount namespace of its own holding the
// tree's /dev, /proc and /sys and the binds (tree-relative target → host source; a target
// ending in ":ro" is read-only). The tree itself is a mount point there: mkosi's sandbox
// changes the propagation of "/".
func chrootRun(ctx context.Context, tree string, binds map[string]string, script string) (string, error) {
	var sb strings.Builder
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	fmt.Fprintf(&sb, "set -e\nT=%s\nmount --bind \"$T\" \"$T\"\nmount --rbind /dev \"$T/dev\"\nmount -t proc proc \"$T/proc\"\nmount --rbind /sys \"$T/sys\"\n", q(tree))
	targets := make([]string, 0, len(binds))
	for t := range binds {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		target, ro := strings.CutSuffix(t, ":ro")
		if err := os.MkdirAll(filepath.Join(tree, target), 0o755); err != nil {
			return "", err
		}
		fmt.Fprintf(&sb, "mount --bind %s \"$T\"/%s\n", q(binds[t]), q(strings.TrimPrefix(target, "/")))
		if ro {
			fmt.Fprintf(&sb, "mount -o remount,bind,ro \"$T\"/%s\n", q(strings.TrimPrefix(target, "/")))
		}
	}
	fmt.Fprintf(&sb, "exec chroot \"$T\" /bin/sh -c %s\n", q(script))
	return runCmd(ctx, "", "unshare", "--mount", "--propagation", "private", "sh", "-c", sb.String())
}

// MkosiSpec is an mkosi build of a configuration directory of the repository.
type MkosiSpec struct {
	// Repo is the repository root (the configuration's BuildSources= mount it); Config is the
	// configuration directory relative to it (configs/mkosi).
	Repo, Config string
	// Inputs are more files and directories, relative to Repo, that the build reads (the
	// binary, the units the post-installation scripts install): part of the cache key.
	Inputs []string
	// ExtraTree is a directory mkosi copies into the main image (--extra-tree); part of the
	// cache key.
	ExtraTree string
	// Release is the Debian suite of the image (the configuration's Release=), for the apt
	// sources the build uses.
	Release string
}

// MkosiImage is a disk image mkosi built, kept in the cache.
type MkosiImage struct {
	Disk, UKI    string // cvm.raw, cvm.efi
	Log          string // mkosi's output
	RootHash     string
	Cmdline      string // the UKI's .cmdline
	BuildTime    time.Duration
	InitrdBytes  int64 // the initrd image mkosi built (before the kernel modules initrd)
	MkosiVersion string
	Cached       bool
}

type mkosiMeta struct {
	BuildSeconds float64 `json:"build_seconds"`
	RootHash     string  `json:"roothash"`
	Cmdline      string  `json:"cmdline"`
	InitrdBytes  int64   `json:"initrd_bytes"`
	MkosiVersion string  `json:"mkosi_version"`
}

// BuildMkosi runs `mkosi build` on spec.Config with the tools of MkosiTools, or returns the
// image an earlier run built from the same inputs (the configuration, Inputs, ExtraTree and
// the tools). The apt sources are the machine's Debian mirror (deb only: mkosi's defaults
// add deb-src and the debug archive, which a mirror may not carry).
func (c *Cache) BuildMkosi(ctx context.Context, spec MkosiSpec, logf Logf) (*MkosiImage, error) {
	tools, version, err := c.MkosiTools(ctx, logf)
	if err != nil {
		return nil, err
	}
	if spec.Release == "" {
		spec.Release = "bookworm"
	}
	mirror := debianMirror()
	h := []string{"mkosi-build-1", tools, version, mirror, spec.Release}
	for i, in := range append([]string{spec.Config}, spec.Inputs...) {
		skip := func(string) bool { return false }
		if i == 0 {
			skip = buildOutput
		}
		d, err := treeDigest(filepath.Join(spec.Repo, in), skip)
		if err != nil {
			return nil, err
		}
		h = append(h, in, d)
	}
	if spec.ExtraTree != "" {
		d, err := treeDigest(spec.ExtraTree, func(string) bool { return false })
		if err != nil {
			return nil, err
		}
		h = append(h, "extra", d)
	}
	key := hashKey(h...)
	base := c.Path("mkosi")
	out := filepath.Join(base, key)
	unlock, err := c.Lock("mkosi-build")
	if err != nil {
		return nil, err
	}
	defer unlock()
	img := &MkosiImage{Disk: filepath.Join(out, "cvm.raw"), UKI: filepath.Join(out, "cvm.efi"), Log: filepath.Join(out, "mkosi.log"),
		MkosiVersion: version}
	if b, err := os.ReadFile(filepath.Join(out, "meta.json")); err == nil {
		var m mkosiMeta
		if json.Unmarshal(b, &m) == nil && exists(img.Disk) && exists(img.UKI) {
			img.RootHash, img.Cmdline, img.InitrdBytes, img.Cached = m.RootHash, m.Cmdline, m.InitrdBytes, true
			img.BuildTime = time.Duration(m.BuildSeconds * float64(time.Second))
			return img, nil
		}
	}
	// One image at a time: each is about 600 MiB.
	if entries, err := os.ReadDir(base); err == nil {
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
	staging := out + ".new"
	sandbox := filepath.Join(staging, "sandbox")
	srcDir := filepath.Join(sandbox, "etc", "apt", "sources.list.d")
	if err := os.MkdirAll(srcDir, 0o755); err != nil {
		return nil, err
	}
	sources := fmt.Sprintf("Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
		mirror, spec.Release, spec.Release)
	if err := os.WriteFile(filepath.Join(srcDir, "mkosi.sources"), []byte(sources), 0o644); err != nil {
		return nil, err
	}
	pkgCache := c.Path("mkosi-pkgcache")
	if err := os.MkdirAll(pkgCache, 0o755); err != nil {
		return nil, err
	}
	binds := map[string]string{"/cvmboot-e2e/repo:ro": spec.Repo, "/cvmboot-e2e/out": staging, "/cvmboot-e2e/pkgcache": pkgCache}
	args := []string{"mkosi", "--directory=" + filepath.Join("/cvmboot-e2e/repo", spec.Config), "--output-directory=/cvmboot-e2e/out/image",
		"--sandbox-tree=/cvmboot-e2e/out/sandbox", "--package-cache-dir=/cvmboot-e2e/pkgcache"}
	if spec.ExtraTree != "" {
		binds["/cvmboot-e2e/extra:ro"] = spec.ExtraTree
		args = append(args, "--extra-tree=/cvmboot-e2e/extra")
	}
	args = append(args, "--force", "build")
	if err := os.MkdirAll(filepath.Join(staging, "image"), 0o755); err != nil {
		return nil, err
	}
	logf.printf("mkosi: building %s with mkosi %s (chrooted in %s)", spec.Config, version, tools)
	start := time.Now()
	o, err := chrootRun(ctx, tools, binds, strings.Join(args, " ")+" 2>&1")
	elapsed := time.Since(start)
	_ = os.WriteFile(filepath.Join(staging, "mkosi.log"), []byte(o), 0o644)
	if err != nil {
		return nil, fmt.Errorf("mkosi build (log %s): %w\n%s", filepath.Join(staging, "mkosi.log"), err, tail(o, 4000))
	}
	for _, f := range []string{"cvm.raw", "cvm.efi"} {
		if err := os.Rename(filepath.Join(staging, "image", f), filepath.Join(staging, f)); err != nil {
			return nil, fmt.Errorf("mkosi build: %w (log %s)", err, filepath.Join(staging, "mkosi.log"))
		}
	}
	var m mkosiMeta
	m.BuildSeconds, m.MkosiVersion = elapsed.Seconds(), version
	if fi, err := os.Stat(filepath.Join(staging, "image", "initrd.cpio.zst")); err == nil {
		m.InitrdBytes = fi.Size()
	}
	cmdline, err := ukiSection(ctx, filepath.Join(staging, "cvm.efi"), ".cmdline")
	if err != nil {
		return nil, err
	}
	m.Cmdline = strings.TrimRight(string(cmdline), "\x00\n ")
	if r := regexp.MustCompile(`(?:^| )roothash=([0-9a-f]{64})(?: |$)`).FindStringSubmatch(m.Cmdline); r != nil {
		m.RootHash = r[1]
	} else {
		return nil, fmt.Errorf("mkosi build: the UKI's command line has no roothash=: %q", m.Cmdline)
	}
	_ = os.RemoveAll(filepath.Join(staging, "image"))
	_ = os.RemoveAll(sandbox)
	meta, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(staging, "meta.json"), meta, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(staging, out); err != nil {
		return nil, err
	}
	img.RootHash, img.Cmdline, img.InitrdBytes, img.BuildTime = m.RootHash, m.Cmdline, m.InitrdBytes, elapsed
	return img, nil
}

// ukiSection returns a PE section's bytes (objcopy).
func ukiSection(ctx context.Context, uki, section string) ([]byte, error) {
	f, err := os.CreateTemp("", "cvmboot-section-")
	if err != nil {
		return nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	if o, err := runCmd(ctx, "", "objcopy", "-O", "binary", "--only-section="+section, uki, f.Name()); err != nil {
		return nil, fmt.Errorf("objcopy %s %s: %w\n%s", section, uki, err, o)
	}
	return os.ReadFile(f.Name())
}

// treeDigest hashes a file, or a directory's paths, modes, symlink targets and file contents.
func treeDigest(root string, skip func(rel string) bool) (string, error) {
	var parts []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel != "." && skip(rel) {
			// What a `mkosi build` run in the directory by hand left (configs/mkosi/.gitignore):
			// not an input.
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		parts = append(parts, rel, info.Mode().String())
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			parts = append(parts, t)
		case d.Type().IsRegular():
			s, err := fileSHA256(p)
			if err != nil {
				return err
			}
			parts = append(parts, s)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("digest of %s: %w", root, err)
	}
	return hashKey(parts...), nil
}

// GrowDisk copies a disk image (sparse) to dst and adds free bytes at its end, as a cloud
// disk larger than the image is: the GPT's backup header stays where the image put it.
func GrowDisk(ctx context.Context, src, dst string, free int64) (int64, error) {
	if o, err := runCmd(ctx, "", "cp", "--sparse=always", src, dst); err != nil {
		return 0, fmt.Errorf("cp %s %s: %w\n%s", src, dst, err, o)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return 0, err
	}
	size := fi.Size() + free
	return size, os.Truncate(dst, size)
}

// buildOutput tells whether rel (relative to the mkosi configuration) is one of mkosi's outputs
// configs/mkosi/.gitignore lists.
func buildOutput(rel string) bool {
	first, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
	return first == "cvm" || strings.HasPrefix(first, "cvm.") || first == "initrd" || strings.HasPrefix(first, "initrd.") ||
		first == "mkosi.output" || first == "mkosi.cache"
}
