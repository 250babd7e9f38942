package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// persistentConfig is root.persistent on swtpm, which only the insecure test setting allows.
var persistentConfig = cfg(tpm, noStorage, func(c *config.Config) {
	c.Root.Persistent = config.PersistentEncryptOnFirstBoot
	c.Root.InsecureUnvouchedTPM = true
})

// persistentCmdline is the same in every boot of the machine: it is part of the UKI, and so
// of PCRs 9 and 11, which the key is sealed to.
const persistentCmdline = "roothash={roothash} rootcheck.expect=root:rw,rootfs:ext4,marker:/persist-marker"

// persistentDisk is a verity root with free space for the persistent root.
func persistentDisk(r *harness.DiskRecipe) { bigFree(r); r.Verity = &harness.VeritySpec{} }

// converted is what a first boot that converted prints.
var converted = []string{`stage ok stage=persistent-root .*action=converted`, `ROOTCHECK: DONE pass=\d+ fail=0`}

// persistentDracutCheckScript is what the booted Debian of persistent-dracut checks: the root
// is the encrypted partition, read-write, and what an earlier boot wrote is still there.
const persistentDracutCheckScript = harness.CheckPrelude + `say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
say "persisted=$(cat /cvmboot-e2e-persist 2>&1)"
say "write=$(echo "written at boot $(cat /proc/sys/kernel/random/boot_id)" > /cvmboot-e2e-persist && sync && echo ok)"
say "root-stack=$(lsblk -s -n -r -o NAME,TYPE /dev/mapper/cvmboot-root | tr '\n' ' ')"
say "root-size=$(df -B1M --output=size / | tail -1 | tr -d ' ')"
say "persistent-root=$(grep -o '"action": *"[a-z]*"' /run/cvmboot/report.json | head -1)"
say "unlock-ms=$(grep -oE '"(total_ms|tpm_prime_ms|tpm_unseal_ms|keyslot_ms|integrity_ms|crypt_ms|tpm_prime_redone)": *"[^"]*"' /run/cvmboot/report.json | tr -d '" ' | tr '\n' ' ')"
say "journal=$(journalctl -b SYSLOG_IDENTIFIER=cvmboot -o export --no-pager | grep -a '^CVMBOOT_STAGE=' | sort -u | tr '\n' ' ')"
cvmboot status > /tmp/status 2>&1
say "cvmboot-status=exit $? $(awk '$2=="ok"{n++} END{print n+0}' /tmp/status) ok, $(awk '$2=="failed"{n++} END{print n+0}' /tmp/status) failed"
sed 's/^/E2E-CHECK: status: /' /tmp/status | head -20
say "outcome=$(head -1 /tmp/status)"
say "eventlog=$(grep -o '"type":"cvmboot[.][a-z-]*"' /run/cvmboot/eventlog | cut -d'"' -f4 | tr '\n' ' ')"
say "luks=$(cryptsetup luksDump /dev/disk/by-partlabel/cvmboot-root | awk '/^Keyslots:/{s="keyslot"} /^Tokens:/{s="token"} /^Digests:/{s=""} s && /^  [0-9]+: /{printf "%s %s%s ", s, $1, $2}')"
say "keys=$(grep -o '"\(maintenance_keyslot\|enrolled_keyslot\|retired_keyslots\|enroll_refused\)": *"[^"]*"' /run/cvmboot/report.json | tr '\n' ' ')"
# The host attached the next UKI (an ext4 disk labelled cvmboot-next): ask for it.
if [ -b /dev/disk/by-label/cvmboot-next ] && mkdir -p /run/next && mount -o ro /dev/disk/by-label/cvmboot-next /run/next; then
  cvmboot enroll --uki /run/next/NEXT.EFI --sha256 "$(cat /run/next/NEXT.SHA)" > /tmp/enroll 2>&1
  say "enroll=exit $? $(head -1 /tmp/enroll)"
  umount /run/next
fi
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// persistentDracut is the systemd-initrd mode's persistent root: dracut's initrd with
// cvmboot's units converts at the first boot (cvmboot-persistent-root.service, then systemd's
// own sysroot.mount of root=/dev/mapper/cvmboot-root rw) and unlocks at the second; a UKI
// update and the host's moves follow (persistentDracutSecondBoot). rd.retry=5 is shorter
// than the copy (about 15 s here): dracut's initqueue, which gives up on a root=
// that has not appeared after rd.retry seconds, must start only after the conversion.
func persistentDracut() scenario {
	return scenario{
		name: "persistent-dracut", root: rootDebian, debianPackages: dracutPackages,
		config: persistentConfig, recipe: func(r *harness.DiskRecipe) { r.Verity = &harness.VeritySpec{}; r.FreeSpace = 1536 * harness.MiB },
		initramfs: dracutInitramfsChecking(persistentConfig, persistentDracutCheckScript),
		cmdline:   "roothash={roothash} root=/dev/mapper/cvmboot-root rw rd.retry=5",
		expect: []string{`E2E-CHECK: persistent-root="action": *"converted"`, `E2E-CHECK: root-size=1[0-9]{3}\s*$`,
			`E2E-CHECK: root=/dev/mapper/cvmboot-root ext4\s+rw`, `E2E-CHECK: persisted=cat: /cvmboot-e2e-persist: No such file`,
			`E2E-CHECK: write=ok`, `E2E-CHECK: root-stack=cvmboot-root crypt cvmboot-root_dif crypt vda4 part vda disk`,
			`E2E-CHECK: cvmboot-status=exit 0 \d+ ok, 0 failed`, `E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`,
			`E2E-CHECK: eventlog=cvmboot.phase cvmboot.config cvmboot.cmdline cvmboot.verity cvmboot.persistent-root cvmboot.storage cvmboot.overlay cvmboot.phase `,
			`E2E-CHECK: journal=.*CVMBOOT_STAGE=persistent-root.*CVMBOOT_STAGE=root`},
		reject:  []string{`{fatal}`, `Kernel panic`, `emergency mode`, `Give root password`, `sulogin`, `Entering emergency`},
		outcome: bootedAndChecked, timeLimit: 8 * time.Minute,
		after: persistentDracutSecondBoot,
	}
}

// persistentDracutSecondBoot boots the converted disk again with its TPM: unlocked, and the
// file the first boot wrote is there. Then a UKI update, as an operator does it in this mode:
// the second boot's system asks for UKI B (`cvmboot enroll`, B on a disk the host attached);
// the third boot, still A, seals B's keyslot in cvmboot-root.service; the fourth, B, opens
// with it and retires A's. Then the host's moves (persistentDracutAttacks).
func persistentDracutSecondBoot(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-dracut")
	work := filepath.Dir(img.Disk.Path)
	ukiB, err := dracutOtherUKI(e, img, "B", "UKI B\n")
	if err != nil {
		return []string{err.Error()}
	}
	nextDisk := filepath.Join(work, "next.img")
	if err := nextUKIDisk(ukiB, nextDisk); err != nil {
		return []string{err.Error()}
	}
	b, err := bootAgain(t, e, sc, first, img, "boot2", nextDisk)
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the second boot", bootedAndChecked, []string{
		`E2E-CHECK: persistent-root="action": *"unlocked"`,
		`E2E-CHECK: root=/dev/mapper/cvmboot-root ext4\s+rw`, `E2E-CHECK: persisted=written at boot `,
		`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`,
		`E2E-CHECK: enroll=exit 0 enrollment request for UKI /run/next/NEXT.EFI \(sha256 [0-9a-f]{64}\) written to /`,
		`E2E-CHECK: luks=keyslot 0:luks2 token 0:systemd-tpm2\s*$`, `E2E-CHECK: keys=\s*$`, `E2E-CHECK: DONE`,
	}, sc.reject)
	if len(problems) > 0 {
		return problems
	}
	t.Logf("second boot: %s", firstMatch(b.Serial, "E2E-CHECK: enroll="))
	if b, err = bootAgain(t, e, sc, first, img, "boot3-seal-B"); err != nil {
		return []string{err.Error()}
	}
	problems = checkBoot(sc, b, "the third boot (A seals B's keyslot)", bootedAndChecked, []string{
		`E2E-CHECK: keys="enrolled_keyslot": *"1" "maintenance_keyslot": *"0"\s*$`,
		`E2E-CHECK: eventlog=.* cvmboot.persistent-root .*cvmboot.persistent-root-keys `,
		`E2E-CHECK: persistent-root="action": *"unlocked"`, `E2E-CHECK: persisted=written at boot `,
		`E2E-CHECK: luks=keyslot 0:luks2 keyslot 1:luks2 token 0:systemd-tpm2 token 1:systemd-tpm2\s*$`,
		`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`, `E2E-CHECK: DONE`,
	}, append([]string{`E2E-CHECK: enroll=`}, sc.reject...))
	if len(problems) > 0 {
		return problems
	}
	t.Logf("third boot: %s", firstMatch(b.Serial, "E2E-CHECK: keys="))
	if err := harness.ReplaceESPFile(img.Disk.Path, "EFI/BOOT/BOOTX64.EFI", ukiB); err != nil {
		return []string{err.Error()}
	}
	if b, err = bootAgain(t, e, sc, first, img, "boot4-uki-B"); err != nil {
		return []string{err.Error()}
	}
	problems = checkBoot(sc, b, "the fourth boot (B opens, A's keyslot retired)", bootedAndChecked, []string{
		`E2E-CHECK: keys="maintenance_keyslot": *"1" "retired_keyslots": *"0"\s*$`,
		`E2E-CHECK: eventlog=.* cvmboot.persistent-root .*cvmboot.persistent-root-keys `,
		`E2E-CHECK: persistent-root="action": *"unlocked"`, `E2E-CHECK: persisted=written at boot `,
		`E2E-CHECK: luks=keyslot 1:luks2 token 1:systemd-tpm2\s*$`,
		`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`, `E2E-CHECK: DONE`,
	}, sc.reject)
	if len(problems) > 0 {
		return problems
	}
	t.Logf("fourth boot: %s", firstMatch(b.Serial, "E2E-CHECK: keys="))
	return persistentDracutAttacks(t, e, sc, first, img)
}

// dracutOtherUKI builds another UKI for img's dracut initrd: the same command line (the pin
// holds) and the initrd with one more file appended, so PCRs 4, 9 and 11 differ.
func dracutOtherUKI(e *env, img *harness.Image, name, content string) (string, error) {
	work := filepath.Dir(img.Disk.Path)
	initrd, other := filepath.Join(work, "dracut-initramfs.img"), filepath.Join(work, "initramfs-"+name+".img")
	if err := appendToInitramfs(initrd, other, "etc/cvmboot-e2e-uki-"+name, content); err != nil {
		return "", err
	}
	uki := filepath.Join(work, "UKI-"+name+".EFI")
	if _, err := harness.BuildUKI(context.Background(), harness.UKISpec{Kernel: e.kernel.Vmlinuz, Initrd: other, Cmdline: img.Cmdline}, uki); err != nil {
		return "", err
	}
	return uki, nil
}

// nextUKIDisk writes an ext4 image labelled cvmboot-next holding uki as NEXT.EFI and its
// SHA-256 (hex) in NEXT.SHA, as the owner hands a new UKI to the booted system.
func nextUKIDisk(uki, out string) error {
	dir, err := os.MkdirTemp("", "next-uki-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile(uki)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if err := os.WriteFile(filepath.Join(dir, "NEXT.EFI"), data, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "NEXT.SHA"), []byte(fmt.Sprintf("%x", sum)), 0o644); err != nil {
		return err
	}
	_ = os.Remove(out)
	if o, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "cvmboot-next", "-d", dir, out, "64M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %v\n%s", out, err, o)
	}
	return nil
}

// persistentDracutAttacks are the host's moves against the converted disk in the
// systemd-initrd mode, each refused by cvmboot-persistent-root.service before anything is
// activated, and the boot powered off by its FailureAction=, no shell: first another UKI (C:
// the same command line, so the pin holds, and the initrd with one more file appended, so
// PCRs 4, 9 and 11 differ); then, with that UKI still there, cipher_null written into the
// header.
func persistentDracutAttacks(t *testing.T, e *env, sc scenario, first *harness.BootResult, img *harness.Image) []string {
	uki, err := dracutOtherUKI(e, img, "C", "another UKI\n")
	if err != nil {
		return []string{err.Error()}
	}
	if err := harness.ReplaceESPFile(img.Disk.Path, "EFI/BOOT/BOOTX64.EFI", uki); err != nil {
		return []string{err.Error()}
	}
	refused := []string{`E2E-CHECK:`, `stage ok stage=persistent-root`, `persistent root unlocked`, `Could not boot`,
		`Kernel panic`, `emergency mode`, `Give root password`, `sulogin`, `Entering emergency`}
	b, err := bootAgain(t, e, sc, first, img, "boot-other-uki")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the other UKI's boot", failureAction, []string{
		`{fatal}: stage persistent-root failed: persistent root /dev/vda4 .*no token opens it: token 1 \(keyslot 1\): the TPM's PCRs do not match the token's policy: PCR 4 expected [0-9a-f]{64} found [0-9a-f]{64}; PCR 9 expected [0-9a-f]{64} found [0-9a-f]{64}; PCR 11 expected [0-9a-f]{64} found [0-9a-f]{64}\s*$`,
		`cvmboot: failure action: poweroff \(FailureAction=poweroff-force\)`,
	}, refused)
	if len(problems) > 0 {
		return problems
	}
	t.Logf("other UKI refused: %s", firstMatch(b.Serial, "cvmboot: FATAL"))
	if err := editLUKS2JSON(img.Disk.Path, "cvmboot-root", cipherNull); err != nil {
		return []string{err.Error()}
	}
	b, err = bootAgain(t, e, sc, first, img, "boot-tampered")
	if err != nil {
		return []string{err.Error()}
	}
	problems = checkBoot(sc, b, "the tampered header's boot", failureAction, []string{
		`{fatal}: stage persistent-root failed: persistent root /dev/vda4 \(PARTUUID [0-9a-f-]{36}\): LUKS2 header [0-9a-f-]{36}: segments.0.encryption is "cipher_null-ecb", cvmboot writes "aes-xts-plain64"; refusing to activate it`,
		`cvmboot: failure action: poweroff \(FailureAction=poweroff-force\)`,
	}, append([]string{`device-mapper: .*cvmboot-root`}, refused...))
	if len(problems) == 0 {
		t.Logf("tampered header refused: %s", firstMatch(b.Serial, "cvmboot: FATAL"))
	}
	return problems
}

// appendToInitramfs writes src with a second (newc) cpio archive appended that holds one
// file; the kernel unpacks both.
func appendToInitramfs(src, out, name, content string) error {
	dir, err := os.MkdirTemp("", "initramfs-extra-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("sh", "-c", `cat "$1" > "$3" && cd "$2" && find . | cpio --quiet -o -H newc -R 0:0 >> "$3"`, "sh", src, dir, out)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("append to %s: %v\n%s", src, err, o)
	}
	return nil
}

func persistentScenarios() []scenario {
	// Each converts at its first boot; after boots the disk again once the host has moved.
	refused := func(name string, after func(*testing.T, *env, *harness.BootResult, *harness.Image) []string) scenario {
		return scenario{
			name: name, root: rootTiny, config: persistentConfig, recipe: persistentDisk, cmdline: persistentCmdline,
			expect: converted, reject: []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 4 * time.Minute, after: after,
		}
	}
	return []scenario{
		persistentDracut(),
		persistentSystemdCryptsetup(),
		refused("persistent-other-uki", persistentOtherUKI),
		refused("persistent-header-tamper", persistentHeaderTamper),
		refused("persistent-ciphertext-tamper", persistentCiphertextTamper),
		{
			// The host kills the VM at a random moment of the conversion (header, copy, seal,
			// grow); the next boot, with the same TPM, ends with a working root either way.
			name: "persistent-killed-midway", root: rootTiny, config: persistentConfig, recipe: persistentDisk,
			cmdline: persistentCmdline, killOn: `persistent root: LUKS2 header written`, killWithin: 4 * time.Second,
			killBy: `stage ok stage=root `,
			reject: []string{`{fatal}`, `Kernel panic`}, outcome: killedMidway, timeLimit: 4 * time.Minute,
			after: persistentAfterKill,
		},
		{
			// The booted system writes and syncs files on the persistent root (dm-integrity
			// in journaled mode) and the host kills the VM at a random moment of it; the next
			// boot unlocks and reads every file back: no sector fails its tag (EIO), every
			// file synced under its final name holds what was written.
			name: "persistent-killed-writing", root: rootTiny, config: persistentConfig, recipe: persistentDisk,
			cmdline: persistentCmdline + ",churn:/churn", killOn: `ROOTCHECK: churn synced its first file`, killWithin: 8 * time.Second,
			killBy: `ROOTCHECK: churn wrote`,
			reject: []string{`{fatal}`, `Kernel panic`, `ROOTCHECK: FAIL`}, outcome: killedMidway, timeLimit: 4 * time.Minute,
			after: persistentAfterKillWriting,
		},
		{
			// First boot: the verified root is copied into a new encrypted partition, the key
			// sealed to swtpm's PCRs 2, 4, 9, 11 and 12, and the copy booted read-write: a
			// marker written.
			// Second boot of the same disk and TPM: unlocked, the marker is there; cryptsetup
			// reads a LUKS2 header with integrity and a systemd-tpm2 token.
			// Its booted system then asks for UKI B (A's command line with one more word,
			// on the ESP) as `cvmboot enroll --uki --sha256` does: the second boot, still A,
			// seals a secret for B in keyslot 1; a third boots B, which opens with keyslot 1
			// and removes keyslot 0.
			name: "persistent-first-boot", root: rootTiny, config: persistentConfig,
			recipe:  persistentDisk,
			cmdline: persistentCmdline + ",enroll:/dev/vda1=" + nextUKIOnESP, modules: enrollModules,
			image: addNextUKI,
			expect: []string{
				`ROOTCHECK: enroll request for UKI [0-9a-f]{64} on /dev/vda4: PCRs \[2 4 9 11 12\]`,
				`INSECURE: root.insecure_unvouched_tpm`,
				// The report (rootcheck prints it; cvmboot status shows its facts) says so too.
				`"warning":"INSECURE: the root's key is sealed to a TPM no TEE vouches for`,
				// Why nothing vouched: no SEV-SNP (so no SVSM), no TDX in this VM.
				`"tpm_unvouched_reason":"no TEE here vouches for a TPM: SEV-SNP absent: `,
				`stage ok stage=persistent-root .*action=converted`,
				`measured event=cvmboot.persistent-root`,
				`root mounted read-write device=/dev/mapper/cvmboot-root`,
				`persistent root's file system grown to its partition`,
				`ROOTCHECK: marker /persist-marker written`,
				`ROOTCHECK: DONE pass=\d+ fail=0`,
			},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, `overlay mounted`},
			outcome: bootedAndChecked, timeLimit: 4 * time.Minute,
			after: persistentSecondBoot,
		}}
}

