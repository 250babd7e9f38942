package persist

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/secret"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/internal/tpmvouch"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// Names of the partition, its LUKS2 header and its device-mapper device.
const (
	Label      = "cvmboot-root" // GPT partition name and LUKS2 label
	Subsystem  = "cvmboot-root" // LUKS2 subsystem
	DeviceName = "cvmboot-root" // /dev/mapper/cvmboot-root; its dm-integrity device is cvmboot-root_dif
	// CopyDeviceName is the volume the conversion copies into (dm-integrity without journal):
	// /dev/mapper/cvmboot-root appears once, finished, for whatever waits for it (systemd's
	// sysroot.mount in a systemd initrd).
	CopyDeviceName = "cvmboot-root-copy"
	// TypeGUID is the partition type: Linux filesystem data. Not the discoverable root type:
	// the booted system must not take the partition for a root of its own.
	TypeGUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
)

// PolicyPCRs are the sha256 PCRs the key is sealed to. PCR 4 holds the boot applications
// (the UKI's Authenticode digest, its kernel's); PCR 11 the UKI's sections as systemd-stub
// measured them (kernel, initrd, command line, os-release) and cvmboot's enter-initrd
// phase; PCR 2 the UEFI drivers and option ROMs the firmware ran, which the host supplies
// (Driver#### options, PCI devices) and which run before the UKI; PCR 9 what the kernel
// measured (its initrd, its command line); PCR 12 what systemd-stub took from outside the
// UKI (load options, credentials, system extensions): nothing, normally. Together they name
// this UKI booted this way on this VM's configuration. PCR 7 is left out: it follows the
// host's Secure Boot variables (a dbx update would lock the root away) and says nothing PCR
// 4 does not about the code that runs. PCRs 0, 1 and 3 are left out: the provider updates
// the firmware, whose identity the TEE's launch measurement carries. cvmboot's
// leave-initrd phase (PCR 11) makes the policy fail for the booted system.
var PolicyPCRs = []int{2, 4, 9, 11, 12}

// JournalSectors sizes dm-integrity's journal (8 MiB) when the conversion formats it,
// rather than the kernel's 1/128 of the partition (64 MiB from 8 GiB on): the kernel keeps
// the whole journal in memory and reads all of it at every activation, the largest part of
// a later boot's unlock. The superblock records the size, so cryptsetup and
// systemd-cryptsetup open the volume as it is. A smaller journal commits more often under
// sustained writes.
const JournalSectors = 8 << 20 / 512

// TPM vouching words of the measurement and the report.
const (
	TPMVouched           = "tee-vouched"
	TPMInsecureUnvouched = "insecure-unvouched"
)

// Stage finds, makes or unlocks the persistent encrypted root.
type Stage struct {
	Log *zap.Logger
	// Vouch says whether the TEE vouches for the TPM (tpmvouch.ForPlatform); nil: nothing can.
	Vouch tpmvouch.Voucher
	// AllowUnvouchedTPM is root.insecure_unvouched_tpm.
	AllowUnvouchedTPM bool
	// ESPPartUUID is the ESP the boot came from, never taken.
	ESPPartUUID string
	DevDir      string // holds mapper/; "/dev" when empty

	Disk    storage.Disk
	Devices storage.Devices
	DM      storage.DeviceMapper
	Keyring storage.Keyring
	Random  storage.Random
	TPMs    TPMs
	Copier  Copier
	FS      Filesystem
	Now     func() time.Time
	// OpenShared opens the partition while dm-integrity holds it, for the commit's header
	// write; os.OpenFile (read-write, not exclusive) when nil.
	OpenShared func(path string) (storage.Device, error)

	dmc  storage.DeviceMapper // DM, or /dev/mapper/control opened for one Open call
	ek   *tpm2.TPMTPublic     // the vouched endorsement key the sessions are salted to
	held *held                // from Open to the end of MountRoot
}

// held is what Open keeps for MountRoot's key maintenance (an enrollment request on the
// root, tokens of an older UKI): the volume key, in locked memory, and what unlocked it.
type held struct {
	key        *secret.Locked
	part       *disk.Partition
	hdr        *luks2.Header
	generation int // of the token that opened the root (1: the conversion's)
}

// Forget wipes what Open keeps for MountRoot (the volume key), when the boot stops between
// them; Open's failures and MountRoot do it themselves.
func (s *Stage) Forget() {
	if s.held != nil {
		s.held.key.Wipe()
		s.held = nil
	}
}

