package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/test/e2e/harness"
)

// The storage scenarios boot the Debian root with encrypted storage on the disk's free space
// (2 GiB): cvmboot partitions it, writes a LUKS2 header with a random key only the kernel
// holds, stacks dm-crypt over dm-integrity, makes ext4 and mounts it at
// /run/kata-containers/image with a bind at /var/lib/containers. The check script proves
// what the peers see (lsblk, cryptsetup, blkid), stresses the volume and checks it offline;
// a second boot of the same disk shows the data gone, a new key, and EIO for ciphertext the
// host changed while the guest ran. The boots use the cvmboot_testhook build, which reveals
// the key in /run/cvmboot-test so that the serial log, journal, report and disk image can be
// searched for it.

// storageConfig: encrypted storage with the defaults (hmac-sha256 integrity, ext4), the tmpfs
// overlay, and a bind into the root that only exists after the overlay.
var storageConfig = []func(*config.Config){noVerity, tpm, overlay256, func(c *config.Config) { c.Storage.Binds = []string{"/var/lib/containers"} }}

// storageCheckScript runs in the booted Debian root. The first boot (a new partition)
// stresses the volume and checks it offline; the second (the partition reused) looks for the
// first boot's marker and proves that changed ciphertext reads as EIO. The marker text is
// assembled at run time so that the script itself, on the root partition, does not hold it.
const storageCheckScript = `#!/bin/sh
exec >/dev/console 2>&1
say() { printf 'E2E-CHECK: %s\n' "$*"; }
M=/run/kata-containers/image
V=/dev/mapper/cvmboot-storage
say BEGIN
state=$(timeout 240 systemctl is-system-running --wait 2>&1)
say "system-state=$state"
failed=$(systemctl list-units --failed --plain --no-legend --no-pager 2>&1 | awk '{print $1}' | tr '\n' ' ')
say "failed-units=${failed:-none}"
if grep -q '"partition_reused": *"true"' /run/cvmboot/report.json; then boot=second; else boot=first; fi
say "boot=$boot"
say "stack=$(lsblk -s -n -r -o NAME,TYPE $V | tr '\n' ' ')"
part=$(lsblk -s -n -r -o NAME,TYPE $V | awk '$2=="part"{print $1}')
say "mount=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS $M)"
say "bind=$(findmnt -n -o FSTYPE,OPTIONS /var/lib/containers)"
say "bind-same=$([ "$(stat -c %d:%i $M)" = "$(stat -c %d:%i /var/lib/containers)" ] && echo yes || echo no)"
say "dm-units=$(systemctl is-active dev-mapper-cvmboot\\x2dstorage.device dev-mapper-cvmboot\\x2dstorage_dif.device | tr '\n' ' ')"
cryptsetup status cvmboot-storage | sed 's/^ */E2E-CHECK: status: /'
cryptsetup isLuks /dev/$part && say "isLuks=yes"
cryptsetup luksDump /dev/$part | sed -n '1,40p' | sed 's/^/E2E-CHECK: dump: /'
say "blkid=$(blkid -p -o export /dev/$part | grep -E '^(TYPE|VERSION|UUID|LABEL)=' | tr '\n' ' ')"
cvmboot status > /tmp/status 2>&1
say "cvmboot-status=exit $? $(awk '$2=="ok"{n++} END{print n+0}' /tmp/status) stages ok, $(awk '$2=="failed"||$2=="skipped"{n++} END{print n+0}' /tmp/status) failed or skipped"
say "skipped=$(awk '$2=="skipped"{print $1}' /tmp/status | tr '\n' ' ')"
say "journal-import=$(systemctl show -p Result --value cvmboot-journal-import.service) $(journalctl -b SYSLOG_IDENTIFIER=cvmboot CVMBOOT_SOURCE=initramfs -o export --no-pager | grep -ac '^CVMBOOT_STAGE=') records with CVMBOOT_STAGE"
journalctl -b SYSLOG_IDENTIFIER=cvmboot CVMBOOT_SOURCE=initramfs CVMBOOT_STAGE=storage -o verbose --no-pager | grep -E '^ +(MESSAGE|CVMBOOT_STAGE|CVMBOOT_DEVICE|CVMBOOT_LOGGED_AT)=' | head -8 | sed 's/^ */E2E-CHECK: journal: /'
key=$(cat /run/cvmboot-test/volume-key-*.hex 2>/dev/null)
say "testhook-key=$key"
say "key-in-proc-keys=$(grep -c cvmboot /proc/keys)"
say "key-in-journal=$(journalctl -b -o export 2>/dev/null | grep -aic "$key")"
say "key-in-run=$(grep -rlis "$key" /run --exclude-dir=cvmboot-test 2>/dev/null | wc -l)"
marker=$(printf 'CVMBOOT-%s-%s' PLAINTEXT MARKER)
dmesg -c >/dev/null
if [ $boot = first ]; then
  echo "written to / in the first boot" > /cvmboot-e2e-root-write
  s=$(date +%s)
  for i in 1 2 3 4; do (mkdir -p $M/tree$i && tar -C /usr -cf - share | tar -C $M/tree$i -xf -) & done
  for i in 1 2; do (head -c 157286400 /dev/urandom | tee $M/big$i | sha256sum | cut -d' ' -f1 > /tmp/big$i.sum) & done
  wait
  sync; echo 3 > /proc/sys/vm/drop_caches
  ref=$(cd /usr && find share -type f | sort | xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1)
  files=$(cd /usr && find share -type f | wc -l)
  same=0
  for i in 1 2 3 4; do
    got=$(cd $M/tree$i && find share -type f | sort | xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1)
    [ "$got" = "$ref" ] && same=$((same+1))
  done
  bigok=0
  for i in 1 2; do [ "$(sha256sum < $M/big$i | cut -d' ' -f1)" = "$(cat /tmp/big$i.sum)" ] && bigok=$((bigok+1)); done
  say "stress=$(( $(date +%s) - s ))s trees-identical=$same/4 of $files files, big-files-identical=$bigok/2, used $(df -m --output=used $M | tail -1) MiB"
  i=0; while [ $i -lt 2000 ]; do echo "$marker"; i=$((i+1)); done > $M/marker
  sync
  say "kernel-errors integrity=$(dmesg | grep -c 'INTEGRITY AEAD ERROR') io=$(dmesg | grep -ciE 'I/O error|EXT4-fs error|EXT4-fs warning|Buffer I/O')"
  dmesg | grep -E 'AEAD|I/O error|EXT4-fs (error|warning)' | head -5 | sed 's/^/E2E-CHECK: kernel: /'
  umount /var/lib/containers && umount $M && blockdev --setra 0 $V
  e2fsck -fn $V > /tmp/fsck 2>&1
  say "e2fsck=rc $? $(tail -1 /tmp/fsck)"
  say "kernel-errors-after-fsck integrity=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"
else
  say "marker=$([ -e $M/marker ] && echo present || echo absent) entries=$(ls -A $M | grep -v lost+found | wc -l)"
  say "root-write=$([ -e /cvmboot-e2e-root-write ] && echo survived || echo gone)"
  T=$M/tamper
  head -c 1048576 /dev/urandom > $T; sync; echo 3 > /proc/sys/vm/drop_caches
  blk=$(filefrag -v -b4096 $T | awk '$1=="0:"{print $4}' | tr -d '.')
  dd if=/dev/mapper/cvmboot-storage_dif bs=4096 skip=$blk count=1 iflag=direct status=none > /tmp/ct
  say "TAMPER-BLOCK $(head -c 32 /tmp/ct | od -An -tx1 | tr -d ' \n') $(sha256sum < /tmp/ct | cut -d' ' -f1) block=$blk"
  n=0
  while [ $n -lt 180 ]; do
    dd if=/dev/mapper/cvmboot-storage_dif bs=4096 skip=$blk count=1 iflag=direct status=none > /tmp/ct2
    cmp -s /tmp/ct /tmp/ct2 || break
    sleep 1; n=$((n+1))
  done
  say "tamper-seen=$([ $n -lt 180 ] && echo yes || echo no) after ${n}s"
  echo 3 > /proc/sys/vm/drop_caches
  cat $T > /dev/null 2>/tmp/err
  say "tamper-read=exit $? $(cat /tmp/err)"
  say "tamper-kernel integrity=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"
fi
if [ -e /run/cvmboot/report.json ]; then
  echo 'E2E-CHECK: REPORT BEGIN'; cat /run/cvmboot/report.json; echo; echo 'E2E-CHECK: REPORT END'
fi
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

// storageExpectFirst are the first boot's facts: the stack as lsblk and cryptsetup see it,
// the stress without an error, a clean offline check, and no key anywhere but the hook.
var storageExpectFirst = []string{
	`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`, `E2E-CHECK: boot=first`,
	`E2E-CHECK: stack=cvmboot-storage crypt cvmboot-storage_dif \w+ vda\d+ part vda disk`,
	`E2E-CHECK: mount=/dev/mapper/cvmboot-storage ext4\s+rw,nosuid,nodev`,
	`E2E-CHECK: bind=ext4\s+rw,nosuid,nodev`, `E2E-CHECK: bind-same=yes`,
	// The _dif device stays inactive for systemd, as with cryptsetup: 99-systemd.rules marks
	// CRYPT- devices without a file system SYSTEMD_READY=0.
	`E2E-CHECK: dm-units=active `,
	`E2E-CHECK: status: type:\s+LUKS2`, `E2E-CHECK: status: cipher:\s+aes-xts-plain64`,
	// cryptsetup takes the key size from a keyslot; the header has none, so it shows 0 bits.
	`E2E-CHECK: status: keysize:\s+\d+ bits`, `E2E-CHECK: status: key location:\s+keyring`,
	`E2E-CHECK: status: integrity:\s+hmac\(sha256\)`,
	`E2E-CHECK: status: integrity keysize:\s+256 bits`, `E2E-CHECK: status: sector size:\s+4096`,
	// Every step of the PID 1 sequence ran but verity and usr (this root has no roothash= or
	// usrhash=) and persistent-root (off).
	`E2E-CHECK: cvmboot-status=exit 0 9 stages ok, 4 failed or skipped`, `E2E-CHECK: skipped=initdata verity persistent-root usr \r?$`,
	`E2E-CHECK: journal-import=success [1-9]\d* records with CVMBOOT_STAGE`,
	`E2E-CHECK: journal: CVMBOOT_STAGE=storage`, `E2E-CHECK: journal: MESSAGE=stage ok`,
	`E2E-CHECK: isLuks=yes`, `E2E-CHECK: dump: Version:\s+2`, `E2E-CHECK: dump: Label:\s+cvmboot-storage`,
	`E2E-CHECK: dump: Subsystem:\s+cvmboot`, `E2E-CHECK: dump:\s+cipher: aes-xts-plain64`,
	`E2E-CHECK: dump:\s+integrity: hmac\(sha256\)`, `E2E-CHECK: dump: Keyslots:`,
	`E2E-CHECK: blkid=.*TYPE=crypto_LUKS`, `E2E-CHECK: blkid=.*VERSION=2`, `E2E-CHECK: blkid=.*LABEL=cvmboot-storage`,
	`E2E-CHECK: blkid=.*UUID=[0-9a-f-]{36}`,
	`E2E-CHECK: testhook-key=[0-9a-f]{192}\r?$`,
	`E2E-CHECK: key-in-proc-keys=0`, `E2E-CHECK: key-in-journal=0`, `E2E-CHECK: key-in-run=0`,
	`E2E-CHECK: stress=\d+s trees-identical=4/4 of \d+ files, big-files-identical=2/2`,
	`E2E-CHECK: kernel-errors integrity=0 io=0`, `E2E-CHECK: e2fsck=rc 0 `,
	`E2E-CHECK: kernel-errors-after-fsck integrity=0`,
	`E2E-CHECK: REPORT END`, `"storage"`, `stage ok stage=handoff .*peak_rss_kib=\d+`,
}

// storageExpectSecond: the same disk booted again.
var storageExpectSecond = []string{
	`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`, `E2E-CHECK: boot=second`,
	`E2E-CHECK: stack=cvmboot-storage crypt cvmboot-storage_dif \w+ vda\d+ part vda disk`,
	`E2E-CHECK: marker=absent entries=0`, `E2E-CHECK: root-write=gone`,
	`E2E-CHECK: cvmboot-status=exit 0 9 stages ok`,
	`E2E-CHECK: testhook-key=[0-9a-f]{192}\r?$`, `E2E-CHECK: key-in-journal=0`,
	`E2E-CHECK: tamper-seen=yes`, `E2E-CHECK: tamper-read=exit 1 cat: .*: Input/output error`,
	`E2E-CHECK: tamper-kernel integrity=[1-9]`, `E2E-CHECK: DONE`,
}

// plaintextMarker is what the first boot writes 2000 times into the volume.
const plaintextMarker = "CVMBOOT-PLAINTEXT-MARKER"

func storageScenarios() []scenario {
	return []scenario{scenario{
		name:    "storage-debian",
		root:    rootDebian,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config:  cfg(storageConfig...),
		recipe: func(r *harness.DiskRecipe) {
			r.FreeSpace = 2 << 30
			repo, err := harness.RepoRoot()
			if err == nil {
				// The product build, for cvmboot status in the booted system.
				err = harness.InstallFile(r.Root.Tree, "/usr/bin/cvmboot", filepath.Join(repo, "bin", "cvmboot"), 0o755)
			}
			if err == nil {
				err = harness.InstallFile(r.Root.Tree, "/etc/systemd/system/cvmboot-journal-import.service",
					filepath.Join(repo, "systemd", "cvmboot-journal-import.service"), 0o644)
			}
			if err == nil {
				err = harness.EnableUnit(r.Root.Tree, "cvmboot-journal-import.service", "sysinit.target")
			}
			if err == nil {
				err = harness.InstallCheckUnit(r.Root.Tree, storageCheckScript)
			}
			if err != nil {
				panic(fmt.Sprintf("storage-debian: %v", err))
			}
		},
		testhook:  true,
		expect:    storageExpectFirst,
		reject:    []string{`{fatal}`, `Kernel panic`, `INTEGRITY AEAD ERROR`},
		outcome:   bootedAndChecked,
		timeLimit: 8 * time.Minute,
		onLine:    tamperOnRequest,
		after:     storageReboot,
	}}
}

var testhookKeyRe = regexp.MustCompile(`(?m)^E2E-CHECK: testhook-key=([0-9a-f]+)\r?$`)

// storageReboot runs after the first boot passed: it searches the disk image for the key
// and the marker, boots the same disk again and checks that boot, then searches again.
func storageReboot(t *testing.T, e *env, first *harness.BootResult, img *harness.Image) []string {
	var problems []string
	key1 := testhookKeyRe.FindStringSubmatch(first.Serial)
	if key1 == nil {
		return []string{"the first boot printed no test hook key"}
	}
	problems = append(problems, secretScan(t, "first boot", first.Serial, img.Disk.Path, key1[1])...)
	luks1 := factOf(first.Serial, "luks_uuid")

	sc := scenarioNamed("storage-debian")
	work := filepath.Join(filepath.Dir(img.Disk.Path), "boot2")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return []string{err.Error()}
	}
	second, err := harness.Boot(context.Background(), bootSpec(t, e, sc, work, img, nil))
	if err != nil {
		return append(problems, fmt.Sprintf("second boot: %v", err))
	}
	t.Logf("second boot: %s (%s) in %.1fs", second.Reason, second.Detail, second.Duration.Seconds())
	sc2 := sc
	sc2.expect = storageExpectSecond
	sc2.reject = []string{`{fatal}`, `Kernel panic`}
	subst := func(s string, quote bool) string {
		return strings.NewReplacer("{fatal}", "cvmboot: FATAL").Replace(s)
	}
	for _, p := range verify(sc2, second, subst) {
		problems = append(problems, "second boot: "+p)
	}
	key2 := testhookKeyRe.FindStringSubmatch(second.Serial)
	if key2 == nil {
		return append(problems, "the second boot printed no test hook key")
	}
	if key2[1] == key1[1] {
		problems = append(problems, "the second boot used the first boot's key")
	}
	luks2 := factOf(second.Serial, "luks_uuid")
	if luks1 == "" || luks2 == "" || luks1 == luks2 {
		problems = append(problems, fmt.Sprintf("LUKS UUIDs of the two boots: %q and %q, want two different ones", luks1, luks2))
	}
	if factOf(second.Serial, "partition_reused") != "true" {
		problems = append(problems, "the second boot did not reuse the storage partition")
	}
	problems = append(problems, secretScan(t, "second boot", second.Serial, img.Disk.Path, key1[1], key2[1])...)
	if len(problems) > 0 {
		_ = os.WriteFile(filepath.Join(work, "serial-boot2.log"), []byte(second.Serial), 0o644)
		problems = append(problems, "second boot's console (last lines):\n"+lastLines(second.Serial, 30))
	}
	return problems
}

func scenarioNamed(name string) scenario {
	for _, sc := range allScenarios() {
		if sc.name == name {
			return sc
		}
	}
	panic("no scenario " + name)
}

// factOf returns a storage fact from the report the check script printed.
func factOf(serial, key string) string {
	m := regexp.MustCompile(`"` + regexp.QuoteMeta(key) + `":\s*"([^"]*)"`).FindStringSubmatch(serial)
	if m == nil {
		return ""
	}
	return m[1]
}