// bootAgain boots the converted disk again with the first boot's TPM, in work/name, with
// the disk images in disks attached after it (raw, virtio).
func bootAgain(t *testing.T, e *env, sc scenario, first *harness.BootResult, img *harness.Image, name string, disks ...string) (*harness.BootResult, error) {
	spec := bootSpec(t, e, sc, filepath.Join(filepath.Dir(img.Disk.Path), name), img, nil)
	spec.TPMStateDir = first.TPMStateDir
	spec.ExtraArgs = slices.Clone(spec.ExtraArgs)
	for i, d := range disks {
		id := fmt.Sprintf("extra%d", i)
		spec.ExtraArgs = append(spec.ExtraArgs, "-drive", "if=none,id="+id+",format=raw,file="+d, "-device", "virtio-blk-pci,drive="+id)
	}
	return harness.Boot(context.Background(), spec)
}

// checkBoot matches a later boot's console against expect and reject.
func checkBoot(sc scenario, b *harness.BootResult, what string, o outcome, expect, reject []string) []string {
	sc.expect, sc.reject, sc.outcome = expect, reject, o
	problems := verify(sc, b, func(s string, _ bool) string { return strings.ReplaceAll(s, "{fatal}", "cvmboot: FATAL") })
	if len(problems) > 0 {
		problems = append(problems, what+" (last lines):\n"+lastLines(b.Serial, 40))
	}
	return problems
}

