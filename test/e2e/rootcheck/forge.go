package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
	"github.com/cvmboot/cvmboot/pkg/evidence/firmwarelog"
)

// forgeEvidence is the forged-initramfs scenario's attacker: an initramfs that is not cvmboot
// (the host put another UKI on the ESP) writes a cvmboot-shaped event log claiming what the
// genuine boot would have done — the genuine root hash from the command line, enforced,
// encrypted storage, the overlay — extends the TPM's PCRs to match, and takes evidence with
// cvmboot's own code, exactly as cvmboot would. It never sets up dm-verity: the root it would
// run is whatever the host likes. The verifier, given the genuine UKI, must refuse.
func forgeEvidence(cmdline string) error {
	var rootHash string
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, "roothash="); ok {
			rootHash = v
		}
	}
	if rootHash == "" {
		return errors.New("no roothash= on the command line to claim")
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount /run: %w", err)
	}
	if err := os.MkdirAll("/run/cvmboot", 0o755); err != nil {
		return err
	}
	d := tee.Detect(tee.Options{})
	ext, closeTPM, err := d.Registers()
	if err != nil {
		return err
	}
	log, err := measure.Open("/run/cvmboot/eventlog", ext...)
	if err != nil {
		closeTPM()
		return err
	}
	sum := sha256.Sum256([]byte(cmdline))
	for _, ev := range []eventlog.Event{
		eventlog.Phase(eventlog.PhaseEnterInitrd),
		eventlog.Config{SHA256: strings.Repeat("c", 64), Path: "/etc/cvmboot/config.yaml", Found: true}.Event(),
		eventlog.Cmdline{SHA256: hex.EncodeToString(sum[:]), Pinned: true}.Event(),
		eventlog.Verity{Target: "root", RootHash: rootHash, HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random", SectorSize: 4096, Filesystem: "ext4", Mountpoint: "/run/kata-containers/image"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
		eventlog.Phase(eventlog.PhaseLeaveInitrd),
	} {
		if _, err := log.Measure(ev); err != nil {
			closeTPM()
			return err
		}
	}
	if err := closeTPM(); err != nil {
		return err
	}
	_, err = tee.Collect(context.Background(), log, d.Sources(), nil, "/run/cvmboot/evidence")
	return err
}

// lateRecord is the late-record scenario's attacker: root in the booted system appends a record
// claiming encrypted storage (the boot had none) to cvmboot's event log and extends the TPM to match, as cvmboot
// would, so that fresh evidence replays. Run as `rootcheck late-record`.
func lateRecord() error {
	d := tee.Detect(tee.Options{})
	ext, closeTPM, err := d.Registers()
	if err != nil {
		return err
	}
	defer closeTPM()
	log, err := measure.Open("/run/cvmboot/eventlog", ext...)
	if err != nil {
		return err
	}
	_, err = log.Measure(eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256",
		KeySource: "random", SectorSize: 4096, Filesystem: "ext4", Mountpoint: "/srv/late"}.Event())
	return err
}

// printFirmwareLog prints what the firmware's TPM event log shows of the UKI that booted: the
// Authenticode digests of the boot applications (PCR 4), PCR 11 after systemd-stub's events and
// PCR 9 after the kernel's, so that the host compares them with the reference values it
// computes from the UKI file. Not a check: a boot without a TPM log prints why.
func printFirmwareLog(c *checker) {
	data, err := os.ReadFile(tee.FirmwareLogPath)
	if err == nil && len(data) == 0 {
		err = errors.New("empty")
	}
	var events []evidence.FirmwareEvent
	if err == nil {
		events, err = firmwarelog.Parser{}.TPM(data, crypto.SHA256)
	}
	if err != nil {
		c.printf("FIRMWARE-LOG unavailable: %v", err)
		return
	}
	var apps []string
	pcr := map[int][]byte{9: make([]byte, 32), 11: make([]byte, 32)}
	for _, e := range events {
		switch {
		case e.Index == 4 && e.Type == evidence.EvEFIBootServicesApplication:
			apps = append(apps, hex.EncodeToString(e.Digest))
		case (e.Index == 9 || e.Index == 11) && e.Type != evidence.EvNoAction:
			h := sha256.New()
			h.Write(pcr[e.Index])
			h.Write(e.Digest)
			pcr[e.Index] = h.Sum(nil)
		}
	}
	c.printf("FIRMWARE-LOG pcr4-apps=%s pcr11=%x pcr9=%x", strings.Join(apps, ","), pcr[11], pcr[9])
}
