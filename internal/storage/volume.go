package storage

import (
	"cmp"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/secret"
)

// volume is the activated encryption stack.
type volume struct {
	path     string // /dev/mapper/NAME
	size     int64  // bytes of the crypt device
	luksUUID string
	removes  []string // device-mapper names to remove on failure, top first
	// What activation spent on the LUKS2 metadata and on dm-integrity (format and load).
	headerMS, integrityMS int64
}

// control returns the device-mapper to use and how to release it: s.DM as it is, or
// /dev/mapper/control opened now (dm_mod is only loaded by the modules stage).
func (s *Stage) control() (DeviceMapper, func(), error) {
	if s.DM != nil {
		return s.DM, func() {}, nil
	}
	c, err := dm.Open()
	if err != nil {
		return nil, nil, err
	}
	return c, func() { c.Close() }, nil
}

// activate writes the LUKS2 header with a fresh random key and builds the
// device-mapper stack. The key lives in locked memory until the kernel
// keyring has it, and leaves the keyring as soon as dm-crypt has its copy.
func (s *Stage) activate(dmc DeviceMapper, part *disk.Partition, l Layout) (*volume, error) {
	if part.Path == "" {
		return nil, fmt.Errorf("storage partition %d of %s has no device node", part.Number, part.Disk)
	}
	pmaj, pmin, err := s.Devices.Number(part.Path)
	if err != nil {
		return nil, err
	}
	partDev := fmt.Sprintf("%d:%d", pmaj, pmin)

	key, err := secret.New(l.KeySize)
	if err != nil {
		return nil, err
	}
	defer key.Wipe()
	if err := s.Random.Fill(key.Bytes()); err != nil {
		return nil, fmt.Errorf("generating the %d-byte volume key: %w", l.KeySize, err)
	}

	headerStart := s.now()
	dev, err := s.Devices.Open(part.Path)
	if err != nil {
		return nil, err
	}
	hdr, err := luks2.Format(dev, part.Size, luks2.Options{
		Label:      truncateLabel(s.Config.Label, luks2.MaxLabelLen),
		Subsystem:  "cvmboot",
		Cipher:     l.Cipher,
		KeySize:    l.KeySize,
		SectorSize: EncryptionSectorSize,
		Integrity:  l.LUKSIntegrity,
		VolumeKey:  key.Bytes(),
		// No keyslot: the key exists only in the kernel.
		SparseKeyslotsArea: true,
	})
	if err == nil && l.HasIntegrity() {
		// The kernel formats a dm-integrity superblock only over zeros.
		_, err = dev.WriteAt(make([]byte, integritySBSize), int64(hdr.DataOffset()))
		if err != nil {
			err = fmt.Errorf("zeroing the dm-integrity superblock area of %s: %w", part.Path, err)
		}
	}
	if cerr := dev.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing the LUKS2 header to %s: %w", part.Path, err)
	}
	if err := observeKey(hdr.UUID, key.Bytes()); err != nil {
		return nil, err
	}
	offset := int64(hdr.DataOffset())
	if part.Size <= offset+2*EncryptionSectorSize {
		return nil, fmt.Errorf("storage partition %s is %d bytes: too small for the %d-byte LUKS2 metadata", part.Path, part.Size, offset)
	}
	s.log().Info("LUKS2 header written", zap.String("partition", part.Path), zap.String("luks_uuid", hdr.UUID),
		zap.String("cipher", l.Cipher), zap.String("integrity", cmp.Or(l.LUKSIntegrity, "none")), zap.Int("keyslots", 0))

	vol := &volume{path: filepath.Join(cmp.Or(s.DevDir, "/dev"), "mapper", DeviceName), luksUUID: hdr.UUID,
		headerMS: s.now().Sub(headerStart).Milliseconds()}
	dataDev, dataOffset := partDev, offset
	sectors := uint64(part.Size-offset) / sectorBytes / 8 * 8
	if l.HasIntegrity() {
		integrityStart := s.now()
		provided, err := s.formatIntegrity(dmc, part.Path, partDev, offset, l.TagSize, uint64(part.Size-offset)/sectorBytes, hdr.UUID)
		if err != nil {
			return nil, err
		}
		dif, err := dmc.CreateAndLoad(IntegrityName(DeviceName), IntegrityUUID(hdr.UUID, DeviceName),
			[]dm.Target{IntegrityTarget(partDev, offset, l.TagSize, provided)}, false)
		if err != nil {
			return nil, fmt.Errorf("activating dm-integrity %s: %w", IntegrityName(DeviceName), err)
		}
		vol.removes = append(vol.removes, IntegrityName(DeviceName))
		dataDev, dataOffset, sectors = dif.ID(), 0, provided
		vol.integrityMS = s.now().Sub(integrityStart).Milliseconds()
	}

	if err := s.loadCrypt(dmc, key, l, hdr.UUID, dataDev, dataOffset, sectors); err != nil {
		s.teardown(dmc, vol)
		return nil, fmt.Errorf("activating dm-crypt %s: %w", DeviceName, err)
	}
	vol.removes = append([]string{DeviceName}, vol.removes...)
	vol.size = int64(sectors) * sectorBytes
	return vol, nil
}

