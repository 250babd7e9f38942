package stage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/cvmboot/cvmboot/pkg/report"
)

// fakeClock advances by step on every reading, so durations are exact.
type fakeClock struct {
	t    time.Time
	step time.Duration
}

func (c *fakeClock) Now() time.Time { c.t = c.t.Add(c.step); return c.t }

func TestRunnerOrderTimingAndFailure(t *testing.T) {
	var ran []string
	mk := func(name string, required bool, err error, facts Facts) Stage {
		return Stage{Name: name, Required: required, Run: func(context.Context) (Facts, error) {
			ran = append(ran, name)
			return facts, err
		}}
	}
	boom := errors.New("device /dev/vda2: expected ext4, found nothing")
	stages := []Stage{
		mk("early-mounts", true, nil, Facts{"mounted": "/proc,/sys"}),
		mk("attest", false, errors.New("no TEE"), nil),
		mk("storage", true, Skip("storage disabled by %s", "config"), nil),
		mk("root", true, boom, nil),
		mk("handoff", true, nil, nil),
	}
	core, logs := observer.New(zap.DebugLevel)
	rep := &report.Report{Schema: report.Schema}
	saves := 0
	r := Runner{
		Log:    zap.New(core),
		Clock:  &fakeClock{t: time.Unix(1000, 0), step: 5 * time.Millisecond},
		Report: rep,
		Save:   func(*report.Report) error { saves++; return errors.New("read-only /run") },
	}
	err := r.Run(context.Background(), stages)

	var se *Error
	if !errors.As(err, &se) || se.Stage != "root" || !errors.Is(err, boom) {
		t.Fatalf("Run error = %v, want *Error for stage root wrapping %v", err, boom)
	}
	if got := strings.Join(ran, ","); got != "early-mounts,attest,storage,root" {
		t.Fatalf("stages ran %q; handoff must not run after a required failure", got)
	}
	want := []struct {
		name   string
		status report.Status
	}{
		{"early-mounts", report.StatusOK},
		{"attest", report.StatusFailed},
		{"storage", report.StatusSkipped},
		{"root", report.StatusFailed},
	}
	if len(rep.Stages) != len(want) {
		t.Fatalf("report has %d stages, want %d", len(rep.Stages), len(want))
	}
	for i, w := range want {
		s := rep.Stages[i]
		if s.Name != w.name || s.Status != w.status {
			t.Errorf("stage %d = %s/%s, want %s/%s", i, s.Name, s.Status, w.name, w.status)
		}
		// Start and end each read the clock once: exactly one step apart.
		if s.DurationMS != 5 {
			t.Errorf("stage %s duration %vms, want 5ms", s.Name, s.DurationMS)
		}
	}
	if rep.Stages[2].Reason != "storage disabled by config" {
		t.Errorf("skip reason %q", rep.Stages[2].Reason)
	}
	if rep.Stages[0].Facts["mounted"] != "/proc,/sys" {
		t.Errorf("facts not recorded: %v", rep.Stages[0].Facts)
	}
	if rep.Outcome != report.OutcomeFailed || rep.Failure == nil || rep.Failure.Stage != "root" || rep.Failure.Error != boom.Error() {
		t.Errorf("outcome %s failure %+v", rep.Outcome, rep.Failure)
	}
	if saves != 4 {
		t.Errorf("report saved %d times, want once per stage run (4)", saves)
	}
	if n := logs.FilterMessage("cannot save the boot report").Len(); n != 4 {
		t.Errorf("save failures logged %d times, want 4", n)
	}
	failed := logs.FilterMessage("stage failed").All()
	if len(failed) != 1 || failed[0].ContextMap()["stage"] != "root" || failed[0].ContextMap()["error"] != boom.Error() {
		t.Errorf("failed stage not logged with stage and error fields: %+v", failed)
	}
}

func TestRunnerAllOK(t *testing.T) {
	rep := &report.Report{}
	r := Runner{Report: rep}
	ok := func(context.Context) (Facts, error) { return nil, nil }
	if err := r.Run(context.Background(), []Stage{{Name: "a", Run: ok}, {Name: "b", Run: ok}}); err != nil {
		t.Fatal(err)
	}
	// Only the caller knows whether these were the boot's last stages.
	if rep.Outcome != report.OutcomeRunning || rep.Failure != nil || len(rep.Stages) != 2 {
		t.Fatalf("report %+v", rep)
	}
}

func TestRunnerCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	r := Runner{Report: &report.Report{}}
	err := r.Run(ctx, []Stage{{Name: "root", Required: true, Run: func(context.Context) (Facts, error) {
		called = true
		return nil, nil
	}}})
	if called || !errors.Is(err, context.Canceled) {
		t.Fatalf("called=%v err=%v", called, err)
	}
}

func TestSelect(t *testing.T) {
	all := []Stage{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	got, err := Select(all, []string{"c", "a"})
	if err != nil || strings.Join(Names(got), ",") != "a,c" {
		t.Fatalf("Select = %v, %v", Names(got), err)
	}
	_, err = Select(all, []string{"a", "x"})
	if err == nil || err.Error() != "unknown stage x (stages: a, b, c)" {
		t.Fatalf("Select error = %v", err)
	}
}
