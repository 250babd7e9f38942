package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/stage"
)

// DeviceName is the device-mapper name of the volume (/dev/mapper/NAME);
// its dm-integrity device is NAME_dif.
const DeviceName = "cvmboot-storage"

// Probe regions are written (zeros through dm-crypt, so with valid tags)
// at both ends of an integrity volume before mkfs. libblkid, which mke2fs
// and udev run, reads up to 4 MiB + 512 bytes from the start (LUKS2
// secondary header candidates) and up to 1.5 MiB before the end (RAID
// signatures), measured with strace; the regions add room for read-ahead.
const (
	ProbeHead = 5 << 20
	ProbeTail = 3 << 20
)

// Disk finds or makes the storage partition on the disk holding the root.
type Disk interface {
	Prepare(ctx context.Context, rootDevice string, req disk.Request) (*disk.Partition, error)
}

// RootDisk is Disk on the real boot disk: the disk under rootDevice.
type RootDisk struct{ Preparer *disk.Preparer }

// Prepare implements Disk.
func (r RootDisk) Prepare(ctx context.Context, rootDevice string, req disk.Request) (*disk.Partition, error) {
	d, err := r.Preparer.DiskOf(rootDevice)
	if err != nil {
		return nil, err
	}
	return r.Preparer.Prepare(ctx, d, req)
}

// DeviceMapper is what the stage needs of device-mapper; *dm.Control has it.
type DeviceMapper interface {
	CreateAndLoad(name, uuid string, targets []dm.Target, readOnly bool) (dm.Device, error)
	Remove(name string) error
}

// Stage is the storage boot stage: free disk space → partition → LUKS2 with
// a random key held only by the kernel → dm-integrity + dm-crypt → file
// system → mounted. Every dependency is an interface so the whole flow runs
// in unit tests with fakes.
type Stage struct {
	Config config.Storage
	Log    *zap.Logger
	// RootDevice returns the root device the root stage mounted.
	RootDevice func() string
	// TargetRoot is where the real root is assembled (boot.NewRoot). Mount
	// points and binds under /run are used as they are (/run moves into the
	// real root at the switch); others are created under TargetRoot.
	TargetRoot string
	// DevDir holds the mapper/ nodes; "/dev" when empty.
	DevDir string

	Disk    Disk
	Devices Devices
	// DM is opened with dm.Open at Run time when nil (dm_mod is only
	// loaded by the modules stage).
	DM        DeviceMapper
	Formatter Formatter
	Mounter   Mounter
	Random    Random
	Keyring   Keyring
	Now       func() time.Time
}

// New returns the stage on the real system for cfg.
func New(cfg config.Storage, log *zap.Logger, rootDevice func() string, targetRoot string) *Stage {
	return &Stage{
		Config:     cfg,
		Log:        log,
		RootDevice: rootDevice,
		TargetRoot: targetRoot,
		Disk:       RootDisk{Preparer: &disk.Preparer{Log: log, Mknod: true}},
		Devices:    BlockDevices{},
		Formatter: &Mkfs{FS: cfg.Filesystem, Integrity: cfg.Integrity != config.IntegrityOff,
			Label: cfg.Label},
		Mounter: SysMounter{},
		Random:  Getrandom{},
		Keyring: KernelKeyring{},
	}
}

