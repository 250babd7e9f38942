package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// verityConfig keeps the secure defaults for the root: verity required, panic on corruption.
var verityConfig = cfg(tpm, noStorage, noOverlay)

// withVerity asks for a root formatted by veritysetup (not by cvmboot), with the partition
// UUIDs derived from the root hash unless set.
func withVerity(v harness.VeritySpec) func(*harness.DiskRecipe) {
	return func(r *harness.DiskRecipe) { r.Verity = &v }
}

// flipAt returns a Tamper hook flipping one byte of the data or the hash image.
func flipAt(hashImage bool, off int64) func(context.Context, string, string) error {
	return func(_ context.Context, data, hash string) error {
		if hashImage {
			return harness.FlipByte(hash, off)
		}
		return harness.FlipByte(data, off)
	}
}

// flipFileBlock flips the first byte of a file's first block inside the ext4 image: a block the
// boot reads only when it executes that file.
func flipFileBlock(path string) func(context.Context, string, string) error {
	return func(ctx context.Context, data, _ string) error {
		out, err := exec.CommandContext(ctx, "debugfs", "-R", "bmap "+path+" 0", data).Output()
		if err != nil {
			return fmt.Errorf("debugfs bmap %s: %w", path, err)
		}
		blk, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			return fmt.Errorf("debugfs bmap %s: %q", path, out)
		}
		bs, err := exec.CommandContext(ctx, "dumpe2fs", "-h", data).Output()
		if err != nil {
			return err
		}
		size := int64(1024)
		for _, l := range strings.Split(string(bs), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && k == "Block size" {
				size, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			}
		}
		return harness.FlipByte(data, blk*size+100)
	}
}

// otherBuild replaces the hash partition with the hash tree of another build: the same tree
// with one file changed, formatted again (new salt, new UUID).
func otherBuild(ctx context.Context, data, hash string) error {
	other := data + ".other"
	b, err := os.ReadFile(data)
	if err != nil {
		return err
	}
	if err := os.WriteFile(other, b, 0o644); err != nil {
		return err
	}
	defer os.Remove(other)
	if err := flipFileBlock("/sbin/init")(ctx, other, ""); err != nil {
		return err
	}
	_, err = harness.VeritysetupFormat(ctx, other, hash)
	return err
}

