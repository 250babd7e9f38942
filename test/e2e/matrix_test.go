package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The attack and fault matrix (SECURITY.md lists every row with its scenario): what a hostile
// host can do to the disk and the platform, and what the boot must do about it. Each row is a
// tiny-root boot; the refusals end in the failure action before the root's init runs.

// matrixStorageConfig: a plain root, storage on with its secure defaults (min_size 1 GiB,
// on_no_space fail).
var matrixStorageConfig = []func(*config.Config){noVerity, tpm, noOverlay}

// attackerUUID and attackerPassphrase are the host's: a LUKS2 header it planted with a
// keyslot it can open.
const (
	attackerUUID       = "0badc0de-a77a-4c4e-8000-00000000a77a"
	attackerPassphrase = "the host knows this passphrase"
)

func matrixScenarios() []scenario {
	refuse := func(name, config string, recipe func(*harness.DiskRecipe), image func(*harness.Image) error, expect ...string) scenario {
		return scenario{
			name: name, root: rootTiny, cmdline: "root=PARTUUID={rootpartuuid}", config: config,
			recipe: recipe, image: image, expect: expect,
			reject:  []string{`ROOTCHECK:`, `Kernel panic`, `encrypted storage ready`},
			outcome: failureAction, timeLimit: 3 * time.Minute,
		}
	}
	return []scenario{
		refuse("storage-no-space", cfg(matrixStorageConfig...), nil, nil,
			`{fatal}: stage storage failed: .*/dev/vda: largest aligned free range is \d+ bytes \(\d+ MiB\), storage\.min_size requires 1073741824 bytes \(1024 MiB\) \(storage\.on_no_space is fail`),
		scenario{
			name: "storage-no-space-tmpfs", root: rootTiny, config: cfg(append(matrixStorageConfig, func(c *config.Config) { c.Storage.OnNoSpace = config.NoSpaceTmpfs })...),
			cmdline: "root=PARTUUID={rootpartuuid} rootcheck.expect=mount:/run/kata-containers/image=tmpfs",
			expect: []string{`no room for encrypted storage on the boot disk: container storage is a tmpfs in RAM`,
				`ROOTCHECK: ok expect:mount:/run/kata-containers/image=tmpfs`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
		},
		refuse("gpt-overlap", cfg(matrixStorageConfig...), bigFree, withGPT(true, func(img *harness.Image, _ *harness.GPTHeader, e []byte) error {
			root := uint64(img.Disk.Root.Start / 512)
			return harness.PutGPTEntry(e, 2, harness.GPTEntry{TypeGUID: harness.TypeLinuxData, UniqueGUID: "0badc0de-0000-4000-8000-00000000000a",
				FirstLBA: root + 2048, LastLBA: root + 4095, Name: "decoy"})
		}), `{fatal}: stage storage failed: .*invalid GPT: entry 3 \("decoy", LBA \d+-\d+\) overlaps entry 2`),
		refuse("gpt-beyond-disk", cfg(matrixStorageConfig...), bigFree, withGPT(true, func(img *harness.Image, _ *harness.GPTHeader, e []byte) error {
			return harness.PutGPTEntry(e, 2, harness.GPTEntry{TypeGUID: harness.TypeLinuxData, UniqueGUID: "0badc0de-0000-4000-8000-00000000000b",
				FirstLBA: uint64(img.Disk.FreeStart / 512), LastLBA: uint64(img.Disk.Size/512) + 1<<20, Name: "beyond"})
		}), `{fatal}: stage storage failed: .*invalid GPT: entry 3 \("beyond", LBA \d+-\d+\) ends beyond the device's last LBA`),
		refuse("gpt-claims-larger-disk", cfg(matrixStorageConfig...), bigFree, withGPT(false, func(_ *harness.Image, h *harness.GPTHeader, _ []byte) error {
			h.AlternateLBA += 1 << 22 // 2 GiB more than there is
			return nil
		}), `{fatal}: stage storage failed: .*invalid GPT: the GPT describes a disk of \d+ sectors \(\d+ bytes\) but the device has \d+ sectors`),
		storageLabelOn("storage-label-on-root", false,
			`{fatal}: stage storage failed: disk /dev/vda: partition 2 \(PARTUUID [0-9a-f-]{36}\) carries the storage label but is in use \(held by dm-0`),
		storageLabelOn("storage-label-on-esp", true,
			`{fatal}: stage storage failed: disk /dev/vda: entry 1 .* has the storage label but is the ESP this boot was loaded from \(LoaderDevicePartUUID [0-9a-f-]{36}\)`),
		refuse("tee-required-missing", cfg(noVerity, noStorage, noOverlay), nil, nil, // the default: attest.require tee
			`{fatal}: stage attest failed: .*attest\.require is tee`),
		scenario{
			// The host kills the VM at a random moment of the storage stage of the first boot
			// (partition, header, dm-integrity format, mkfs); the next boot must come up with
			// storage, reusing or redoing whatever the first got to.
			name: "storage-killed-midway", root: rootTiny, config: cfg(matrixStorageConfig...),
			cmdline:    "root=PARTUUID={rootpartuuid} rootcheck.expect=mount:/run/kata-containers/image=ext4",
			recipe:     bigFree,
			killOn:     `stage ok stage=attest`,
			killWithin: 900 * time.Millisecond, // the stage takes about 0.9 s on this disk under TCG
			reject:     []string{`{fatal}`, `Kernel panic`},
			outcome:    killedMidway, timeLimit: 3 * time.Minute,
			after: recoverAfterKill,
		},
		scenario{
			// The host planted a partition with our label and a LUKS2 header it has a keyslot
			// for. The boot reuses the partition but destroys that header first: the volume gets
			// a new key, a new UUID and no keyslot, so the host's passphrase opens nothing.
			name: "storage-attacker-header", root: rootTiny, config: cfg(matrixStorageConfig...),
			cmdline: "root=PARTUUID={rootpartuuid} rootcheck.expect=mount:/run/kata-containers/image=ext4",
			recipe:  plantAttackerPartition,
			expect: []string{`storage partition from an earlier boot reused: its LUKS2 metadata was destroyed`,
				`encrypted storage ready .*reused=true`, `ROOTCHECK: ok expect:mount:/run/kata-containers/image=ext4`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`, attackerUUID},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
			after: checkAttackerLockedOut,
		},
	}
}

// bigFree leaves room for storage, so that only the table's defect can stop it.
func bigFree(r *harness.DiskRecipe) { r.FreeSpace = 1200 * harness.MiB }

// storageLabelOn: the host gives a partition this boot relies on the storage label and type
// (its PARTUUID stays): the verity root's data partition (verity finds it by PARTUUID) or the
// ESP the firmware booted from. The storage step must not wipe it: refused, and not one byte
// of it changed.
func storageLabelOn(name string, esp bool, expect string) scenario {
	var before [32]byte
	target := func(img *harness.Image) harness.PartitionInfo {
		if esp {
			return img.Disk.ESP
		}
		return img.Disk.Root
	}
	sum := func(img *harness.Image) ([32]byte, error) {
		f, err := os.Open(img.Disk.Path)
		if err != nil {
			return [32]byte{}, err
		}
		defer f.Close()
		p := target(img)
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, p.Start, p.Size)); err != nil {
			return [32]byte{}, err
		}
		return [32]byte(h.Sum(nil)), nil
	}
	def := config.Default().Storage
	sc := scenario{
		name: name, root: rootTiny,
		config: cfg(tpm, noOverlay, func(c *config.Config) { c.Storage.MinSize = config.MiB }),
		recipe: func(r *harness.DiskRecipe) { bigFree(r); r.Verity = &harness.VeritySpec{} },
		image: func(img *harness.Image) error {
			p := target(img)
			err := harness.EditGPT(img.Disk.Path, true, func(_ *harness.GPTHeader, e []byte) error {
				return harness.PutGPTEntry(e, p.Index-1, harness.GPTEntry{TypeGUID: def.TypeGUID.String(), UniqueGUID: p.PartUUID,
					FirstLBA: uint64(p.Start / 512), LastLBA: uint64((p.Start+p.Size)/512 - 1), Name: def.Label})
			})
			if err == nil {
				before, err = sum(img)
			}
			return err
		},
		cmdline: "roothash={roothash}",
		expect:  []string{`stage ok stage=root .*device=/dev/mapper/root`, expect},
		reject:  []string{`ROOTCHECK:`, `Kernel panic`, `encrypted storage ready`, `LUKS2 header written`},
		outcome: failureAction, timeLimit: 3 * time.Minute,
		after: func(_ *testing.T, _ *env, _ *harness.BootResult, img *harness.Image) []string {
			after, err := sum(img)
			if err != nil {
				return []string{err.Error()}
			}
			if after != before {
				return []string{fmt.Sprintf("partition %d changed in the boot: sha256 %x before, %x after", target(img).Index, before, after)}
			}
			return nil
		},
	}
	return sc
}

func withGPT(both bool, edit func(img *harness.Image, h *harness.GPTHeader, entries []byte) error) func(*harness.Image) error {
	return func(img *harness.Image) error {
		return harness.EditGPT(img.Disk.Path, both, func(h *harness.GPTHeader, e []byte) error { return edit(img, h, e) })
	}
}

// attackerHeader makes the host's LUKS2 header with cryptsetup: a pbkdf2 keyslot for
// attackerPassphrase.
func attackerHeader() (string, error) {
	dir, err := os.MkdirTemp("", "cvmboot-attacker-")
	if err != nil {
		return "", err
	}
	img, pass := filepath.Join(dir, "header.img"), filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte(attackerPassphrase), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return "", err
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		return "", err
	}
	out, err := exec.Command("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--uuid", attackerUUID,
		"--label", "cvmboot-storage", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", pass, img).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cryptsetup luksFormat: %v\n%s", err, out)
	}
	return img, nil
}

func plantAttackerPartition(r *harness.DiskRecipe) {
	hdr, err := attackerHeader()
	if err != nil {
		panic(fmt.Sprintf("storage-attacker-header: %v", err))
	}
	r.Extra = append(r.Extra, harness.ExtraPartition{Name: "cvmboot-storage", Type: harness.TypeLinuxData,
		Size: 1100 * harness.MiB, Contents: hdr})
	r.FreeSpace = 64 * harness.MiB // too little for a new partition: only the planted one fits
}

// checkAttackerLockedOut reads the planted partition's header back from the disk image after
// the boot: cryptsetup finds a header that is not the host's, with no keyslot, and the host's
// passphrase does not open it.
func checkAttackerLockedOut(t *testing.T, e *env, boot *harness.BootResult, img *harness.Image) []string {
	var part *harness.PartitionInfo
	for i := range img.Disk.Extra {
		if img.Disk.Extra[i].Name == "cvmboot-storage" {
			part = &img.Disk.Extra[i]
		}
	}
	if part == nil {
		return []string{"the image has no cvmboot-storage partition"}
	}
	src, err := os.Open(img.Disk.Path)
	if err != nil {
		return []string{err.Error()}
	}
	defer src.Close()
	hdr := filepath.Join(t.TempDir(), "header.img")
	dst, err := os.Create(hdr)
	if err != nil {
		return []string{err.Error()}
	}
	if _, err := io.Copy(dst, io.NewSectionReader(src, part.Start, 32<<20)); err != nil {
		return []string{err.Error()}
	}
	dst.Close()
	var problems []string
	dump, err := exec.Command("cryptsetup", "luksDump", hdr).CombinedOutput()
	t.Logf("cryptsetup luksDump of the planted partition after the boot:\n%s", dump)
	if err != nil {
		problems = append(problems, fmt.Sprintf("cryptsetup luksDump: %v", err))
	}
	if strings.Contains(string(dump), attackerUUID) {
		problems = append(problems, "the host's LUKS2 header survived the boot")
	}
	if m := regexp.MustCompile(`(?s)Keyslots:\n(.*?)Tokens:`).FindStringSubmatch(string(dump)); m == nil || strings.TrimSpace(m[1]) != "" {
		problems = append(problems, "the header after the boot has keyslots (or none were listed)")
	}
	pass := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(pass, []byte(attackerPassphrase), 0o600); err != nil {
		return append(problems, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cryptsetup", "open", "--test-passphrase", "--key-file", pass, hdr).CombinedOutput(); err == nil {
		problems = append(problems, "the host's passphrase opens the volume after the boot")
	} else {
		t.Logf("cryptsetup open --test-passphrase with the host's passphrase: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return problems
}

// recoverAfterKill boots the disk of a killed boot again: it must come up with storage.
func recoverAfterKill(t *testing.T, e *env, killed *harness.BootResult, img *harness.Image) []string {
	sc := scenarioNamed("storage-killed-midway")
	var got []string
	for _, l := range strings.Split(killed.Serial, "\n") {
		if strings.Contains(l, "cvmboot[1]:") && strings.Contains(l, "storage") {
			got = append(got, strings.TrimSpace(l))
		}
	}
	t.Logf("killed boot got to: %q", got)
	work := filepath.Join(filepath.Dir(img.Disk.Path), "boot2")
	next, err := harness.Boot(context.Background(), bootSpec(t, e, sc, work, img, nil))
	if err != nil {
		return []string{err.Error()}
	}
	sc.outcome = bootedAndChecked
	sc.expect = []string{`stage ok stage=storage`, `ROOTCHECK: ok expect:mount:/run/kata-containers/image=ext4`}
	sc.reject = []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`}
	problems := verify(sc, next, func(s string, _ bool) string { return strings.ReplaceAll(s, "{fatal}", "cvmboot: FATAL") })
	if len(problems) > 0 {
		problems = append(problems, "the boot after the kill (last lines):\n"+lastLines(next.Serial, 30))
	} else {
		t.Logf("boot after the kill: %s in %.1fs, storage reused=%t", next.Reason, next.Duration.Seconds(),
			strings.Contains(next.Serial, "reused=true"))
	}
	return problems
}