// Result is an activated persistent root. It never holds a key.
type Result struct {
	Device    string // /dev/mapper/cvmboot-root
	Converted bool   // this boot made it from the verified root
	Event     eventlog.PersistentRoot
	Facts     map[string]string
	// Keys is what MountRoot changed in the keyslots (an enrollment, older tokens retired),
	// for the caller to measure; nil when nothing changed.
	Keys *eventlog.PersistentRootKeys
	// Partition holds the volume; KeyDigest fingerprints the header's digest of its volume
	// key (KeyDigest): what another process of the boot checks a header it reads again
	// against (MaintainMounted).
	Partition *disk.Partition
	KeyDigest string
}

// KeyDigest is the hex SHA-256 of the header's digest of the data segment's volume key (its
// hash, iterations, salt and value): two headers with the same one verify the same key.
func KeyDigest(h *luks2.Header) (string, error) {
	_, d, err := h.Metadata.DigestForSegment(0)
	if err != nil {
		return "", err
	}
	sum := sha256.New()
	fmt.Fprintf(sum, "%s\x00%d\x00", d.Hash, d.Iterations)
	sum.Write(d.Salt)
	sum.Write([]byte{0})
	sum.Write(d.Digest)
	return hex.EncodeToString(sum.Sum(nil)), nil
}

func (s *Stage) log() *zap.Logger {
	if s.Log == nil {
		return zap.NewNop()
	}
	return s.Log
}

func (s *Stage) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// checkTPM asks the TEE to vouch for the TPM: then every seal and unseal runs in sessions
// salted to the endorsement key the TEE binds. Otherwise the TPM is refused, unless no TEE
// can vouch here and root.insecure_unvouched_tpm allows it.
func (s *Stage) checkTPM(facts map[string]string) (string, *tpmvouch.Binding, error) {
	var b *tpmvouch.Binding
	err := tpmvouch.ErrUnavailable
	if s.Vouch != nil {
		b, err = s.Vouch.Vouch()
	}
	if err == nil {
		// The TPM's endorsement key is checked against b.EK before the conversion writes
		// anything (convert) and by every unseal: a TEE vouches for one TPM and another
		// answers, the host swapped it. No setting lets that through.
		s.ek = &b.EK
		facts["tpm_vouched_by"], facts["tpm_ek_sha256"], facts["tee_measurement"] = b.By, b.EKSHA256, b.Measurement
		s.log().Info("the TEE vouches for the TPM: its sessions are salted to the endorsement key the report binds",
			zap.String("by", b.By), zap.String("ek_sha256", b.EKSHA256), zap.String("measurement", b.Measurement))
		return TPMVouched, b, nil
	}
	// The insecure setting stands in for a TEE that is not there, never for a check that
	// failed.
	if s.AllowUnvouchedTPM && errors.Is(err, tpmvouch.ErrUnavailable) {
		facts["tpm_unvouched_reason"] = err.Error()
		s.log().Warn("INSECURE: root.insecure_unvouched_tpm lets a TPM no TEE vouches for hold the root's key; a host-emulated TPM can unseal it",
			zap.String("reason", err.Error()))
		return TPMInsecureUnvouched, nil, nil
	}
	hint := ""
	if errors.Is(err, tpmvouch.ErrUnavailable) {
		hint = " (root.insecure_unvouched_tpm allows one for tests, on a machine that is no TEE)"
	}
	return "", nil, fmt.Errorf("the persistent root's key may only be sealed to a TPM the TEE vouches for (an SVSM's vTPM bound into the SEV-SNP report): %w; refusing it%s", err, hint)
}

// checkEndorsement checks the TPM's endorsement key against the vouched one before a byte is
// written.
func (s *Stage) checkEndorsement(ek *tpm2.TPMTPublic) error {
	tpm, closeTPM, err := s.TPMs.Open()
	if err != nil {
		return err
	}
	defer closeTPM()
	return tpmseal.CheckEndorsement(tpm, ek)
}