func verityScenarios() []scenario {
	refuse := []string{`ROOTCHECK:`, `Kernel panic`, `stage ok stage=verity`, `stage ok stage=root`}
	return []scenario{
		scenario{
			// A root formatted by veritysetup boots with only roothash= on the command line: the
			// partitions are found by the PARTUUIDs derived from the root hash.
			name: "verity-partuuid", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{}),
			cmdline: "roothash={roothash} rootcheck.expect=rootfs:ext4",
			expect: []string{`stage ok stage=root .*device=/dev/mapper/root`, `stage ok stage=verity .*root_data_source="?partuuid`,
				`root_status=V`, `measured event=cvmboot.verity`, `ROOTCHECK: DONE pass=\d+ fail=0`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
		},
		scenario{
			// Explicit devices: PARTUUIDs that are not derived from the hash, named on the command line.
			name: "verity-explicit-devices", root: rootTiny, config: verityConfig,
			recipe: withVerity(harness.VeritySpec{DataPartUUID: "5d3a0c6e-7f1b-4c2d-9e8f-0a1b2c3d4e5f", HashPartUUID: "6e4b1d7f-8a2c-4d3e-8f90-1b2c3d4e5f60"}),
			cmdline: "roothash={roothash} systemd.verity_root_data=PARTUUID=5d3a0c6e-7f1b-4c2d-9e8f-0a1b2c3d4e5f " +
				"systemd.verity_root_hash=PARTLABEL=root-verity",
			expect: []string{`stage ok stage=root .*device=/dev/mapper/root`, `root_data_source="command line PARTUUID=5d3a0c6e`,
				`root_hash_source="command line PARTLABEL=root-verity"`, `ROOTCHECK: DONE pass=\d+ fail=0`},
			reject:  []string{`ROOTCHECK: FAIL`, `{fatal}`, `Kernel panic`},
			outcome: bootedAndChecked, timeLimit: 3 * time.Minute,
		},
		scenario{
			// One byte of data block 0 (the ext4 superblock, read at mount) flipped on the host.
			name: "verity-tamper-data", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{Tamper: flipAt(false, 1024+0x78)}),
			cmdline: "roothash={roothash}",
			expect:  []string{`{fatal}: stage verity failed: .*/dev/vda2.*does not match.*expects [0-9a-f]{64}`},
			reject:  refuse, outcome: failureAction, timeLimit: 3 * time.Minute,
		},
		scenario{
			// One byte of /sbin/init's first block flipped: nothing reads it before the kernel
			// executes it after the switch, where dm-verity's panic policy stops the machine.
			name: "verity-tamper-init", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{Tamper: flipFileBlock("/sbin/init")}),
			cmdline: "roothash={roothash} panic=-1",
			expect:  []string{`stage ok stage=root .*device=/dev/mapper/root`, `device-mapper: verity: .*data block \d+ is corrupted`},
			reject:  []string{`ROOTCHECK:`}, outcome: kernelPanic, timeLimit: 3 * time.Minute,
		},
		scenario{
			// One byte of the hash tree's top block flipped.
			name: "verity-tamper-hash", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{Tamper: flipAt(true, 4096+17)}),
			cmdline: "roothash={roothash}",
			expect:  []string{`{fatal}: stage verity failed: .*/dev/vda3.*does not match`},
			reject:  refuse, outcome: failureAction, timeLimit: 3 * time.Minute,
		},
		scenario{
			// One byte of the verity superblock's salt flipped.
			name: "verity-tamper-superblock", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{Tamper: flipAt(true, 88)}),
			cmdline: "roothash={roothash}",
			expect:  []string{`{fatal}: stage verity failed: .*/dev/vda3`},
			reject:  refuse, outcome: failureAction, timeLimit: 3 * time.Minute,
		},
		scenario{
			// roothash= differing in one nibble: the derived PARTUUIDs find nothing, the
			// partition types find the pair, and the digests refuse it.
			name: "verity-roothash-nibble", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{}),
			cmdline: "roothash={roothashflip}",
			// The only pair of the boot disk is rejected after the first scan, not after
			// devices.timeout; the FATAL line is short, the rejected pair follows.
			expect: []string{`{fatal}: stage verity failed: verity root: no partition pair matches roothash=[0-9a-f]{64}: no data PARTUUID=\S+; hash PARTUUID=\S+ is /dev/vda3; every pair of the volume's GPT types on boot disk vda was checked \(1 rejected\)`,
				`\] cvmboot: rejected vda2 \+ vda3: .*does not match`, `\] cvmboot: seen vda2 `},
			reject: refuse, outcome: failureAction, timeLimit: 3 * time.Minute,
		},
		scenario{
			// The hash partition of another build swapped in.
			name: "verity-swapped-hash", root: rootTiny, config: verityConfig,
			recipe:  withVerity(harness.VeritySpec{Tamper: otherBuild}),
			cmdline: "roothash={roothash}",
			expect:  []string{`{fatal}: stage verity failed: .*/dev/vda3.*does not match.*found .*salt`},
			reject:  refuse, outcome: failureAction, timeLimit: 3 * time.Minute,
		},
	}
}

