package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/pkg/initdata"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// systemd-initrd mode: the initramfs is Debian's dracut (run inside the Debian root) with
// cvmboot's dracut module, and cvmboot runs as the units in systemd/.

// dracutConfig is the secure default with swtpm as the platform and a capped overlay.
var dracutConfig = cfg(tpm, overlay256, func(c *config.Config) { c.Storage.Binds = []string{"/var/lib/containers"} })

// dracutInitdataConfig is dracutConfig taking kata's initdata device, /dev/vdb (waited for:
// in a systemd initrd udev brings the disks up while the units run).
var dracutInitdataConfig = cfg(tpm, overlay256, func(c *config.Config) { c.Storage.Binds = []string{"/var/lib/containers"} },
	initdataFrom(config.InitdataDevice, "/dev/vdb"))

// dracutPackages are what the dracut scenarios' root adds: dracut itself and dmsetup, whose
// udev rules dracut's dm module installs (they make /dev/mapper/NAME).
var dracutPackages = []string{"dracut", "dmsetup"}

// dracutCheckScript is DefaultCheckScript's checks plus the storage, the device units, the
// journal records of the units and cvmboot status.
const dracutCheckScript = harness.CheckPrelude + `say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
say "write=$(touch /cvmboot-e2e-write 2>&1 && echo ok)"
say "dm-units=$(systemctl is-active dev-mapper-root.device dev-mapper-cvmboot\\x2dstorage.device | tr '\n' ' ')"
say "storage=$(findmnt -n -o SOURCE,FSTYPE /run/kata-containers/image 2>&1)"
say "bind=$(findmnt -n -o SOURCE,FSTYPE /var/lib/containers 2>&1)"
say "storage-stack=$(lsblk -s -n -r -o NAME,TYPE /dev/mapper/cvmboot-storage | tr '\n' ' ')"
say "analyze=$(systemd-analyze time 2>&1 | head -1)"
say "journal=$(journalctl -b SYSLOG_IDENTIFIER=cvmboot -o export --no-pager | grep -a '^CVMBOOT_STAGE=' | sort -u | tr '\n' ' ')"
journalctl -b SYSLOG_IDENTIFIER=cvmboot CVMBOOT_STAGE=verity -o verbose --no-pager | grep -E '^ +(MESSAGE|CVMBOOT_STAGE|CVMBOOT_DEVICE)=' | head -6 | sed 's/^ */E2E-CHECK: journal: /'
cvmboot status > /tmp/status 2>&1
say "cvmboot-status=exit $? $(awk '$2=="ok"{n++} END{print n+0}' /tmp/status) ok, $(awk '$2=="failed"{n++} END{print n+0}' /tmp/status) failed"
sed 's/^/E2E-CHECK: status: /' /tmp/status | head -20
say "evidence=$(ls /run/cvmboot/evidence 2>&1 | tr '\n' ' ')"
say "pinned=$(grep -o '"cmdline_pinned": *"[^"]*"' /run/cvmboot/report.json)"
say "outcome=$(head -1 /tmp/status)"
say "eventlog=$(grep -o '"type":"cvmboot[.][a-z-]*"' /run/cvmboot/eventlog | cut -d'"' -f4 | tr '\n' ' ')"
say "initdata=$(ls /run/confidential-containers/initdata 2>&1 | tr '\n' ' ')pcr8=$(cat /sys/class/tpm/tpm0/pcr-sha256/8 2>&1)"
say "fill=$(dd if=/dev/zero of=/cvmboot-e2e-fill bs=1M 2>&1 | grep -o 'No space left on device' | head -1)"
say "after-fill=$(systemctl is-system-running 2>&1)"
rm -f /cvmboot-e2e-fill
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// dracutInitramfs builds the scenario's initramfs with the tree's dracut.
func dracutInitramfs(config string) func(t *testing.T, e *env, tree, work string) (func(string) (string, error), error) {
	return dracutInitramfsChecking(config, dracutCheckScript)
}

// testDracutModule is a dracut module a scenario adds to its initrd (--add name), written
// into the tree as modules.d/99name.
type testDracutModule struct {
	name  string
	files map[string]string // module-setup.sh and what it installs
}

// dracutInitramfsChecking is dracutInitramfs with the booted system running script, and the
// initrd with the modules added.
func dracutInitramfsChecking(config, script string, modules ...testDracutModule) func(t *testing.T, e *env, tree, work string) (func(string) (string, error), error) {
	return func(t *testing.T, e *env, tree, work string) (func(string) (string, error), error) {
		repo, err := harness.RepoRoot()
		if err != nil {
			return nil, err
		}
		if err := harness.InstallCheckUnit(tree, script); err != nil {
			return nil, err
		}
		spec := harness.DracutSpec{Tree: tree, Kernel: e.kernel, Cvmboot: filepath.Join(repo, "bin", "cvmboot"), Config: config,
			Repo: repo, Out: filepath.Join(work, "dracut-initramfs.img")}
		for _, m := range modules {
			if err := writeDracutModule(tree, "99"+m.name, m.files); err != nil {
				return nil, err
			}
			spec.Add = append(spec.Add, m.name)
		}
		if err := harness.InstallCvmboot(context.Background(), spec); err != nil {
			return nil, err
		}
		return func(cmdline string) (string, error) {
			start := time.Now()
			spec.Cmdline = cmdline
			if err := harness.BuildDracutInitramfs(context.Background(), spec, harness.Logf(t.Logf)); err != nil {
				return "", err
			}
			t.Logf("dracut initramfs built in %s", time.Since(start).Round(time.Second))
			return spec.Out, nil
		}, nil
	}
}

// decoyPartUUID is the partition holding an unverified copy of the root.
const decoyPartUUID = "6b1d4a53-3c8e-4c55-9f0c-7d2a1e5c0dec"

func dracutScenarios() []scenario {
	// Debian's systemd initrd ends a boot it cannot finish in emergency mode with a root
	// shell; with cvmboot's module a failure must end in the failure action instead.
	noShell := []string{`Kernel panic`, `emergency mode`, `Give root password`, `sulogin`, `Entering emergency`}
	return []scenario{
		scenario{
			// A dracut-built systemd initrd with the cvmboot module boots the verity root to
			// multi-user: units verity → sysroot.mount → overlay → storage → evidence.
			// The host attached kata's initdata disk: the attest unit takes it (PCR 8, the files).
			name: "dracut-debian", root: rootDebian, debianPackages: dracutPackages,
			config:    dracutInitdataConfig,
			recipe:    func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{}; r.FreeSpace = 1536 * harness.MiB },
			initramfs: dracutInitramfs(dracutInitdataConfig),
			initdata:  initdata.Block([]byte(initdataPod)),
			cmdline:   "roothash={roothash} root=/dev/mapper/root ro",
			expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
				`E2E-CHECK: root=overlay overlay rw,.*upperdir=/run/cvmboot/overlay/upper`, `E2E-CHECK: write=ok`,
				`E2E-CHECK: dm-units=active active`, `E2E-CHECK: storage=/dev/mapper/cvmboot-storage ext4`,
				`E2E-CHECK: bind=/dev/mapper/cvmboot-storage ext4`,
				`E2E-CHECK: storage-stack=cvmboot-storage crypt cvmboot-storage_dif crypt vda\d part vda disk`,
				`E2E-CHECK: analyze=Startup finished in .* \(kernel\) \+ .* \(initrd\) \+ .* \(userspace\)`,
				`E2E-CHECK: journal=.*CVMBOOT_STAGE=attest.*CVMBOOT_STAGE=binds.*CVMBOOT_STAGE=evidence.*CVMBOOT_STAGE=initdata.*CVMBOOT_STAGE=modules.*CVMBOOT_STAGE=overlay.*CVMBOOT_STAGE=root.*CVMBOOT_STAGE=storage.*CVMBOOT_STAGE=verity`,
				// modules attest initdata verity root storage overlay binds evidence: every step ran.
				`E2E-CHECK: cvmboot-status=exit 0 9 ok, 0 failed`,
				`(?i)E2E-CHECK: initdata=aa.toml cdh.toml initdata.toml policy.rego pcr8=` + initdataPCR8(initdataPod),
				`E2E-CHECK: evidence=.*tpm-quote`, `E2E-CHECK: pinned="cmdline_pinned": *"sha256:[0-9a-f]{64}"`,
				`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`,
				`E2E-CHECK: eventlog=cvmboot.phase cvmboot.config cvmboot.cmdline cvmboot.initdata cvmboot.verity cvmboot.storage cvmboot.overlay cvmboot.phase `,
				`E2E-CHECK: fill=No space left on device`, `E2E-CHECK: after-fill=running`},
			reject:    append([]string{`{fatal}`}, noShell...),
			outcome:   bootedAndChecked,
			timeLimit: 8 * time.Minute,
		},
		scenario{
			// The same initrd with one byte of the root's data block 0 flipped: the verity unit
			// refuses it and its FailureAction= powers off; no emergency shell.
			name: "dracut-tampered-root", root: rootDebian, debianPackages: dracutPackages,
			config: dracutConfig,
			recipe: func(r *harness.DiskRecipe) {
				r.Verity = &harness.VeritySpec{Tamper: flipAt(false, 1024+0x78)}
			},
			initramfs: dracutInitramfs(dracutConfig),
			cmdline:   "roothash={roothash} root=/dev/mapper/root ro",
			expect: []string{`{fatal}: stage verity failed: .*/dev/vda2.*does not match`,
				`cvmboot: failure action: poweroff \(FailureAction=poweroff-force\)`},
			reject:    noShell,
			outcome:   failureAction,
			timeLimit: 6 * time.Minute,
		},
		scenario{
			// The UKI's command line has roothash= but its root= names a partition holding an
			// unverified copy of the root (the data partition itself is held by dm-verity):
			// systemd mounts the copy at /sysroot, cvmboot-root refuses it before the overlay
			// or storage, and its FailureAction= powers off.
			name: "dracut-root-not-verity", root: rootDebian, debianPackages: dracutPackages,
			config:    dracutConfig,
			recipe:    func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{DecoyPartUUID: decoyPartUUID} },
			initramfs: dracutInitramfs(dracutConfig),
			cmdline:   "roothash={roothash} root=PARTUUID=" + decoyPartUUID + " ro",
			expect: []string{`Finished .*cvmboot-verity`,
				`{fatal}: stage root failed: /sysroot is mounted from /dev/vda4, not from the verified /dev/mapper/root`,
				`cvmboot: failure action: poweroff \(FailureAction=poweroff-force\)`},
			reject:    append([]string{`stage ok stage=overlay`, `stage ok stage=storage`, `E2E-CHECK:`}, noShell...),
			outcome:   failureAction,
			timeLimit: 6 * time.Minute,
		},
		scenario{
			// The host boots the UKI through a boot entry of its own whose load options ask
			// systemd for the emergency target and a debug shell: cvmboot's generator, which
			// runs before any unit, refuses the command line and powers off.
			name: "dracut-cmdline-override", root: rootDebian, debianPackages: dracutPackages,
			config:      dracutConfig,
			recipe:      func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} },
			initramfs:   dracutInitramfs(dracutConfig),
			cmdline:     "roothash={roothash} root=/dev/mapper/root ro",
			loadOptions: "console=ttyS0 roothash={roothash} root=/dev/mapper/root ro rd.systemd.unit=emergency.target rd.systemd.debug_shell=1 rd.shell=1",
			expect: []string{`{fatal}: stage cmdline failed: the kernel command line is not the one pinned in /etc/cvmboot/cmdline`,
				`cvmboot: words not in the pinned command line: "rd.systemd.unit=emergency.target" "rd.systemd.debug_shell=1" "rd.shell=1"`,
				`cvmboot: failure action: poweroff`},
			reject:    append([]string{`cvmboot-attest`, `dm-verity`}, noShell...),
			outcome:   failureAction,
			timeLimit: 6 * time.Minute,
			after:     expectPinDigest,
		},
	}
}

// scratchCheckScript checks the storage cvmboot-scratch-storage.service set up in the booted
// system of an image with its own (busybox) initrd.
const scratchCheckScript = harness.CheckPrelude + `say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
say "unit=$(systemctl show -p Result --value cvmboot-scratch-storage.service)"
say "storage=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS /run/kata-containers/image 2>&1)"
say "storage-stack=$(lsblk -s -n -r -o NAME,TYPE /dev/mapper/cvmboot-storage | tr '\n' ' ')"
say "dm-units=$(systemctl is-active dev-mapper-cvmboot\\x2dstorage.device dev-mapper-cvmboot\\x2dstorage_dif.device | tr '\n' ' ')"
say "write=$(head -c 10485760 /dev/urandom > /run/kata-containers/image/f && sync && echo ok)"
say "mode=$(grep -o '"mode": *"[a-z-]*"' /run/cvmboot/report.json)"
say "eventlog=$(grep -o '"type":"cvmboot[.][a-z-]*"' /run/cvmboot/eventlog | cut -d'"' -f4 | tr '\n' ' ')"
cvmboot status > /tmp/status 2>&1
say "cvmboot-status=exit $? $(awk '$2=="ok"{n++} END{print n+0}' /tmp/status) ok, $(awk '$2=="failed"{n++} END{print n+0}' /tmp/status) failed"
say "outcome=$(head -1 /tmp/status)"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

