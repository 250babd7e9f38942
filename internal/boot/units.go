package boot

import (
	"context"
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/internal/stage"
	"github.com/cvmboot/cvmboot/internal/version"
	"github.com/cvmboot/cvmboot/pkg/report"
)

// UnitStages are the stages a systemd unit may run with `cvmboot run`: in a systemd initrd
// or booted system, systemd itself mounts the API file systems and switches root.
func (b *Boot) UnitStages() []stage.Stage {
	var out []stage.Stage
	for _, st := range b.Stages() {
		switch st.Name {
		case StageModules, StageAttest, StageStorage, StageOverlay:
			out = append(out, st)
		}
	}
	return out
}

// UnitStageNames lists the stages `cvmboot run` accepts, for its help.
func UnitStageNames() string {
	return strings.Join(stage.Names((&Boot{}).UnitStages()), ", ")
}

// RunUnits runs the named stages for a systemd unit and appends them to the boot report. A
// failure is returned as exit code 1: the unit's FailureAction= decides what happens then.
func RunUnits(env Env, names []string, stderr io.Writer) int {
	cl, raw, err := readCmdline(env.CmdlinePath)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	cfg, info, err := loadConfig(env.ConfigPath, cl)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	log := env.Setup(cfg)
	defer log.Sync()
	b := &Boot{Config: cfg, Cmdline: cl, Log: log, Mounts: env.Mounts, Modules: env.Modules, Devices: env.Devices,
		Attest: env.Attest, Verity: env.Verity, Storage: env.Storage, CmdlineRaw: raw, ConfigInfo: info}
	stages, err := stage.Select(b.UnitStages(), names)
	if err != nil {
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 2
	}
	rep, err := report.ReadFile(env.ReportPath)
	if err != nil {
		// The first unit of the boot starts the report.
		rep = &report.Report{Schema: report.Schema, Version: version.Version, Mode: "systemd", Started: stage.WallClock.Now(), Uptime: uptimeSeconds()}
	}
	rep.Cmdline, rep.Config = cl.String(), info
	runner := stage.Runner{Log: log, Clock: env.Clock, Report: rep, Save: func(r *report.Report) error { return r.WriteFile(env.ReportPath) }}
	if err := runner.Run(context.Background(), stages); err != nil {
		log.Error("cvmboot run failed", zap.Error(err))
		fmt.Fprintf(stderr, "cvmboot run: %v\n", err)
		return 1
	}
	return 0
}
