package e2e

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The host writes the boot entries: systemd-stub before 255 (Debian 12's) boots the UKI with
// a boot entry's load options instead of its .cmdline when Secure Boot is off. These
// scenarios are that move, booted: the UKI off the removable path, OVMF's shell starting it
// with the host's command line.

var pinConfig = []func(*config.Config){tpm, noStorage, noOverlay}

func cmdlineScenarios() []scenario {
	verityRoot := func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{} }
	return []scenario{
		scenario{
			// The host passes systemd credentials through SMBIOS type 11 and fw_cfg, among them
			// tmpfiles.extra (a file the booted system creates). The image's command line has
			// systemd.import_credentials=no: none reaches the booted Debian.
			name: "host-credentials", root: rootDebian, config: debianConfig,
			cmdline: "root=PARTUUID={rootpartuuid}", recipe: installCredentialCheck, qemuArgs: hostCredentialArgs,
			expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: credentials=none`, `E2E-CHECK: host-file=absent`,
				`E2E-CHECK: cmdline=.*systemd\.import_credentials=no`, `E2E-CHECK: DONE`},
			reject:  []string{`{fatal}`, `Kernel panic`, `written-by-the-host`},
			outcome: bootedAndChecked, timeLimit: 5 * time.Minute,
		},
		scenario{
			// Control: the same host without systemd.import_credentials=no on the command line.
			// systemd 252 imports the SMBIOS credentials and runs the host's tmpfiles line as
			// root. (fw_cfg's are not seen here only because the test root has no kernel
			// modules, so no qemu_fw_cfg; an image with its modules imports those as well.)
			name: "host-credentials-imported", root: rootDebian, config: debianConfig, importCredentials: true,
			cmdline: "root=PARTUUID={rootpartuuid}", recipe: installCredentialCheck, qemuArgs: hostCredentialArgs,
			expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: credentials=.*cvmboot\.e2e\.smbios.*tmpfiles\.extra`,
				`E2E-CHECK: host-file=written-by-the-host`, `E2E-CHECK: DONE`},
			reject:  []string{`{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 5 * time.Minute,
		},
		scenario{
			// The host sets the SystemdOptions EFI variable, which systemd (Secure Boot off)
			// reads as command line besides /proc/cmdline, and boots the UKI with its own line:
			// the pin holds, and the handoff (efivarfs is mounted by then) refuses.
			name: "systemd-options", root: rootTiny, config: cfg(append(pinConfig, noVerity)...),
			cmdline: "root=PARTUUID={rootpartuuid}", loadOptions: "console=ttyS0 root=PARTUUID={rootpartuuid}",
			shellPrelude: []string{setSystemdOptions},
			expect: []string{`stage ok stage=root`,
				`{fatal}: stage handoff failed: the firmware variable SystemdOptions-8cf2644b-4b0b-428f-9387-6d876050dc67 adds "systemd\.hostname=hostchosen" to the command line systemd reads`},
			reject:  []string{`ROOTCHECK:`, `Kernel panic`},
			outcome: failureAction, timeLimit: 3 * time.Minute,
		},
		scenario{
			// Control: the same move against an image that pins nothing: systemd in the booted
			// Debian takes the host's option (its hostname).
			name: "systemd-options-unpinned", root: rootDebian, config: debianConfig, unpinned: true,
			cmdline: "root=PARTUUID={rootpartuuid}", loadOptions: "console=ttyS0 root=PARTUUID={rootpartuuid}",
			shellPrelude: []string{setSystemdOptions}, recipe: installHostnameCheck,
			expect:  []string{`E2E-CHECK: hostname=hostchosen`, `E2E-CHECK: DONE`},
			reject:  []string{`{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 5 * time.Minute,
		},
		scenario{
			// The exploit: init=/bin/sh, and a debug shell as the failure action for good
			// measure. The pinned initramfs refuses before any stage and reboots: the config
			// file's action (qemu -no-reboot exits), not the command line's shell.
			name: "cmdline-override", root: rootTiny, recipe: verityRoot, config: cfg(append(pinConfig, func(c *config.Config) { c.Failure.Action = config.FailureAction("reboot") })...),
			cmdline:     "roothash={roothash}",
			loadOptions: "console=ttyS0 roothash={roothash} init=/bin/sh cvmboot.debug=on cvmboot.failure.action=shell",
			expect: []string{
				`{fatal}: stage cmdline failed: the kernel command line is not the one pinned in /etc/cvmboot/cmdline: expected sha256:[0-9a-f]{64}, found sha256:[0-9a-f]{64}\r?$`,
				`cvmboot: words not in the pinned command line: "init=/bin/sh" "cvmboot.debug=on" "cvmboot.failure.action=shell"\r?$`,
				`cvmboot: failure action: reboot`,
			},
			reject:  []string{`ROOTCHECK:`, `Kernel panic`, `handing off to init`, `dm-verity`, `failure action: shell`},
			outcome: failureAction, exit: harness.ExitRebooted, timeLimit: 3 * time.Minute,
			after: expectPinDigest,
		},
		scenario{
			// The control: the same move against an initramfs built with --no-cmdline-pin
			// reaches the kernel (rootcheck's options are only in the host's load options).
			name: "cmdline-override-unpinned", root: rootTiny, recipe: verityRoot, config: cfg(pinConfig...), unpinned: true,
			cmdline:     "roothash={roothash}",
			loadOptions: "console=ttyS0 roothash={roothash} rootcheck.expect=cmdline:e2e.host=1 e2e.host=1",
			expect:      []string{`the kernel command line is not pinned`, `ROOTCHECK: ok expect:cmdline:e2e.host=1`},
			reject:      []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome:     bootedAndChecked, timeLimit: 3 * time.Minute,
		},
	}
}

// expectPinDigest checks that the refusal names the digest of the UKI's own command line.
func expectPinDigest(_ *testing.T, _ *env, boot *harness.BootResult, img *harness.Image) []string {
	want := "expected " + cmdline.PinDigest(img.Cmdline) + ", found "
	if !strings.Contains(boot.Serial, want) {
		return []string{fmt.Sprintf("the refusal does not name the pinned command line's digest: %q not in the serial log", want)}
	}
	return nil
}

// hostCredentialArgs are the host's credentials: two harmless ones and a tmpfiles.extra line
// that makes the booted system write a file as root.
var hostCredentialArgs = []string{
	"-smbios", "type=11,value=io.systemd.credential:cvmboot.e2e.smbios=from-smbios",
	"-fw_cfg", "name=opt/io.systemd.credentials/cvmboot.e2e.fwcfg,string=from-fwcfg",
	"-smbios", "type=11,value=io.systemd.credential.binary:tmpfiles.extra=" +
		base64.StdEncoding.EncodeToString([]byte("f /run/cvmboot-e2e-host-file 0644 root root - written-by-the-host\n")),
}

// installCredentialCheck replaces the Debian root's check script: which credentials systemd
// has, and whether the host's tmpfiles line ran.
func installCredentialCheck(r *harness.DiskRecipe) {
	script := harness.CheckPrelude + `c=$(ls /run/credentials/@system 2>/dev/null | tr '\n' ' ')
say "credentials=${c:-none}"
if [ -e /run/cvmboot-e2e-host-file ]; then say "host-file=$(cat /run/cvmboot-e2e-host-file)"; else say "host-file=absent"; fi
say "cmdline=$(cat /proc/cmdline)"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`
	if err := harness.InstallCheckUnit(r.Root.Tree, script); err != nil {
		panic(fmt.Sprintf("host-credentials: %v", err))
	}
}

// setSystemdOptions is the host setting SystemdOptions from OVMF's shell (UTF-16 text, as
// bootctl set-options writes it).
const setSystemdOptions = "setvar SystemdOptions -guid 8cf2644b-4b0b-428f-9387-6d876050dc67 -bs -rt -nv =Lsystemd.hostname=hostchosen"

// installHostnameCheck replaces the Debian root's check script: which hostname systemd set.
func installHostnameCheck(r *harness.DiskRecipe) {
	script := harness.CheckPrelude + `say "hostname=$(cat /proc/sys/kernel/hostname)"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`
	if err := harness.InstallCheckUnit(r.Root.Tree, script); err != nil {
		panic(fmt.Sprintf("systemd-options: %v", err))
	}
}
