package evidence_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sevabi "github.com/google/go-sev-guest/abi"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// tpmSeed reads the TPM seed evidence as JSON that a test can edit.
func tpmSeed(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "evidence", "tpm", evidence.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseRejects(t *testing.T) {
	att := func(m map[string]any) map[string]any { return m["attestations"].([]any)[0].(map[string]any) }
	tests := []struct {
		name string
		edit func(m map[string]any)
		raw  string
		want string
	}{
		{"not JSON", nil, "{", "evidence.json: unexpected EOF"},
		{"trailing data", nil, `{"version":1} {}`, "trailing data"},
		{"unknown field", func(m map[string]any) { m["signed_by"] = "me" }, "", `unknown field "signed_by"`},
		{"version", func(m map[string]any) { m["version"] = 2 }, "", "version 2, expected 1"},
		{"nonce not hex", func(m map[string]any) { m["nonce"] = "xy" }, "", `nonce "xy" is not lowercase hex`},
		{"nonce upper case", func(m map[string]any) { m["nonce"] = "AB" }, "", `nonce "AB" is not lowercase hex`},
		{"nonce too long", func(m map[string]any) { m["nonce"] = strings.Repeat("00", 65) }, "", "nonce is 65 bytes, at most 64"},
		{"report_data short", func(m map[string]any) { m["report_data"] = "00" }, "", `report_data "00" is not 64 bytes`},
		{"no event log", func(m map[string]any) { delete(m, "event_log") }, "", "no event_log"},
		{"no attestations", func(m map[string]any) { m["attestations"] = []any{} }, "", "no attestations"},
		{"path in a name", func(m map[string]any) { att(m)["report"].(map[string]any)["name"] = "../../etc/shadow" }, "", `file name "../../etc/shadow" is not a plain file name`},
		{"dot dot", func(m map[string]any) { m["event_log"].(map[string]any)["name"] = ".." }, "", `file name ".."`},
		{"evidence.json as a file", func(m map[string]any) { m["event_log"].(map[string]any)["name"] = "evidence.json" }, "", `file name "evidence.json"`},
		{"two files one name", func(m map[string]any) { att(m)["signature"].(map[string]any)["name"] = "tpm-quote.bin" }, "", `two files named "tpm-quote.bin"`},
		{"digest not hex", func(m map[string]any) { att(m)["report"].(map[string]any)["sha256"] = "zz" }, "", `tpm-quote.bin: sha256 "zz"`},
		{"negative size", func(m map[string]any) { att(m)["report"].(map[string]any)["size"] = -1 }, "", "size -1 out of range"},
		{"unknown kind", func(m map[string]any) { att(m)["kind"] = "sgx-quote" }, "", `unknown kind "sgx-quote"`},
		{"platform mismatch", func(m map[string]any) { att(m)["platform"] = "tdx" }, "", `kind tpm-quote belongs to platform tpm, not "tdx"`},
		{"quote without signature", func(m map[string]any) { delete(att(m), "signature") }, "", "a signature and an AK public key go with tpm-quote"},
		{"register of the wrong kind", func(m map[string]any) {
			att(m)["registers"].([]any)[0].(map[string]any)["register"] = "rtmr3:sha384"
		}, "", "register rtmr3:sha384 does not belong to it"},
		{"register value length", func(m map[string]any) {
			att(m)["registers"].([]any)[0].(map[string]any)["value"] = "00"
		}, "", `register pcr11:sha256: value "00" is not 32 bytes`},
		{"register twice", func(m map[string]any) {
			r := att(m)["registers"].([]any)
			att(m)["registers"] = append(r, r[0])
		}, "", "register pcr11:sha256 listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := []byte(tt.raw)
			if tt.edit != nil {
				m := tpmSeed(t)
				tt.edit(m)
				raw, _ = json.Marshal(m)
			}
			_, err := evidence.Parse(raw)
			var verr *evidence.Error
			if !errors.As(err, &verr) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want an *Error containing %q", err, tt.want)
			}
		})
	}
}

