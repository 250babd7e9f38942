package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/luks2"
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

	vol *volume // the activated stack after Setup, for Abort
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
	// What activation spent on the LUKS2 metadata and on dm-integrity (format and load).
	headerMS, integrityMS int64
}

// Result is what a finished setup reports: the facts for the boot report and the
// decisions the boot measures. It never holds the key.
type Result struct {
	// Facts are for the boot report (devices, timings); the measurement and the boot's
	// decisions use the typed fields.
	Facts map[string]string
	// Encrypted is false for the tmpfs fallback (storage.on_no_space: tmpfs).
	Encrypted  bool
	Cipher     string
	KeyBits    int
	Integrity  string // "hmac-sha256", "aead" or "none" (storage.integrity off, or tmpfs)
	SectorSize int
	Filesystem string
	Mountpoint string
	PartUUID   string
	LUKSUUID   string
	// Mounted are the targets mounted so far, in order.
	Mounted []string

	// rootMounts are the mounts that go inside TargetRoot, made by MountIntoRoot once the
	// root is assembled (the overlay would hide anything mounted there before it).
	rootMounts []pendingMount
	source     string // what the mount point is mounted from
	fstype     string
	mountData  string
}

// MountpointReady reports whether the volume is mounted at Mountpoint already (Setup mounts
// it there when it is under /run; inside the root only MountIntoRoot does).
func (r *Result) MountpointReady() bool {
	return r != nil && r.Mountpoint != "" && slices.Contains(r.Mounted, r.Mountpoint)
}

// pendingMount is a mount inside TargetRoot not made yet.
type pendingMount struct {
	target string
	bind   bool
}

