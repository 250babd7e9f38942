package report

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"
)

// normalized is r with what JSON cannot tell apart made equal: times in UTC (their zone
// offsets are returned separately, in order) and empty omitempty maps and slices nil.
func normalized(r *Report) (*Report, []int) {
	c := *r
	var offsets []int
	utc := func(t time.Time) time.Time {
		_, off := t.Zone()
		offsets = append(offsets, off)
		return t.UTC()
	}
	c.Started, c.Finished = utc(c.Started), utc(c.Finished)
	if c.Config != nil {
		cfg := *c.Config
		if len(cfg.Overrides) == 0 {
			cfg.Overrides = nil
		}
		c.Config = &cfg
	}
	if c.Stages != nil {
		c.Stages = append([]Stage{}, c.Stages...)
	}
	for i := range c.Stages {
		s := &c.Stages[i]
		s.Started = utc(s.Started)
		if len(s.Facts) == 0 {
			s.Facts = nil
		}
	}
	return &c, offsets
}

// FuzzUnmarshalReport: `cvmboot status` and every systemd unit after the first read the
// boot report from /run, and a unit writes back what it read. Unmarshal must not panic;
// whatever it accepts has the schema, renders as a table, marshals, and parses back to the
// same report, whose encoding is then stable.
func FuzzUnmarshalReport(f *testing.F) {
	full, err := sample().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	running := &Report{Schema: Schema, Version: "dev", Mode: "systemd", Outcome: OutcomeRunning, Cmdline: "roothash=ab quiet",
		CmdlinePinned: "sha256:00", Config: &Config{Path: "/etc/cvmboot/config.yaml", Found: true, SHA256: "ab", Overrides: []string{"cvmboot.debug"}}}
	if b, err := running.Marshal(); err == nil {
		f.Add(b)
	}
	for _, s := range []string{
		`{"schema":"cvmboot.report/v1"}`,
		`{"schema":"cvmboot.report/v2"}`,
		`{"SCHEMA":"cvmboot.report/v1","Stages":[{"NAME":"a","facts":{}}],"config":{"overrides":[]}}`,
		`{"schema":"cvmboot.report/v1","started":"2026-11-26T18:00:00.123+05:30","finished":"0000-01-01T00:00:00Z","stages":[{"started":"9999-12-31T23:59:59.999999999-23:59"}]}`,
		`{"schema":"cvmboot.report/v1","uptime_s":-0,"stages":[{"duration_ms":1e308},{"duration_ms":5e-324}]}`,
		`{"schema":"cvmboot.report/v1","uptime_s":1e400}`,
		`{"schema":"cvmboot.report/v1","stages":[],"failure":{"stage":"\u0000","error":"\ud800","action":"` + "\xff\xfe" + `"}}`,
		`{"schema":"cvmboot.report/v1","stages":null,"config":null,"facts":{"a":"b"}}`,
		`{"schema":"cvmboot.report/v1","stages":[{"facts":{"k":"1","k":"2"}}]}`,
		`{"schema":"cvmboot.report/v1","started":"2026-11-26 18:00:00Z"}`,
		`{"schema":"cvmboot.report/v1"} trailing`,
		`null`, `[]`, `"cvmboot.report/v1"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Unmarshal(b)
		if err != nil {
			return
		}
		if r.Schema != Schema {
			t.Fatalf("accepted schema %q", r.Schema)
		}
		if err := r.WriteTable(io.Discard); err != nil {
			t.Fatalf("WriteTable: %v", err)
		}
		for i := range r.Stages {
			_ = r.Stages[i].Duration()
			if r.Stage(r.Stages[i].Name) == nil {
				t.Fatalf("Stage(%q) finds nothing", r.Stages[i].Name)
			}
		}
		m1, err := r.Marshal()
		if err != nil {
			t.Fatalf("accepted, but does not marshal: %v", err)
		}
		r2, err := Unmarshal(m1)
		if err != nil {
			t.Fatalf("marshalled report does not parse: %v\n%s", err, m1)
		}
		n1, off1 := normalized(r)
		n2, off2 := normalized(r2)
		if !reflect.DeepEqual(n1, n2) || !reflect.DeepEqual(off1, off2) {
			t.Fatalf("round trip changed the report:\n got %+v %v\nwant %+v %v", n2, off2, n1, off1)
		}
		for i, pair := range [][2]time.Time{{r.Started, r2.Started}, {r.Finished, r2.Finished}} {
			if !pair[0].Equal(pair[1]) {
				t.Fatalf("time %d: %v then %v", i, pair[0], pair[1])
			}
		}
		m2, err := r2.Marshal()
		if err != nil || !bytes.Equal(m1, m2) {
			t.Fatalf("encoding is not stable (%v):\n%s\nthen\n%s", err, m1, m2)
		}
	})
}
