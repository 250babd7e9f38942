package boot

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/config"
	"github.com/cvmboot/cvmboot/internal/failaction"
	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/version"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// RunInit is the PID 1 entry point. It does not return on success: the process becomes
// the real init. On failure it runs the failure action; it returns an exit code only when
// even that failed, and as PID 1 exiting then panics the kernel, which still stops the boot.
func RunInit(env Env) int { return Run(env, ModeInitramfs, nil, io.Discard) }

// RunUnits runs the named steps for a systemd unit (`cvmboot run`), in the initrd or the
// booted system (InitrdRelease tells), and adds them to the boot report. A failure prints the
// FATAL line, records it and returns 1: the unit's FailureAction= (written by `cvmboot
// systemd-generator`) stops the boot.
func RunUnits(env Env, names []string, stderr io.Writer) int {
	mode := ModeSystemd
	if _, err := os.Stat(env.InitrdRelease); env.InitrdRelease != "" && err == nil {
		mode = ModeSystemdInitrd
	}
	if names == nil {
		names = []string{}
	}
	return Run(env, mode, names, stderr)
}

// Run is the one lifecycle of every mode: command line (checked against the pin) and config
// → plan → the steps → the failure action and FATAL lines, or the handoff; the report
// records it all. names are the steps a unit runs; nil runs all of mode's steps (PID 1).
// Only here is the boot's outcome decided: running between units, ok once the mode's last
// step ran, failed when a step failed.
func Run(env Env, mode Mode, names []string, stderr io.Writer) int {
	clock := env.Clock
	if clock == nil {
		clock = stage.WallClock
	}
	start := nowInitrdStart()
	l := &lifecycle{env: env, mode: mode, clock: clock, stderr: stderr}
	if mode == ModeInitramfs {
		// The command line and the kernel log need /proc and /dev before anything else.
		mounted, err := env.Bootstrap()
		if err != nil {
			return l.fail(nil, "bootstrap", err, nil)
		}
		l.bootstrapped = mounted
	}
	cl, raw, err := readCmdline(env.CmdlinePath)
	if err != nil {
		return l.fail(nil, "config", err, nil)
	}
	l.rep = l.startReport()
	l.rep.Cmdline = cl.String()
	// Before anything reads the command line: the host may have replaced it.
	pin, err := checkPin(env.CmdlinePinPath, raw)
	if err == nil {
		// In PID 1 efivarfs is not mounted yet: the handoff checks again.
		err = checkEFIOptions(env.EFIVarsDir, pin)
	}
	if err != nil {
		return l.fail(nil, StageCmdline, err, pinFailureConfig(env.ConfigPath))
	}
	l.rep.CmdlinePinned = pin
	cfg, info, err := loadConfig(env.ConfigPath, cl)
	if err != nil {
		return l.fail(nil, "config", err, nil)
	}
	l.rep.Config = info
	log := env.Setup(cfg)
	defer log.Sync()
	if mode == ModeInitramfs {
		log.Info("cvmboot starting as PID 1",
			zap.String("version", version.Version),
			zap.String("config", info.Path), zap.Bool("config_found", info.Found), zap.String("config_sha256", info.SHA256),
			zap.Strings("overrides", info.Overrides), zap.Strings("bootstrap_mounted", l.bootstrapped))
	}
	logPin(log, env.CmdlinePinPath, pin)
	steps, err := selectSteps(mode, names)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 2
	}
	// The image's module list: `cvmboot initramfs` or the dracut module wrote it.
	packed, err := readModulesLoad(env.ModulesLoadPath)
	if err != nil {
		return l.fail(log, StageModules, err, cfg)
	}
	dec, err := readDecisions(l.decisionsPath())
	if err != nil {
		return l.fail(log, steps[0].Name, err, cfg)
	}
	// The first unit resolves the plan, the later ones load it. Decisions of another mode
	// (the initrd's, read in the booted system) are not this boot's steps: start afresh.
	if dec.Plan != nil && dec.Plan.Mode != mode {
		dec = &Decisions{}
	}
	inputs := planInputs(raw, info.SHA256)
	plan := dec.Plan
	switch {
	case plan == nil:
		if plan, err = NewPlan(mode, cfg, cl); err != nil {
			return l.fail(log, "plan", err, cfg)
		}
		dec.Plan, dec.PlanInputs = plan, inputs
	case dec.PlanInputs != inputs:
		return l.fail(log, "plan", fmt.Errorf("the decisions of earlier units (%s) were made from another command line or config (theirs %s, this unit's %s)",
			l.decisionsPath(), dec.PlanInputs, inputs), cfg)
	}
	b := &Boot{Config: cfg, Cmdline: cl, Log: log, Mounts: env.Mounts, Modules: env.Modules, Devices: env.Devices,
		Attest: env.Attest, Verity: env.Verity, InitdataSource: env.InitdataSource, Storage: env.Storage, CmdlineRaw: raw, CmdlinePin: pin, ConfigInfo: info,
		PackedModules: packed, Mode: mode, Plan: plan, dec: dec, EFIVarsDir: env.EFIVarsDir, WarmInit: env.WarmInit}
	if env.Persist != nil {
		b.Persist = func() PersistentRoot { return env.Persist(cfg) }
	}
	runner := stage.Runner{Log: log, Clock: clock, Report: l.rep, Save: l.saveReport}
	if err := runner.Run(context.Background(), b.stages(steps)); err != nil {
		name := "boot"
		var se *stage.Error
		if errors.As(err, &se) {
			name, err = se.Stage, se.Err
		}
		return l.fail(log, name, err, cfg)
	}
	if err := dec.write(l.decisionsPath()); err != nil {
		return l.fail(log, steps[len(steps)-1].Name, fmt.Errorf("keeping the decisions for the next unit: %w", err), cfg)
	}
	if mode != ModeInitramfs {
		if dec.allDone(mode) && l.rep.Outcome == report.OutcomeRunning && l.rep.Failure == nil {
			// The boot's last unit, every step done: what follows is systemd's.
			l.rep.Outcome, l.rep.Finished = report.OutcomeOK, clock.Now()
			l.saveReport(l.rep)
		}
		return 0
	}
	argv := b.InitArgs()
	if env.HandoffArgs != nil {
		extra, err := env.HandoffArgs(b.Init(), start)
		if err != nil {
			return l.fail(log, StageHandoff, err, cfg)
		}
		argv = append(append([]string{argv[0]}, extra...), argv[1:]...)
	}
	// Every step of the boot ran; after the exec nothing of cvmboot's is left to.
	l.rep.Outcome, l.rep.Finished = report.OutcomeOK, clock.Now()
	l.saveReport(l.rep)
	log.Info("handing off to init", zap.String("init", b.Init()), zap.Strings("args", argv[1:]))
	_ = log.Sync()
	err = env.Exec(b.Init(), argv)
	// The root has been switched already: the report lives on under the new /run.
	return l.fail(log, StageHandoff, fmt.Errorf("exec init %s: %w", b.Init(), err), cfg)
}