// Open returns the activated persistent root: at the first boot (or after a conversion cut
// short) it makes it from verity, the activated dm-verity root with rootHash; later it
// unlocks it. Nothing is written to the image's own partitions.
func (s *Stage) Open(ctx context.Context, verity, rootHash string) (*Result, error) {
	start := s.now()
	facts := map[string]string{}
	vouch, binding, err := s.checkTPM(facts)
	if err != nil {
		return nil, err
	}
	// The TPM's primary key and policy session need nothing from the disk: they are made
	// while the partition and its header are read. A conversion closes them unused.
	primed := s.primeTPM()
	defer primed.release()
	srcSize, err := s.Devices.Size(verity)
	if err != nil {
		return nil, err
	}
	// Only ext4 is grown and mounted read-write: refuse anything else before a byte is
	// written, not after the commit.
	if err := s.checkSource(verity); err != nil {
		return nil, err
	}
	// The partition holds the LUKS2 metadata, dm-integrity's tags (32 bytes per 4 KiB
	// sector, under 1%) and the root.
	minSize := luks2.DefaultDataOffset + srcSize + srcSize/64 + 16<<20
	part, err := s.Disk.Prepare(ctx, verity, disk.Request{Label: Label, TypeGUID: TypeGUID, MinSize: minSize, ESPPartUUID: s.ESPPartUUID, Keep: true})
	if err != nil {
		return nil, fmt.Errorf("persistent root partition (the root is %d bytes): %w", srcSize, err)
	}
	maps.Copy(facts, map[string]string{
		"partition": part.Path, "partuuid": part.PartUUID, "partition_bytes": strconv.FormatInt(part.Size, 10),
		"source": verity, "source_bytes": strconv.FormatInt(srcSize, 10), "tpm": vouch,
	})
	s.dmc = s.DM
	if s.dmc == nil {
		c, err := dm.Open()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		s.dmc = c
	}
	dev, err := s.Devices.Open(part.Path)
	if err != nil {
		return nil, err
	}
	h, err := luks2.Read(dev)
	cerr := dev.Close()
	var res *Result
	switch {
	case errors.Is(err, luks2.ErrNotLUKS2):
		primed.release()
		res, err = s.convert(ctx, part, verity, srcSize, rootHash, facts)
	case err != nil:
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): the LUKS2 header does not read: %w; refusing to convert over it", part.Path, part.PartUUID, err)
	case cerr != nil:
		return nil, cerr
	case len(h.Metadata.Keyslots) == 0 && len(h.Metadata.Tokens) == 0 && h.Subsystem == Subsystem && h.Label == Label:
		s.log().Warn("the persistent root's conversion did not finish in an earlier boot (no keyslot was committed): starting it again",
			zap.String("partition", part.Path), zap.String("luks_uuid", h.UUID))
		facts["restarted"] = "true"
		primed.release()
		res, err = s.convert(ctx, part, verity, srcSize, rootHash, facts)
		if err == nil {
			res.Event.Restarted = true
		}
	default:
		res, err = s.unlock(part, h, facts, primed)
	}
	if err != nil {
		s.Forget()
		return nil, err
	}
	if res.KeyDigest, err = KeyDigest(s.held.hdr); err != nil {
		s.Forget()
		return nil, err
	}
	res.Partition = part
	res.Event.TPM = vouch
	if binding != nil {
		res.Event.TPMVouchedBy, res.Event.TPMEKSHA256, res.Event.TEEMeasurement = binding.By, binding.EKSHA256, binding.Measurement
	}
	res.Event.PartUUID = part.PartUUID
	res.Event.Cipher, res.Event.KeyBits, res.Event.Integrity, res.Event.SectorSize = Cipher, KeySize*8, "hmac-sha256", SectorSize
	res.Event.Token, res.Event.PCRs = tpmseal.TokenType, PolicyPCRs
	facts["total_ms"] = strconv.FormatInt(s.now().Sub(start).Milliseconds(), 10)
	return res, nil
}

