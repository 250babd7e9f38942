// Package boot is cvmboot's boot sequence: the ordered list of named stages that takes the
// machine from the kernel's initramfs to the real init.
//
// Each stage is a plain function over the small interfaces below (mounts, modules, block
// devices), so the whole sequence runs in unit tests with fakes and for real in the VM tests.
package boot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/persist"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/verity"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// NewRoot is where the real root is assembled before the switch.
const NewRoot = "/sysroot"

// OverlayOnStorageDir is the directory of the storage mount that holds the overlay's upper
// and work directories with overlay.upper: storage.
const OverlayOnStorageDir = ".cvmboot-root-overlay"

// OverlayStateDir holds the overlay's upper and work directories. It is below /run, so it
// moves into the new root with /run and operators can see what was written to /.
const OverlayStateDir = "/run/cvmboot/overlay"

// Mounts is what the stages need from the mount table.
type Mounts interface {
	// Early mounts /proc, /sys, /dev, /run and friends; it returns what it mounted.
	Early() ([]string, error)
	// Root mounts device read-only at target and returns the file system type used.
	Root(device, fstype, target, options string) (string, error)
	// SwitchRoot makes newRoot the root: it checks that init exists there, moves the API file
	// systems, deletes the initramfs and chroots. Exec comes after, so the report can record
	// the handoff before the process is replaced.
	SwitchRoot(newRoot, init string) error
	// Overlay mounts an overlay over the read-only root at target, with upper and work
	// directories in stateDir on a new tmpfs of tmpfsSize (or in stateDir as it is when
	// tmpfsSize is empty).
	Overlay(target, stateDir, tmpfsSize string) error
	// MountedAt returns the source of the topmost mount at target ("" when target is not a
	// mount point): the units find the root systemd mounted with it.
	MountedAt(target string) (string, error)
}

// Modules loads kernel modules with their dependencies.
type Modules interface {
	Load(ctx context.Context, names []string) (loaded []string, err error)
}

// Verity activates a dm-verity volume; it refuses any mismatch before the device exists.
type Verity interface {
	Activate(ctx context.Context, vol *verity.Volume) (*verity.Result, error)
}

// Devices finds block devices by spec (/dev/…, PARTUUID=, PARTLABEL=, UUID=, LABEL=).
type Devices interface {
	// Wait returns the device node path for spec once it exists, or an error naming spec
	// and what was seen when timeout passes.
	Wait(ctx context.Context, spec string, timeout time.Duration) (string, error)
}

// StorageSetup is the encrypted storage stage (*storage.Stage): Setup mounts what lies
// under /run, MountIntoRoot the rest once the root with its overlay is assembled, Abort
// undoes both.
type StorageSetup interface {
	Setup(ctx context.Context) (*storage.Result, error)
	MountIntoRoot(res *storage.Result) error
	Abort(res *storage.Result)
}

// PersistentRoot is root.persistent (*persist.Stage): Open makes or unlocks the encrypted
// root from the activated verity root, MountRoot mounts it read-write and grows it.
type PersistentRoot interface {
	Open(ctx context.Context, verityDevice, rootHash string) (*persist.Result, error)
	MountRoot(res *persist.Result, target string) (map[string]string, error)
	GrowMounted(dev, target string) (map[string]string, error)
	// MaintainMounted is MountRoot's key maintenance where no key is held (the units): it
	// unseals again when there is work.
	MaintainMounted(part *disk.Partition, luksUUID, keyDigest, target string, facts map[string]string) (*eventlog.PersistentRootKeys, error)
	// Forget wipes what Open keeps for MountRoot, when the boot stops between them.
	Forget()
}