func scratchStorageScenarios() []scenario {
	return []scenario{scenario{
		// An image that keeps its own initrd (the busybox baseline: mounts the root
		// read-only, switch_root) gets the encrypted storage from
		// cvmboot-scratch-storage.service in the booted system.
		name: "scratch-storage-booted", root: rootDebian, debianPackages: dracutPackages,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config:  "",
		recipe:  func(r *harness.DiskRecipe) { r.FreeSpace = 1536 * harness.MiB },
		initramfs: func(t *testing.T, e *env, tree, work string) (func(string) (string, error), error) {
			repo, err := harness.RepoRoot()
			if err != nil {
				return nil, err
			}
			cfgPath := filepath.Join(work, "scratch-config.yaml")
			if err := os.WriteFile(cfgPath, []byte(cfg(noVerity, tpm)), 0o644); err != nil {
				return nil, err
			}
			ctx := context.Background()
			steps := [][]string{
				{filepath.Join(repo, "systemd/install.sh"), tree, filepath.Join(repo, "bin", "cvmboot"), cfgPath},
				{"mkdir", "-p", filepath.Join(tree, "usr/lib/modules")},
				{"cp", "-a", e.kernel.ModulesDir, filepath.Join(tree, "usr/lib/modules", e.kernel.Version)},
				{"mkdir", "-p", filepath.Join(tree, "etc/systemd/system/local-fs.target.requires")},
				{"ln", "-sf", "/usr/lib/systemd/system/cvmboot-scratch-storage.service", filepath.Join(tree, "etc/systemd/system/local-fs.target.requires/")},
			}
			for _, s := range steps {
				if o, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
					return nil, fmt.Errorf("%v: %w\n%s", s, err, o)
				}
			}
			mods, err := exec.CommandContext(ctx, filepath.Join(repo, "bin", "cvmboot"), "modules", "--config", cfgPath).Output()
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(tree, "etc/cvmboot/modules.load"), mods, 0o644); err != nil {
				return nil, err
			}
			if err := harness.InstallCheckUnit(tree, scratchCheckScript); err != nil {
				return nil, err
			}
			// The image keeps its own initrd, which pins nothing.
			out := filepath.Join(work, "busybox-initramfs.img")
			return func(string) (string, error) { return out, buildBusyboxInitramfs(e, out) }, nil
		},
		expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
			`E2E-CHECK: root=/dev/vda2 ext4`, `E2E-CHECK: unit=success`,
			`E2E-CHECK: storage=/dev/mapper/cvmboot-storage ext4\s+rw,nosuid,nodev`,
			`E2E-CHECK: storage-stack=cvmboot-storage crypt cvmboot-storage_dif crypt vda\d part vda disk`,
			// With udev, systemd's 99-systemd.rules mark a CRYPT-* device without a file
			// system (the dm-integrity layer) not ready, as for cryptsetup's own.
			`E2E-CHECK: dm-units=active inactive`, `E2E-CHECK: write=ok`, `E2E-CHECK: mode="mode": *"systemd"`,
			`E2E-CHECK: eventlog=cvmboot.config cvmboot.cmdline cvmboot.storage \s*$`,
			`E2E-CHECK: outcome=cvmboot \S+ \(systemd mode\), boot ok`,
			`E2E-CHECK: cvmboot-status=exit 0 4 ok, 0 failed`},
		reject:    []string{`{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 6 * time.Minute,
	}}
}