// secretScan searches the console (but the hook's own line), with the report and journal
// counts the guest printed, and the whole disk image for each key (hex, both cases, and raw
// bytes) and the disk image for the plaintext marker.
func secretScan(t *testing.T, what, serial, diskPath string, keys ...string) []string {
	var problems []string
	console := testhookKeyRe.ReplaceAllString(serial, "")
	var needles [][]byte
	for _, k := range keys {
		raw, err := hex.DecodeString(k)
		if err != nil || len(raw) < 32 {
			return []string{fmt.Sprintf("%s: bad test hook key %q", what, k)}
		}
		for _, n := range []string{k, strings.ToUpper(k), k[:32]} {
			if strings.Contains(console, n) {
				problems = append(problems, fmt.Sprintf("%s: the volume key (or its first 16 bytes) is in the console log", what))
			}
		}
		needles = append(needles, raw, []byte(k), raw[:32])
	}
	needles = append(needles, []byte(plaintextMarker))
	start := time.Now()
	found, size, err := scanFile(diskPath, needles)
	if err != nil {
		return append(problems, fmt.Sprintf("%s: scanning %s: %v", what, diskPath, err))
	}
	for i, off := range found {
		if off < 0 {
			continue
		}
		name := "the plaintext marker"
		if i < len(needles)-1 {
			name = fmt.Sprintf("key %d (form %d)", i/3+1, i%3)
		}
		problems = append(problems, fmt.Sprintf("%s: %s found in the disk image at byte %d", what, name, off))
	}
	t.Logf("%s: secret scan of the console and %d MiB of disk image (%s): %d keys and the marker, %d findings",
		what, size>>20, time.Since(start).Round(time.Millisecond), len(keys), len(problems))
	return problems
}