// Run runs the whole stage: Setup, then MountIntoRoot. The boot calls the two apart, with
// the overlay between them.
func (s *Stage) Run(ctx context.Context) (map[string]string, error) {
	res, err := s.Setup(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.MountIntoRoot(res); err != nil {
		s.Abort(res)
		return nil, err
	}
	return res.Facts, nil
}

// Setup finds or makes the partition, formats and activates the encrypted volume, creates
// its file system and mounts it where the targets are under /run (which moves into the
// real root at the switch). Targets inside TargetRoot are left to MountIntoRoot.
func (s *Stage) Setup(ctx context.Context) (*Result, error) {
	cfg := s.Config
	if !cfg.Enabled {
		return nil, errors.New("storage.enabled is false: nothing to set up")
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
	facts := map[string]string{}
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

	dmc, closeDM, err := s.control()
	if err != nil {
		return nil, err
	}
	defer closeDM()
	vol, err := s.activate(dmc, part, layout)
	if err != nil {
		return nil, err
	}
	t = lap("activate_ms", t)
	facts["luks2_header_ms"] = strconv.FormatInt(vol.headerMS, 10)
	if layout.HasIntegrity() {
		facts["integrity_setup_ms"] = strconv.FormatInt(vol.integrityMS, 10)
	}
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
	fsName := string(cmp.Or(cfg.Filesystem, config.StorageExt4))
	res := &Result{Facts: facts, source: vol.path, fstype: fsName, mountData: s.Formatter.MountData()}
	if err := s.mountRun(res); err != nil {
		return nil, err
	}
	lap("mount_ms", t)
	lap("ready_ms", start)
	// What the setup cost the disk: header, dm-integrity superblock, probe regions, mkfs.
	if n, err := s.Devices.Written(part.Path); err == nil {
		facts["written_bytes"] = strconv.FormatInt(n, 10)
	}
	ok = true
	s.vol = vol
	target := res.Mountpoint

	facts["device"] = vol.path
	facts["luks_uuid"] = vol.luksUUID
	facts["cipher"] = layout.Cipher
	facts["volume_key_bits"] = strconv.Itoa(layout.KeySize * 8)
	facts["integrity"] = cmp.Or(layout.LUKSIntegrity, "none")
	if layout.HasIntegrity() {
		facts["integrity_journal"] = "none"
	}
	facts["sector_size"] = strconv.Itoa(EncryptionSectorSize)
	facts["filesystem"] = fsName
	facts["size_bytes"] = strconv.FormatInt(vol.size, 10)
	facts["mountpoint"] = target
	if len(cfg.Binds) > 0 {
		facts["binds"] = strings.Join(cfg.Binds, ",")
	}
	res.Encrypted, res.Cipher, res.KeyBits = true, layout.Cipher, layout.KeySize*8
	res.Integrity, res.SectorSize, res.Filesystem = integrityName(cfg.Integrity), EncryptionSectorSize, fsName
	res.PartUUID, res.LUKSUUID = part.PartUUID, vol.luksUUID
	s.log().Info("encrypted storage ready", zap.String("device", vol.path), zap.String("mountpoint", target),
		zap.Int64("bytes", vol.size), zap.String("integrity", facts["integrity"]), zap.Bool("reused", part.Reused))
	return res, nil
}

// integrityName is storage.integrity as the measurement names it.
func integrityName(i config.Integrity) string {
	switch i {
	case config.IntegrityOff:
		return "none"
	case "":
		return string(config.IntegrityHMACSHA256)
	}
	return string(i)
}

// Abort undoes a Setup whose mounts inside the root failed: it unmounts what Setup mounted
// and removes the device-mapper stack, so nothing is left holding the volume.
func (s *Stage) Abort(res *Result) {
	if res == nil {
		return
	}
	s.unmountAll(res.Mounted)
	res.Mounted = nil
	if s.vol == nil {
		return
	}
	dmc, closeDM, err := s.control()
	if err != nil {
		s.log().Warn("could not remove the storage devices after a failed mount", zap.Error(err))
		return
	}
	defer closeDM()
	s.teardown(dmc, s.vol)
	s.vol = nil
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

	key, err := newLockedKey(l.KeySize)
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

// inRun reports whether p is under /run, which moves into the real root at the switch, so
// mounts there can be made before the root is assembled.
func (s *Stage) inRun(p string) bool {
	return p == "/run" || strings.HasPrefix(p, "/run/") || s.TargetRoot == ""
}

// resolve places a mount point: under /run as it is, elsewhere inside TargetRoot.
func (s *Stage) resolve(p string) string {
	if s.inRun(p) {
		return p
	}
	return filepath.Join(s.TargetRoot, p)
}

// mountRun mounts the volume at the mount point and binds it to the bind targets, all
// nodev,nosuid, as far as they are under /run; the others are recorded for MountIntoRoot.
// A mount point inside the root defers everything (the binds come from it). On failure
// whatever it mounted is unmounted again.
func (s *Stage) mountRun(res *Result) error {
	cfg := s.Config
	res.Mountpoint = s.resolve(cfg.Mountpoint)
	if !s.inRun(cfg.Mountpoint) {
		res.rootMounts = append(res.rootMounts, pendingMount{target: res.Mountpoint})
		for _, b := range cfg.Binds {
			res.rootMounts = append(res.rootMounts, pendingMount{target: s.resolve(b), bind: true})
		}
		return nil
	}
	if err := s.mountOne(res, pendingMount{target: res.Mountpoint}); err != nil {
		return err
	}
	for _, b := range cfg.Binds {
		pm := pendingMount{target: s.resolve(b), bind: true}
		if !s.inRun(b) {
			res.rootMounts = append(res.rootMounts, pm)
			continue
		}
		if err := s.mountOne(res, pm); err != nil {
			s.unmountAll(res.Mounted)
			res.Mounted = nil
			return err
		}
	}
	return nil
}

// MountIntoRoot makes the mounts inside TargetRoot that Setup left, once the root (with
// its overlay) is in place. On failure it unmounts what it mounted; Abort undoes the rest.
func (s *Stage) MountIntoRoot(res *Result) error {
	if res == nil {
		return nil
	}
	done := len(res.Mounted)
	for _, pm := range res.rootMounts {
		if err := s.mountOne(res, pm); err != nil {
			s.unmountAll(res.Mounted[done:])
			res.Mounted = res.Mounted[:done]
			return err
		}
	}
	res.rootMounts = nil
	return nil
}

// mountOne mounts the volume (or binds the mount point) at pm.target, nodev,nosuid.
func (s *Stage) mountOne(res *Result, pm pendingMount) error {
	if err := s.Mounter.MkdirAll(pm.target); err != nil {
		return err
	}
	if !pm.bind {
		data := res.mountData
		if res.fstype == "tmpfs" {
			data = "mode=0755"
		}
		if err := s.Mounter.Mount(res.source, pm.target, res.fstype, mountFlags, data); err != nil {
			return err
		}
		res.Mounted = append(res.Mounted, pm.target)
		return nil
	}
	if err := s.Mounter.Mount(res.Mountpoint, pm.target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	res.Mounted = append(res.Mounted, pm.target)
	// A bind ignores nodev,nosuid; a remount applies them.
	return s.Mounter.Mount("", pm.target, "", unix.MS_REMOUNT|unix.MS_BIND|mountFlags, "")
}

// unmountAll unmounts targets, last first.
func (s *Stage) unmountAll(targets []string) {
	for i := len(targets) - 1; i >= 0; i-- {
		if err := s.Mounter.Unmount(targets[i]); err != nil {
			s.log().Warn("could not unmount after a failed storage mount", zap.String("target", targets[i]), zap.Error(err))
		}
	}
}

// tmpfsFallback mounts a tmpfs where the storage would be, for
// storage.on_no_space: tmpfs. Container storage then lives in RAM.
func (s *Stage) tmpfsFallback(cause error) (*Result, error) {
	res := &Result{source: "tmpfs", fstype: "tmpfs", Integrity: "none", Filesystem: "tmpfs"}
	if err := s.mountRun(res); err != nil {
		return nil, err
	}
	s.log().Warn("no room for encrypted storage on the boot disk: container storage is a tmpfs in RAM (storage.on_no_space is tmpfs)",
		zap.String("mountpoint", res.Mountpoint), zap.Error(cause))
	res.Facts = map[string]string{"backing": "tmpfs", "mountpoint": res.Mountpoint, "reason": cause.Error()}
	if len(s.Config.Binds) > 0 {
		res.Facts["binds"] = strings.Join(s.Config.Binds, ",")
	}
	return res, nil
}