// Boot holds what the stages share.
type Boot struct {
	Config  *config.Config
	Cmdline *cmdline.Cmdline // what the plan was made from: the steps read Plan
	Log     *zap.Logger
	Mounts  Mounts
	Modules Modules
	Devices Devices
	Attest  Attestation
	Verity  Verity
	// InitdataSource finds and installs Confidential Containers' initdata.
	InitdataSource InitdataSource
	// Storage returns the storage stage for the config and the mounted root device; mounts
	// outside /run go below targetRoot ("" in the booted system: where they are).
	Storage func(cfg config.Storage, rootDevice, targetRoot string) StorageSetup
	// Persist returns the persistent root's stage (root.persistent).
	Persist func() PersistentRoot
	// CmdlineRaw is /proc/cmdline as read, measured by digest.
	CmdlineRaw string
	// CmdlinePin is the digest of the pinned command line CmdlineRaw matched; "" when the
	// image pins none.
	CmdlinePin string
	// ConfigInfo identifies the effective config, for its measurement.
	ConfigInfo *report.Config
	// PackedModules are the modules the initramfs was built to load
	// (initramfs.ModulesLoadPath); the config's modules: list adds to them.
	PackedModules []string

	// EFIVarsDir is efivarfs, for the handoff's check of SystemdOptions (Env.EFIVarsDir).
	EFIVarsDir string
	// WarmInit starts reading the new root's init and its libraries (Env.WarmInit).
	WarmInit func(root, init string) stage.Facts

	// Mode is how this boot runs; Plan what the config and the command line decided.
	Mode Mode
	Plan *Plan

	// Decided by the steps, read by later ones: dec also by later units (DecisionsPath).
	dec        *Decisions
	rootDevice string
	init       string
	measuring  bool // an event log is open on the platform's registers
	storageSt  StorageSetup
	storageRes *storage.Result // set up, its mounts inside the root still to make
	persistSt  PersistentRoot
	persistRes *persist.Result // the activated persistent root, mounted by the root step
}

// Init is the program the handoff executes, decided by the handoff stage.
func (b *Boot) Init() string { return b.init }

// InitArgs are the arguments for init: argv[0] and what followed `--` on the command line.
func (b *Boot) InitArgs() []string {
	return append([]string{b.init}, b.Plan.InitArgs...)
}

func (b *Boot) earlyMounts(context.Context) (stage.Facts, error) {
	mounted, err := b.Mounts.Early()
	if err != nil {
		return nil, err
	}
	if len(mounted) == 0 {
		return nil, stage.Skip("all API file systems were already mounted")
	}
	return stage.Facts{"mounted": strings.Join(mounted, ",")}, nil
}

func (b *Boot) modules(ctx context.Context) (stage.Facts, error) {
	names := unique(append(append([]string(nil), b.PackedModules...), b.Config.Modules...))
	if len(names) == 0 {
		return nil, stage.Skip("no kernel modules configured")
	}
	loaded, err := b.Modules.Load(ctx, names)
	if err != nil {
		return nil, err
	}
	facts := stage.Facts{"requested": strings.Join(names, ","), "loaded": strings.Join(loaded, ",")}
	if b.Mode == ModeInitramfs {
		// API file systems that are modules (efivarfs, configfs in Debian's kernels) could
		// not be mounted before their modules were loaded: mount them now.
		mounted, err := b.Mounts.Early()
		if err != nil {
			return nil, err
		}
		if len(mounted) > 0 {
			facts["mounted"] = strings.Join(mounted, ",")
		}
	}
	return facts, nil
}

// errNoRoot is returned when nothing names the root device.
var errNoRoot = errors.New("no root device: the kernel command line has neither roothash= nor root= and the config has no root.device")

// verity activates the dm-verity volumes roothash= and usrhash= name (from a unit: before
// sysroot.mount mounts /dev/mapper/root). Any mismatch fails before a device exists.
func (b *Boot) verity(ctx context.Context) (stage.Facts, error) {
	for _, w := range b.Plan.VerityWarnings {
		b.log().Warn("kernel command line: " + w)
	}
	vols := b.Plan.verityVolumes()
	if len(vols) == 0 {
		return nil, stage.Skip("no roothash= or usrhash= on the kernel command line and verity.required is false")
	}
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	facts := stage.Facts{}
	for _, vol := range vols {
		res, err := b.Verity.Activate(ctx, vol)
		if err != nil {
			return nil, err
		}
		for k, v := range res.Facts {
			facts[vol.Name+"_"+k] = v
		}
		facts[vol.Name+"_device"] = res.DevicePath
		v := VerityVolume{Name: res.Name, Device: res.DevicePath, RootHash: res.RootHash,
			HashAlgorithm: res.HashAlgorithm, OnCorruption: res.OnCorruption}
		b.dec.Verity = append(b.dec.Verity, v)
		if err := b.measure(v.event()); err != nil {
			return nil, err
		}
	}
	return facts, nil
}

