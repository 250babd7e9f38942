package serve_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/serve"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// machine is a fake booted machine: report, event log and device nodes in a temporary
// directory.
type machine struct {
	dir  string
	opts serve.Options
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"run", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &machine{dir: dir, opts: serve.Options{
		ReportPath:   filepath.Join(dir, "run/report.json"),
		EventLogPath: filepath.Join(dir, "run/eventlog"),
		TempDir:      filepath.Join(dir, "tmp"),
		TEE: tee.Options{
			ConfigfsDir: filepath.Join(dir, "sys/kernel/config"),
			SysfsDir:    filepath.Join(dir, "sys"),
			DevDir:      filepath.Join(dir, "dev"),
		},
	}}
}

// device makes a device node stand-in (detection only checks that it exists).
func (m *machine) device(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, "dev", name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// bootEvents are what a boot measures.
func bootEvents() []eventlog.Event {
	return []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Config{SHA256: strings.Repeat("c", 64), Path: "/etc/cvmboot/config.yaml", Found: true}.Event(),
		eventlog.Verity{Target: "root", RootHash: strings.Repeat("ab", 32), HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "256MiB"}.Event(),
		eventlog.Phase("leave-initrd"),
	}
}

// boot measures bootEvents into the machine's event log and ext.
func (m *machine) boot(t *testing.T, ext ...measure.Extender) {
	t.Helper()
	log, err := measure.Open(m.opts.EventLogPath, ext...)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range bootEvents() {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
}

func get(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

// sharedTPM lets every request use one swtpm connection: the TPM source closes what it opens.
type sharedTPM struct{ transport.TPM }

func (sharedTPM) Close() error { return nil }

func TestEvidenceFromTPM(t *testing.T) {
	tpm := swtpmtest.Start(t)
	m := newMachine(t)
	m.device(t, tee.TPMDevice)
	m.opts.TEE.OpenTPM = func() (transport.TPMCloser, error) { return sharedTPM{tpm}, nil }
	pcrs, err := measure.NewTPM(tpm)
	if err != nil {
		t.Fatal(err)
	}
	m.boot(t, pcrs)
	before, err := os.ReadFile(m.opts.EventLogPath)
	if err != nil {
		t.Fatal(err)
	}
	h := serve.NewServer(m.opts).Handler()

	// Concurrent requests are serialized; each gets evidence bound to its own nonce.
	nonces := []string{"00112233445566778899aabbccddeeff", "0102030405060708", strings.Repeat("ff", 64)}
	bodies := make([][]byte, len(nonces))
	var wg sync.WaitGroup
	for i, n := range nonces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/evidence?nonce="+n, nil))
			if rec.Code != http.StatusOK {
				t.Errorf("nonce %s: %d %s", n, rec.Code, rec.Body)
				return
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("nonce %s: Content-Type %q", n, ct)
			}
			bodies[i] = rec.Body.Bytes()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i, n := range nonces {
		dir := t.TempDir()
		if err := serve.UnpackBundle(bytes.NewReader(bodies[i]), dir); err != nil {
			t.Fatalf("nonce %s: %v", n, err)
		}
		nonce, _ := hex.DecodeString(n)
		claims, err := evidence.Verify(dir, evidence.Options{Nonce: nonce, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true})
		if err != nil {
			t.Fatalf("nonce %s: evidence rejected: %v", n, err)
		}
		if !claims.NonceChecked || claims.RootHash != strings.Repeat("ab", 32) || len(claims.Platforms) != 1 || claims.Platforms[0].Platform != evidence.PlatformTPM {
			t.Errorf("nonce %s: claims %+v", n, claims)
		}
		if _, err := evidence.Verify(dir, evidence.Options{Nonce: []byte{0xde, 0xad}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true}); err == nil {
			t.Errorf("nonce %s: evidence accepted for another nonce", n)
		}
	}
	// Collecting does not touch the log; the temporary directories are gone.
	after, err := os.ReadFile(m.opts.EventLogPath)
	if err != nil || !bytes.Equal(before, after) {
		t.Errorf("the event log changed while serving evidence (%v):\nbefore %q\nafter  %q", err, before, after)
	}
	if left, _ := os.ReadDir(m.opts.TempDir); len(left) != 0 {
		t.Errorf("temporary evidence directories left behind: %v", left)
	}
}

// TestEvidenceFromTDX runs the evidence path through a TEE (a fake configfs-tsm with TDX's
// provider), which needs no swtpm.
func TestEvidenceFromTDX(t *testing.T) {
	m := newMachine(t)
	client := teetest.TSM("tdx_guest", func(inblob []byte) ([]byte, error) {
		return teetest.TDXQuote(inblob, make([]byte, 48)), nil
	}, nil)
	m.opts.TEE.TSM = client
	m.opts.TEE.ConfigfsDir = "" // faketsm answers only for /sys/kernel/config; no file is touched
	m.boot(t)
	h := serve.NewServer(m.opts).Handler()
	rec := get(t, h, "GET", "/evidence?nonce=cafe0123456789ab")
	if rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	dir := t.TempDir()
	if err := serve.UnpackBundle(rec.Body, dir); err != nil {
		t.Fatal(err)
	}
	claims, err := evidence.Verify(dir, evidence.Options{Nonce: []byte{0xca, 0xfe, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab}, AllowUnsigned: evidence.AllPlatforms, AllowUnknownUKI: true, AllowDebug: true})
	if err != nil {
		t.Fatalf("evidence rejected: %v", err)
	}
	if len(claims.Platforms) != 1 || claims.Platforms[0].Kind != evidence.KindTDXQuote {
		t.Errorf("platforms %+v, want one tdx-quote", claims.Platforms)
	}
	if n := teetest.Entries(client); n != 0 {
		t.Errorf("%d configfs-tsm report entries left", n)
	}
}

func TestEvidenceErrors(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, m *machine)
		target  string
		method  string
		code    int
		message string
	}{
		{"no nonce", nil, "/evidence", "GET", 400, "no nonce"},
		{"empty nonce", nil, "/evidence?nonce=", "GET", 400, "no nonce"},
		{"odd nonce", nil, "/evidence?nonce=abc", "GET", 400, "odd number of hex digits"},
		{"not hex", nil, "/evidence?nonce=zz", "GET", 400, `nonce "zz" is not hex`},
		{"too long", nil, "/evidence?nonce=" + strings.Repeat("00", 65), "GET", 400, "at most 64 bytes"},
		{"twice", nil, "/evidence?nonce=0011223344556677&nonce=0011223344556677", "GET", 400, "nonce given twice"},
		{"unknown parameter", nil, "/evidence?nonce=0011223344556677&format=tar", "GET", 400, `unknown query parameter "format"`},
		{"method", nil, "/evidence?nonce=0011223344556677", "POST", 405, "only GET"},
		{"no event log", nil, "/evidence?nonce=0011223344556677", "GET", 404, "no event log at"},
		{"no platform", func(t *testing.T, m *machine) { m.boot(t) }, "/evidence?nonce=0011223344556677", "GET", 503, "no TEE or TPM"},
		{"collection fails", func(t *testing.T, m *machine) {
			m.boot(t)
			m.device(t, tee.TPMDevice)
			m.opts.TEE.OpenTPM = func() (transport.TPMCloser, error) { return nil, os.ErrPermission }
		}, "/evidence?nonce=0011223344556677", "GET", 500, "tpmrm0"},
		{"status missing", nil, "/status", "GET", 404, "no boot report"},
		{"status query", nil, "/status?x=1", "GET", 400, "takes no query"},
		{"eventlog missing", nil, "/eventlog", "GET", 404, "no event log"},
		{"unknown path", nil, "/quote", "GET", 404, "endpoints are"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			if tt.setup != nil {
				tt.setup(t, m)
			}
			rec := get(t, serve.NewServer(m.opts).Handler(), tt.method, tt.target)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.message) {
				t.Errorf("%s %s: %d %q, want %d containing %q", tt.method, tt.target, rec.Code, rec.Body, tt.code, tt.message)
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
				t.Errorf("Content-Type %q, want text/plain", ct)
			}
		})
	}
}