// persistentOtherUKI: the host boots another UKI (the same image with one more word on its
// command line, so another PCR 4, 9 and 11) on the converted disk: the TPM does not unseal,
// and the refusal names the PCRs.
func persistentOtherUKI(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-other-uki")
	uki, err := nextUKI(e, sc, img)
	if err != nil {
		return []string{err.Error()}
	}
	if err := harness.ReplaceESPFile(img.Disk.Path, "EFI/BOOT/BOOTX64.EFI", uki); err != nil {
		return []string{err.Error()}
	}
	b, err := bootAgain(t, e, sc, first, img, "boot-other-uki")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the other UKI's boot", failureAction, []string{
		`{fatal}: stage persistent-root failed: persistent root /dev/vda4 .*no token opens it: token 0 \(keyslot 0\): the TPM's PCRs do not match the token's policy: PCR 4 expected [0-9a-f]{64} found [0-9a-f]{64};.* PCR 11 expected [0-9a-f]{64} found [0-9a-f]{64}`,
	}, []string{`ROOTCHECK:`, `Kernel panic`, `stage ok stage=persistent-root`, `persistent root unlocked`})
	if len(problems) == 0 {
		t.Logf("other UKI refused: %s", firstMatch(b.Serial, "cvmboot: FATAL"))
	}
	return problems
}