// scanFile returns, for each needle, the first offset where it occurs in the file (-1: not
// found). It reads in chunks overlapping by the longest needle.
func scanFile(path string, needles [][]byte) ([]int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	longest := 0
	for _, n := range needles {
		longest = max(longest, len(n))
	}
	found := make([]int64, len(needles))
	for i := range found {
		found[i] = -1
	}
	const chunk = 32 << 20
	buf := make([]byte, chunk+longest)
	var off, total int64
	carry := 0
	for {
		n, err := io.ReadFull(f, buf[carry:])
		data := buf[:carry+n]
		total += int64(n)
		for i, nd := range needles {
			if found[i] < 0 {
				if j := bytes.Index(data, nd); j >= 0 {
					found[i] = off - int64(carry) + int64(j)
				}
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return found, total, nil
		}
		if err != nil {
			return nil, total, err
		}
		carry = min(longest-1, len(data))
		copy(buf, data[len(data)-carry:])
		off += int64(n)
	}
}

var tamperRe = regexp.MustCompile(`E2E-CHECK: TAMPER-BLOCK ([0-9a-f]{64}) ([0-9a-f]{64}) block=(\d+)`)

var tamperOnce sync.Map // disk path → done

// tamperOnRequest is the host's side of the tamper check: when the guest names a ciphertext
// block of a file it wrote (its first 32 bytes and the SHA-256 of its 4 KiB), the host finds
// that block in the disk image and changes 16 bytes of it, while the guest runs.
func tamperOnRequest(t *testing.T, line string, img *harness.Image) {
	m := tamperRe.FindStringSubmatch(line)
	if m == nil {
		return
	}
	if _, done := tamperOnce.LoadOrStore(img.Disk.Path+m[2], true); done {
		return
	}
	prefix, _ := hex.DecodeString(m[1])
	off, err := findBlock(img.Disk.Path, prefix, m[2])
	if err != nil {
		t.Logf("tamper: %v", err)
		return
	}
	f, err := os.OpenFile(img.Disk.Path, os.O_RDWR, 0)
	if err != nil {
		t.Logf("tamper: %v", err)
		return
	}
	defer f.Close()
	b := make([]byte, 16)
	if _, err := f.ReadAt(b, off+1024); err != nil {
		t.Logf("tamper: %v", err)
		return
	}
	for i := range b {
		b[i] ^= 0xa5
	}
	if _, err := f.WriteAt(b, off+1024); err != nil {
		t.Logf("tamper: %v", err)
		return
	}
	if err := f.Sync(); err != nil {
		t.Logf("tamper: %v", err)
	}
	t.Logf("tamper: changed 16 bytes at disk byte %d (ciphertext block %s of the guest's file, crypt block %s)", off+1024, m[2][:16], m[3])
}

// findBlock returns the disk offset of the 4 KiB block starting with prefix whose SHA-256
// is sum.
func findBlock(path string, prefix []byte, sum string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	const chunk = 32 << 20
	buf := make([]byte, chunk+4096)
	for off := int64(0); off < fi.Size(); off += chunk {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return 0, err
		}
		data := buf[:n]
		for j := 0; ; {
			k := bytes.Index(data[j:], prefix)
			if k < 0 {
				break
			}
			at := j + k
			if at+4096 <= len(data) {
				s := sha256.Sum256(data[at : at+4096])
				if hex.EncodeToString(s[:]) == sum {
					return off + int64(at), nil
				}
			}
			j = at + 1
		}
	}
	return 0, fmt.Errorf("no 4 KiB block with SHA-256 %s in %s (%s bytes)", sum, path, strconv.FormatInt(fi.Size(), 10))
}

