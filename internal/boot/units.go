package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/verity"
	"github.com/cvmboot/cvmboot/internal/version"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// Stages only systemd units run: in a systemd initrd, systemd mounts the root and switches
// to it, so the verity volume is activated on its own and the evidence is taken by a last
// unit instead of the handoff.
const (
	StageVerity   = "verity"
	StageEvidence = "evidence"
)

// InitrdRelease exists in every systemd initrd; the units tell the initrd from the booted
// system by it, as systemd does.
const InitrdRelease = "/etc/initrd-release"

// UnitStages are the stages a systemd unit may run with `cvmboot run`, in the order the
// units are ordered (systemd/cvmboot-*.service): each unit is its own process, so what one
// decides reaches the next through the boot report and the event log.
func (b *Boot) UnitStages() []stage.Stage {
	return []stage.Stage{
		{Name: StageModules, Required: true, Run: b.modules},
		{Name: StageAttest, Required: true, Run: b.attestUnit},
		{Name: StageVerity, Required: true, Run: b.verityUnit},
		{Name: StageOverlay, Required: true, Run: b.overlayUnit},
		{Name: StageStorage, Required: true, Run: b.storageUnit},
		{Name: StageEvidence, Required: true, Run: b.evidenceUnit},
	}
}

// UnitStageNames lists the stages `cvmboot run` accepts, for its help.
func UnitStageNames() string {
	return strings.Join(stage.Names((&Boot{}).UnitStages()), ", ")
}