// persistentHeaderTamper: the host writes cipher_null into the segment of the on-disk LUKS2
// JSON and fixes both checksums (CVE-2025-59054's move): refused before activation, naming
// the field.
func persistentHeaderTamper(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-header-tamper")
	if err := editLUKS2JSON(img.Disk.Path, "cvmboot-root", cipherNull); err != nil {
		return []string{err.Error()}
	}
	b, err := bootAgain(t, e, sc, first, img, "boot-tampered")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the tampered header's boot", failureAction, []string{
		`{fatal}: stage persistent-root failed: persistent root /dev/vda4 \(PARTUUID [0-9a-f-]{36}\): LUKS2 header [0-9a-f-]{36}: segments.0.encryption is "cipher_null-ecb", cvmboot writes "aes-xts-plain64"; refusing to activate it`,
	}, []string{`ROOTCHECK:`, `Kernel panic`, `stage ok stage=persistent-root`, `device-mapper: .*cvmboot-root`})
	if len(problems) == 0 {
		t.Logf("tampered header refused: %s", firstMatch(b.Serial, "cvmboot: FATAL"))
	}
	return problems
}

// cipherNull puts cipher_null into the segment of a LUKS2 JSON text.
func cipherNull(text string) (string, error) {
	i := strings.Index(text, `"segments"`)
	j := -1
	if i >= 0 {
		j = strings.Index(text[i:], `"encryption":"aes-xts-plain64"`)
	}
	if j < 0 {
		return "", fmt.Errorf("no segment encryption in %s", text)
	}
	return text[:i+j] + `"encryption":"cipher_null-ecb"` + text[i+j+len(`"encryption":"aes-xts-plain64"`):], nil
}

