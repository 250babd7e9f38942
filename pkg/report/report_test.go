package report

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sample() *Report {
	start := time.Date(2026, 11, 26, 18, 0, 0, 123456789, time.UTC)
	return &Report{
		Schema:   Schema,
		Version:  "v0.1.0",
		Mode:     "initramfs",
		Started:  start,
		Finished: start.Add(1500 * time.Millisecond),
		Uptime:   2.25,
		Outcome:  OutcomeFailed,
		Failure:  &Failure{Stage: "root", Error: "device PARTUUID=x did not appear", Action: "poweroff"},
		Stages: []Stage{
			{Name: "early-mounts", Status: StatusOK, Started: start, DurationMS: 1.5, Facts: map[string]string{"mounted": "/proc"}},
			{Name: "storage", Status: StatusSkipped, Started: start, Reason: "disabled"},
			{Name: "root", Status: StatusFailed, Started: start, DurationMS: 5000, Error: "device PARTUUID=x did not appear"},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "cvmboot", "report.json")
	want := sample()
	if err := want.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if d := got.Stage("root").Duration(); d != 5*time.Second {
		t.Errorf("duration %v", d)
	}
	if got.Stage("nope") != nil {
		t.Error("Stage of an unknown name")
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v err %v", fi.Mode(), err)
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only report.json", len(entries))
	}
}

func TestUnmarshalRejects(t *testing.T) {
	if _, err := Unmarshal([]byte(`{"schema":"other/v9"}`)); err == nil || !strings.Contains(err.Error(), `schema "other/v9", expected "cvmboot.report/v1"`) {
		t.Errorf("wrong schema: %v", err)
	}
	if _, err := Unmarshal([]byte(`{`)); err == nil {
		t.Error("truncated JSON accepted")
	}
}