// event is the measurement of an activated verity volume.
func (v VerityVolume) event() eventlog.Event {
	return eventlog.Verity{Target: v.Name, RootHash: v.RootHash, HashAlgorithm: v.HashAlgorithm, OnCorruption: v.OnCorruption}.Event()
}

// persist is root.persistent: the encrypted root is made from the verified root at the
// first boot and unlocked with the TPM later; the root step mounts it read-write.
func (b *Boot) persist(ctx context.Context) (stage.Facts, error) {
	if !b.Plan.Persistent {
		return nil, stage.Skip("root.persistent is off: the verified root is booted read-only")
	}
	v := b.dec.volume("root")
	if v == nil {
		return nil, errors.New("root.persistent: no verified root was activated in this boot to copy or to check against")
	}
	if b.Persist == nil {
		return nil, errors.New("root.persistent is set but this environment cannot make a persistent root")
	}
	// The key is sealed to PCRs the stub and the firmware fill; what cvmboot measures of the
	// command line goes to PCR 15, outside the policy. A command line the host may change
	// (init=, cvmboot.* overrides) would get the unlocked root: it must be the UKI's.
	if b.CmdlinePin == "" {
		return nil, errors.New("root.persistent needs a pinned command line (cvmboot initramfs --cmdline): without it the host could boot the UKI with its own init= or overrides and get the unlocked root")
	}
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	// cvmboot's leave-initrd extend of PCR 11 is what keeps the booted system from unsealing.
	if !b.measuring {
		return nil, errors.New("root.persistent needs cvmboot's measurements in the TPM (its leave-initrd phase locks the key away from the booted system), but this boot measures nothing")
	}
	st := b.Persist()
	res, err := st.Open(ctx, v.Device, v.RootHash)
	if err != nil {
		return nil, err
	}
	if err := b.measure(res.Event.Event()); err != nil {
		st.Forget()
		return nil, err
	}
	b.dec.Persistent = &PersistentDecision{Device: res.Device, LUKSUUID: res.Event.LUKSUUID, KeyDigest: res.KeyDigest}
	if res.Partition != nil {
		b.dec.Persistent.Partition, b.dec.Persistent.PartUUID = res.Partition.Path, res.Partition.PartUUID
	}
	if b.Mode == ModeSystemdInitrd {
		// sysroot.mount mounts it (root= names it) and the root step, another process,
		// checks and grows it: the key goes with this one.
		st.Forget()
	} else {
		b.persistSt, b.persistRes = st, res
	}
	facts := stage.Facts(res.Facts)
	if res.Event.TPM == persist.TPMInsecureUnvouched {
		facts["warning"] = "INSECURE: the root's key is sealed to a TPM no TEE vouches for (root.insecure_unvouched_tpm); a host-emulated TPM can unseal it"
	}
	return facts, nil
}