// persistentCiphertextTamper: the host overwrites the start of the encrypted data: the
// unlock succeeds, the reads fail integrity (EIO), nothing boots.
func persistentCiphertextTamper(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-ciphertext-tamper")
	start, err := partitionStart(img.Disk.Path, "cvmboot-root")
	if err != nil {
		return []string{err.Error()}
	}
	f, err := os.OpenFile(img.Disk.Path, os.O_RDWR, 0)
	if err != nil {
		return []string{err.Error()}
	}
	junk := make([]byte, 8<<20)
	for i := range junk {
		junk[i] = byte(i*131 + 7)
	}
	_, err = f.WriteAt(junk, start+16<<20+4096) // past the LUKS2 metadata and dm-integrity's superblock
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return []string{err.Error()}
	}
	b, err := bootAgain(t, e, sc, first, img, "boot-ciphertext")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the tampered ciphertext's boot", failureAction, []string{
		`stage ok stage=persistent-root .*action=unlocked`,
		`device-mapper: (integrity|crypt): .*(Error on journal commit|Checksum failed|INTEGRITY AEAD ERROR)`,
		`{fatal}: stage root failed: .*input/output error`,
	}, []string{`ROOTCHECK:`, `Kernel panic`})
	if len(problems) == 0 {
		t.Logf("tampered ciphertext: %s", firstMatch(b.Serial, "cvmboot: FATAL"))
	}
	return problems
}

