package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The booted Debian's own systemd (252) against cvmboot's persistent root, both ways. The key
// is sealed to PCR 11 as it is in the initrd (cvmboot's leave-initrd extend locks the booted
// system out), so systemd's tools run in the initrd: a dracut module adds them and a unit
// ordered between cvmboot-persistent-root.service and cvmboot's leave-initrd measurement.

// interopModuleSetup installs systemd-cryptsetup, systemd-cryptenroll, cryptsetup with
// systemd's token plugin, the TPM2 libraries systemd loads at run time, and the unit.
const interopModuleSetup = `#!/bin/bash
check() { return 255; }
depends() { echo systemd; return 0; }
install() {
    inst_multiple cryptsetup systemd-cryptenroll "$systemdutildir/systemd-cryptsetup" mount umount mkdir rm cat head \
        base64 sed awk tr seq sleep
    # dlopen()ed by systemd: dracut resolves no dependencies of theirs.
    inst_libdir_file "libtss2-esys.so*" "libtss2-sys.so*" "libtss2-rc.so*" "libtss2-mu.so*" "libtss2-tctildr.so*" "libtss2-tcti-device.so*" \
        "cryptsetup/libcryptsetup-token-systemd-tpm2.so"
    inst_simple "$moddir/e2e-interop.sh" /usr/sbin/cvmboot-e2e-interop
    inst_simple "$moddir/cvmboot-e2e-interop.service" "$systemdsystemunitdir/cvmboot-e2e-interop.service"
    $SYSTEMCTL -q --root "$initdir" enable cvmboot-e2e-interop.service
}
`

const interopUnit = `[Unit]
Description=cvmboot e2e: systemd's LUKS2 TPM2 tools on cvmboot's persistent root
DefaultDependencies=no
After=cvmboot-persistent-root.service systemd-udev-trigger.service
Before=cvmboot-evidence.service sysroot.mount

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/cvmboot-e2e-interop
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=initrd.target
`

// interopScript acts only when the host attached a copy of the converted partition (vdb):
// systemd-cryptsetup opens the copy with cvmboot's token and reads what the booted system
// wrote; then systemd-cryptenroll enrolls the root's own volume, unlocked through systemd's
// token plugin on cvmboot's token, and every other keyslot is wiped: from the next boot on
// only systemd's enrollment opens it.
const interopScript = `#!/bin/bash
say() { echo "E2E-INTEROP: $*"; }
# systemd's tools log to the journal under a unit: their messages belong on the console.
export SYSTEMD_LOG_TARGET=console
fail() { say "FAIL: $*"; exit 1; }
root=/dev/disk/by-partlabel/cvmboot-root
header() {
    cryptsetup luksDump "$root" | awk '/^Keyslots:/{s="keyslot"} /^Tokens:/{s="token"} /^Digests:/{s=""}
        s && /^  [0-9]+: /{printf "%s %s%s ", s, $1, $2} /tpm2-hash-pcrs:/{printf "pcrs %s ", $2}'
}
# The kernel probed the virtio disks long before this unit: sysfs says whether there is one.
if [ ! -e /sys/block/vdb ]; then say "no copy attached: nothing to do"; exit 0; fi
for i in $(seq 100); do [ -b /dev/vdb ] && break; sleep 0.1; done
say "before=$(header)"

/usr/lib/systemd/systemd-cryptsetup attach e2e-copy /dev/vdb - tpm2-device=auto,headless=true,readonly ||
    fail "systemd-cryptsetup attach: exit $?"
say "attached=$(cryptsetup status e2e-copy | sed -n 's/^ *\(type\|cipher\|integrity\): *//p' | tr '\n' ' ')"
mkdir -p /run/e2e-copy
mount -o ro,noload /dev/mapper/e2e-copy /run/e2e-copy || fail "mount the copy: exit $?"
say "copy-persisted=$(cat /run/e2e-copy/cvmboot-e2e-persist 2>&1)"
umount /run/e2e-copy
/usr/lib/systemd/systemd-cryptsetup detach e2e-copy || fail "systemd-cryptsetup detach: exit $?"

umask 077
pass=/run/e2e-interop-pass
head -c 32 /dev/urandom | base64 -w0 > $pass
cryptsetup luksAddKey --batch-mode --token-only --token-type systemd-tpm2 --pbkdf pbkdf2 \
    --pbkdf-force-iterations 1000 --hash sha512 "$root" $pass || { rm -f $pass; fail "cryptsetup luksAddKey through systemd's token plugin: exit $?"; }
say "token plugin=a passphrase keyslot added, unlocked through systemd-tpm2 $(header)"
enroll() {
    systemd-cryptenroll --unlock-key-file=$pass "$@" "$root" 2>&1 | sed 's/^/E2E-INTEROP: systemd-cryptenroll: /'
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { rm -f $pass; fail "systemd-cryptenroll $*: exit $rc"; }
}
# systemd-cryptenroll takes cvmboot's token for its own (the same PCRs, the same policy) and
# would enroll nothing beside it: cvmboot's keyslot and token go first.
enroll --wipe-slot=tpm2
enroll --tpm2-device=auto --tpm2-pcrs=2+4+9+11+12 --wipe-slot=password
rm -f $pass
say "after=$(header)"
say DONE
`

var interopModule = testDracutModule{name: "cvmboot-e2e-interop", files: map[string]string{
	"module-setup.sh": interopModuleSetup, "e2e-interop.sh": interopScript, "cvmboot-e2e-interop.service": interopUnit}}