func TestStatusAndEventLog(t *testing.T) {
	m := newMachine(t)
	m.boot(t)
	report := []byte(`{"schema":"cvmboot.report/v1","outcome":"ok"}` + "\n")
	if err := os.WriteFile(m.opts.ReportPath, report, 0o644); err != nil {
		t.Fatal(err)
	}
	h := serve.NewServer(m.opts).Handler()
	rec := get(t, h, "GET", "/status")
	if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), report) || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("/status: %d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	log, _ := os.ReadFile(m.opts.EventLogPath)
	rec = get(t, h, "GET", "/eventlog")
	if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), log) {
		t.Errorf("/eventlog: %d, %d bytes, want the %d bytes of the log", rec.Code, rec.Body.Len(), len(log))
	}
	if recs, err := eventlog.ParseLog(rec.Body.Bytes()); err != nil || len(recs) != len(bootEvents()) {
		t.Errorf("/eventlog does not parse back: %d records, %v", len(recs), err)
	}
}

func TestParseNonce(t *testing.T) {
	tests := []struct {
		query string
		want  string // hex; "" means an error
	}{
		{"nonce=0011223344556677", "0011223344556677"},
		{"nonce=DEADbeefDEADbeef", "deadbeefdeadbeef"},
		{"nonce=00", ""},
		{"nonce=00112233445566", ""},
		{"nonce=" + strings.Repeat("a", 128), strings.Repeat("a", 128)},
		{"&nonce=0102030405060708&", "0102030405060708"},
		{"nonce=" + strings.Repeat("a", 130), ""},
		{"nonce=0", ""},
		{"nonce=0g", ""},
		{"nonce=%30%30", ""},
		{"", ""},
		{"nonce", ""},
		{"nonce=00&nonce=00", ""},
		{"n=00", ""},
	}
	for _, tt := range tests {
		got, err := serve.ParseNonce(tt.query)
		if (err != nil) != (tt.want == "") || hex.EncodeToString(got) != tt.want {
			t.Errorf("ParseNonce(%q) = %x, %v; want %q", tt.query, got, err, tt.want)
		}
	}
}