// loadCrypt loads this stage's dm-crypt device (LoadCrypt).
func (s *Stage) loadCrypt(dmc DeviceMapper, key *secret.Locked, l Layout, luksUUID, dataDev string, dataOffset int64, sectors uint64) error {
	return LoadCrypt(dmc, s.Keyring, s.log(), key, l, DeviceName, luksUUID, dataDev, dataOffset, sectors)
}

// LoadCrypt hands the key to the thread keyring, wipes it from memory and loads the
// dm-crypt table of device name that references it, all on one OS thread (the thread
// keyring is that thread's), then drops the key from the keyring.
func LoadCrypt(dmc DeviceMapper, kr Keyring, log *zap.Logger, key *secret.Locked, l Layout, name, luksUUID, dataDev string, dataOffset int64, sectors uint64) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	desc := KeyDescription(luksUUID)
	id, err := kr.AddLogon(desc, key.Bytes())
	key.Wipe() // the kernel has it now
	if err != nil {
		return err
	}
	_, err = dmc.CreateAndLoad(name, CryptUUID(luksUUID, name),
		[]dm.Target{CryptTarget(l, KeyringRef(l.KeySize, desc), dataDev, dataOffset, sectors)}, false)
	if ierr := kr.Invalidate(id); ierr != nil {
		log.Warn("volume key left in the thread keyring", zap.String("description", desc), zap.Error(ierr))
	}
	return err
}

// formatIntegrity formats this stage's dm-integrity superblock (FormatIntegrity).
func (s *Stage) formatIntegrity(dmc DeviceMapper, path, dev string, offset int64, tagSize int, maxSectors uint64, luksUUID string) (uint64, error) {
	return FormatIntegrity(dmc, s.Devices, path, dev, offset, tagSize, maxSectors, luksUUID, formatJournalSectors)
}

// FormatIntegrity lets the kernel write a fresh dm-integrity superblock through a temporary
// 8-sector device, then reads the data size it chose. The journal holds journalSectors
// (512-byte sectors; the kernel rounds up to whole sections); 0 leaves its size to the
// kernel (1/128 of the device, at most 64 MiB).
func FormatIntegrity(dmc DeviceMapper, devs Devices, path, dev string, offset int64, tagSize int, maxSectors uint64, luksUUID string, journalSectors int) (uint64, error) {
	name := "temporary-cvmboot-" + luksUUID
	if _, err := dmc.CreateAndLoad(name, "", []dm.Target{integrityFormatTarget(dev, offset, tagSize, journalSectors)}, false); err != nil {
		return 0, fmt.Errorf("formatting dm-integrity on %s: %w", path, err)
	}
	if err := dmc.Remove(name); err != nil {
		return 0, fmt.Errorf("removing the dm-integrity format device %s: %w", name, err)
	}
	return ReadIntegrity(devs, path, offset, tagSize, maxSectors)
}

// ReadIntegrity reads and checks the dm-integrity superblock at offset of path and returns
// the data sectors it provides.
func ReadIntegrity(devs Devices, path string, offset int64, tagSize int, maxSectors uint64) (uint64, error) {
	b := make([]byte, integritySBSize)
	if err := devs.ReadDirect(path, offset, b); err != nil {
		return 0, fmt.Errorf("reading the dm-integrity superblock of %s: %w", path, err)
	}
	sb, err := ParseIntegritySuperblock(b, tagSize, maxSectors)
	if err != nil {
		return 0, fmt.Errorf("%s at byte %d: %w", path, offset, err)
	}
	return sb.ProvidedDataSectors, nil
}

// writeProbeRegions writes zeros over the probe regions at both ends of an
// integrity volume, so that signature probes read sectors with valid tags.
func (s *Stage) writeProbeRegions(vol *volume) error {
	if vol.size <= ProbeHead+ProbeTail {
		return s.Devices.ZeroDirect(vol.path, 0, vol.size)
	}
	// Both ends at once: each writer waits for its own writes, and the encryption and
	// tagging of the other end's can run on another CPU meanwhile.
	tail := make(chan error, 1)
	go func() { tail <- s.Devices.ZeroDirect(vol.path, vol.size-ProbeTail, ProbeTail) }()
	return errors.Join(s.Devices.ZeroDirect(vol.path, 0, ProbeHead), <-tail)
}

// teardown removes what activate built, top device first.
func (s *Stage) teardown(dmc DeviceMapper, vol *volume) {
	for _, name := range vol.removes {
		if err := dmc.Remove(name); err != nil {
			s.log().Warn("could not remove device after a failed storage setup", zap.String("device", name), zap.Error(err))
		}
	}
	vol.removes = nil
}