// TestScanFile: the secret scan finds needles anywhere, across its chunk boundaries too, so
// that "0 findings" in the storage scenario means something.
func TestScanFile(t *testing.T) {
	data := make([]byte, 70<<20)
	key := bytes.Repeat([]byte{0xab, 0xcd}, 48)
	copy(data[32<<20-50:], key) // straddles the first chunk boundary
	copy(data[len(data)-len(plaintextMarker):], plaintextMarker)
	p := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	found, size, err := scanFile(p, [][]byte{key, []byte(plaintextMarker), []byte("absent")})
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(data)) || found[0] != 32<<20-50 || found[1] != int64(len(data)-len(plaintextMarker)) || found[2] != -1 {
		t.Errorf("found %v in %d bytes", found, size)
	}
}

// overlayOnStorageScript checks that writes to / land on the encrypted storage when
// overlay.upper is storage.
const overlayOnStorageScript = `#!/bin/sh
exec >/dev/console 2>&1
say() { printf 'E2E-CHECK: %s\n' "$*"; }
U=/run/kata-containers/image/.cvmboot-root-overlay/upper
say BEGIN
state=$(timeout 240 systemctl is-system-running --wait 2>&1)
say "system-state=$state"
failed=$(systemctl list-units --failed --plain --no-legend --no-pager 2>&1 | awk '{print $1}' | tr '\n' ' ')
say "failed-units=${failed:-none}"
say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS / 2>&1)"
dd if=/dev/urandom of=/cvmboot-e2e-big bs=1M count=300 status=none && sync
say "write=$(stat -c %s /cvmboot-e2e-big 2>&1)"
say "upper-file=$(du -m $U/cvmboot-e2e-big 2>&1 | cut -f1) MiB"
say "upper-on=$(findmnt -n -o SOURCE,FSTYPE --target $U 2>&1)"
say "kernel-errors integrity=$(dmesg | grep -c 'INTEGRITY AEAD ERROR')"
say DONE
sync
systemctl start poweroff.target --job-mode=replace-irreversibly --no-block
`

