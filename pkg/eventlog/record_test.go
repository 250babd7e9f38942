package eventlog

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeSampleLog returns the sample log: cvmboot's writer (internal/measure, whose golden
// test makes it) measuring the sample events with an RTMR and sha256 and sha384 PCR banks.
func writeSampleLog(t testing.TB) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "sample.eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseLogRejects(t *testing.T) {
	good := string(writeSampleLog(t))
	lines := strings.SplitAfter(good, "\n")
	replaceLine := func(i int, old, new string) string {
		l := append([]string(nil), lines...)
		if !strings.Contains(l[i], old) {
			t.Fatalf("line %d has no %q: %s", i, old, l[i])
		}
		l[i] = strings.Replace(l[i], old, new, 1)
		return strings.Join(l, "")
	}
	phaseDigest := hex.EncodeToString(func() []byte { s := sha256.Sum256([]byte("enter-initrd")); return s[:] }())
	tests := []struct {
		name, log, want string
	}{
		{"torn last record", strings.TrimSuffix(good, "\n"), "not terminated by a newline"},
		{"not JSON", "hello\n", "record 0: not a record"},
		{"unknown field", replaceLine(0, `"recnum":0`, `"recnum":0,"extra":1`), `unknown field "extra"`},
		{"trailing data", replaceLine(0, "}}\n", "}} x\n"), "record 0: trailing data"},
		{"recnum gap", replaceLine(1, `"recnum":1`, `"recnum":2`), "record 1: recnum is 2, expected 1"},
		{"content type", replaceLine(0, `"content_type":"cvmboot"`, `"content_type":"systemd"`), `content_type is "systemd"`},
		{"content not canonical", replaceLine(0, `{"data":{"phase":"enter-initrd"},"type":"cvmboot.phase"}`, `{"type":"cvmboot.phase","data":{"phase":"enter-initrd"}}`), "not canonical JSON"},
		{"content white space", replaceLine(0, `{"data":{"phase"`, `{"data": {"phase"`), "not canonical JSON"},
		{"content not an object", replaceLine(0, `{"data":{"phase":"enter-initrd"},"type":"cvmboot.phase"}`, `"x"`), "expected a JSON object"},
		{"foreign type", replaceLine(1, `"type":"cvmboot.config"`, `"type":"other.config"`), `type "other.config"`},
		{"content member", replaceLine(0, `,"type":"cvmboot.phase"}`, `,"type":"cvmboot.phase","z":1}`), `unknown field "z"`},
		{"phase data", replaceLine(0, `{"phase":"enter-initrd"}`, `{"phase":"enter-initrd","x":1}`), "expected {\"phase\""},
		{"wrong PCR", replaceLine(0, `"pcr":11`, `"pcr":15`), "cvmboot.phase event in PCR 15, expected PCR 11"},
		{"duplicate key", replaceLine(1, `"pcr":15`, `"pcr":11,"pcr":15`), `the key "pcr" appears twice`},
		{"wrong RTMR", replaceLine(0, `"rtmr":3`, `"rtmr":2`), "RTMR 2, expected RTMR 3"},
		{"edited event", replaceLine(3, `"on_corruption":"panic"`, `"on_corruption":"ignore"`), "record 3: sha256 digest is"},
		{"relabelled phase", replaceLine(0, `"content":{"data":{"phase":"enter-initrd"},"type":"cvmboot.phase"}`, `"content":{"data":{"phase":"enter-initrd"},"type":"cvmboot.other"}`), "cvmboot.other event in PCR 11, expected PCR 15"},
		{"relabelled event", replaceLine(2, `"type":"cvmboot.cmdline"`, `"type":"cvmboot.config"`), "record 2: sha256 digest is"},
		{"bad digest hex", replaceLine(0, phaseDigest, "zz"), "sha256 digest is \"zz\""},
		{"unknown algorithm", replaceLine(0, `"hashAlg":"sha256"`, `"hashAlg":"sm3_256"`), `"sm3_256" is not one of`},
		{"duplicate digest", replaceLine(0, `"digests":[`, `"digests":[{"hashAlg":"sha256","digest":"`+phaseDigest+`"},`), "two sha256 digests"},
		{"no sha256", replaceLine(0, `{"hashAlg":"sha256","digest":"`+phaseDigest+`"},`, ``), "no sha256 digest"},
		{"extra digest without a PCR", replaceLine(0, `"pcr":11,`, ``), "2 digests without a PCR"},
		{"too long", strings.Repeat("x", MaxRecordBytes+1) + "\n", "at most 65536"},
		{"too many", strings.Repeat("\n", MaxRecords+1), "at most 4096 are accepted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseLog([]byte(tt.log))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseLog error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if recs, err := ParseLog(nil); err != nil || len(recs) != 0 {
		t.Errorf("ParseLog(empty) = %v, %v; want no records and no error", recs, err)
	}
}