func TestReadChecksFiles(t *testing.T) {
	seed := filepath.Join("testdata", "evidence", "tpm")
	if _, err := evidence.Read(seed); err != nil {
		t.Fatalf("Read of the seed: %v", err)
	}
	tests := []struct {
		name    string
		edit    func(dir string)
		wantErr func(error) bool
		want    string
	}{
		{"missing file is an I/O error", func(dir string) { os.Remove(filepath.Join(dir, "tpm-quote.sig")) },
			func(err error) bool { return errors.Is(err, fs.ErrNotExist) }, "tpm-quote.sig"},
		{"changed file", func(dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, "tpm-quote.bin"))
			b[0] ^= 1
			os.WriteFile(filepath.Join(dir, "tpm-quote.bin"), b, 0o644)
		}, isError("file"), "tpm-quote.bin has SHA-256"},
		{"longer file", func(dir string) {
			f, _ := os.OpenFile(filepath.Join(dir, "eventlog"), os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("\n"))
			f.Close()
		}, isError("file"), "eventlog is 3973 bytes, evidence.json says 3972"},
		{"huge evidence.json", func(dir string) {
			os.WriteFile(filepath.Join(dir, evidence.FileName), make([]byte, evidence.MaxDescriptionSize+1), 0o644)
		}, isError("file"), "is larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, seed, dir)
			tt.edit(dir)
			_, err := evidence.Read(dir)
			if err == nil || !tt.wantErr(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Read error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func isError(check string) func(error) bool {
	return func(err error) bool {
		var verr *evidence.Error
		return errors.As(err, &verr) && verr.Check == check
	}
}

func TestWriteRefuses(t *testing.T) {
	base := func() *evidence.Evidence {
		return &evidence.Evidence{ReportData: strings.Repeat("00", 64), EventLog: evidence.File{Name: "eventlog"},
			Attestations: []evidence.Attestation{{Platform: evidence.PlatformSNP, Kind: evidence.KindSNPReport, Report: evidence.File{Name: "r"}}}}
	}
	tests := []struct {
		name string
		edit func(ev *evidence.Evidence)
		want string
	}{
		{"slash", func(ev *evidence.Evidence) { ev.Attestations[0].Report.Name = "a/b" }, `invalid file name "a/b"`},
		{"duplicate", func(ev *evidence.Evidence) { ev.Attestations[0].Report.Name = "eventlog" }, `two files named "eventlog"`},
		{"no attestation", func(ev *evidence.Evidence) { ev.Attestations = nil }, "no attestations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := base()
			tt.edit(ev)
			dir := t.TempDir()
			err := ev.Write(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Write error = %v, want one containing %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a refused Write left %d files", len(entries))
			}
		})
	}
	ev := base()
	dir := t.TempDir()
	if err := ev.Write(dir); err != nil {
		t.Fatal(err)
	}
	back, err := evidence.Read(dir)
	if err != nil || back.Version != evidence.Version || back.Attestations[0].Report.SHA256 != ev.Attestations[0].Report.SHA256 {
		t.Fatalf("Read after Write: %v, %+v", err, back)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("%d files after Write, want evidence.json, eventlog and r (no temporary files)", len(entries))
	}
}

func TestParseRegister(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"pcr15:sha256", "pcr15:sha256", ""},
		{"pcr0:sha1", "pcr0:sha1", ""},
		{"pcr23:sha512", "pcr23:sha512", ""},
		{"rtmr3:sha384", "rtmr3:sha384", ""},
		{"rtmr3:sha256", "", "unsupported algorithm"},
		{"rtmr4:sha384", "", "index out of range 0-3"},
		{"pcr24:sha256", "", "index out of range 0-23"},
		{"pcr015:sha256", "", "bad index"},
		{"pcr01:sha256", "", "index out of range"},
		{"pcr:sha256", "", "index out of range"},
		{"pcr1x:sha256", "", "bad index"},
		{"pcr1:md5", "", "unsupported algorithm"},
		{"mr1:sha256", "", "expected pcrN:ALG"},
		{"pcr1", "", "expected pcrN:ALG"},
	}
	for _, tt := range tests {
		r, err := evidence.ParseRegister(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseRegister(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || r.String() != tt.want {
			t.Errorf("ParseRegister(%q) = %v, %v; want %s", tt.in, r, err, tt.want)
		}
	}
}

func TestParseReport(t *testing.T) {
	var rd [64]byte
	rd[0], rd[63] = 0xaa, 0xbb
	snp := teetest.SNPRawReport(rd[:])
	for i := range 32 {
		snp[0xC0+i] = byte(0x10 + i) // HOST_DATA
	}
	var rtmrs [4][48]byte
	rtmrs[2][0] = 2
	tdreport := teetest.TDReport(rd, rtmrs)
	for i := range 48 {
		tdreport[512+64+i] = byte(0x40 + i) // TDINFO.MRCONFIGID
	}
	quote := teetest.TDXQuote(rd[:], nil)
	for i := range 48 {
		quote[48+184+i] = byte(0x80 + i) // TD quote body MRCONFIGID
	}
	// The vendors' parsers say where HOST_DATA and MRCONFIGID are.
	snpProto, err := sevabi.ReportToProto(snp[:evidence.SNPReportSize])
	if err != nil {
		t.Fatal(err)
	}
	quoteProto, err := tdxabi.QuoteToProto(quote)
	if err != nil {
		t.Fatal(err)
	}
	wantHost := map[string][]byte{"snp": snpProto.HostData, "quote v4": quoteProto.(*tdxpb.QuoteV4).GetTdQuoteBody().GetMrConfigId(),
		"quote v5": quoteProto.(*tdxpb.QuoteV4).GetTdQuoteBody().GetMrConfigId(), "tdreport": tdreport[512+64 : 512+112]}
	// A v5 quote: header, body descriptor (type 2, 584 bytes), the v4 body, the rest.
	v5 := append(append(append([]byte(nil), quote[:48]...), 2, 0, 0x48, 2, 0, 0), quote[48:]...)
	binary.LittleEndian.PutUint16(v5, 5)
	tests := []struct {
		name string
		kind evidence.Kind
		raw  []byte
		err  string
	}{
		{"snp", evidence.KindSNPReport, snp[:evidence.SNPReportSize], ""},
		{"snp short", evidence.KindSNPReport, snp[:100], "SEV-SNP report is 100 bytes, expected 1184"},
		{"snp version 1", evidence.KindSNPReport, append([]byte{1, 0, 0, 0}, snp[4:evidence.SNPReportSize]...), "version 1, expected 2 or later"},
		{"tdreport", evidence.KindTDXReport, tdreport[:], ""},
		{"tdreport short", evidence.KindTDXReport, tdreport[:1000], "TDREPORT is 1000 bytes"},
		{"quote v4", evidence.KindTDXQuote, quote, ""},
		{"quote v5", evidence.KindTDXQuote, v5, ""},
		{"quote v3", evidence.KindTDXQuote, append([]byte{3, 0}, quote[2:]...), "TDX quote version 3, expected 4 or 5"},
		{"SGX quote", evidence.KindTDXQuote, append(append([]byte(nil), quote[:4]...), append([]byte{0, 0, 0, 0}, quote[8:]...)...), "quote TEE type 0x0, expected 0x81"},
		{"quote short", evidence.KindTDXQuote, quote[:600], "shorter than a header and a TD quote body"},
		{"v5 body type", evidence.KindTDXQuote, append(append([]byte(nil), v5[:48]...), append([]byte{9, 0}, v5[50:]...)...), "body type 9"},
		{"tpm quote", evidence.KindTPMQuote, nil, "tpm-quote is not a TEE report"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := evidence.ParseReport(tt.kind, tt.raw)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.ReportData != rd || f.Debug || len(f.Measurement) != 48 {
				t.Errorf("fields: REPORT_DATA %x debug %v measurement %d bytes", f.ReportData, f.Debug, len(f.Measurement))
			}
			if want := wantHost[tt.name]; !bytes.Equal(f.HostConfig, want) || len(want) < 32 || want[0] == 0 {
				t.Errorf("HostConfig = %x, the vendor's parser gives %x", f.HostConfig, want)
			}
			if tt.kind == evidence.KindTDXReport && f.RTMRs[2][0] != 2 {
				t.Errorf("RTMR 2 = %x", f.RTMRs[2])
			}
		})
	}
}