// convert makes the encrypted root from the verified one and commits it by adding the
// TPM keyslot last.
func (s *Stage) convert(ctx context.Context, part *disk.Partition, verity string, srcSize int64, rootHash string, facts map[string]string) (*Result, error) {
	if s.ek != nil {
		if err := s.checkEndorsement(s.ek); err != nil {
			return nil, fmt.Errorf("the persistent root's TPM: %w; refusing to convert", err)
		}
	}
	key, err := secret.New(KeySize)
	if err != nil {
		return nil, err
	}
	kept := false
	defer func() {
		if !kept {
			key.Wipe()
		}
	}()
	if err := s.Random.Fill(key.Bytes()); err != nil {
		return nil, fmt.Errorf("generating the volume key: %w", err)
	}
	t := s.now()
	dev, err := s.Devices.Open(part.Path)
	if err != nil {
		return nil, err
	}
	hdr, err := luks2.Format(dev, part.Size, luks2.Options{
		Label: Label, Subsystem: Subsystem, Cipher: Cipher, KeySize: KeySize, SectorSize: SectorSize,
		Integrity: Integrity, VolumeKey: key.Bytes(),
	})
	if err == nil {
		_, err = dev.WriteAt(make([]byte, storage.IntegritySuperblockSize), int64(hdr.DataOffset()))
	}
	if cerr := dev.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing the persistent root's LUKS2 header to %s: %w", part.Path, err)
	}
	s.log().Info("persistent root: LUKS2 header written, no keyslot yet", zap.String("partition", part.Path), zap.String("luks_uuid", hdr.UUID))
	t = lap(facts, "header_ms", t, s.now)

	vol, err := s.activate(CopyDeviceName, part, hdr, key, true, 'D')
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.teardown(vol)
		}
	}()
	t = lap(facts, "activate_ms", t, s.now)
	if vol.size < srcSize+storage.ProbeTail {
		return nil, fmt.Errorf("persistent root %s holds %d bytes, the root is %d", vol.path, vol.size, srcSize)
	}
	if err := s.Copier.Copy(ctx, verity, vol.path, srcSize); err != nil {
		return nil, fmt.Errorf("copying the verified root %s into %s: %w", verity, vol.path, err)
	}
	t = lap(facts, "copy_ms", t, s.now)
	// Signature probes read the end of a device; unwritten dm-integrity sectors fail them.
	if err := s.Devices.ZeroDirect(vol.path, vol.size-storage.ProbeTail, storage.ProbeTail); err != nil {
		return nil, err
	}
	if err := s.commit(part, hdr, key); err != nil {
		return nil, err
	}
	t = lap(facts, "seal_ms", t, s.now)
	// From here on the root runs journaled. A copy device left live beside it would write
	// the same sectors without the journal: its removal must succeed.
	if err := s.teardownStrict(vol); err != nil {
		return nil, fmt.Errorf("removing the conversion's copy device %s: %w; refusing to activate the root beside it", vol.name, err)
	}
	root, err := s.activate(DeviceName, part, hdr, key, false, 'J')
	if err != nil {
		return nil, err
	}
	vol = root
	lap(facts, "reactivate_ms", t, s.now)
	ok, kept = true, true
	s.held = &held{key: key, part: part, hdr: hdr, generation: 1}
	facts["action"], facts["luks_uuid"], facts["device"] = "converted", hdr.UUID, vol.path
	s.log().Info("persistent root made from the verified root and sealed to the TPM", zap.String("device", vol.path),
		zap.String("luks_uuid", hdr.UUID), zap.Int64("copied_bytes", srcSize), zap.Ints("pcrs", PolicyPCRs))
	return &Result{Device: vol.path, Converted: true, Facts: facts,
		Event: eventlog.PersistentRoot{Action: "converted", LUKSUUID: hdr.UUID, SourceRootHash: rootHash}}, nil
}

// commit seals a fresh secret to the TPM's current policy PCRs and adds its keyslot and
// token: the one write that turns a conversion into a persistent root.
func (s *Stage) commit(part *disk.Partition, hdr *luks2.Header, key *secret.Locked) error {
	tpm, closeTPM, err := s.TPMs.Open()
	if err != nil {
		return err
	}
	defer closeTPM()
	values, err := tpmseal.ReadPCRs(tpm, PolicyPCRs)
	if err != nil {
		return err
	}
	if err := s.addSealedKeyslot(tpm, part, hdr, key, 0, values, 1); err != nil {
		return fmt.Errorf("committing the persistent root (adding its TPM keyslot to %s): %w", part.Path, err)
	}
	return nil
}

