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
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/verity"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// Stage names, in boot order.
const (
	StageEarlyMounts = "early-mounts"
	StageModules     = "modules"
	StageRoot        = "root"
	StageAttest      = "attest"
	StageStorage     = "storage"
	StageOverlay     = "overlay"
	StageHandoff     = "handoff"
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

// Boot holds what the stages share.
type Boot struct {
	Config  *config.Config
	Cmdline *cmdline.Cmdline
	Log     *zap.Logger
	Mounts  Mounts
	Modules Modules
	Devices Devices
	Attest  Attestation
	Verity  Verity
	// Storage returns the storage stage for the config and the mounted root device; mounts
	// outside /run go below targetRoot ("" in the booted system: where they are).
	Storage func(cfg config.Storage, rootDevice, targetRoot string) StorageSetup
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

	// Decided by the stages, read by later ones.
	rootDevice string
	rootVerity *verity.Result // the verity volume the root is mounted from, if any
	usrVerity  *verity.Result // the /usr verity volume, if any
	init       string
	measuring  bool // an event log is open on the platform's registers
	storage    StorageSetup
	storageRes *storage.Result // set up, its mounts inside the root still to make

	// Set by RunUnits: the stages run from systemd units, in the initrd or the booted system.
	units      bool
	initrd     bool
	unitReport *report.Report // the report so far, with the stages earlier units ran
}

// Stages returns the boot sequence as PID 1 runs it.
func (b *Boot) Stages() []stage.Stage {
	return []stage.Stage{
		{Name: StageEarlyMounts, Required: true, Run: b.earlyMounts},
		{Name: StageModules, Required: true, Run: b.modules},
		{Name: StageRoot, Required: true, Run: b.root},
		{Name: StageAttest, Required: true, Run: b.attest},
		{Name: StageStorage, Required: true, Run: b.storageStage},
		{Name: StageOverlay, Required: true, Run: b.overlay},
		{Name: StageHandoff, Required: true, Run: b.handoff},
	}
}

// Init is the program the handoff executes, decided by the handoff stage.
func (b *Boot) Init() string { return b.init }

// InitArgs are the arguments for init: argv[0] and what followed `--` on the command line.
func (b *Boot) InitArgs() []string {
	return append([]string{b.init}, b.Cmdline.InitArgs()...)
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
	return stage.Facts{"requested": strings.Join(names, ","), "loaded": strings.Join(loaded, ",")}, nil
}

// errNoRoot is returned when nothing names the root device.
var errNoRoot = errors.New("no root device: the kernel command line has neither roothash= nor root= and the config has no root.device")

func (b *Boot) root(ctx context.Context) (stage.Facts, error) {
	vc, err := verity.ParseCmdline(b.Cmdline)
	if err != nil {
		return nil, err
	}
	for _, w := range vc.Warnings {
		b.log().Warn("kernel command line: " + w)
	}
	vol, err := vc.RootVolume(b.Config.Verity.Required)
	if err != nil {
		return nil, err
	}
	fstype := string(b.Config.Root.FSType)
	if v, ok := b.Cmdline.Get("rootfstype"); ok && v != "" {
		fstype = v
	}
	opts := joinOptions(b.Config.Root.Options, b.Cmdline.Value("rootflags"))
	facts := stage.Facts{}
	var dev string
	if vol != nil {
		res, err := b.Verity.Activate(ctx, vol)
		if err != nil {
			return nil, err
		}
		b.rootVerity = res
		for k, v := range res.Facts {
			facts["verity_"+k] = v
		}
		dev = res.DevicePath
		facts["spec"] = "roothash=" + res.RootHash
	} else {
		spec := b.rootSpec()
		if spec == "" {
			return nil, errNoRoot
		}
		if dev, err = b.Devices.Wait(ctx, spec, b.Config.Devices.Timeout.Std()); err != nil {
			return nil, fmt.Errorf("root device: %w", err)
		}
		facts["spec"] = spec
	}
	used, err := b.Mounts.Root(dev, fstype, NewRoot, opts)
	if err != nil {
		return nil, err
	}
	b.rootDevice = dev
	facts["device"], facts["fstype"], facts["target"], facts["mode"] = dev, used, NewRoot, "ro"
	if opts != "" {
		facts["options"] = opts
	}
	// usrhash=: a separate /usr volume under the same rules, mounted read-only on the root.
	if vc.Usr != nil && vc.Enabled {
		res, err := b.Verity.Activate(ctx, vc.Usr)
		if err != nil {
			return nil, err
		}
		b.usrVerity = res
		usrType, err := b.Mounts.Root(res.DevicePath, "auto", NewRoot+"/usr", "")
		if err != nil {
			return nil, err
		}
		facts["usr_device"], facts["usr_fstype"], facts["usr_root_hash"] = res.DevicePath, usrType, res.RootHash
	}
	return facts, nil
}

// rootSpec names the root device without verity: root= or else root.device ("" for neither).
func (b *Boot) rootSpec() string {
	if spec, ok := b.Cmdline.Get("root"); ok && spec != "" {
		return spec
	}
	return b.Config.Root.Device
}

func (b *Boot) storageStage(ctx context.Context) (stage.Facts, error) {
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
	if b.units && !b.initrd {
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
	b.storage, b.storageRes = st, res
	return res.Facts, nil
}

// storageIntoRoot makes the storage mounts inside the assembled root (binds such as
// /var/lib/containers): after the overlay, which would hide them, before the switch.
func (b *Boot) storageIntoRoot() error {
	if b.storage == nil {
		return nil
	}
	if err := b.storage.MountIntoRoot(b.storageRes); err != nil {
		b.storage.Abort(b.storageRes)
		return fmt.Errorf("storage mounts inside the root: %w", err)
	}
	b.storage = nil
	return nil
}

func (b *Boot) overlay(context.Context) (stage.Facts, error) {
	cfg := b.Config.Overlay
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

func (b *Boot) handoff(ctx context.Context) (stage.Facts, error) {
	if b.rootDevice == "" {
		return nil, errors.New("no root was mounted at " + NewRoot)
	}
	init := b.Config.Root.Init
	if v, ok := b.Cmdline.Get("init"); ok && v != "" {
		init = v
	}
	if err := b.storageIntoRoot(); err != nil {
		return nil, err
	}
	// Evidence is taken last, when every decision of the initramfs is in the log; it lands in
	// /run, which the switch carries into the new root.
	facts, err := b.finishAttestation(ctx)
	if err != nil {
		return nil, err
	}
	if facts == nil {
		facts = stage.Facts{}
	}
	if err := b.Mounts.SwitchRoot(NewRoot, init); err != nil {
		return nil, err
	}
	b.init = init
	facts["init"], facts["root"] = init, b.rootDevice
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