// persistentAfterKill boots the disk of a killed conversion again with its TPM.
func persistentAfterKill(t *testing.T, e *env, killed *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-killed-midway")
	var got []string
	for _, l := range strings.Split(killed.Serial, "\n") {
		if strings.Contains(l, "persistent root") || strings.Contains(l, "stage=persistent-root") {
			got = append(got, strings.TrimSpace(l))
		}
	}
	t.Logf("killed boot got to: %q", got)
	b, err := bootAgain(t, e, sc, killed, img, "boot-after-kill")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the boot after the kill", bootedAndChecked, []string{
		`stage ok stage=persistent-root .*action=(converted|unlocked)`,
		`root mounted read-write device=/dev/mapper/cvmboot-root`,
		`ROOTCHECK: marker /persist-marker (written|present)`,
		`ROOTCHECK: DONE pass=\d+ fail=0`,
	}, []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`})
	if len(problems) == 0 {
		t.Logf("after the kill: %s", firstMatch(b.Serial, "stage ok stage=persistent-root"))
	}
	return problems
}

// persistentAfterKillWriting boots the disk whose system was killed while writing: it
// unlocks, and rootcheck reads back what was written (at least one whole file).
func persistentAfterKillWriting(t *testing.T, e *env, killed *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-killed-writing")
	t.Logf("killed after: %q", firstMatch(killed.Serial, "ROOTCHECK: churn synced"))
	b, err := bootAgain(t, e, sc, killed, img, "boot-after-kill")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, b, "the boot after the kill", bootedAndChecked, []string{
		`stage ok stage=persistent-root .*action=unlocked`,
		`ROOTCHECK: marker /persist-marker present`,
		`ROOTCHECK: churn read back [1-9]\d* files, [01] cut short`,
		`ROOTCHECK: churn wrote [1-9]\d* files`,
		`ROOTCHECK: DONE pass=\d+ fail=0`,
	}, []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, `(?i)integrity.*(checksum|error)`, `I/O error`, `EXT4-fs error`})
	if len(problems) == 0 {
		t.Logf("after the kill: %s", firstMatch(b.Serial, "ROOTCHECK: churn read back"))
	}
	return problems
}

func firstMatch(serial, substr string) string {
	for _, l := range strings.Split(serial, "\n") {
		if strings.Contains(l, substr) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// partitionStart is the byte offset of the GPT partition named label.
func partitionStart(diskPath, label string) (int64, error) {
	start, _, err := partitionRange(diskPath, label)
	return start, err
}

// partitionRange is the byte offset and size of the GPT partition named label.
func partitionRange(diskPath, label string) (start, size int64, err error) {
	f, err := os.Open(diskPath)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	tab, err := disk.ReadTable(f, 512, st.Size())
	if err != nil {
		return 0, 0, err
	}
	for _, e := range tab.Entries {
		if e.Name == label {
			return int64(e.FirstLBA) * 512, int64(e.LastLBA-e.FirstLBA+1) * 512, nil
		}
	}
	return 0, 0, fmt.Errorf("%s has no partition named %q", diskPath, label)
}

// editLUKS2JSON rewrites the JSON text of both LUKS2 header copies (16 KiB each) of the
// partition named label and recomputes their checksums, as anyone can.
func editLUKS2JSON(diskPath, label string, edit func(string) (string, error)) error {
	start, err := partitionStart(diskPath, label)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(diskPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const hdrSize, binSize, csumOff = 16 << 10, 4096, 0x1C0
	for _, off := range []int64{start, start + hdrSize} {
		hdr := make([]byte, hdrSize)
		if _, err := f.ReadAt(hdr, off); err != nil {
			return err
		}
		area := hdr[binSize:]
		text := string(area[:bytes.IndexByte(area, 0)])
		edited, err := edit(text)
		if err != nil {
			return err
		}
		if len(edited) >= len(area) {
			return fmt.Errorf("edited JSON does not fit the area")
		}
		clear(area)
		copy(area, edited)
		clear(hdr[csumOff : csumOff+64])
		sum := sha256.Sum256(hdr)
		copy(hdr[csumOff:], sum[:])
		if _, err := f.WriteAt(hdr, off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// persistentSecondBoot boots the disk the first boot converted again, with its TPM.
func persistentSecondBoot(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("persistent-first-boot")
	next, err := bootAgain(t, e, sc, first, img, "boot2")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, next, "the second boot", bootedAndChecked, []string{
		`stage ok stage=persistent-root .*action=unlocked .*keyslot=0`,
		`root mounted read-write device=/dev/mapper/cvmboot-root`,
		`persistent root: a secret sealed for another UKI, from the enrollment request`,
		`measured event=cvmboot.persistent-root-keys`,
		`stage ok stage=root .*enrolled_keyslot=1`,
		`ROOTCHECK: marker /persist-marker present: written at boot`,
		`ROOTCHECK: DONE pass=\d+ fail=0`,
	}, []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, `action=converted`, `file system grown`, `retired_keyslots`})
	if len(problems) > 0 {
		return problems
	}
	t.Logf("second boot: %s in %.1fs", next.Reason, next.Duration.Seconds())
	dump, err := luksDumpPartition(img.Disk.Path, "cvmboot-root")
	if err != nil {
		return []string{err.Error()}
	}
	t.Logf("cryptsetup luksDump of the persistent root:\n%s", dump)
	for _, want := range []string{"Version:       \t2", "Subsystem:     \tcvmboot-root", "cipher: aes-xts-plain64",
		"integrity: hmac(sha256)", "0: systemd-tpm2", "1: systemd-tpm2", "tpm2-hash-pcrs:   2+4+9+11+12", "Keyslot:    0", "Keyslot:    1"} {
		if !strings.Contains(dump, want) {
			problems = append(problems, fmt.Sprintf("luksDump of the persistent root lacks %q", want))
		}
	}
	if len(problems) > 0 {
		return problems
	}
	return persistentUpdateBoot(t, e, sc, first, img)
}

// luksDumpPartition runs cryptsetup luksDump on a copy of the LUKS2 metadata of the GPT
// partition named label (the first 16 MiB, the whole header with its keyslots).
func luksDumpPartition(diskPath, label string) (string, error) {
	start, err := partitionStart(diskPath, label)
	if err != nil {
		return "", err
	}
	f, err := os.Open(diskPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	out := filepath.Join(filepath.Dir(diskPath), label+"-header.img")
	w, err := os.Create(out)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(w, io.NewSectionReader(f, start, 16<<20))
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	b, err := exec.Command("cryptsetup", "luksDump", out).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cryptsetup luksDump: %v\n%s", err, b)
	}
	return string(b), nil
}

// nextUKIOnESP is where persistent-first-boot puts UKI B on the ESP (vfat: the booted
// tiny root mounts it with the modules below).
const nextUKIOnESP = "/EFI/BOOT/NEXT.EFI"

var enrollModules = append(slices.Clone(harness.DefaultModules), "vfat", "nls_cp437", "nls_ascii")

// nextUKI builds UKI B for img: the same kernel and config, A's command line with one more
// word, so PCRs 4, 9 and 11 differ.
func nextUKI(e *env, sc scenario, img *harness.Image) (string, error) {
	work := filepath.Join(filepath.Dir(img.Disk.Path), "next-uki")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	cmdline := img.Cmdline + " cvmboot.log=info"
	cfgPath := filepath.Join(work, "config.yaml")
	initrd, uki := filepath.Join(work, "initramfs.img"), filepath.Join(work, "BOOTX64.EFI")
	if err := os.WriteFile(cfgPath, []byte(sc.config), 0o644); err != nil {
		return "", err
	}
	mods := sc.modules
	if mods == nil {
		mods = harness.DefaultModules
	}
	out, err := exec.Command(e.tools.Cvmboot, "initramfs", "--kernel-modules", e.kernel.ModulesDir, "--modules", strings.Join(mods, ","),
		"--config", cfgPath, "-o", initrd, "--cmdline", cmdline).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cvmboot initramfs: %v\n%s", err, out)
	}
	if _, err := harness.BuildUKI(context.Background(), harness.UKISpec{Kernel: e.kernel.Vmlinuz, Initrd: initrd, Cmdline: cmdline}, uki); err != nil {
		return "", err
	}
	return uki, nil
}

// addNextUKI puts UKI B on the ESP before the first boot, with its SHA-256 (the owner's
// word, which rootcheck passes on as `cvmboot enroll --sha256`) in NEXT.SHA.
func addNextUKI(img *harness.Image) error {
	uki, err := nextUKI(sharedEnv, scenarioNamed("persistent-first-boot"), img)
	if err != nil {
		return err
	}
	if err := harness.AddESPFile(img.Disk.Path, nextUKIOnESP, uki); err != nil {
		return err
	}
	sum, err := fileSHA256(uki)
	if err != nil {
		return err
	}
	shaFile := uki + ".sha"
	if err := os.WriteFile(shaFile, []byte(sum+"\n"), 0o644); err != nil {
		return err
	}
	return harness.AddESPFile(img.Disk.Path, strings.TrimSuffix(nextUKIOnESP, ".EFI")+".SHA", shaFile)
}

func fileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	d := sha256.Sum256(b)
	return fmt.Sprintf("%x", d), nil
}

// persistentUpdateBoot boots UKI B on the machine whose second boot enrolled it: it opens
// with keyslot 1, keyslot 0 is removed.
func persistentUpdateBoot(t *testing.T, e *env, sc scenario, first *harness.BootResult, img *harness.Image) []string {
	next := filepath.Join(filepath.Dir(img.Disk.Path), "next-uki", "BOOTX64.EFI")
	if err := harness.ReplaceESPFile(img.Disk.Path, "EFI/BOOT/BOOTX64.EFI", next); err != nil {
		return []string{err.Error()}
	}
	third, err := bootAgain(t, e, sc, first, img, "boot3-next-uki")
	if err != nil {
		return []string{err.Error()}
	}
	problems := checkBoot(sc, third, "the third boot (B)", bootedAndChecked, []string{
		`cvmboot.log=info`,
		`stage ok stage=persistent-root .*action=unlocked .*keyslot=1`,
		`persistent root: keyslot of an older UKI removed, a newer one opened the root`,
		`measured event=cvmboot.persistent-root-keys`,
		`stage ok stage=root .*retired_keyslots=0`,
		`ROOTCHECK: marker /persist-marker present`,
		`ROOTCHECK: DONE pass=\d+ fail=0`,
	}, []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`})
	if len(problems) > 0 {
		return problems
	}
	t.Logf("UKI B opened the root with the keyslot enrolled for it: %s", firstMatch(third.Serial, "stage ok stage=root"))
	dump, err := luksDumpPartition(img.Disk.Path, "cvmboot-root")
	if err != nil {
		return []string{err.Error()}
	}
	t.Logf("cryptsetup luksDump after the update:\n%s", dump)
	if !strings.Contains(dump, "  1: luks2") || strings.Contains(dump, "  0: luks2") || strings.Count(dump, "systemd-tpm2") != 1 {
		problems = append(problems, "luksDump after the update: want keyslot 1 alone, with one systemd-tpm2 token")
	}
	return problems
}