// addSealedKeyslot seals a fresh secret to PolicyPCRs holding values and adds it as keyslot
// slot for key, with its systemd-tpm2 token of generation gen.
func (s *Stage) addSealedKeyslot(tpm tpmseal.TPM, part *disk.Partition, hdr *luks2.Header, key *secret.Locked, slot int, values [][]byte, gen int) error {
	sealed, err := secret.New(tpmseal.SecretSize)
	if err != nil {
		return err
	}
	defer sealed.Wipe()
	if err := s.Random.Fill(sealed.Bytes()); err != nil {
		return err
	}
	tok, err := tpmseal.Seal(tpm, tpmseal.PCRPolicy{PCRs: PolicyPCRs, Values: values}, sealed.Bytes(), slot, tpmseal.PrimaryECC, s.ek)
	if err != nil {
		return err
	}
	tok.Generation = gen
	raw, err := tok.Marshal()
	if err != nil {
		return err
	}
	pass, err := passphrase(sealed.Bytes())
	if err != nil {
		return err
	}
	defer pass.Wipe()
	// dm-integrity holds the partition now: not exclusively. The header and keyslots area
	// lie before its data offset, which it never touches.
	dev, err := s.openShared(part.Path)
	if err != nil {
		return err
	}
	err = hdr.AddKeyslot(dev, slot, key.Bytes(), luks2.KeyslotSpec{
		Passphrase: pass.Bytes(), KDF: luks2.KDFPBKDF2, Hash: keyslotHash, Iterations: keyslotIters,
	}, []luks2.Token{{Type: tpmseal.TokenType, Keyslots: []int{slot}, JSON: raw}})
	if cerr := dev.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *Stage) openShared(path string) (storage.Device, error) {
	if s.OpenShared != nil {
		return s.OpenShared(path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s (shared): %w", path, err)
	}
	return syncingFile{f}, nil
}

// syncingFile flushes the header update to the disk on Close.
type syncingFile struct{ *os.File }

func (f syncingFile) Close() error {
	err := f.File.Sync()
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	return err
}

// passphrase is the keyslot passphrase for a sealed secret, as systemd-cryptsetup passes
// it: standard base64, in locked memory.
func passphrase(sealed []byte) (*secret.Locked, error) {
	p, err := secret.New(base64.StdEncoding.EncodedLen(len(sealed)))
	if err != nil {
		return nil, err
	}
	base64.StdEncoding.Encode(p.Bytes(), sealed)
	return p, nil
}

// unlock checks the header, unseals a token's secret and activates the volume.
func (s *Stage) unlock(part *disk.Partition, h *luks2.Header, facts map[string]string, primed *primedTPM) (*Result, error) {
	if err := CheckHeader(h); err != nil {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): %w; refusing to activate it", part.Path, part.PartUUID, err)
	}
	// dm-integrity needs no key and replays its journal (the most of the activation) as it
	// loads: it runs while the TPM unseals. Its writes are the replay any opener does; a
	// boot refused below removes the device again and powers off.
	t := s.now()
	type integrity struct {
		vol *volume
		ms  int64
		err error
	}
	difc := make(chan integrity, 1)
	go func() {
		vol, err := s.activateIntegrity(DeviceName, part, h, false, 'J')
		difc <- integrity{vol, s.now().Sub(t).Milliseconds(), err}
	}()
	key, tok, err := s.unseal(part, h, facts, primed)
	lap(facts, "unseal_ms", t, s.now)
	dif := <-difc
	facts["integrity_ms"] = strconv.FormatInt(dif.ms, 10)
	if err != nil {
		if dif.err == nil {
			s.teardown(dif.vol)
		}
		return nil, err
	}
	slot := tok.Keyslot
	if dif.err != nil {
		key.Wipe()
		return nil, dif.err
	}
	vol := dif.vol
	t = s.now()
	if err := s.activateCrypt(vol, h, key); err != nil {
		key.Wipe()
		return nil, err
	}
	lap(facts, "crypt_ms", t, s.now)
	s.held = &held{key: key, part: part, hdr: h, generation: generation(tok)}
	facts["action"], facts["luks_uuid"], facts["device"], facts["keyslot"] = "unlocked", h.UUID, vol.path, strconv.Itoa(slot)
	s.log().Info("persistent root unlocked", zap.String("device", vol.path), zap.String("luks_uuid", h.UUID), zap.Int("keyslot", slot))
	return &Result{Device: vol.path, Facts: facts, Event: eventlog.PersistentRoot{Action: "unlocked", LUKSUUID: h.UUID}}, nil
}