// attestUnit is the attest stage of a unit: the TPM or TEE device may still be coming up
// (udev loads its driver), so a required one is waited for up to devices.timeout.
func (b *Boot) attestUnit(ctx context.Context) (stage.Facts, error) {
	if b.Config.Attest.Require == config.AttestNone {
		return b.attest(ctx)
	}
	deadline := time.Now().Add(b.Config.Devices.Timeout.Std())
	for {
		facts, err := b.attest(ctx)
		if err == nil || time.Now().After(deadline) {
			return facts, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// resumeMeasuring reopens the event log and registers in a unit that runs after the attest
// unit, so that its decisions are measured like PID 1's. A required platform whose attest
// stage is not in the report stops the stage: its decisions would go unmeasured.
func (b *Boot) resumeMeasuring() error {
	if b.measuring {
		return nil
	}
	var st *report.Stage
	if b.unitReport != nil {
		st = b.unitReport.Stage(StageAttest)
	}
	if st == nil || st.Status != report.StatusOK {
		if b.Config.Attest.Require != config.AttestNone {
			return fmt.Errorf("attest.require is %s but the boot report has no attest stage that ran (is cvmboot-attest.service in the initrd?): this stage's decisions would go unmeasured",
				b.Config.Attest.Require)
		}
		return nil
	}
	_, active, err := b.Attest.Start(b.Config.Attest.Require)
	if err != nil {
		return err
	}
	b.measuring = active
	return nil
}

// verityUnit activates the root (and /usr) dm-verity volumes named on the command line,
// before sysroot.mount mounts /dev/mapper/root. Any mismatch fails before a device exists.
func (b *Boot) verityUnit(ctx context.Context) (stage.Facts, error) {
	vc, err := verity.ParseCmdline(b.Cmdline)
	if err != nil {
		return nil, err
	}
	for _, w := range vc.Warnings {
		b.log().Warn("kernel command line: " + w)
	}
	root, err := vc.RootVolume(b.Config.Verity.Required)
	if err != nil {
		return nil, err
	}
	var vols []*verity.Volume
	if root != nil {
		vols = append(vols, root)
	}
	if vc.Usr != nil && vc.Enabled {
		vols = append(vols, vc.Usr)
	}
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
		if err := b.measure(verityEvent(res)); err != nil {
			return nil, err
		}
	}
	return facts, nil
}

// overlayUnit puts the overlay on the root systemd mounted at /sysroot (sysroot.mount), as
// systemd.volatile=overlay would, before initrd-root-fs.target.
func (b *Boot) overlayUnit(ctx context.Context) (stage.Facts, error) {
	if !b.initrd {
		return nil, errors.New("the overlay stage runs in the initrd (before the switch to the real root): " + InitrdRelease + " does not exist here")
	}
	if b.Config.Overlay.Enabled && b.Config.Overlay.Upper == config.UpperStorage {
		// The storage unit runs after the overlay unit so that its mounts inside the root are
		// not hidden by the overlay; an upper layer on the storage needs cvmboot as PID 1.
		return nil, errors.New("overlay.upper is storage, which needs cvmboot as PID 1 (initramfs mode); in a systemd initrd use overlay.upper: tmpfs")
	}
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	if b.Config.Overlay.Enabled {
		src, err := b.Mounts.MountedAt(NewRoot)
		if err != nil {
			return nil, err
		}
		if src == "" {
			return nil, errors.New("nothing is mounted at " + NewRoot + ": the overlay unit must run after sysroot.mount")
		}
		b.rootDevice = src
	}
	return b.overlay(ctx)
}

// storageUnit sets up the encrypted storage on the root's disk. In the initrd it runs after
// the overlay unit and makes its mounts inside /sysroot at once; in the booted system
// (images that keep their own initrd) it mounts straight at storage.mountpoint.
func (b *Boot) storageUnit(ctx context.Context) (stage.Facts, error) {
	// Measuring first: "no encrypted storage" is a decision a verifier must see too.
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	if !b.Config.Storage.Enabled {
		return b.storageStage(ctx)
	}
	dev, err := b.unitRootDevice(ctx)
	if err != nil {
		return nil, err
	}
	b.rootDevice = dev
	facts, err := b.storageStage(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.storageIntoRoot(); err != nil {
		return nil, err
	}
	return facts, nil
}

// unitRootDevice finds the root's device without the root stage: the verity volume the
// command line names, root=, root.device, or (booted system) the device mounted at /.
func (b *Boot) unitRootDevice(ctx context.Context) (string, error) {
	timeout := b.Config.Devices.Timeout.Std()
	vc, err := verity.ParseCmdline(b.Cmdline)
	if err != nil {
		return "", err
	}
	vol, err := vc.RootVolume(b.Config.Verity.Required)
	if err != nil {
		return "", err
	}
	if vol != nil {
		// Activated by the verity unit; waiting covers udev still creating the link.
		dev, err := b.Devices.Wait(ctx, "/dev/mapper/"+vol.Name, timeout)
		if err != nil {
			return "", fmt.Errorf("root device for the storage (the verity unit should have activated it): %w", err)
		}
		return dev, nil
	}
	if spec := b.rootSpec(); spec != "" {
		dev, err := b.Devices.Wait(ctx, spec, timeout)
		if err != nil {
			return "", fmt.Errorf("root device for the storage: %w", err)
		}
		return dev, nil
	}
	if !b.initrd {
		src, err := b.Mounts.MountedAt("/")
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(src, "/dev/") {
			return src, nil
		}
		return "", fmt.Errorf("no root device for the storage: the command line has neither roothash= nor root=, root.device is empty and / is mounted from %q, not a block device", src)
	}
	return "", errNoRoot
}

// evidenceUnit ends the initrd's measurements and writes the evidence, as the handoff does
// for PID 1: ordered after every other cvmboot unit, before initrd.target.
func (b *Boot) evidenceUnit(ctx context.Context) (stage.Facts, error) {
	if err := b.resumeMeasuring(); err != nil {
		return nil, err
	}
	if !b.measuring {
		return nil, stage.Skip("nothing is measured on this machine (no TEE or TPM and attest.require is none)")
	}
	return b.finishAttestation(ctx)
}

// RunUnits runs the named stages for a systemd unit and appends them to the boot report. A
// failure prints the FATAL line on the console, records the failure and returns exit code
// 1: the unit's FailureAction= (written by `cvmboot systemd-generator`) stops the boot.
func RunUnits(env Env, names []string, stderr io.Writer) int {
	cl, raw, err := readCmdline(env.CmdlinePath)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	// Before anything reads the command line; the generator has already stopped such a
	// boot, this is the units' own check.
	pin, err := checkPin(env.CmdlinePinPath, raw)
	if err != nil {
		action := failureAction(pinFailureConfig(env.ConfigPath))
		emergencyLines(env.Emergency, "stage "+StageCmdline+" failed", err)
		if env.Emergency != nil {
			env.Emergency(fmt.Sprintf("cvmboot: failure action: %s (FailureAction=%s)", action, SystemdFailureAction(action)))
		}
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	cfg, info, err := loadConfig(env.ConfigPath, cl)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		if env.Emergency != nil {
			env.Emergency("cvmboot: FATAL: config: " + err.Error())
		}
		return 1
	}
	log := env.Setup(cfg)
	defer log.Sync()
	logPin(log, env.CmdlinePinPath, pin)
	_, statErr := os.Stat(env.InitrdRelease)
	// An initrd built with cvmboot's dracut module lists the modules the config needs, as
	// `cvmboot initramfs` does.
	packed, err := readModulesLoad(env.ModulesLoadPath)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	b := &Boot{Config: cfg, Cmdline: cl, Log: log, Mounts: env.Mounts, Modules: env.Modules, Devices: env.Devices,
		Attest: env.Attest, Verity: env.Verity, Storage: env.Storage, CmdlineRaw: raw, CmdlinePin: pin, ConfigInfo: info,
		PackedModules: packed, units: true, initrd: env.InitrdRelease != "" && statErr == nil}
	stages, err := stage.Select(b.UnitStages(), names)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 2
	}
	rep, err := report.ReadFile(env.ReportPath)
	if err != nil {
		// The first unit of the boot starts the report.
		mode := "systemd"
		if b.initrd {
			mode = "systemd-initrd"
		}
		rep = &report.Report{Schema: report.Schema, Version: version.Version, Mode: mode, Started: stage.WallClock.Now(),
			Uptime: uptimeSeconds(), Outcome: report.OutcomeRunning}
	}
	rep.Cmdline, rep.Config, rep.CmdlinePinned = cl.String(), info, pin
	b.unitReport = rep
	save := func(r *report.Report) error { return r.WriteFile(env.ReportPath) }
	runner := stage.Runner{Log: log, Clock: env.Clock, Report: rep, Save: save}
	if err := runner.Run(context.Background(), stages); err != nil {
		name := "run"
		var se *stage.Error
		cause := err
		if errors.As(err, &se) {
			name, cause = se.Stage, se.Err
		}
		action := failaction.Select(string(cfg.Failure.Action), cfg.Debug.Enabled)
		rep.Outcome = report.OutcomeFailed
		rep.Failure = &report.Failure{Stage: name, Error: cause.Error(), Action: string(action)}
		rep.Finished = stage.WallClock.Now()
		if werr := save(rep); werr != nil {
			log.Warn("cannot save the boot report", zap.Error(werr))
		}
		log.Error("cvmboot run failed", zap.String("failed_stage", name), zap.Error(cause))
		if env.Emergency != nil {
			env.Emergency(fmt.Sprintf("cvmboot: FATAL: stage %s failed: %v", name, cause))
			env.Emergency(fmt.Sprintf("cvmboot: failure action: %s (FailureAction=%s)", action, SystemdFailureAction(action)))
		}
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	if slices.Contains(names, lastUnitStage(b.initrd)) {
		// The boot's last unit: what follows is systemd's (the switch to the real root).
		rep.Outcome = report.OutcomeOK
		rep.Finished = stage.WallClock.Now()
		if err := save(rep); err != nil {
			log.Warn("cannot save the boot report", zap.Error(err))
		}
	}
	return 0
}

// lastUnitStage is the stage of the boot's last cvmboot unit: cvmboot-evidence in the
// initrd, cvmboot-scratch-storage in a booted system that keeps its own initrd.
func lastUnitStage(initrd bool) string {
	if initrd {
		return StageEvidence
	}
	return StageStorage
}

// SystemdFailureAction is the FailureAction= that carries out a failure action for the
// units. The -force variants stop at once without starting other units (no emergency
// shell); systemd has no kernel panic, so panic powers off immediately. A shell (debug
// only) leaves the failure to systemd, whose initrd then starts its emergency target.
func SystemdFailureAction(a failaction.Action) string {
	switch a {
	case failaction.Reboot:
		return "reboot-force"
	case failaction.Halt:
		return "halt-force"
	case failaction.Panic:
		return "poweroff-immediate"
	case failaction.Shell:
		return "none"
	}
	return "poweroff-force"
}

// verityEvent is the measurement of an activated verity volume.
func verityEvent(v *verity.Result) eventlog.Event {
	return eventlog.Verity{Target: v.Name, RootHash: v.RootHash,
		HashAlgorithm: v.Facts["algorithm"], OnCorruption: v.Facts["corruption"]}.Event()
}

// UnitNames are cvmboot's systemd units (systemd/), which the generator gives their
// FailureAction=.
var UnitNames = []string{"cvmboot-attest.service", "cvmboot-verity.service", "cvmboot-overlay.service",
	"cvmboot-storage.service", "cvmboot-evidence.service", "cvmboot-scratch-storage.service"}

// GeneratorDropIn is the drop-in `cvmboot systemd-generator` writes for each unit.
const GeneratorDropIn = "50-cvmboot-failure-action.conf"

// Generate is `cvmboot systemd-generator DIR`: it writes a drop-in into DIR for every cvmboot
// unit with the FailureAction= of the configured failure.action, so a failed unit stops the
// boot the configured way instead of reaching the emergency shell. A config or command line
// that cannot be read still gets drop-ins, with the secure default (power off).
//
// Generators run before systemd starts any unit, so the generator is where a command line
// that is not the pinned one stops the boot: `systemd.unit=`, `rd.systemd.debug_shell` or
// `init=` would act before cvmboot's first unit. It prints the FATAL line and carries out the
// failure action of the config file (the command line's overrides are the host's) at once.
func Generate(env Env, dir string, stderr io.Writer) error {
	action, source := failaction.Poweroff, "default (the config could not be read)"
	cl, raw, err := readCmdline(env.CmdlinePath)
	var pinErr error
	if err == nil {
		_, pinErr = checkPin(env.CmdlinePinPath, raw)
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "cvmboot systemd-generator: %v: using FailureAction=%s\n", err, SystemdFailureAction(action))
	case pinErr != nil:
		if cfg := pinFailureConfig(env.ConfigPath); cfg != nil {
			action = failureAction(cfg)
			source = "failure.action: " + string(cfg.Failure.Action) + " (the command line is refused)"
		}
	default:
		if cfg, _, err := loadConfig(env.ConfigPath, cl); err != nil {
			fmt.Fprintf(stderr, "cvmboot systemd-generator: %v: using FailureAction=%s\n", err, SystemdFailureAction(action))
		} else {
			action = failaction.Select(string(cfg.Failure.Action), cfg.Debug.Enabled)
			source = "failure.action: " + string(cfg.Failure.Action)
		}
	}
	if err := writeDropIns(dir, source, action); err != nil {
		return err
	}
	if pinErr == nil {
		return nil
	}
	emergencyLines(env.Emergency, "stage "+StageCmdline+" failed", pinErr)
	if env.Emergency != nil {
		env.Emergency(fmt.Sprintf("cvmboot: failure action: %s", action))
	}
	if action == failaction.Shell {
		// Debug images only: the units fail on the same check and systemd's emergency
		// target follows (FailureAction=none).
		return nil
	}
	if action == failaction.Panic {
		action = failaction.Poweroff // a generator's exit panics nothing (poweroff-immediate)
	}
	return failaction.Execute(action, env.System)
}

// writeDropIns gives every cvmboot unit the FailureAction= of action.
func writeDropIns(dir, source string, action failaction.Action) error {
	body := fmt.Sprintf("# Written by cvmboot systemd-generator from %s.\n[Unit]\nFailureAction=%s\n", source, SystemdFailureAction(action))
	for _, unit := range UnitNames {
		d := filepath.Join(dir, unit+".d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, GeneratorDropIn), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
