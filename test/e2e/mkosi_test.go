package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The mkosi example (configs/mkosi) built by mkosi and booted: Debian's mkosi 25.3 (trixie),
// chrooted in a debootstrapped tree in the cache, builds the Debian bookworm image — ESP with
// the UKI (roothash= on its command line), the dm-verity root and its hash partition — with
// cvmboot's units in the initrd image of mkosi.images/initrd. The host grows the disk, as a
// cloud disk is larger than its image, and the boot must reach multi-user with the verity
// root, the encrypted storage on the free space and every cvmboot step ok.

// mkosiChecked: the image's own check unit (added with --extra-tree: the root is verity, the
// harness cannot add it afterwards) printed its facts and powered off; E2E-CHECK: DONE is
// among the scenario's expectations.
const mkosiChecked outcome = "mkosi-image-checked"

// mkosiFreeSpace is what the host adds at the end of the image for cvmboot's storage.
const mkosiFreeSpace = 1536 * harness.MiB

// mkosiCheckScript is dracutCheckScript's checks for an image without initdata, plus the
// verity root's device and table, the image's release and the evidence daemon's socket.
const mkosiCheckScript = harness.CheckPrelude + `say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
table=$(dmsetup table root 2>&1)
hash=$(sed -n 's/.*roothash=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
say "verity-root=$(blkid -o value -s TYPE /dev/mapper/root 2>&1) $(echo "$table" | awk '{print $3, $11}') $([ "$(echo "$table" | awk '{print $12}')" = "$hash" ] && echo roothash-matches || echo "roothash-differs: $table")"
say "verity-devices=$(lsblk -s -n -r -o NAME,TYPE /dev/mapper/root | tr '\n' ' ')"
say "cmdline=$(cat /proc/cmdline)"
say "os=$(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), $(systemctl --version | head -1)"
say "write=$(touch /cvmboot-e2e-write 2>&1 && echo ok)"
say "dm-units=$(systemctl is-active dev-mapper-root.device dev-mapper-cvmboot\\x2dstorage.device | tr '\n' ' ')"
say "storage=$(findmnt -n -o SOURCE,FSTYPE /run/kata-containers/image 2>&1)"
say "bind=$(findmnt -n -o SOURCE,FSTYPE /var/lib/containers 2>&1)"
say "storage-stack=$(lsblk -s -n -r -o NAME,TYPE /dev/mapper/cvmboot-storage | tr '\n' ' ')"
say "analyze=$(systemd-analyze time 2>&1 | head -1)"
say "journal=$(journalctl -b SYSLOG_IDENTIFIER=cvmboot -o export --no-pager | grep -a '^CVMBOOT_STAGE=' | sort -u | tr '\n' ' ')"
cvmboot status > /tmp/status 2>&1
say "cvmboot-status=exit $? $(awk '$2=="ok"{n++} END{print n+0}' /tmp/status) ok, $(awk '$2=="failed"{n++} END{print n+0}' /tmp/status) failed"
sed 's/^/E2E-CHECK: status: /' /tmp/status
say "evidence=$(ls /run/cvmboot/evidence 2>&1 | tr '\n' ' ')"
say "outcome=$(head -1 /tmp/status)"
say "eventlog=$(grep -o '"type":"cvmboot[.][a-z-]*"' /run/cvmboot/eventlog | cut -d'"' -f4 | tr '\n' ' ')"
say "serve=$(systemctl is-active cvmboot-serve.socket 2>&1)"
say "fill=$(dd if=/dev/zero of=/cvmboot-e2e-fill bs=1M 2>&1 | grep -o 'No space left on device' | head -1)"
say "after-fill=$(systemctl is-system-running 2>&1)"
rm -f /cvmboot-e2e-fill
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

func mkosiScenarios() []scenario {
	noShell := []string{`Kernel panic`, `emergency mode`, `Give root password`, `sulogin`, `Entering emergency`}
	return []scenario{{
		name: "mkosi-debian", root: rootTiny,
		build: buildMkosi,
		expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
			`E2E-CHECK: root=overlay overlay rw,.*upperdir=/run/cvmboot/overlay/upper`,
			`E2E-CHECK: verity-root=ext4 verity sha256 roothash-matches`,
			`E2E-CHECK: verity-devices=root crypt vda\d part vda disk vda\d part vda disk`,
			`E2E-CHECK: cmdline=roothash=[0-9a-f]{64} root=/dev/mapper/root ro `,
			`E2E-CHECK: os=Debian GNU/Linux 12 \(bookworm\)`, `E2E-CHECK: write=ok`,
			`E2E-CHECK: dm-units=active active`, `E2E-CHECK: storage=/dev/mapper/cvmboot-storage ext4`,
			`E2E-CHECK: bind=/dev/mapper/cvmboot-storage ext4`,
			`E2E-CHECK: storage-stack=cvmboot-storage crypt cvmboot-storage_dif crypt vda\d part vda disk`,
			`E2E-CHECK: analyze=Startup finished in .* \(kernel\) \+ .* \(initrd\) \+ .* \(userspace\)`,
			`E2E-CHECK: journal=.*CVMBOOT_STAGE=attest.*CVMBOOT_STAGE=binds.*CVMBOOT_STAGE=evidence.*CVMBOOT_STAGE=modules.*CVMBOOT_STAGE=overlay.*CVMBOOT_STAGE=root.*CVMBOOT_STAGE=storage.*CVMBOOT_STAGE=verity`,
			`E2E-CHECK: cvmboot-status=exit 0 8 ok, 0 failed`, // modules attest verity root storage overlay binds evidence; initdata, persistent-root skipped
			`E2E-CHECK: evidence=.*tpm-quote`,
			`E2E-CHECK: outcome=cvmboot \S+ \(systemd-initrd mode\), boot ok`,
			`E2E-CHECK: eventlog=cvmboot.phase cvmboot.config cvmboot.cmdline .*cvmboot.verity cvmboot.storage cvmboot.overlay cvmboot.phase `,
			`E2E-CHECK: serve=active`,
			`E2E-CHECK: fill=No space left on device`, `E2E-CHECK: after-fill=running`, `E2E-CHECK: DONE`},
		reject:    append([]string{`{fatal}`}, noShell...),
		outcome:   mkosiChecked,
		timeLimit: 5 * time.Minute,
	}}
}

// buildMkosi builds configs/mkosi with mkosi (cached by its inputs: the configuration, the
// binary, the units, the check unit) and grows a copy of the disk by mkosiFreeSpace.
func buildMkosi(t *testing.T, e *env, _, work string) (*harness.Image, error) {
	ctx := context.Background()
	repo, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	extra := filepath.Join(work, "extra")
	if err := os.MkdirAll(filepath.Join(extra, "etc", "systemd", "system"), 0o755); err != nil {
		return nil, err
	}
	if err := harness.InstallCheckUnit(extra, mkosiCheckScript); err != nil {
		return nil, err
	}
	// The login prompt on the serial console would cut into the check's lines.
	if err := os.Symlink("/dev/null", filepath.Join(extra, "etc", "systemd", "system", "serial-getty@ttyS0.service")); err != nil {
		return nil, err
	}
	start := time.Now()
	img, err := e.cache.BuildMkosi(ctx, harness.MkosiSpec{Repo: repo, Config: "configs/mkosi",
		Inputs: []string{"bin/cvmboot", "systemd"}, ExtraTree: extra}, harness.Logf(t.Logf))
	if err != nil {
		return nil, err
	}
	if img.Cached {
		t.Logf("mkosi %s: image cached (built in %s when built), %s", img.MkosiVersion, img.BuildTime.Round(time.Second), filepath.Dir(img.Disk))
	} else {
		t.Logf("mkosi %s: image built in %s (tools and build: %s), %s", img.MkosiVersion, img.BuildTime.Round(time.Second),
			time.Since(start).Round(time.Second), filepath.Dir(img.Disk))
	}
	uki, _ := os.Stat(img.UKI)
	disk := filepath.Join(work, "disk.raw")
	size, err := harness.GrowDisk(ctx, img.Disk, disk, mkosiFreeSpace)
	if err != nil {
		return nil, err
	}
	var ukiBytes int64
	if uki != nil {
		ukiBytes = uki.Size()
	}
	t.Logf("mkosi image: UKI %d bytes (initrd image %d bytes), command line %q; disk grown to %d MiB (%d MiB free for the storage)",
		ukiBytes, img.InitrdBytes, img.Cmdline, size/harness.MiB, int64(mkosiFreeSpace)/harness.MiB)
	if img.RootHash == "" {
		return nil, fmt.Errorf("mkosi image without a root hash")
	}
	return &harness.Image{Disk: &harness.DiskImage{Path: disk, Size: size, RootHash: img.RootHash}, UKI: img.UKI,
		RootHash: img.RootHash, Cmdline: img.Cmdline}, nil
}