// root makes the root's device known to the steps after it. As PID 1 it mounts the root
// (the verity volume, else root=) read-only at /sysroot, and a verified /usr on it. In a
// systemd initrd, systemd mounted /sysroot: with roothash= it must be the verified volume.
// In the booted system it is the device of the verity volume, root=, or whatever / is.
func (b *Boot) root(ctx context.Context) (stage.Facts, error) {
	switch b.Mode {
	case ModeSystemdInitrd:
		if b.dec.Persistent != nil {
			return b.checkPersistentSysroot()
		}
		if b.Plan.Persistent {
			return nil, errors.New("root.persistent is set but no persistent-root step activated the encrypted root in this boot (is cvmboot-persistent-root.service in the initrd?)")
		}
		return b.checkSysroot()
	case ModeSystemd:
		dev, err := b.bootedRootDevice(ctx)
		if err != nil {
			return nil, err
		}
		b.rootDevice = dev
		return stage.Facts{"device": dev}, nil
	}
	if b.persistRes != nil {
		facts, err := b.persistSt.MountRoot(b.persistRes, NewRoot)
		if err != nil {
			return nil, err
		}
		if k := b.persistRes.Keys; k != nil {
			if err := b.measure(k.Event()); err != nil {
				return nil, err
			}
		}
		b.rootDevice = b.persistRes.Device
		if b.WarmInit != nil {
			maps.Copy(facts, b.WarmInit(NewRoot, b.Plan.Init))
		}
		return facts, nil
	}
	facts := stage.Facts{}
	var dev string
	if v := b.dec.volume("root"); v != nil {
		dev = v.Device
		facts["spec"] = "roothash=" + v.RootHash
	} else {
		spec := b.Plan.RootSpec
		if spec == "" {
			return nil, errNoRoot
		}
		var err error
		if dev, err = b.Devices.Wait(ctx, spec, b.Config.Devices.Timeout.Std()); err != nil {
			return nil, fmt.Errorf("root device: %w", err)
		}
		facts["spec"] = spec
	}
	used, err := b.Mounts.Root(dev, b.Plan.RootFSType, NewRoot, b.Plan.RootOptions)
	if err != nil {
		return nil, err
	}
	b.rootDevice = dev
	facts["device"], facts["fstype"], facts["target"], facts["mode"] = dev, used, NewRoot, "ro"
	if b.WarmInit != nil && b.Plan.UsrVolume == nil {
		// The init's first reads hash its blocks (dm-verity); started now, that work
		// overlaps storage and the rest instead of following the handoff. With usrhash=
		// the init is on /usr, mounted by the usr step: that step starts it.
		maps.Copy(facts, b.WarmInit(NewRoot, b.Plan.Init))
	}
	if b.Plan.RootOptions != "" {
		facts["options"] = b.Plan.RootOptions
	}
	return facts, nil
}

// usr mounts the verified /usr (usrhash=) read-only on the assembled root. It runs after the
// overlay: an overlay mounted over /sysroot covers what is mounted below it, and its lower
// layer is the root file system alone, so a /usr mounted with the root would leave the
// running system the root partition's own /usr while the log claims a verified one.
func (b *Boot) usr(context.Context) (stage.Facts, error) {
	v := b.dec.volume("usr")
	if v == nil {
		if b.Plan.UsrVolume != nil {
			return nil, fmt.Errorf("usrhash= names a /usr verity volume but no verity step activated it in this boot: %s/usr is not verified", NewRoot)
		}
		return nil, stage.Skip("no usrhash= on the kernel command line: /usr is the root's")
	}
	if b.rootDevice == "" {
		return nil, errors.New("no root was mounted at " + NewRoot + " to mount /usr on")
	}
	target := NewRoot + "/usr"
	usrType, err := b.Mounts.Root(v.Device, "auto", target, "")
	if err != nil {
		return nil, err
	}
	facts := stage.Facts{"device": v.Device, "fstype": usrType, "target": target, "mode": "ro", "root_hash": v.RootHash}
	if b.WarmInit != nil {
		maps.Copy(facts, b.WarmInit(NewRoot, b.Plan.Init))
	}
	return facts, nil
}

// checkSysroot finds what systemd's sysroot.mount mounted at /sysroot. With a verity root
// it must be the verified volume: root=PARTUUID=… would mount the unverified partition
// while the verity event says otherwise.
func (b *Boot) checkSysroot() (stage.Facts, error) {
	src, err := b.sysrootSource()
	if err != nil {
		return nil, err
	}
	v := b.dec.volume("root")
	if b.Plan.RootVolume != nil && v == nil {
		return nil, fmt.Errorf("roothash= names a root verity volume but no verity step activated it in this boot (is cvmboot-verity.service in the initrd?): %s is not verified", NewRoot)
	}
	if v != nil && !sameDevice(src, v.Device) {
		return nil, fmt.Errorf("%s is mounted from %s, not from the verified %s (roothash=%s): the command line's root= must name %s",
			NewRoot, src, v.Device, v.RootHash, v.Device)
	}
	b.rootDevice = src
	return stage.Facts{"device": src, "target": NewRoot, "mounted_by": "systemd (sysroot.mount)"}, nil
}