func FuzzParseNonce(f *testing.F) {
	for _, s := range []string{"nonce=00", "nonce=0011223344556677", "nonce=", "nonce=00&nonce=11", "x=1&nonce=ab", "nonce=" + strings.Repeat("ff", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		n, err := serve.ParseNonce(q)
		if err != nil {
			return
		}
		if len(n) < serve.MinNonceSize || len(n) > eventlog.MaxNonceSize {
			t.Fatalf("ParseNonce(%q) accepted %d bytes", q, len(n))
		}
	})
}

// Server collection honours the request's context: a canceled request fails instead of
// waiting for the devices.
func TestEvidenceCanceled(t *testing.T) {
	m := newMachine(t)
	m.opts.TEE.TSM = teetest.TSM("tdx_guest", func([]byte) ([]byte, error) { return nil, nil }, nil)
	m.opts.TEE.ConfigfsDir = ""
	m.device(t, tee.TDXGuestDevice)
	m.opts.TEE.OpenTDXGuest = func() (tee.Device, error) {
		t.Error("the TDX device was opened after the request was canceled")
		return nil, os.ErrClosed
	}
	m.boot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	serve.NewServer(m.opts).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/evidence?nonce=0011223344556677", nil).WithContext(ctx))
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "context canceled") {
		t.Errorf("%d %q, want 500 naming the cancellation", rec.Code, rec.Body)
	}
}
