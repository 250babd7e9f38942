package boot

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/blockdev"
	"github.com/cvmboot/cvmboot/internal/cmdline"
	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/disk"
	"github.com/cvmboot/cvmboot/internal/dm"
	"github.com/cvmboot/cvmboot/internal/efivar"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/internal/initramfs"
	"github.com/cvmboot/cvmboot/internal/kmod"
	"github.com/cvmboot/cvmboot/internal/logging"
	"github.com/cvmboot/cvmboot/internal/mount"
	"github.com/cvmboot/cvmboot/internal/persist"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/storage"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tpmvouch"
	"github.com/cvmboot/cvmboot/internal/verity"
	"github.com/cvmboot/cvmboot/internal/warm"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// machine adapts the real packages to the stage interfaces. Its logger is set once the
// configuration is known, before any stage runs.
type machine struct {
	log *zap.Logger
	cfg *config.Config
}

func (m *machine) Early() ([]string, error) { return (&mount.Mounter{Log: m.log}).Early() }

func (m *machine) Root(dev, fstype, target, options string) (string, error) {
	return mount.RootWithLog(m.log, dev, fstype, target, options)
}

func (m *machine) SwitchRoot(newRoot, init string) error {
	return (&mount.Switcher{NewRoot: newRoot, Init: init, Log: m.log}).Enter()
}

func (m *machine) Overlay(target, stateDir, tmpfsSize string) error {
	return mount.Overlay(m.log, mount.OverlaySpec{Target: target, StateDir: stateDir, TmpfsSize: tmpfsSize})
}

func (m *machine) Activate(ctx context.Context, vol *verity.Volume) (*verity.Result, error) {
	ctl, err := dm.Open()
	if err != nil {
		return nil, fmt.Errorf("dm-verity for %s: %w", vol.Name, err)
	}
	defer ctl.Close()
	return verity.Activate(ctx, verity.Options{
		Volume: vol, OnCorruption: m.cfg.Verity.OnCorruption, Debug: m.cfg.Debug.Enabled,
		Timeout: m.cfg.Devices.Timeout.Std(), DM: ctl, Devices: blockdev.NewScanner(m.log), Log: m.log,
	})
}

func (m *machine) storage(cfg config.Storage, rootDevice, targetRoot string) StorageSetup {
	return storage.New(cfg, m.log, func() string { return rootDevice }, targetRoot)
}

func (m *machine) persist(cfg *config.Config) PersistentRoot {
	esp, err := efivar.LoaderDevicePartUUID(efivar.Dir)
	if err != nil {
		esp = "" // the firmware did not say; the persistent root never takes an ESP by type either
	}
	return &persist.Stage{
		Log: m.log, AllowUnvouchedTPM: cfg.Root.InsecureUnvouchedTPM, ESPPartUUID: esp,
		// configfs is mounted: the persistent root needs measurements, which start first.
		Vouch:   tpmvouch.ForPlatform(tee.Detect(tee.Options{})),
		Disk:    storage.RootDisk{Preparer: &disk.Preparer{Log: m.log, Mknod: true}},
		Devices: storage.BlockDevices{}, Keyring: storage.KernelKeyring{}, Random: storage.Getrandom{},
		TPMs: persist.DeviceTPM{}, Copier: persist.DirectCopier{Log: m.log}, FS: persist.Ext4{Log: m.log},
	}
}

func (m *machine) MountedAt(target string) (string, error) {
	mounts, err := mount.ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	if mi := mount.Lookup(mounts, target); mi != nil {
		return mi.Source, nil
	}
	return "", nil
}

func (m *machine) Load(ctx context.Context, names []string) ([]string, error) {
	return (&kmod.Loader{Log: m.log, Concurrent: true}).LoadNames(ctx, names)
}

func (m *machine) Wait(ctx context.Context, spec string, timeout time.Duration) (string, error) {
	d, err := blockdev.NewScanner(m.log).Wait(ctx, spec, timeout)
	if err != nil {
		return "", err
	}
	return d.Path, nil
}

// Real returns the environment of a real boot.
func Real() Env {
	m := &machine{log: zap.NewNop()}
	pid1 := os.Getpid() == 1
	att := &platformAttestation{log: zap.NewNop()}
	// PID 1 keeps its records, with their fields, for the journal of the booted system.
	var spool *logging.Spool
	if pid1 {
		spool = logging.NewSpool()
	}
	return Env{
		Mounts: m, Modules: m, Devices: m, Attest: att, Verity: m, Storage: m.storage, Persist: m.persist, InitdataSource: cocoInitdata{},
		System:    failaction.Kernel{},
		Bootstrap: bootstrapMounts,
		Setup: func(cfg *config.Config) *zap.Logger {
			m.cfg = cfg
			lvl, err := zapcore.ParseLevel(string(cfg.Log.Level))
			if err != nil {
				lvl = zapcore.InfoLevel
			}
			if pid1 {
				// Our own records must not be rate limited away during the boot.
				_ = logging.LiftKmsgRateLimit("/proc")
			}
			m.log = logging.AutoSpooled(lvl, pid1, spool)
			att.log = m.log
			return m.log
		},
		Emergency:   emergency,
		HandoffArgs: systemdHandoffArgs,
		WarmInit:    m.warmInit,
		Exec: func(path string, argv []string) error {
			// After the switch /run is the real root's: `cvmboot journal-import` (a unit of
			// the booted system) sends the spool to journald.
			if spool != nil {
				if err := spool.WriteFile(logging.SpoolPath); err != nil {
					m.log.Warn("initramfs log records not kept for the journal", zap.Error(err))
				}
			}
			return unix.Exec(path, argv, mount.DefaultEnv())
		},
		CmdlinePath:     "/proc/cmdline",
		CmdlinePinPath:  cmdline.PinPath,
		EFIVarsDir:      efivar.Dir,
		ConfigPath:      config.DefaultPath,
		ModulesLoadPath: initramfs.ModulesLoadPath,
		ReportPath:      report.DefaultPath,
		DecisionsPath:   DecisionsPath,
		InitrdRelease:   InitrdRelease,
	}
}

// warmInit asks the kernel, from a goroutine, to read the init and its shared objects from
// the new root: finding them reads ELF headers, and asking queues the reads, which both take
// time the steps after the root need not wait for.
func (m *machine) warmInit(root, init string) stage.Facts {
	log := m.log
	go func() {
		// debug/elf reads the root's files; a root that is not verified could hold one
		// that panics it, and a panic here would end PID 1.
		defer func() {
			if r := recover(); r != nil {
				log.Info("init not read ahead", zap.Any("panic", r))
			}
		}()
		files, err := warm.Files(root, init)
		if err != nil {
			log.Info("init not read ahead", zap.Error(err))
			return
		}
		n, size := warm.Advise(files)
		log.Debug("init read ahead", zap.Int("files", n), zap.Int64("bytes", size))
	}()
	return stage.Facts{"read_ahead": init + " and its shared objects, in the background"}
}