// sysrootSource is the device systemd mounted at /sysroot.
func (b *Boot) sysrootSource() (string, error) {
	src, err := b.Mounts.MountedAt(NewRoot)
	if err != nil {
		return "", err
	}
	if src == "" {
		return "", errors.New("nothing is mounted at " + NewRoot + ": the root step must run after sysroot.mount")
	}
	return src, nil
}

// checkPersistentSysroot is checkSysroot for root.persistent: systemd mounted /sysroot, and
// it must be the encrypted root the persistent-root step activated; its file system is grown
// here (the first boot's copy is the verified root's size), which fails on a read-only mount.
func (b *Boot) checkPersistentSysroot() (stage.Facts, error) {
	p := b.dec.Persistent
	src, err := b.sysrootSource()
	if err != nil {
		return nil, err
	}
	if !sameDevice(src, p.Device) {
		return nil, fmt.Errorf("%s is mounted from %s, not from the persistent root %s (LUKS2 %s): the command line's root= must name %s",
			NewRoot, src, p.Device, p.LUKSUUID, p.Device)
	}
	if b.Persist == nil {
		return nil, errors.New("root.persistent is set but this environment cannot grow a persistent root")
	}
	if p.Partition == "" || p.KeyDigest == "" {
		return nil, fmt.Errorf("the persistent-root step's decision names no partition or key digest for %s", p.Device)
	}
	// What the key maintenance changes is measured: the measurements resume before it, and
	// a boot that measures nothing changes no keyslot (the persistent-root step refuses one).
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	if !b.measuring {
		return nil, errors.New("root.persistent needs cvmboot's measurements in the TPM, but this boot measures nothing")
	}
	st := b.Persist()
	facts, err := st.GrowMounted(p.Device, NewRoot)
	if err != nil {
		return nil, err
	}
	keys, err := st.MaintainMounted(&disk.Partition{Path: p.Partition, PartUUID: p.PartUUID}, p.LUKSUUID, p.KeyDigest, NewRoot, facts)
	if err != nil {
		return nil, err
	}
	if keys != nil {
		if err := b.measure(keys.Event()); err != nil {
			return nil, err
		}
	}
	b.rootDevice = src
	facts["mounted_by"] = "systemd (sysroot.mount)"
	return stage.Facts(facts), nil
}

// checkSysrootUsr is checkSysroot for usrhash= in a systemd initrd: systemd mounted
// /sysroot/usr (sysroot-usr.mount, by initrd-fs.target, which the evidence unit follows),
// and it must be the verified volume, not what mount.usr= or the initrd's fstab named.
func (b *Boot) checkSysrootUsr() error {
	v := b.dec.volume("usr")
	if b.Plan.UsrVolume == nil && v == nil {
		return nil
	}
	target := NewRoot + "/usr"
	if v == nil {
		return fmt.Errorf("usrhash= names a /usr verity volume but no verity step activated it in this boot: %s is not verified", target)
	}
	src, err := b.Mounts.MountedAt(target)
	if err != nil {
		return err
	}
	if src == "" {
		return fmt.Errorf("usrhash=%s but nothing is mounted at %s: the verified %s is not the system's /usr", v.RootHash, target, v.Device)
	}
	if !sameDevice(src, v.Device) {
		return fmt.Errorf("%s is mounted from %s, not from the verified %s (usrhash=%s): mount.usr= must name %s", target, src, v.Device, v.RootHash, v.Device)
	}
	return nil
}

// sameDevice tells whether two device paths name the same node (a /dev/mapper link and
// the dm-N node it points to are the same).
func sameDevice(a, b string) bool {
	if a == b {
		return true
	}
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	return errA == nil && errB == nil && ra == rb
}