func TestTrustedRoots(t *testing.T) {
	signer := teetest.SNPSigner(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := evidence.PublicKeyPEM(key.Public())
	roots, err := evidence.ParseTrustedRoots(append(teetest.SNPRoots(signer), pub...))
	if err != nil || len(roots.Certificates) != 2 || len(roots.AKs) != 1 {
		t.Fatalf("ParseTrustedRoots = %+v, %v", roots, err)
	}
	tests := []struct{ name, pem, want string }{
		{"empty", "", "no CERTIFICATE or PUBLIC KEY PEM block found"},
		{"private key", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}})), `PEM block 1 is a "EC PRIVATE KEY"`},
		{"bad certificate", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})), "PEM block 1 (CERTIFICATE)"},
		{"bad key", pub + string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})), "PEM block 2 (PUBLIC KEY)"},
	}
	for _, tt := range tests {
		if _, err := evidence.ParseTrustedRoots([]byte(tt.pem)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error = %v, want %q", tt.name, err, tt.want)
		}
	}
}

// verifyLog verifies unsigned TDREPORT evidence around the given log, for claim tests.
func verifyLog(t *testing.T, events []eventlog.Event, opts evidence.Options) (*evidence.Claims, error) {
	t.Helper()
	rtmr := &fakeRTMR{}
	log, err := measure.Open(filepath.Join(t.TempDir(), "eventlog"), rtmr)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	data := logBytes(t, log)
	rd := eventlog.ReportData(data, nil)
	var rtmrs [4][48]byte
	copy(rtmrs[3][:], rtmr.value)
	report := teetest.TDReport(rd, rtmrs)
	ev := &evidence.Evidence{ReportData: hex.EncodeToString(rd[:]), EventLog: evidence.File{Name: "eventlog", Data: data},
		Attestations: []evidence.Attestation{{Platform: evidence.PlatformTDX, Kind: evidence.KindTDXReport, Source: "test", Report: evidence.File{Name: "r", Data: report[:]}}}}
	dir := t.TempDir()
	if err := ev.Write(dir); err != nil {
		t.Fatal(err)
	}
	opts.AllowUnsigned = evidence.AllPlatforms
	return evidence.Verify(dir, opts)
}