// LayoutFor maps storage.integrity to the encryption layout.
func LayoutFor(i config.Integrity) (Layout, error) {
	switch i {
	case config.IntegrityHMACSHA256, "":
		return LayoutHMACSHA256, nil
	case config.IntegrityAEAD:
		return LayoutAEAD, nil
	case config.IntegrityOff:
		return LayoutNone, nil
	}
	return Layout{}, fmt.Errorf("storage.integrity %q: expected hmac-sha256, aead or off", i)
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

// volume is the activated encryption stack.
type volume struct {
	path     string // /dev/mapper/NAME
	size     int64  // bytes of the crypt device
	luksUUID string
	removes  []string // device-mapper names to remove on failure, top first
}

// Run runs the stage.
func (s *Stage) Run(ctx context.Context) (stage.Facts, error) {
	cfg := s.Config
	if !cfg.Enabled {
		return nil, stage.Skip("storage.enabled is false")
	}
	layout, err := LayoutFor(cfg.Integrity)
	if err != nil {
		return nil, err
	}
	root := ""
	if s.RootDevice != nil {
		root = s.RootDevice()
	}
	if root == "" {
		return nil, errors.New("no root device is known: the storage partition goes on the root's disk")
	}
	start := s.now()
	facts := stage.Facts{}
	lap := func(key string, since time.Time) time.Time {
		now := s.now()
		facts[key] = strconv.FormatInt(now.Sub(since).Milliseconds(), 10)
		return now
	}

	part, err := s.Disk.Prepare(ctx, root, disk.Request{
		Label: cfg.Label, TypeGUID: cfg.TypeGUID.String(), MinSize: int64(cfg.MinSize),
	})
	if errors.Is(err, disk.ErrNoSpace) {
		if cfg.OnNoSpace == config.NoSpaceTmpfs {
			return s.tmpfsFallback(err)
		}
		return nil, fmt.Errorf("%w (storage.on_no_space is fail; tmpfs would keep container storage in RAM)", err)
	}
	if err != nil {
		return nil, err
	}
	t := lap("partition_ms", start)
	facts["backing"] = "encrypted-partition"
	facts["partition"] = cmp.Or(part.Path, part.Disk)
	facts["partition_number"] = strconv.Itoa(part.Number)
	facts["partuuid"] = part.PartUUID
	facts["partition_bytes"] = strconv.FormatInt(part.Size, 10)
	facts["partition_reused"] = strconv.FormatBool(part.Reused)
	facts["table_repaired"] = strconv.FormatBool(part.Repaired)

	dmc := s.DM
	if dmc == nil {
		c, err := dm.Open()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		dmc = c
	}
	vol, err := s.activate(dmc, part, layout)
	if err != nil {
		return nil, err
	}
	t = lap("activate_ms", t)
	ok := false
	defer func() {
		if !ok {
			s.teardown(dmc, vol)
		}
	}()

	if layout.HasIntegrity() {
		if err := s.writeProbeRegions(vol); err != nil {
			return nil, err
		}
		t = lap("probe_regions_ms", t)
	}
	if err := s.Formatter.Format(ctx, vol.path, vol.size); err != nil {
		return nil, fmt.Errorf("creating the %s file system on %s: %w", cmp.Or(string(cfg.Filesystem), "ext4"), vol.path, err)
	}
	t = lap("mkfs_ms", t)
	target, err := s.mount(vol.path, string(cmp.Or(cfg.Filesystem, config.StorageExt4)))
	if err != nil {
		return nil, err
	}
	lap("mount_ms", t)
	lap("ready_ms", start)
	ok = true

	facts["device"] = vol.path
	facts["luks_uuid"] = vol.luksUUID
	facts["cipher"] = layout.Cipher
	facts["volume_key_bits"] = strconv.Itoa(layout.KeySize * 8)
	facts["integrity"] = cmp.Or(layout.LUKSIntegrity, "none")
	if layout.HasIntegrity() {
		facts["integrity_journal"] = "none"
	}
	facts["sector_size"] = strconv.Itoa(EncryptionSectorSize)
	facts["filesystem"] = string(cmp.Or(cfg.Filesystem, config.StorageExt4))
	facts["size_bytes"] = strconv.FormatInt(vol.size, 10)
	facts["mountpoint"] = target
	if len(cfg.Binds) > 0 {
		facts["binds"] = strings.Join(cfg.Binds, ",")
	}
	s.log().Info("encrypted storage ready", zap.String("device", vol.path), zap.String("mountpoint", target),
		zap.Int64("bytes", vol.size), zap.String("integrity", facts["integrity"]), zap.Bool("reused", part.Reused))
	return facts, nil
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

	key, err := newLockedKey(l.KeySize)
	if err != nil {
		return nil, err
	}
	defer key.Wipe()
	if err := s.Random.Fill(key.Bytes()); err != nil {
		return nil, fmt.Errorf("generating the %d-byte volume key: %w", l.KeySize, err)
	}

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

	vol := &volume{path: filepath.Join(cmp.Or(s.DevDir, "/dev"), "mapper", DeviceName), luksUUID: hdr.UUID}
	dataDev, dataOffset := partDev, offset
	sectors := uint64(part.Size-offset) / sectorBytes / 8 * 8
	if l.HasIntegrity() {
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
	}

	if err := s.loadCrypt(dmc, key, l, hdr.UUID, dataDev, dataOffset, sectors); err != nil {
		s.teardown(dmc, vol)
		return nil, fmt.Errorf("activating dm-crypt %s: %w", DeviceName, err)
	}
	vol.removes = append([]string{DeviceName}, vol.removes...)
	vol.size = int64(sectors) * sectorBytes
	return vol, nil
}

// loadCrypt hands the key to the thread keyring, wipes it from memory and
// loads the dm-crypt table that references it, all on one OS thread (the
// thread keyring is that thread's), then drops the key from the keyring.
func (s *Stage) loadCrypt(dmc DeviceMapper, key *lockedKey, l Layout, luksUUID, dataDev string, dataOffset int64, sectors uint64) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	desc := KeyDescription(luksUUID)
	id, err := s.Keyring.AddLogon(desc, key.Bytes())
	key.Wipe() // the kernel has it now
	if err != nil {
		return err
	}
	_, err = dmc.CreateAndLoad(DeviceName, CryptUUID(luksUUID, DeviceName),
		[]dm.Target{CryptTarget(l, KeyringRef(l.KeySize, desc), dataDev, dataOffset, sectors)}, false)
	if ierr := s.Keyring.Invalidate(id); ierr != nil {
		s.log().Warn("volume key left in the thread keyring", zap.String("description", desc), zap.Error(ierr))
	}
	return err
}