// bootedRootDevice finds the root's device in the booted system: the verity volume the
// command line names (the initrd activated it), root=, root.device, or the device of /.
func (b *Boot) bootedRootDevice(ctx context.Context) (string, error) {
	timeout := b.Config.Devices.Timeout.Std()
	if vol := b.Plan.RootVolume; vol != nil {
		dev, err := b.Devices.Wait(ctx, "/dev/mapper/"+vol.Name, timeout)
		if err != nil {
			return "", fmt.Errorf("root device (the initrd should have activated its verity volume): %w", err)
		}
		return dev, nil
	}
	if spec := b.Plan.RootSpec; spec != "" {
		dev, err := b.Devices.Wait(ctx, spec, timeout)
		if err != nil {
			return "", fmt.Errorf("root device: %w", err)
		}
		return dev, nil
	}
	src, err := b.Mounts.MountedAt("/")
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(src, "/dev/") {
		return "", fmt.Errorf("no root device: the command line has neither roothash= nor root=, root.device is empty and / is mounted from %q, not a block device", src)
	}
	return src, nil
}

func (b *Boot) storage(ctx context.Context) (stage.Facts, error) {
	// Measuring first: "no encrypted storage" is a decision a verifier must see too.
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	cfg := b.Config.Storage
	if !cfg.Enabled {
		// Measured too: a verifier must tell "no encrypted storage" from a missed measurement.
		if err := b.measure(eventlog.Storage{Encrypted: false, Integrity: "none"}.Event()); err != nil {
			return nil, err
		}
		return nil, stage.Skip("storage.enabled is false")
	}
	if b.rootDevice == "" {
		return nil, errors.New("no root device is mounted: the storage partition goes on the root's disk")
	}
	if b.Storage == nil {
		return nil, errors.New("storage.enabled is true but this environment cannot set up storage")
	}
	targetRoot := NewRoot
	if !b.Mode.Initrd() {
		targetRoot = ""
	}
	st := b.Storage(cfg, b.rootDevice, targetRoot)
	res, err := st.Setup(ctx)
	if err != nil {
		return nil, err
	}
	ev := eventlog.Storage{Encrypted: res.Encrypted, Integrity: res.Integrity, Filesystem: res.Filesystem,
		Mountpoint: res.Mountpoint, PartUUID: res.PartUUID, LUKSUUID: res.LUKSUUID}
	if res.Encrypted {
		ev.Cipher, ev.KeyBits, ev.KeySource, ev.SectorSize = res.Cipher, res.KeyBits, "random", res.SectorSize
	}
	if err := b.measure(ev.Event()); err != nil {
		st.Abort(res)
		return nil, err
	}
	b.storageSt, b.storageRes = st, res
	return res.Facts, nil
}

// binds makes the storage's mounts inside the assembled root (binds such as
// /var/lib/containers): after the overlay, which would hide them, before the switch.
func (b *Boot) binds(context.Context) (stage.Facts, error) {
	if b.storageSt == nil {
		return nil, stage.Skip("no storage mounts go inside the root")
	}
	before := len(b.storageRes.Mounted)
	if err := b.storageSt.MountIntoRoot(b.storageRes); err != nil {
		b.storageSt.Abort(b.storageRes)
		return nil, fmt.Errorf("storage mounts inside the root: %w", err)
	}
	b.storageSt = nil
	made := b.storageRes.Mounted[before:]
	if len(made) == 0 {
		return nil, stage.Skip("no storage mounts go inside the root")
	}
	return stage.Facts{"mounted": strings.Join(made, ",")}, nil
}