// unseal tries the tokens in order and returns the volume key (locked) and the token that
// opened it. The first token unseals with primed's connection and session when given (nil:
// a connection of its own).
func (s *Stage) unseal(part *disk.Partition, h *luks2.Header, facts map[string]string, primed *primedTPM) (*secret.Locked, *tpmseal.Token, error) {
	var tpm tpmseal.TPM
	var first *tpmseal.Primed
	if primed != nil {
		var err error
		if tpm, first, err = primed.take(facts); err != nil {
			return nil, nil, err
		}
		if first == nil {
			s.log().Warn("the TPM could not be primed ahead of the header: the first token unseals without it", zap.Error(primed.err))
		}
	} else {
		t, closeTPM, err := s.TPMs.Open()
		if err != nil {
			return nil, nil, err
		}
		defer closeTPM()
		tpm = t
	}
	// Not exclusive: dm-integrity takes the partition meanwhile (unlock).
	dev, err := s.openShared(part.Path)
	if err != nil {
		return nil, nil, err
	}
	defer dev.Close()
	var errs []error
	for _, id := range sortedKeys(h.Metadata.Tokens) {
		tok, err := tpmseal.ParseToken(h.Metadata.Tokens[id].JSON)
		if err == nil && (!slices.Equal(tok.PCRs, PolicyPCRs) || tok.PrimaryAlg != tpmseal.PrimaryECC) {
			err = fmt.Errorf("sealed to PCRs %v under an %s primary key, cvmboot seals to %v under ecc", tok.PCRs, tok.PrimaryAlg, PolicyPCRs)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("token %d: %w", id, err))
			continue
		}
		key, err := s.openToken(tpm, first, dev, h, tok, facts)
		first = nil // a session serves one token
		if err != nil {
			errs = append(errs, fmt.Errorf("token %d (keyslot %d): %w", id, tok.Keyslot, err))
			continue
		}
		return key, tok, nil
	}
	return nil, nil, fmt.Errorf("persistent root %s (PARTUUID %s): no token opens it: %w", part.Path, part.PartUUID, errors.Join(errs...))
}

// openToken unseals tok (with primed's session when given) and opens its keyslot.
func (s *Stage) openToken(tpm tpmseal.TPM, primed *tpmseal.Primed, dev storage.Device, h *luks2.Header, tok *tpmseal.Token, facts map[string]string) (*secret.Locked, error) {
	sealed, err := secret.New(64)
	if err != nil {
		return nil, err
	}
	defer sealed.Wipe()
	t := s.now()
	// The handles an unseal leaves go when its connection closes (TPMs.Open's contract; the
	// primed one at the end of the stage): one command per session, where flushing them one
	// by one costs a load and save of everything the connection holds per handle.
	var n int
	if primed != nil {
		n, _, err = primed.UnsealThenFlush(tok, sealed.Bytes())
		if r := primed.Redone(); r != "" {
			facts["tpm_prime_redone"] = r
		}
	} else {
		n, _, err = tpmseal.UnsealThenFlush(tpm, tok, sealed.Bytes(), s.ek)
	}
	if err != nil {
		return nil, err
	}
	t = lap(facts, "tpm_unseal_ms", t, s.now)
	defer lap(facts, "keyslot_ms", t, s.now)
	pass, err := passphrase(sealed.Bytes()[:n])
	if err != nil {
		return nil, err
	}
	defer pass.Wipe()
	k, err := h.UnlockKeyslot(dev, tok.Keyslot, pass.Bytes())
	if err != nil {
		return nil, err
	}
	defer clear(k)
	if len(k) != KeySize {
		return nil, fmt.Errorf("the keyslot holds a %d-byte key, cvmboot writes %d", len(k), KeySize)
	}
	key, err := secret.New(KeySize)
	if err != nil {
		return nil, err
	}
	copy(key.Bytes(), k)
	return key, nil
}

// primedTPM is a TPM connection with its primary key and policy session made ahead
// (tpmseal.Prime), in a goroutine of its own.
type primedTPM struct {
	done     chan struct{}
	tpm      tpmseal.TPM
	closeTPM func()
	p        *tpmseal.Primed
	err      error
	ms       int64
	once     sync.Once
}

func (s *Stage) primeTPM() *primedTPM {
	pt := &primedTPM{done: make(chan struct{})}
	go func() {
		defer close(pt.done)
		t := s.now()
		if pt.tpm, pt.closeTPM, pt.err = s.TPMs.Open(); pt.err != nil {
			return
		}
		pt.p, pt.err = tpmseal.Prime(pt.tpm, tpmseal.PrimaryECC, s.ek, PolicyPCRs)
		pt.ms = s.now().Sub(t).Milliseconds()
	}()
	return pt
}

// take waits for the priming and returns its connection (kept open until release) and
// session. A failed Prime leaves the session nil: the first token then unseals as the others
// do, and reports the failure as its own.
func (pt *primedTPM) take(facts map[string]string) (tpmseal.TPM, *tpmseal.Primed, error) {
	<-pt.done
	if pt.tpm == nil {
		return nil, nil, pt.err
	}
	facts["tpm_prime_ms"] = strconv.FormatInt(pt.ms, 10)
	return pt.tpm, pt.p, nil
}

