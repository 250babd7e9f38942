package serve_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/serve"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// evidenceDir writes a small, well-formed evidence directory (a TDREPORT attestation: no
// device needed) and returns it.
func evidenceDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	ev := &evidence.Evidence{
		Version:        evidence.Version,
		CvmbootVersion: "test",
		Created:        time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		Nonce:          "0102",
		EventLog:       evidence.File{Name: evidence.EventLogName, Data: []byte("{}\n")},
		Attestations: []evidence.Attestation{{
			Platform: evidence.PlatformTDX, Kind: evidence.KindTDXReport, Source: "ioctl",
			Report: evidence.File{Name: "tdx-report.bin", Data: bytes.Repeat([]byte{7}, 1024)},
		}},
	}
	rd := eventlog.ReportData(ev.EventLog.Data, []byte{1, 2})
	ev.ReportData = hex.EncodeToString(rd[:])
	if err := ev.Write(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func pack(t testing.TB, dir string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := serve.PackBundle(dir, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestBundleRoundTrip(t *testing.T) {
	src := evidenceDir(t)
	// A stray file in the evidence directory is not something the evidence vouches for.
	if err := os.WriteFile(filepath.Join(src, "stray"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := pack(t, src)
	var b serve.Bundle
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if b.Format != serve.BundleFormat || b.Version != 1 || len(b.Files) != 3 || b.Files["stray"] != nil {
		t.Errorf("bundle %s v%d with files %v", b.Format, b.Version, keys(b.Files))
	}
	dst := filepath.Join(t.TempDir(), "unpacked")
	if err := serve.UnpackBundle(bytes.NewReader(data), dst); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{evidence.FileName, evidence.EventLogName, "tdx-report.bin"} {
		a, _ := os.ReadFile(filepath.Join(src, name))
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs after the round trip (%v)", name, err)
		}
	}
	if _, err := evidence.Read(dst); err != nil {
		t.Errorf("unpacked evidence does not read back: %v", err)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestUnpackBundleRejects(t *testing.T) {
	good := pack(t, evidenceDir(t))
	edit := func(fn func(b *serve.Bundle)) string {
		var b serve.Bundle
		if err := json.Unmarshal(good, &b); err != nil {
			t.Fatal(err)
		}
		fn(&b)
		out, err := json.Marshal(&b)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	tests := []struct {
		name, bundle, message string
	}{
		{"not JSON", "tar", "invalid character"},
		{"trailing data", string(good) + "{}", "trailing data"},
		{"unknown field", strings.Replace(string(good), `"version"`, `"extra":1,"version"`, 1), "unknown field"},
		{"format", edit(func(b *serve.Bundle) { b.Format = "tar" }), `format "tar" version 1`},
		{"version", edit(func(b *serve.Bundle) { b.Version = 2 }), "version 2"},
		{"no evidence.json", edit(func(b *serve.Bundle) { delete(b.Files, evidence.FileName) }), "no evidence.json"},
		{"bad evidence.json", edit(func(b *serve.Bundle) { b.Files[evidence.FileName] = []byte("{}") }), "evidence.json"},
		{"missing file", edit(func(b *serve.Bundle) { delete(b.Files, "tdx-report.bin") }), "lacks"},
		{"extra file", edit(func(b *serve.Bundle) { b.Files["../etc/passwd"] = []byte("x") }), "not named by evidence.json"},
		{"size", edit(func(b *serve.Bundle) { b.Files["eventlog"] = []byte("{}\n\n") }), "eventlog is 4 bytes"},
		{"digest", edit(func(b *serve.Bundle) { b.Files["eventlog"] = []byte("[]\n") }), "eventlog has SHA-256"},
		{"base64", strings.Replace(string(good), `"eventlog":"`, `"eventlog":"!`, 1), "illegal base64"},
		{"too large", `{"files":{"x":"` + strings.Repeat("A", serve.MaxBundleSize) + `"}}`, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			err := serve.UnpackBundle(strings.NewReader(tt.bundle), dir)
			if err == nil || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("UnpackBundle: %v, want an error containing %q", err, tt.message)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("a rejected bundle created %s (%v)", dir, err)
			}
		})
	}
}

// FuzzUnpackBundle: whatever UnpackBundle accepts reads back as a consistent evidence
// directory holding no file outside it.
func FuzzUnpackBundle(f *testing.F) {
	good := pack(f, evidenceDir(f))
	f.Add(good)
	f.Add([]byte(`{"format":"cvmboot-evidence-bundle","version":1,"files":{}}`))
	f.Add([]byte(`{"format":"cvmboot-evidence-bundle","version":1,"files":{"evidence.json":"` + base64.StdEncoding.EncodeToString([]byte(`{"version":1}`)) + `"}}`))
	if seeds, err := filepath.Glob(filepath.Join("testdata", "bundles", "*.json")); err == nil {
		for _, s := range seeds {
			if data, err := os.ReadFile(s); err == nil {
				f.Add(data)
			}
		}
	}
	base, runs := f.TempDir(), 0
	f.Fuzz(func(t *testing.T, data []byte) {
		runs++
		dir := filepath.Join(base, fmt.Sprint(runs))
		defer os.RemoveAll(dir)
		if err := serve.UnpackBundle(bytes.NewReader(data), dir); err != nil {
			return
		}
		if _, err := evidence.Read(dir); err != nil {
			t.Fatalf("accepted bundle does not read back: %v", err)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.Type().IsRegular() {
				t.Fatalf("unpacked %s is not a regular file", e.Name())
			}
		}
	})
}

// TestSeedBundles keeps the bundles in testdata (one from swtpm) readable: the format is what
// verifiers unpack.
func TestSeedBundles(t *testing.T) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "bundles", "*.json"))
	if len(seeds) == 0 {
		t.Fatal("no seed bundles in testdata/bundles")
	}
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := serve.UnpackBundle(bytes.NewReader(data), dir); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if filepath.Base(s) != "tpm-quote.json" {
			continue
		}
		// Taken from swtpm with nonce 0011: it verifies offline with that nonce only.
		if _, err := evidence.Verify(dir, evidence.Options{Nonce: []byte{0, 0x11}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}); err != nil {
			t.Errorf("%s: %v", s, err)
		}
		if _, err := evidence.Verify(dir, evidence.Options{Nonce: []byte{0, 0x12}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}); err == nil {
			t.Errorf("%s verifies with another nonce", s)
		}
	}
}