func (b *Boot) overlay(context.Context) (stage.Facts, error) {
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	cfg := b.Config.Overlay
	if b.persistRes != nil || b.dec.Persistent != nil {
		if err := b.measure(eventlog.Overlay{Enabled: false}.Event()); err != nil {
			return nil, err
		}
		return nil, stage.Skip("root.persistent: the root is the writable encrypted partition, no overlay")
	}
	if !cfg.Enabled {
		// A verifier must be able to tell a read-only root from a forgotten measurement.
		if err := b.measure(eventlog.Overlay{Enabled: false}.Event()); err != nil {
			return nil, err
		}
		return nil, stage.Skip("overlay.enabled is false: the root stays read-only")
	}
	if b.rootDevice == "" {
		return nil, errors.New("no root was mounted at " + NewRoot + " to put the overlay on")
	}
	stateDir, size := OverlayStateDir, cfg.Size.TmpfsOption()
	switch cfg.Upper {
	case config.UpperTmpfs:
	case config.UpperStorage:
		// Writes to / go to the encrypted storage, for workloads that write more than RAM
		// holds. The upper layer is a directory of the storage mount, which must already be
		// mounted (under /run); the storage's size bounds it, not overlay.size.
		res := b.storageRes
		if !res.MountpointReady() {
			return nil, fmt.Errorf("overlay.upper is storage but no storage is mounted under /run to hold it (storage.mountpoint is %q)",
				b.Config.Storage.Mountpoint)
		}
		if !res.Encrypted {
			b.log().Warn("overlay.upper is storage but the storage is a tmpfs (storage.on_no_space): writes to / stay in RAM",
				zap.String("state", stateDir))
		}
		stateDir, size = filepath.Join(res.Mountpoint, OverlayOnStorageDir), ""
	default:
		return nil, fmt.Errorf("overlay.upper is %q: expected tmpfs or storage", cfg.Upper)
	}
	if err := b.Mounts.Overlay(NewRoot, stateDir, size); err != nil {
		return nil, err
	}
	if err := b.measure(eventlog.Overlay{Enabled: true, Upper: string(cfg.Upper), Size: size}.Event()); err != nil {
		return nil, err
	}
	facts := stage.Facts{"lower": b.rootDevice, "upper": string(cfg.Upper), "state": stateDir, "target": NewRoot}
	if size != "" {
		facts["size"] = size
	}
	return facts, nil
}

// evidence ends the initrd's measurements and writes the evidence: when every decision of
// the initrd is in the log. It lands in /run, which the switch carries into the root.
func (b *Boot) evidence(ctx context.Context) (stage.Facts, error) {
	if missing := b.dec.missing(b.Mode, StageEvidence); len(missing) > 0 {
		return nil, fmt.Errorf("the steps %s did not run in this boot: evidence now would leave out their decisions", strings.Join(missing, ", "))
	}
	if b.Mode == ModeSystemdInitrd {
		if err := b.checkSysrootUsr(); err != nil {
			return nil, err
		}
	}
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	if !b.measuring {
		return nil, stage.Skip("nothing is measured on this machine (no TEE or TPM and attest.require is none)")
	}
	return b.finishAttestation(ctx)
}

func (b *Boot) handoff(context.Context) (stage.Facts, error) {
	if b.rootDevice == "" {
		return nil, errors.New("no root was mounted at " + NewRoot)
	}
	// efivarfs is mounted now (after the modules step): systemd would read SystemdOptions.
	if err := checkEFIOptions(b.EFIVarsDir, b.CmdlinePin); err != nil {
		return nil, err
	}
	init := b.Plan.Init
	if err := b.Mounts.SwitchRoot(NewRoot, init); err != nil {
		return nil, err
	}
	b.init = init
	facts := stage.Facts{"init": init, "root": b.rootDevice}
	// What the boot cost in memory: the peak resident set of this process (mke2fs, a child,
	// has its own).
	if kib, err := peakRSSKiB("/proc/self/status"); err == nil {
		facts["peak_rss_kib"] = strconv.FormatInt(kib, 10)
	}
	return facts, nil
}

// peakRSSKiB reads VmHWM (the peak resident set size) from a /proc/PID/status file.
func peakRSSKiB(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s has no VmHWM line", path)
}

func joinOptions(opts ...string) string {
	var out []string
	for _, o := range opts {
		if o = strings.Trim(o, ", "); o != "" {
			out = append(out, o)
		}
	}
	return strings.Join(out, ",")
}

func unique(names []string) []string {
	seen := make(map[string]bool, len(names))
	out := names[:0]
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func (b *Boot) log() *zap.Logger {
	if b.Log == nil {
		return zap.NewNop()
	}
	return b.Log
}