// release closes the connection, which flushes what was primed (TPMs.Open's contract). It
// may run more than once.
func (pt *primedTPM) release() {
	<-pt.done
	pt.once.Do(func() {
		if pt.p != nil {
			pt.p.Forget()
		}
		if pt.closeTPM != nil {
			pt.closeTPM()
		}
	})
}

// volume is the activated stack.
type volume struct {
	name    string // its dm-crypt device's; dm-integrity's is name_dif
	path    string
	size    int64     // what dm-integrity provides, in bytes
	dif     dm.Device // dm-integrity, under dm-crypt
	removes []string  // top first
	dmc     storage.DeviceMapper
}

// activate builds dm-integrity (formatting it, with a journal, when fresh) and dm-crypt
// from hdr. The conversion's copy runs in mode D (a cut copy is redone anyway, and the
// journal would write everything twice); the root runs in mode J, so that a sector and its
// tag are written together or not at all: a VM killed mid-write must not leave sectors
// that fail their tags. It uses a copy of key: the caller's stays for the commit.
func (s *Stage) activate(name string, part *disk.Partition, hdr *luks2.Header, key *secret.Locked, fresh bool, mode byte) (*volume, error) {
	vol, err := s.activateIntegrity(name, part, hdr, fresh, mode)
	if err != nil {
		return nil, err
	}
	if err := s.activateCrypt(vol, hdr, key); err != nil {
		return nil, err
	}
	return vol, nil
}

// activateIntegrity builds the dm-integrity half of the stack. It needs no key: a later
// boot runs it (and the replay of the journal it holds) while the TPM unseals.
func (s *Stage) activateIntegrity(name string, part *disk.Partition, hdr *luks2.Header, fresh bool, mode byte) (*volume, error) {
	maj, min, err := s.Devices.Number(part.Path)
	if err != nil {
		return nil, err
	}
	partDev := fmt.Sprintf("%d:%d", maj, min)
	dmc := s.dmc
	vol := &volume{name: name, path: filepath.Join(cmp.Or(s.DevDir, "/dev"), "mapper", name), dmc: dmc}
	offset := int64(hdr.DataOffset())
	l := storage.LayoutHMACSHA256
	maxSectors := uint64(part.Size-offset) / 512
	var provided uint64
	if fresh {
		provided, err = storage.FormatIntegrity(dmc, s.Devices, part.Path, partDev, offset, l.TagSize, maxSectors, hdr.UUID, JournalSectors)
	} else {
		provided, err = storage.ReadIntegrity(s.Devices, part.Path, offset, l.TagSize, maxSectors)
	}
	if err != nil {
		return nil, err
	}
	dif, err := dmc.CreateAndLoad(storage.IntegrityName(name), storage.IntegrityUUID(hdr.UUID, name),
		[]dm.Target{storage.IntegrityTargetMode(partDev, offset, l.TagSize, provided, mode)}, false)
	if err != nil {
		return nil, fmt.Errorf("activating dm-integrity %s: %w", storage.IntegrityName(name), err)
	}
	vol.removes = []string{storage.IntegrityName(name)}
	vol.dif, vol.size = dif, int64(provided)*512
	return vol, nil
}

// activateCrypt puts dm-crypt with a copy of key over vol's dm-integrity device; on failure
// it tears vol down.
func (s *Stage) activateCrypt(vol *volume, hdr *luks2.Header, key *secret.Locked) error {
	k, err := secret.New(KeySize)
	if err != nil {
		s.teardown(vol)
		return err
	}
	copy(k.Bytes(), key.Bytes())
	if err := storage.LoadCrypt(vol.dmc, s.Keyring, s.log(), k, storage.LayoutHMACSHA256, vol.name, hdr.UUID, vol.dif.ID(), 0, uint64(vol.size)/512); err != nil {
		k.Wipe()
		s.teardown(vol)
		return fmt.Errorf("activating dm-crypt %s: %w", vol.name, err)
	}
	vol.removes = append([]string{vol.name}, vol.removes...)
	return nil
}

// teardownStrict removes vol's devices, top first, and says which stayed (device-mapper's
// errors name the device).
func (s *Stage) teardownStrict(vol *volume) error {
	var errs []error
	for _, name := range vol.removes {
		if err := vol.dmc.Remove(name); err != nil {
			errs = append(errs, err)
		}
	}
	vol.removes = nil
	return errors.Join(errs...)
}

// teardown is teardownStrict after a failure, which the caller reports: what stays is logged.
func (s *Stage) teardown(vol *volume) {
	if err := s.teardownStrict(vol); err != nil {
		s.log().Warn("could not remove a device after a failed persistent root setup", zap.Error(err))
	}
}