func TestClaims(t *testing.T) {
	verity := func(target, hash, onCorruption string) eventlog.Event {
		return eventlog.Verity{Target: target, RootHash: hash, HashAlgorithm: "sha256", OnCorruption: onCorruption}.Event()
	}
	tests := []struct {
		name   string
		events []eventlog.Event
		expect string
		check  func(t *testing.T, c *evidence.Claims)
		err    string
	}{
		{"no events", nil, "", func(t *testing.T, c *evidence.Claims) {
			if c.RootHash != "" || c.Storage != nil || len(c.Phases) != 0 || c.NonceChecked {
				t.Errorf("claims %+v", c)
			}
			if s := c.String(); !strings.Contains(s, "root: NOT verified by dm-verity") || !strings.Contains(s, "not checked (taken from the evidence") {
				t.Errorf("text:\n%s", s)
			}
		}, ""},
		{"no verity but a root hash expected", []eventlog.Event{eventlog.Phase("enter-initrd")}, rootHash, nil, "the event log has no cvmboot.verity event for the root: it was mounted unverified"},
		{"corruption ignored", []eventlog.Event{verity("root", rootHash, "ignore")}, rootHash, nil, "dm-verity was told to let corrupted blocks through"},
		{"corruption ignored, nothing expected", []eventlog.Event{verity("root", rootHash, "ignore")}, "", func(t *testing.T, c *evidence.Claims) {
			if c.RootHashEnforced || c.RootHash != rootHash {
				t.Errorf("claims %+v", c)
			}
		}, ""},
		{"two root verity events", []eventlog.Event{verity("root", rootHash, "panic"), verity("root", otherHash, "panic")}, "", nil, `a second verity event for target "root" (the first is record 0)`},
		{"usr and root", []eventlog.Event{verity("usr", otherHash, "panic"), verity("root", strings.ToUpper(rootHash), "restart")}, rootHash, func(t *testing.T, c *evidence.Claims) {
			if !c.RootHashExpected || len(c.Verity) != 2 {
				t.Errorf("claims %+v", c)
			}
		}, ""},
		{"last storage event wins", []eventlog.Event{eventlog.Storage{Encrypted: true, Integrity: "aead"}.Event(), eventlog.Storage{Encrypted: false, Integrity: "none"}.Event()}, "", func(t *testing.T, c *evidence.Claims) {
			if c.Storage.Encrypted || !strings.Contains(c.String(), "storage: NOT encrypted") {
				t.Errorf("storage %+v", c.Storage)
			}
		}, ""},
		{"custom events listed", []eventlog.Event{{Type: "cvmboot.network", Data: map[string]bool{"dhcp": true}}}, "", func(t *testing.T, c *evidence.Claims) {
			if len(c.Events) != 1 || c.Events[0].Type != "cvmboot.network" || c.Events[0].Data != `{"dhcp":true}` {
				t.Errorf("events %+v", c.Events)
			}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := verifyLog(t, tt.events, evidence.Options{ExpectRootHash: tt.expect, AllowUnknownUKI: true})
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Verify error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
