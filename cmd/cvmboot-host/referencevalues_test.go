package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
	"github.com/cvmboot/cvmboot/pkg/reference"
	"github.com/cvmboot/cvmboot/pkg/uki/ukitest"
)

func runRV(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := referenceValues(args, &out, &errb)
	return code, out.String(), errb.String()
}

func testUKI(t *testing.T) string { return testUKIOn(t, ukitest.Magic252) }

func testUKIOn(t *testing.T, magic string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "BOOTX64.EFI")
	b := ukitest.UKI(magic, ukitest.S(".linux", "kernel"), ukitest.S(".cmdline", "quiet"), ukitest.S(".osrel", "ID=t\n")).Build()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReferenceValuesWired(t *testing.T) {
	for _, c := range commands() {
		if c.Name == "reference-values" {
			return
		}
	}
	t.Fatal("reference-values is not a command of cvmboot-host")
}

func TestReferenceValuesJSON(t *testing.T) {
	p := testUKI(t)
	code, out, errs := runRV(p)
	if code != cmdkit.ExitOK || errs != "" {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var v reference.Values
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	want, err := reference.Compute(p, reference.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v.PCR11.ValueAfterPhases != want.PCR11.ValueAfterPhases || v.UKI.AuthenticodeSHA256 != want.UKI.AuthenticodeSHA256 ||
		len(v.PCR11.Phases) != 2 || *v.Cmdline != "quiet" || v.Format != reference.Format {
		t.Errorf("output %+v", v)
	}
	if v.UKI.AuthenticodeSHA384 != want.UKI.AuthenticodeSHA384 || len(v.UKI.AuthenticodeSHA384) != 96 ||
		v.PCR12 != strings.Repeat("0", 64) || v.RTMR2 != nil || len(v.Notes) != 1 || v.Notes[0] != reference.NoCCNote(252) {
		t.Errorf("stub 252: uki %+v pcr12 %q rtmr2 %+v notes %q", v.UKI, v.PCR12, v.RTMR2, v.Notes)
	}
	// Flags after the positional argument; no phases; another stub version.
	code, out, _ = runRV(p, "--phases", "", "--stub-version", "254")
	json.Unmarshal([]byte(out), &v)
	if code != 0 || len(v.PCR11.Phases) != 0 || v.PCR11.ValueAfterPhases != v.PCR11.Value || v.Stub.Major != 254 {
		t.Errorf("--phases '' --stub-version 254: exit %d %+v", code, v.PCR11)
	}
	// A stub that measures through the CC protocol gets RTMR 2 and no note.
	var v256 reference.Values
	code, out, _ = runRV(p, "--stub-version", "256")
	if err := json.Unmarshal([]byte(out), &v256); err != nil || code != 0 {
		t.Fatalf("--stub-version 256: exit %d %v", code, err)
	}
	if v256.RTMR2 == nil || len(v256.RTMR2.Events) != len(v256.PCR11.Events) || len(v256.RTMR2.Value) != 96 || len(v256.Notes) != 0 {
		t.Errorf("--stub-version 256: rtmr2 %+v notes %q", v256.RTMR2, v256.Notes)
	}
}

func TestReferenceValuesTrustee(t *testing.T) {
	p := testUKI(t)
	code, out, _ := runRV("--format", "trustee", "--phases", "enter-initrd:leave-initrd:sysinit:ready", p)
	var m map[string][]string
	if err := json.Unmarshal([]byte(out), &m); err != nil || code != 0 {
		t.Fatalf("exit %d, %v: %s", code, err, out)
	}
	want, _ := reference.Compute(p, reference.Options{Phases: []string{"enter-initrd", "leave-initrd", "sysinit", "ready"}})
	if len(m) != 3 {
		t.Errorf("keys %v", m)
	}
	for _, k := range []string{"tpm_pcr11", "snp_pcr11", "tdx_pcr11"} {
		if len(m[k]) != 1 || m[k][0] != want.PCR11.ValueAfterPhases {
			t.Errorf("%s: %v, want [%s]", k, m[k], want.PCR11.ValueAfterPhases)
		}
	}
	// Stub 256 and later: rtmr_2 too, never rtmr_1, mr_td or snp_launch_measurement.
	p = testUKIOn(t, "#### LoaderInfo: systemd-stub 257.13-1~deb13u1 ####")
	code, out, _ = runRV("--format", "trustee", p)
	m = nil
	if err := json.Unmarshal([]byte(out), &m); err != nil || code != 0 {
		t.Fatalf("stub 257: exit %d, %v: %s", code, err, out)
	}
	want, _ = reference.Compute(p, reference.Options{})
	if len(m) != 4 || want.RTMR2 == nil || len(m["rtmr_2"]) != 1 || m["rtmr_2"][0] != want.RTMR2.Value {
		t.Errorf("stub 257: %v, want rtmr_2 [%+v]", m, want.RTMR2)
	}
	for _, k := range []string{"rtmr_1", "mr_td", "snp_launch_measurement"} {
		if _, ok := m[k]; ok {
			t.Errorf("trustee output has %s", k)
		}
	}
}

func TestReferenceValuesErrors(t *testing.T) {
	p := testUKI(t)
	notPE := filepath.Join(t.TempDir(), "x")
	os.WriteFile(notPE, []byte("not a PE image at all, but long enough for a DOS header......................"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--help"}, cmdkit.ExitOK, "Usage: cvmboot-host reference-values UKI"},
		{nil, cmdkit.ExitUsage, "expected 1 arguments"},
		{[]string{p, p}, cmdkit.ExitUsage, "expected 1 arguments"},
		{[]string{"--format", "yaml", p}, cmdkit.ExitUsage, `--format "yaml"`},
		{[]string{"--phases", "Enter", p}, cmdkit.ExitUsage, `--phases "Enter"`},
		{[]string{"--stub-version", "x", p}, cmdkit.ExitUsage, `--stub-version "x"`},
		{[]string{"--stub-version", "258", p}, cmdkit.ExitFailed, "newer than the section tables"},
		{[]string{filepath.Join(t.TempDir(), "missing")}, cmdkit.ExitIO, "no such file"},
		{[]string{notPE}, cmdkit.ExitFailed, "no MZ signature"},
	} {
		code, out, errs := runRV(tc.args...)
		if code != tc.code || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%q: exit %d, want %d with %q:\n%s%s", tc.args, code, tc.code, tc.want, out, errs)
		}
	}
}

// --initdata adds the document's bindings; the trustee format lists them as init_data. The
// document is pkg/initdata's test vector (digest b4b2…8e95).
func TestReferenceValuesInitdata(t *testing.T) {
	p := testUKI(t)
	doc := filepath.Join(t.TempDir(), "initdata.toml")
	if err := os.WriteFile(doc, []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n'''\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runRV(p, "--format", "trustee", "--initdata", doc)
	if code != cmdkit.ExitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var tr map[string][]string
	if err := json.Unmarshal([]byte(out), &tr); err != nil {
		t.Fatal(err)
	}
	const d = "b4b24d9f833c619d9b1a272c2f6ae06121d17aac1176da45207a63129c258e95"
	if got := tr["init_data"]; len(got) != 3 || got[0] != d || got[1] != d+strings.Repeat("00", 16) || got[2] != "affa0e268f6923242208dac0df17b246e3196d6a07eb1527b1e78c16ee84019d" {
		t.Errorf("init_data %v", got)
	}
	code, out, _ = runRV(p, "--initdata", doc)
	var v reference.Values
	if err := json.Unmarshal([]byte(out), &v); code != cmdkit.ExitOK || err != nil || v.InitData == nil || v.InitData.Digest != d || v.InitData.Algorithm != "sha256" {
		t.Errorf("json: exit %d, %+v", code, v.InitData)
	}
	if _, err := reference.Parse([]byte(out)); err != nil {
		t.Errorf("the document does not read back: %v", err)
	}
	if err := os.WriteFile(doc, []byte("version = \"0.1.0\"\nalgorithm = \"sha-256\"\n[data]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runRV(p, "--initdata", doc); code != cmdkit.ExitFailed || !strings.Contains(errs, `--initdata: `+doc+`: initdata: algorithm "sha-256"`) {
		t.Errorf("a bad document: exit %d: %s", code, errs)
	}
}