func TestRecordAccessors(t *testing.T) {
	recs, err := ParseLog(writeSampleLog(t))
	if err != nil {
		t.Fatal(err)
	}
	r := recs[3]
	if r.Type() != TypeVerity {
		t.Errorf("Type() = %q", r.Type())
	}
	if !strings.Contains(string(r.Data()), `"target":"root"`) {
		t.Errorf("Data() = %s", r.Data())
	}
	if d := r.Digest(crypto.SHA512); d != nil {
		t.Errorf("Digest(sha512) = %x, want nil for an algorithm the record lacks", d)
	}
}

func TestReplayKnownAnswer(t *testing.T) {
	recs, err := ParseLog(writeSampleLog(t))
	if err != nil {
		t.Fatal(err)
	}
	// PCR 11 holds enter-initrd then leave-initrd, computed here without the package's helpers.
	pcr := make([]byte, 32)
	for _, w := range []string{"enter-initrd", "leave-initrd"} {
		d := sha256.Sum256([]byte(w))
		n := sha256.Sum256(append(pcr, d[:]...))
		pcr = n[:]
	}
	v := Replay(recs)
	if got := hex.EncodeToString(v[PCR(11, crypto.SHA256)]); got != hex.EncodeToString(pcr) {
		t.Errorf("PCR 11 replay = %s, want %x", got, pcr)
	}
	if got := fmt.Sprint(v.Registers()); got != "[pcr11:sha256 pcr11:sha384 pcr15:sha256 pcr15:sha384 rtmr3:sha384]" {
		t.Errorf("replayed registers = %v, want pcr11:sha256 pcr11:sha384 pcr15:sha256 pcr15:sha384 rtmr3:sha384", got)
	}
}

func TestReportData(t *testing.T) {
	log := []byte("{}\n")
	nonce := []byte{1, 2, 3}
	logDigest := sha256.Sum256(log)
	want := sha512.Sum512(append(append([]byte("cvmboot-evidence-v1\x00"), logDigest[:]...), nonce...))
	got := ReportData(log, nonce)
	if got != want {
		t.Errorf("ReportData = %x, want %x", got, want)
	}
	if ReportData(log, nil) == got || ReportData([]byte("{}\n\n"), nonce) == got {
		t.Error("REPORT_DATA does not depend on the nonce and the log")
	}
	q := QualifyingData(got)
	wantQ := sha256.Sum256(got[:])
	if hex.EncodeToString(q) != hex.EncodeToString(wantQ[:]) {
		t.Errorf("QualifyingData = %x, want %x", q, wantQ)
	}
}

func TestDuplicateKey(t *testing.T) {
	for _, c := range []struct {
		in  string
		key string
	}{
		{`{"a":1,"b":2}`, ""},
		{`{"a":1,"a":2}`, "a"},
		{`{"a":{"x":1,"y":[1,{"x":2}]},"b":[{"c":1},{"c":2}]}`, ""},
		{`{"a":{"x":1,"x":[]}}`, "x"},
		{`{"a":[{"c":1,"c":2}]}`, "c"},
		{`{"recnum":0,"pcr":15,"pcr":11}`, "pcr"},
		{`{"a":[1,2],"b":{},"a":3}`, "a"},
		{`{"pcr":15,"PCR":11}`, "PCR"},
		{`{"roothash":"aa","roothaſh":"bb"}`, "roothaſh"},
		{`{"k":1,"\u212a":2}`, "\u212a"},
	} {
		k, dup := duplicateKey([]byte(c.in))
		if k != c.key || dup != (c.key != "") {
			t.Errorf("duplicateKey(%s) = %q, %t; want %q", c.in, k, dup, c.key)
		}
	}
}