// lifecycle is what Run keeps between its phases.
type lifecycle struct {
	env          Env
	mode         Mode
	clock        stage.Clock
	stderr       io.Writer
	rep          *report.Report
	bootstrapped []string
	log          *zap.Logger
}

// startReport is a new report (PID 1, the first unit) or the one earlier units wrote.
func (l *lifecycle) startReport() *report.Report {
	if l.mode.Units() {
		if rep, err := report.ReadFile(l.env.ReportPath); err == nil {
			return rep
		}
	}
	return &report.Report{Schema: report.Schema, Version: version.Version, Mode: string(l.mode),
		Started: l.clock.Now(), Uptime: uptimeSeconds(), Outcome: report.OutcomeRunning}
}

func (l *lifecycle) decisionsPath() string {
	if !l.mode.Units() {
		return "" // one process: the decisions stay in memory
	}
	return l.env.DecisionsPath
}

func (l *lifecycle) saveReport(r *report.Report) error {
	err := r.WriteFile(l.env.ReportPath)
	if err != nil && l.log != nil {
		l.log.Warn("cannot save the boot report", zap.Error(err))
	}
	return err
}

// fail records the failure, prints the FATAL line with its detail and the failure action on
// the console, and carries the action out: as PID 1 itself, from a unit through the unit's
// FailureAction= (exit 1). cfg nil is the secure default (power off).
func (l *lifecycle) fail(log *zap.Logger, stageName string, err error, cfg *config.Config) int {
	l.log = log
	action := failureAction(cfg)
	if l.rep == nil {
		l.rep = l.startReport()
	}
	l.rep.Outcome = report.OutcomeFailed
	l.rep.Failure = &report.Failure{Stage: stageName, Error: err.Error(), Action: string(action)}
	l.rep.Finished = l.clock.Now()
	l.saveReport(l.rep)
	if log != nil {
		fields := []zap.Field{zap.String("failed_stage", stageName), zap.Error(err)}
		if d := errorDetail(err); len(d) > 0 {
			fields = append(fields, zap.Strings("detail", d))
		}
		log.Error("boot failed", fields...)
	}
	emergencyLines(l.env.Emergency, "stage "+stageName+" failed", err)
	if l.mode.Units() {
		if l.env.Emergency != nil {
			l.env.Emergency(fmt.Sprintf("cvmboot: failure action: %s (FailureAction=%s)", action, SystemdFailureAction(action)))
		}
		fmt.Fprintf(l.stderr, "cvmboot run: stage %s failed: %v\n", stageName, err)
		return 1
	}
	l.env.Emergency(fmt.Sprintf("cvmboot: failure action: %s", action))
	if log != nil {
		_ = log.Sync()
	}
	aerr := failaction.Execute(action, l.env.System)
	l.env.Emergency(fmt.Sprintf("cvmboot: FATAL: %v; stopping", aerr))
	return 1
}

// planInputs identifies what a plan is resolved from: the command line as read and the
// effective config (its digest, as measured).
func planInputs(rawCmdline, configSHA256 string) string {
	return fmt.Sprintf("cmdline sha256:%x config sha256:%s", sha256.Sum256([]byte(rawCmdline)), configSHA256)
}
