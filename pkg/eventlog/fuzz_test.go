package eventlog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseEventLog feeds arbitrary bytes to the verifier's log parser: it must never panic,
// and a log it accepts must replay and re-parse the same way.
func FuzzParseEventLog(f *testing.F) {
	f.Add(writeSampleLog(f))
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add([]byte(`{"recnum":0,"digests":[],"content_type":"cvmboot","content":{"data":{},"type":"cvmboot.x"}}` + "\n"))
	seeds, _ := filepath.Glob(filepath.Join("testdata", "eventlog", "*"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ParseLog(data)
		if err != nil {
			return
		}
		Replay(recs)
		for i := range recs {
			if recs[i].Type() == "" {
				t.Fatalf("accepted record %d without a type", i)
			}
			if recs[i].Digest(0) != nil {
				t.Fatalf("record %d has a digest for no algorithm", i)
			}
			if !bytes.HasPrefix(recs[i].Content, []byte("{")) {
				t.Fatalf("accepted record %d with content %s", i, recs[i].Content)
			}
		}
	})
}

// FuzzCanonical checks that canonical encoding is idempotent and never panics.
func FuzzCanonical(f *testing.F) {
	f.Add([]byte(`{"b":1,"a":[1,2,{"y":"<>","x":null}]}`))
	f.Add([]byte(`{"a":1e400}`))
	f.Add([]byte(`{"a":"\ud800"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := canonicalize(data, true)
		if err != nil {
			return
		}
		again, err := canonicalize(c, true)
		if err != nil {
			t.Fatalf("canonical form %s does not re-parse: %v", c, err)
		}
		if !bytes.Equal(c, again) {
			t.Fatalf("canonical form is not stable:\n%s\n%s", c, again)
		}
	})
}