// interopCheckScript is persistent-dracut's check plus the keyslot the unlock used and the
// fields of token 0 as the booted Debian's cryptsetup exports it.
var interopCheckScript = strings.Replace(persistentDracutCheckScript, "say DONE\n",
	`say "token-fields=$(cryptsetup token export --token-id 0 /dev/disk/by-partlabel/cvmboot-root | grep -o '"[a-z0-9_-]*":' | tr -d '":' | sort | tr '\n' ' ')"
say "unlock-keyslot=$(grep -o '"keyslot": *"[0-9]*"' /run/cvmboot/report.json | head -1)"
say DONE
`, 1)

// systemdTokenFields are the fields of the token systemd-cryptenroll 252 writes (sorted);
// cvmboot's have cvmboot_generation and cvmboot_pcr_values too.
const systemdTokenFields = `keyslots tpm2-blob tpm2-pcr-bank tpm2-pcrs tpm2-pin tpm2-policy-hash tpm2-primary-alg type\s*$`

// persistentSystemdCryptsetup: the first boot converts (cvmboot); the second has a copy of
// the converted partition attached, which systemd-cryptsetup opens with the token cvmboot
// sealed, and systemd-cryptenroll replaces cvmboot's keyslot on the root by its own; the
// third boot's cvmboot opens the root with systemd's enrollment.
func persistentSystemdCryptsetup() scenario {
	sc := persistentDracut()
	sc.name = "persistent-systemd-cryptsetup"
	sc.initramfs = dracutInitramfsChecking(persistentConfig, interopCheckScript, interopModule)
	sc.expect = append(slices.Clone(sc.expect), `E2E-INTEROP: no copy attached`,
		`E2E-CHECK: luks=keyslot 0:luks2 token 0:systemd-tpm2\s*$`, `E2E-CHECK: token-fields=cvmboot_generation cvmboot_pcr_values `+systemdTokenFields)
	sc.reject = append(slices.Clone(sc.reject), `E2E-INTEROP: FAIL`)
	sc.timeLimit = 10 * time.Minute
	sc.after = persistentSystemdCryptsetupLater
	return sc
}

func persistentSystemdCryptsetupLater(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-systemd-cryptsetup")
	work := filepath.Dir(img.Disk.Path)
	copyPath := filepath.Join(work, "cvmboot-root-copy.img")
	if err := copyPartition(img.Disk.Path, "cvmboot-root", copyPath); err != nil {
		return []string{err.Error()}
	}
	b, err := bootAgain(t, e, sc, first, img, "boot2", copyPath)
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the second boot (systemd's tools)", bootedAndChecked, []string{
		`E2E-INTEROP: before=keyslot 0:luks2 token 0:systemd-tpm2 pcrs 2\+4\+9\+11\+12\s*$`,
		`E2E-INTEROP: attached=LUKS2 aes-xts-plain64 hmac\(sha256\)\s*$`,
		`E2E-INTEROP: copy-persisted=written at boot `,
		`E2E-INTEROP: token plugin=a passphrase keyslot added, unlocked through systemd-tpm2 keyslot 0:luks2 keyslot 1:luks2 token 0:systemd-tpm2`,
		`E2E-INTEROP: systemd-cryptenroll: Wiped slot 0\.`, `E2E-INTEROP: systemd-cryptenroll: New TPM2 token enrolled as key slot 0\.`,
		`E2E-INTEROP: systemd-cryptenroll: Wiped slot 1\.`,
		`E2E-INTEROP: after=keyslot 0:luks2 token 0:systemd-tpm2 pcrs 2\+4\+9\+11\+12\s*$`,
		`E2E-INTEROP: DONE`,
		`E2E-CHECK: persistent-root="action": *"unlocked"`, `E2E-CHECK: unlock-keyslot="keyslot": *"0"`,
		`E2E-CHECK: root=/dev/mapper/cvmboot-root ext4\s+rw`, `E2E-CHECK: persisted=written at boot `,
		`E2E-CHECK: luks=keyslot 0:luks2 token 0:systemd-tpm2\s*$`, `E2E-CHECK: token-fields=` + systemdTokenFields,
		`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`, `E2E-CHECK: DONE`,
	}, sc.reject)
	if len(problems) > 0 {
		return problems
	}
	for _, l := range []string{"E2E-INTEROP: attached=", "E2E-INTEROP: copy-persisted=", "E2E-INTEROP: after="} {
		t.Logf("second boot: %s", firstMatch(b.Serial, l))
	}
	b, err = bootAgain(t, e, sc, first, img, "boot3")
	if err != nil {
		return []string{err.Error()}
	}
	problems = checkBoot(sc, b, "the third boot (systemd's enrollment)", bootedAndChecked, []string{
		`E2E-INTEROP: no copy attached`,
		`E2E-CHECK: persistent-root="action": *"unlocked"`, `E2E-CHECK: unlock-keyslot="keyslot": *"0"`,
		`E2E-CHECK: persisted=written at boot `, `E2E-CHECK: luks=keyslot 0:luks2 token 0:systemd-tpm2\s*$`,
		`E2E-CHECK: token-fields=` + systemdTokenFields,
		`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`, `E2E-CHECK: DONE`,
	}, sc.reject)
	if len(problems) == 0 {
		t.Logf("third boot: %s", firstMatch(b.Serial, "stage ok stage=persistent-root"))
	}
	return problems
}

// copyPartition copies the GPT partition named label into out (sparse), as a host copies a
// volume to another disk.
func copyPartition(diskPath, label, out string) error {
	start, size, err := partitionRange(diskPath, label)
	if err != nil {
		return err
	}
	o, err := exec.Command("dd", "if="+diskPath, "of="+out, "bs=1M", "iflag=skip_bytes,count_bytes",
		"skip="+strconv.FormatInt(start, 10), "count="+strconv.FormatInt(size, 10), "conv=sparse", "status=none").CombinedOutput()
	if err != nil {
		return fmt.Errorf("dd partition %s: %v\n%s", label, err, o)
	}
	return nil
}
