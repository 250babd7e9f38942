package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// GoBuild builds a static binary of pkg (a path relative to the repository
// root, e.g. ./test/e2e/rootcheck) into out.
func GoBuild(ctx context.Context, pkg, out string, tags ...string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, pkg)
	cmd := execCommand(ctx, root, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), root, err, o)
	}
	return nil
}

// TinyRoot returns a cached root tree holding only rootcheck as /sbin/init and
// the empty mount point directories an init expects.
func (c *Cache) TinyRoot(ctx context.Context) (string, error) {
	if err := os.MkdirAll(c.Path("roots"), 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(c.Path("roots"), fmt.Sprintf(".rootcheck-%d", os.Getpid()))
	defer os.Remove(bin)
	if err := GoBuild(ctx, "./test/e2e/rootcheck", bin); err != nil {
		return "", err
	}
	sum, err := fileSHA256(bin)
	if err != nil {
		return "", err
	}
	unlock, err := c.Lock("tiny-root")
	if err != nil {
		return "", err
	}
	defer unlock()
	dir := c.Path("roots", "tiny-"+sum[:16])
	tree := filepath.Join(dir, "tree")
	// The completion marker sits next to the tree so it stays out of images.
	if exists(filepath.Join(dir, ".complete")) {
		return tree, nil
	}
	_ = os.RemoveAll(dir)
	for _, d := range []string{"sbin", "proc", "sys", "dev", "run", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(filepath.Join(tree, "tmp"), 0o1777); err != nil {
		return "", err
	}
	if err := copyFile(bin, filepath.Join(tree, "sbin", "init"), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("ID=cvmboot-tiny\nNAME=\"cvmboot tiny e2e root\"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	return tree, nil
}

// DebianSpec selects a debootstrap root.
type DebianSpec struct {
	Suite   string   // bookworm when empty
	Mirror  string   // http://deb.debian.org/debian when empty
	Variant string   // minbase when empty
	Include []string // DefaultDebianInclude when nil
}

// DefaultDebianInclude is the package list the e2e Debian root is built with. The TPM2
// libraries are there because a UKI boot has them in practice: systemd-pcrphase runs (the
// stub's variables are in efivarfs, which cvmboot mounts) and extends PCR 11, and without
// the libraries it fails.
var DefaultDebianInclude = []string{"systemd", "systemd-sysv", "udev", "cryptsetup-bin", "util-linux", "e2fsprogs", "kmod",
	"libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0", "libtss2-tctildr0", "libtss2-tcti-device0"}

// DebianRoot is a cached debootstrap tree stored as a tarball.
type DebianRoot struct {
	Tarball   string
	BuildTime time.Duration // how long debootstrap and setup took when it was built
	SizeBytes int64         // unpacked size
	Cached    bool          // true when this call reused an earlier build
}

type debianMeta struct {
	BuildSeconds float64  `json:"build_seconds"`
	SizeBytes    int64    `json:"size_bytes"`
	Include      []string `json:"include"`
	Suite        string   `json:"suite"`
}

// debianSetupVersion is part of the cache key: bump it when
// configureDebianTree changes so that cached tarballs are rebuilt.
const debianSetupVersion = "1"

// unitsMasked hang or wait without network, or prompt on the console.
var unitsMasked = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
	"fstrim.timer", "systemd-firstboot.service", "systemd-networkd-wait-online.service",
	"serial-getty@.service", "getty@.service", "getty-static.service",
}

// DebianRoot returns the cached Debian tarball for spec, running debootstrap
// the first time. The tree has a password-less root and no gettys.
func (c *Cache) DebianRoot(ctx context.Context, spec DebianSpec, logf Logf) (*DebianRoot, error) {
	if spec.Suite == "" {
		spec.Suite = "bookworm"
	}
	if spec.Mirror == "" {
		spec.Mirror = "http://deb.debian.org/debian"
	}
	if spec.Variant == "" {
		spec.Variant = "minbase"
	}
	if spec.Include == nil {
		spec.Include = DefaultDebianInclude
	}
	include := append([]string(nil), spec.Include...)
	sort.Strings(include)
	key := hashKey(debianSetupVersion, spec.Suite, spec.Variant, strings.Join(include, ","), strings.Join(unitsMasked, ","))
	name := fmt.Sprintf("debian-%s-%s", spec.Suite, key)
	tarball := c.Path("roots", name+".tar")
	metaPath := c.Path("roots", name+".json")

	unlock, err := c.Lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if data, err := os.ReadFile(metaPath); err == nil && exists(tarball) {
		var m debianMeta
		if json.Unmarshal(data, &m) == nil {
			return &DebianRoot{Tarball: tarball, BuildTime: time.Duration(m.BuildSeconds * float64(time.Second)),
				SizeBytes: m.SizeBytes, Cached: true}, nil
		}
	}

	if err := os.MkdirAll(c.Path("roots"), 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(c.Path("roots"), ".debootstrap-")
	if err != nil {
		return nil, err
	}
	tree := filepath.Join(work, "tree")
	defer func() {
		// debootstrap mounts proc/sys inside the target; never recurse into them.
		detachMountsBelow(work)
		_ = os.RemoveAll(work)
	}()

	start := time.Now()
	args := []string{"--variant=" + spec.Variant, "--include=" + strings.Join(spec.Include, ","), spec.Suite, tree, spec.Mirror}
	logf.printf("debian root: debootstrap %s (first run only)", strings.Join(args, " "))
	if o, err := runCmd(ctx, "", "debootstrap", args...); err != nil {
		return nil, fmt.Errorf("debootstrap %s: %w\n%s", strings.Join(args, " "), err, tail(o, 3000))
	}
	detachMountsBelow(tree)
	if err := configureDebianTree(ctx, tree); err != nil {
		return nil, err
	}
	size, _, err := treeUsage(tree)
	if err != nil {
		return nil, err
	}
	tmpTar := tarball + ".tmp"
	if o, err := runCmd(ctx, "", "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf", tmpTar, "-C", tree, "."); err != nil {
		return nil, fmt.Errorf("tar %s: %w\n%s", tree, err, o)
	}
	if err := os.Rename(tmpTar, tarball); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	meta, _ := json.Marshal(debianMeta{BuildSeconds: elapsed.Seconds(), SizeBytes: size, Include: include, Suite: spec.Suite})
	if err := os.WriteFile(metaPath, meta, 0o644); err != nil {
		return nil, err
	}
	logf.printf("debian root: built in %s (%d MiB) → %s", elapsed.Round(time.Second), size/MiB, tarball)
	return &DebianRoot{Tarball: tarball, BuildTime: elapsed, SizeBytes: size}, nil
}

func configureDebianTree(ctx context.Context, tree string) error {
	if o, err := runCmd(ctx, "", "chroot", tree, "passwd", "-d", "root"); err != nil {
		return fmt.Errorf("chroot %s passwd -d root: %w\n%s", tree, err, o)
	}
	files := map[string]string{
		"etc/hostname": "cvmboot-e2e\n",
		"etc/fstab":    "# root is mounted by the initramfs; nothing else to mount\n",
	}
	for rel, content := range files {
		if err := os.WriteFile(filepath.Join(tree, rel), []byte(content), 0o644); err != nil {
			return err
		}
	}
	for _, unit := range unitsMasked {
		link := filepath.Join(tree, "etc/systemd/system", unit)
		_ = os.Remove(link)
		if err := os.Symlink("/dev/null", link); err != nil {
			return fmt.Errorf("mask %s: %w", unit, err)
		}
	}
	// Nothing needs the apt lists or caches at boot; they only grow the image.
	for _, dir := range []string{"var/cache/apt", "var/lib/apt/lists"} {
		entries, _ := os.ReadDir(filepath.Join(tree, dir))
		for _, e := range entries {
			if e.Type().IsRegular() {
				_ = os.Remove(filepath.Join(tree, dir, e.Name()))
			}
		}
	}
	return nil
}

// ExtractDebianRoot unpacks the tarball into dir (which must not exist yet).
func ExtractDebianRoot(ctx context.Context, r *DebianRoot, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if o, err := runCmd(ctx, "", "tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", r.Tarball, "-C", dir); err != nil {
		return fmt.Errorf("untar %s into %s: %w\n%s", r.Tarball, dir, err, o)
	}
	return nil
}

// CheckUnitName is the systemd unit InstallCheckUnit adds.
const CheckUnitName = "cvmboot-check.service"

// CheckPrelude starts a check script: output to the console, say(), the wait for the boot
// to settle, the failed units with their last journal lines.
const CheckPrelude = `#!/bin/sh
# cvmboot e2e check: prints facts to the serial console, then powers off.
exec >/dev/console 2>&1
say() { printf 'E2E-CHECK: %s\n' "$*"; }
say BEGIN
state=$(timeout 240 systemctl is-system-running --wait 2>&1)
say "system-state=$state"
failed=$(systemctl list-units --failed --plain --no-legend --no-pager 2>&1 | awk '{print $1}' | tr '\n' ' ')
say "failed-units=${failed:-none}"
for u in $failed; do journalctl -b -u "$u" -o cat --no-pager | tail -4 | sed "s|^|E2E-CHECK: failed $u: |"; done
`

// DefaultCheckScript prints the state a scenario asserts on, one "E2E-CHECK:"
// line per fact, then powers the machine off.
const DefaultCheckScript = CheckPrelude + `say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
say "write=$(touch /cvmboot-e2e-write 2>&1 && echo ok)"
say "dm-root=$(systemctl is-active dev-mapper-root.device 2>&1)"
say "analyze=$(systemd-analyze time 2>&1 | head -1)"
say "lower=$(findmnt -n -o SOURCE /sysroot 2>/dev/null || grep -o 'lowerdir=[^,]*' /proc/self/mountinfo | head -1)"
say "kernel=$(uname -r)"
# The writable root is a tmpfs with a size cap: filling it fails the writer, not the system.
say "fill=$(dd if=/dev/zero of=/cvmboot-e2e-fill bs=1M 2>&1 | grep -o 'No space left on device' | head -1)"
say "after-fill=$(systemctl is-system-running 2>&1)"
rm -f /cvmboot-e2e-fill
if [ -e /run/cvmboot/report.json ]; then
  say "report=present"
  echo 'E2E-CHECK: REPORT BEGIN'
  cat /run/cvmboot/report.json
  echo
  echo 'E2E-CHECK: REPORT END'
else
  say "report=missing"
fi
say DONE
sync
# Not "systemctl poweroff": without D-Bus it first complains that logind is unreachable.
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// InstallCheckUnit adds the check script (DefaultCheckScript when empty) and
// cvmboot-check.service, enabled for multi-user.target, to a Debian tree.
// The unit is Type=simple so that `systemctl is-system-running --wait` inside
// it does not wait for its own start job.
func InstallCheckUnit(tree, script string) error {
	if script == "" {
		script = DefaultCheckScript
	}
	scriptPath := filepath.Join(tree, "usr/local/sbin/cvmboot-e2e-check")
	if err := os.MkdirAll(filepath.Dir(scriptPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(scriptPath, []byte(script), 0o755); err != nil {
		return err
	}
	unit := `[Unit]
Description=cvmboot e2e check
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/cvmboot-e2e-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
`
	unitPath := filepath.Join(tree, "etc/systemd/system", CheckUnitName)
	if err := os.WriteFile(unitPath, []byte(unit), 0o644); err != nil {
		return err
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	link := filepath.Join(wants, CheckUnitName)
	_ = os.Remove(link)
	return os.Symlink("/etc/systemd/system/"+CheckUnitName, link)
}

// detachMountsBelow lazily unmounts every mount point at or below dir,
// deepest first, so that a later RemoveAll cannot descend into proc or sysfs.
func detachMountsBelow(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	abs, _ := filepath.Abs(dir)
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == abs || strings.HasPrefix(mp, abs+"/") {
			points = append(points, mp)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, mp := range points {
		_ = unix.Unmount(mp, unix.MNT_DETACH)
	}
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for space etc.).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
