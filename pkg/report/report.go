// Package report defines the boot report cvmboot writes to /run/cvmboot/report.json.
//
// The report is what an operator reads with `cvmboot status` and what tooling parses: it
// lists every stage of the boot in order with its outcome, duration and the facts it
// established (devices, hashes, mount points). It never holds secrets.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"
)

// Schema identifies the report format; it changes when a field changes meaning.
const Schema = "cvmboot.report/v1"

// DefaultPath is where the boot writes its report; /run survives the switch to the real root.
const DefaultPath = "/run/cvmboot/report.json"

// Status is the outcome of one stage.
type Status string

const (
	StatusOK      Status = "ok"
	StatusFailed  Status = "failed"
	StatusSkipped Status = "skipped"
)

// Outcome is the outcome of the whole boot as seen by cvmboot.
type Outcome string

const (
	OutcomeRunning Outcome = "running" // stages are still being run
	OutcomeOK      Outcome = "ok"      // every stage ok or skipped
	OutcomeFailed  Outcome = "failed"  // a required stage failed; Failure says which
)

// Report is the whole boot report.
type Report struct {
	Schema   string    `json:"schema"`
	Version  string    `json:"version"`           // cvmboot version that wrote it
	Mode     string    `json:"mode"`              // "initramfs" (PID 1), "systemd-initrd" (the initrd units) or "systemd" (the booted system's)
	Started  time.Time `json:"started"`           // wall clock when cvmboot started
	Finished time.Time `json:"finished"`          // wall clock when the last stage ended
	Uptime   float64   `json:"uptime_s"`          // kernel uptime (CLOCK_BOOTTIME) when cvmboot started
	Outcome  Outcome   `json:"outcome"`           // running, ok or failed
	Cmdline  string    `json:"cmdline,omitempty"` // the kernel command line the boot acted on
	// CmdlinePinned is the digest ("sha256:…" of the words joined by single spaces) of the
	// command line the image pinned, which the kernel's matched; empty: the image pins none.
	CmdlinePinned string   `json:"cmdline_pinned,omitempty"`
	Config        *Config  `json:"config,omitempty"`  // the effective configuration
	Failure       *Failure `json:"failure,omitempty"` // set when Outcome is failed
	Stages        []Stage  `json:"stages"`
}

// Config identifies the effective configuration (file plus command-line overrides).
type Config struct {
	Path      string   `json:"path"`
	Found     bool     `json:"found"`               // false: the file was absent and defaults applied
	SHA256    string   `json:"sha256"`              // digest of the effective configuration
	Overrides []string `json:"overrides,omitempty"` // cvmboot.* keys from the command line
}

// Failure says why the boot stopped and what cvmboot did about it.
type Failure struct {
	Stage  string `json:"stage"`
	Error  string `json:"error"`
	Action string `json:"action"` // poweroff, reboot, halt, panic or shell
}

// Stage is the record of one named stage.
type Stage struct {
	Name       string            `json:"name"`
	Status     Status            `json:"status"`
	Started    time.Time         `json:"started"`
	DurationMS float64           `json:"duration_ms"`
	Reason     string            `json:"reason,omitempty"` // why it was skipped
	Error      string            `json:"error,omitempty"`
	Facts      map[string]string `json:"facts,omitempty"`
}

// Duration returns the stage duration as a time.Duration.
func (s Stage) Duration() time.Duration {
	return time.Duration(s.DurationMS * float64(time.Millisecond))
}

// Stage returns the stage with the given name, or nil.
func (r *Report) Stage(name string) *Stage {
	for i := range r.Stages {
		if r.Stages[i].Name == name {
			return &r.Stages[i]
		}
	}
	return nil
}

// Marshal encodes the report as indented JSON.
func (r *Report) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Unmarshal decodes and checks a report.
func Unmarshal(b []byte) (*Report, error) {
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("boot report: %w", err)
	}
	if r.Schema != Schema {
		return nil, fmt.Errorf("boot report: schema %q, expected %q", r.Schema, Schema)
	}
	return &r, nil
}

// WriteFile writes the report atomically: a reader sees the old or the new report, never a
// torn one, because the boot rewrites it after every stage.
func (r *Report) WriteFile(path string) error {
	b, err := r.Marshal()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".report-*.json")
	if err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("boot report: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("boot report: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("boot report: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("boot report: %w", err)
	}
	return nil
}

// ReadFile reads a report written by WriteFile.
func ReadFile(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// WriteTable renders the report for a terminal: one line per stage with its status and
// duration, then the facts, skip reasons and errors indented under it.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "cvmboot %s (%s mode), boot %s", r.Version, r.Mode, r.Outcome)
	if !r.Finished.IsZero() && !r.Started.IsZero() {
		fmt.Fprintf(tw, " in %s", r.Finished.Sub(r.Started).Round(time.Millisecond))
	}
	fmt.Fprintln(tw)
	if r.Config != nil {
		fmt.Fprintf(tw, "config %s sha256:%s\n", r.Config.Path, r.Config.SHA256)
	}
	if r.Failure != nil {
		fmt.Fprintf(tw, "FAILED in stage %s: %s (action: %s)\n", r.Failure.Stage, r.Failure.Error, r.Failure.Action)
	}
	fmt.Fprintln(tw, "\nSTAGE\tSTATUS\tDURATION\tDETAILS")
	for _, s := range r.Stages {
		var details []string
		switch {
		case s.Error != "":
			details = append(details, s.Error)
		case s.Reason != "":
			details = append(details, s.Reason)
		}
		keys := make([]string, 0, len(s.Facts))
		for k := range s.Facts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			details = append(details, k+"="+s.Facts[k])
		}
		first := ""
		if len(details) > 0 {
			first = details[0]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Status, fmtMS(s.DurationMS), first)
		for _, d := range details[min(1, len(details)):] {
			fmt.Fprintf(tw, "\t\t\t%s\n", d)
		}
	}
	return tw.Flush()
}

func fmtMS(ms float64) string {
	if ms >= 1000 {
		return fmt.Sprintf("%.2fs", ms/1000)
	}
	return fmt.Sprintf("%.1fms", ms)
}
