package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/efivar"
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
	// EFIVarsDir is efivarfs (efivar.Dir when empty; "-" reads nothing), for the ESP the
	// boot came from, which is never reused.
	EFIVarsDir string

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

// espPartUUID is the ESP the firmware booted from, which storage never reuses; "" when the
// firmware did not say (no systemd-boot or -stub, no efivarfs).
func (s *Stage) espPartUUID() string {
	if s.EFIVarsDir == "-" {
		return ""
	}
	u, err := efivar.LoaderDevicePartUUID(s.EFIVarsDir)
	if err != nil {
		s.log().Debug("the ESP the boot came from is unknown", zap.Error(err))
		return ""
	}
	return u
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
		Label: cfg.Label, TypeGUID: cfg.TypeGUID.String(), MinSize: int64(cfg.MinSize), ESPPartUUID: s.espPartUUID(),
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