// formatIntegrity lets the kernel write a fresh dm-integrity superblock
// through a temporary 8-sector device, then reads the data size it chose.
func (s *Stage) formatIntegrity(dmc DeviceMapper, path, dev string, offset int64, tagSize int, maxSectors uint64, luksUUID string) (uint64, error) {
	name := "temporary-cvmboot-" + luksUUID
	if _, err := dmc.CreateAndLoad(name, "", []dm.Target{IntegrityFormatTarget(dev, offset, tagSize)}, false); err != nil {
		return 0, fmt.Errorf("formatting dm-integrity on %s: %w", path, err)
	}
	if err := dmc.Remove(name); err != nil {
		return 0, fmt.Errorf("removing the dm-integrity format device %s: %w", name, err)
	}
	b := make([]byte, integritySBSize)
	if err := s.Devices.ReadDirect(path, offset, b); err != nil {
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
	if err := s.Devices.ZeroDirect(vol.path, 0, ProbeHead); err != nil {
		return err
	}
	return s.Devices.ZeroDirect(vol.path, vol.size-ProbeTail, ProbeTail)
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

// resolve places a mount point: under /run as it is (it moves into the real
// root at the switch), elsewhere inside TargetRoot.
func (s *Stage) resolve(p string) string {
	if p == "/run" || strings.HasPrefix(p, "/run/") || s.TargetRoot == "" {
		return p
	}
	return filepath.Join(s.TargetRoot, p)
}

// mount mounts source at the configured mount point and binds it to the
// configured targets, all nodev,nosuid, and returns the mount point. On
// failure whatever it mounted is unmounted again.
func (s *Stage) mount(source, fstype string) (string, error) {
	target := s.resolve(s.Config.Mountpoint)
	if err := s.Mounter.MkdirAll(target); err != nil {
		return "", err
	}
	data := ""
	if fstype == "tmpfs" {
		data = "mode=0755"
	}
	if err := s.Mounter.Mount(source, target, fstype, mountFlags, data); err != nil {
		return "", err
	}
	mounted := []string{target}
	for _, b := range s.Config.Binds {
		dst := s.resolve(b)
		err := s.Mounter.MkdirAll(dst)
		if err == nil {
			err = s.Mounter.Mount(target, dst, "", unix.MS_BIND, "")
			if err == nil {
				mounted = append(mounted, dst)
				// A bind ignores nodev,nosuid; a remount applies them.
				err = s.Mounter.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|mountFlags, "")
			}
		}
		if err != nil {
			for i := len(mounted) - 1; i >= 0; i-- {
				if uerr := s.Mounter.Unmount(mounted[i]); uerr != nil {
					s.log().Warn("could not unmount after a failed storage mount", zap.String("target", mounted[i]), zap.Error(uerr))
				}
			}
			return "", err
		}
	}
	return target, nil
}

// tmpfsFallback mounts a tmpfs where the storage would be, for
// storage.on_no_space: tmpfs. Container storage then lives in RAM.
func (s *Stage) tmpfsFallback(cause error) (stage.Facts, error) {
	target, err := s.mount("tmpfs", "tmpfs")
	if err != nil {
		return nil, err
	}
	s.log().Warn("no room for encrypted storage on the boot disk: container storage is a tmpfs in RAM (storage.on_no_space is tmpfs)",
		zap.String("mountpoint", target), zap.Error(cause))
	facts := stage.Facts{"backing": "tmpfs", "mountpoint": target, "reason": cause.Error()}
	if len(s.Config.Binds) > 0 {
		facts["binds"] = strings.Join(s.Config.Binds, ",")
	}
	return facts, nil
}