func overlayOnStorageScenarios() []scenario {
	return []scenario{scenario{
		name:    "debian-overlay-on-storage",
		root:    rootDebian,
		cmdline: "root=PARTUUID={rootpartuuid}",
		config: cfg(append(storageConfig, func(c *config.Config) {
			c.Overlay.Upper = config.UpperStorage
			c.Overlay.Size = config.Default().Overlay.Size
		})...),
		recipe: func(r *harness.DiskRecipe) {
			r.FreeSpace = 2 << 30
			if err := harness.InstallCheckUnit(r.Root.Tree, overlayOnStorageScript); err != nil {
				panic(fmt.Sprintf("debian-overlay-on-storage: %v", err))
			}
		},
		expect: []string{`E2E-CHECK: system-state=running`, `E2E-CHECK: failed-units=none`,
			`E2E-CHECK: root=overlay overlay rw,.*upperdir=/run/kata-containers/image/\.cvmboot-root-overlay/upper`,
			`E2E-CHECK: write=314572800`, `E2E-CHECK: upper-file=300 MiB`,
			`E2E-CHECK: upper-on=/dev/mapper/cvmboot-storage ext4`, `E2E-CHECK: kernel-errors integrity=0`,
			`stage ok stage=overlay .*upper=storage`},
		reject:    []string{`{fatal}`, `Kernel panic`},
		outcome:   bootedAndChecked,
		timeLimit: 6 * time.Minute,
	}}
}