func lap(facts map[string]string, key string, since time.Time, now func() time.Time) time.Time {
	t := now()
	facts[key] = strconv.FormatInt(t.Sub(since).Milliseconds(), 10)
	return t
}

// GrowMounted grows the file system of the persistent root dev, mounted read-write at target,
// to its device when it is smaller. In a systemd initrd, sysroot.mount mounted it.
func (s *Stage) GrowMounted(dev, target string) (map[string]string, error) {
	before, after, err := s.FS.Grow(dev, target)
	if err != nil {
		return nil, err
	}
	facts := map[string]string{"device": dev, "target": target, "mode": "rw", "filesystem_bytes": strconv.FormatInt(after, 10)}
	if after > before {
		facts["grown_from_bytes"] = strconv.FormatInt(before, 10)
		s.log().Info("persistent root's file system grown to its partition", zap.String("device", dev),
			zap.Int64("from_bytes", before), zap.Int64("to_bytes", after))
	}
	return facts, nil
}

// MaintainMounted is MountRoot's key maintenance for a boot that holds no key: in a systemd
// initrd the persistent-root unit forgot it, and systemd mounted the root at target. When
// there is work (an enrollment request on the root, or more than one of cvmboot's tokens) it
// reads the header of part again and checks it (the host may have written it since the
// unlock), unseals as the unlock did (cvmboot's leave-initrd has not changed PCR 11 yet),
// maintains the keyslots (maintainKeys) and forgets the key. The header must be the unlocked
// volume's: its UUID and its volume key digest (keyDigest, the unlock's Result.KeyDigest),
// so that the key unsealed here is the running volume's whatever else the host wrote; its
// keyslots may have changed. It returns what changed, for the caller to measure, or nil.
func (s *Stage) MaintainMounted(part *disk.Partition, luksUUID, keyDigest, target string, facts map[string]string) (*eventlog.PersistentRootKeys, error) {
	// dm-integrity holds the partition: not exclusive.
	dev, err := s.openShared(part.Path)
	if err != nil {
		return nil, err
	}
	h, err := luks2.Read(dev)
	if cerr := dev.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): reading its LUKS2 header again: %w", part.Path, part.PartUUID, err)
	}
	if h.UUID != luksUUID {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): the LUKS2 header is %s, the unlocked volume is %s: refusing it", part.Path, part.PartUUID, h.UUID, luksUUID)
	}
	if err := CheckHeader(h); err != nil {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): %w; refusing it", part.Path, part.PartUUID, err)
	}
	d, err := KeyDigest(h)
	if err != nil {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): %w; refusing it", part.Path, part.PartUUID, err)
	}
	if d != keyDigest {
		return nil, fmt.Errorf("persistent root %s (PARTUUID %s): the LUKS2 header's volume key digest is %s, the unlocked volume's %s: another volume's header; refusing it",
			part.Path, part.PartUUID, d, keyDigest)
	}
	ours := 0
	for _, t := range h.Metadata.Tokens {
		if tok, err := tpmseal.ParseToken(t.JSON); err == nil && tok.PCRValues != nil {
			ours++
		}
	}
	// Most boots have one token and no request: they leave the TPM alone.
	if _, err := os.Lstat(filepath.Join(target, RequestPath)); ours < 2 && errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if _, _, err := s.checkTPM(facts); err != nil {
		return nil, err
	}
	key, tok, err := s.unseal(part, h, facts, nil)
	if err != nil {
		return nil, err
	}
	s.held = &held{key: key, part: part, hdr: h, generation: generation(tok)}
	defer s.Forget()
	facts["maintenance_keyslot"] = strconv.Itoa(tok.Keyslot)
	return s.maintainKeys(target, facts)
}

// MountRoot mounts the activated root read-write at target and grows its file system to
// the partition when it is smaller (after the conversion; a partition is not grown). Then it
// maintains the keyslots (maintainKeys) and forgets the volume key.
func (s *Stage) MountRoot(res *Result, target string) (map[string]string, error) {
	defer s.Forget()
	fstype, err := s.FS.Mount(res.Device, target)
	if err != nil {
		return nil, err
	}
	facts, err := s.GrowMounted(res.Device, target)
	if err != nil {
		return nil, err
	}
	facts["fstype"] = fstype
	if s.held != nil {
		keys, err := s.maintainKeys(target, facts)
		if err != nil {
			return nil, err
		}
		res.Keys = keys
	}
	return facts, nil
}
