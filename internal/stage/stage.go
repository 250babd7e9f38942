// Package stage runs the boot as an ordered list of named stages.
//
// Each stage is a plain function. The runner times it, logs its outcome with the facts it
// established, records it in the boot report and saves the report after every stage, so a
// boot that dies half way still leaves a report naming the last stage reached.
package stage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/cvmboot/cvmboot/pkg/report"
)

// Facts are what a stage established, for the log and the report (never secrets).
type Facts map[string]string

// Func is the body of a stage.
type Func func(ctx context.Context) (Facts, error)

// Stage is one named step of the boot.
type Stage struct {
	Name string
	// Required stages stop the boot when they fail; others are recorded as failed and the
	// boot goes on.
	Required bool
	Run      Func
}

// SkipError tells the runner that a stage had nothing to do, and why.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "skipped: " + e.Reason }

// Skip returns the error a stage returns when it has nothing to do.
func Skip(format string, args ...any) error {
	return &SkipError{Reason: fmt.Sprintf(format, args...)}
}

// Error is the failure of a required stage.
type Error struct {
	Stage string
	Err   error
}

func (e *Error) Error() string { return e.Stage + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Clock is the time source; tests pass a fake one.
type Clock interface{ Now() time.Time }

type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

// WallClock is the real clock.
var WallClock Clock = wallClock{}

// Runner runs stages in order.
type Runner struct {
	Log    *zap.Logger
	Clock  Clock
	Report *report.Report
	// Save persists the report after each stage. Its failure is logged and never stops the
	// boot: the report is for operators, the boot decisions do not depend on it.
	Save func(*report.Report) error
}

// Run runs the stages in order and returns the *Error of the first required stage that
// failed, after which no further stage runs. A cancelled context fails the current stage.
// A failure sets the report's outcome; success leaves it running: only the caller knows
// whether these were the boot's last stages (a unit runs a few of them).
func (r *Runner) Run(ctx context.Context, stages []Stage) error {
	clock := r.Clock
	if clock == nil {
		clock = WallClock
	}
	log := r.Log
	if log == nil {
		log = zap.NewNop()
	}
	if r.Report.Outcome == "" {
		r.Report.Outcome = report.OutcomeRunning
	}
	for _, st := range stages {
		slog := log.With(zap.String("stage", st.Name))
		start := clock.Now()
		var facts Facts
		err := ctx.Err()
		if err == nil {
			slog.Debug("stage starting")
			facts, err = st.Run(ctx)
		}
		rec := report.Stage{
			Name:       st.Name,
			Started:    start,
			DurationMS: float64(clock.Now().Sub(start)) / float64(time.Millisecond),
		}
		if len(facts) > 0 {
			rec.Facts = map[string]string(facts)
		}
		fields := append([]zap.Field{zap.Float64("duration_ms", rec.DurationMS)}, factFields(facts)...)
		var skip *SkipError
		switch {
		case err == nil:
			rec.Status = report.StatusOK
			slog.Info("stage ok", fields...)
		case errors.As(err, &skip):
			rec.Status = report.StatusSkipped
			rec.Reason = skip.Reason
			slog.Info("stage skipped: "+skip.Reason, fields...)
		default:
			rec.Status = report.StatusFailed
			rec.Error = err.Error()
			if st.Required {
				slog.Error("stage failed", append(fields, zap.Error(err))...)
			} else {
				slog.Warn("stage failed (not required, boot goes on)", append(fields, zap.Error(err))...)
			}
		}
		r.Report.Stages = append(r.Report.Stages, rec)
		r.Report.Finished = clock.Now()
		if rec.Status == report.StatusFailed && st.Required {
			r.Report.Outcome = report.OutcomeFailed
			r.Report.Failure = &report.Failure{Stage: st.Name, Error: rec.Error}
			r.save(log)
			return &Error{Stage: st.Name, Err: err}
		}
		r.save(log)
	}
	return nil
}

func (r *Runner) save(log *zap.Logger) {
	if r.Save == nil {
		return
	}
	if err := r.Save(r.Report); err != nil {
		log.Warn("cannot save the boot report", zap.Error(err))
	}
}

// factFields turns facts into log fields in a stable order.
func factFields(f Facts) []zap.Field {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]zap.Field, 0, len(keys))
	for _, k := range keys {
		out = append(out, zap.String(k, f[k]))
	}
	return out
}

// Select returns the stages with the given names, in the order of all. An unknown name is an
// error listing the known ones.
func Select(all []Stage, names []string) ([]Stage, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	var out []Stage
	for _, st := range all {
		if want[st.Name] {
			out = append(out, st)
			delete(want, st.Name)
		}
	}
	if len(want) > 0 {
		var unknown []string
		for n := range want {
			unknown = append(unknown, n)
		}
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown stage %s (stages: %s)", strings.Join(unknown, ", "), strings.Join(Names(all), ", "))
	}
	return out, nil
}

// Names lists the names of the stages in order.
func Names(stages []Stage) []string {
	out := make([]string, len(stages))
	for i, st := range stages {
		out[i] = st.Name
	}
	return out
}