func debianVerityScenarios() []scenario {
	return []scenario{{
		// usrhash= with a plain root= and verity.required false: the running system's /usr must
		// be the verified volume, not the root partition's own /usr (which the host can write),
		// also with the overlay over the root. The root keeps a decoy /usr saying so.
		name: "debian-usrhash", root: rootDebian,
		config:  debianConfig,
		recipe:  withUsrFromRoot,
		cmdline: "root=PARTUUID={rootpartuuid} usrhash={usrhash}",
		expect: []string{`stage ok stage=usr .*device=/dev/mapper/usr`, `E2E-CHECK: system-state=running`,
			`E2E-CHECK: failed-units=none`, `E2E-CHECK: usr=/dev/mapper/usr\s+ext4\s+ro,`, `E2E-CHECK: usr-source=usr-verity`,
			`E2E-CHECK: usr-write=.*Read-only file system`, `E2E-CHECK: root=overlay overlay rw`, `E2E-CHECK: DONE`},
		reject:  []string{`{fatal}`, `Kernel panic`, `usr-source=root-partition`},
		outcome: bootedAndChecked, timeLimit: 5 * time.Minute,
	}, {
		// The host flips a byte of the /usr file system's first block: refused before the
		// device exists, the usr data partition named.
		name: "usrhash-tamper-data", root: rootTiny, config: plainConfig,
		recipe: func(r *harness.DiskRecipe) {
			r.Usr = &harness.UsrSpec{Tree: r.Root.Tree, Tamper: flipAt(false, 1024+0x78)}
		},
		cmdline: "root=PARTUUID={rootpartuuid} usrhash={usrhash}",
		expect:  []string{`{fatal}: stage verity failed: .*/dev/vda3.*does not match.*expects [0-9a-f]{64}`},
		reject:  []string{`ROOTCHECK:`, `Kernel panic`, `stage ok stage=root`}, outcome: failureAction, timeLimit: 3 * time.Minute,
	}, {
		// The Debian root on dm-verity with the tmpfs overlay: systemd sees the device cvmboot
		// created as ready (udev database entry) and starts with nothing failed.
		name: "debian-verity", root: rootDebian,
		config:  cfg(tpm, noStorage, overlay256),
		recipe:  withVerity(harness.VeritySpec{}),
		cmdline: "roothash={roothash}",
		expect: []string{`stage ok stage=root .*device=/dev/mapper/root`, `E2E-CHECK: system-state=running`,
			`E2E-CHECK: failed-units=none`, `E2E-CHECK: root=overlay overlay rw`, `E2E-CHECK: write=ok`,
			`E2E-CHECK: dm-root=active`},
		reject:  []string{`{fatal}`, `Kernel panic`},
		outcome: bootedAndChecked, timeLimit: 5 * time.Minute,
	}}
}

// withUsrFromRoot copies the Debian root's /usr onto a verity pair of its own, keeps the
// root's own /usr as a working decoy, marks each with where it is, and checks which /usr the
// booted system sees: a boot that hid the verified /usr would run on the decoy.
func withUsrFromRoot(r *harness.DiskRecipe) {
	must := func(err error) {
		if err != nil {
			panic(fmt.Sprintf("debian-usrhash: preparing the Debian root: %v", err))
		}
	}
	tree := r.Root.Tree
	usr := tree + "-usr"
	must(os.RemoveAll(usr))
	must(harness.InstallCheckUnit(tree, harness.CheckPrelude+usrCheckScript))
	if out, err := exec.Command("cp", "-a", filepath.Join(tree, "usr"), usr).CombinedOutput(); err != nil {
		must(fmt.Errorf("cp -a: %v: %s", err, out))
	}
	must(os.WriteFile(filepath.Join(usr, "lib/cvmboot-e2e-usr-source"), []byte("usr-verity\n"), 0o644))
	must(os.WriteFile(filepath.Join(tree, "usr/lib/cvmboot-e2e-usr-source"), []byte("root-partition\n"), 0o644))
	r.Usr = &harness.UsrSpec{Tree: usr}
}

// usrCheckScript follows harness.CheckPrelude: which /usr the system runs on.
const usrCheckScript = `say "usr=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS /usr 2>&1)"
say "usr-source=$(cat /usr/lib/cvmboot-e2e-usr-source 2>&1)"
say "usr-write=$(touch /usr/cvmboot-e2e-write 2>&1 && echo written)"
say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`
