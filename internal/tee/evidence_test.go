package tee_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

func reportDataOf(b byte) [64]byte {
	var rd [64]byte
	for i := range rd {
		rd[i] = b + byte(i)
	}
	return rd
}

func opened(d tee.Device, open func(string) error) func() (tee.Device, error) {
	return func() (tee.Device, error) {
		if err := open(""); err != nil {
			return nil, err
		}
		return d, nil
	}
}

func TestSNPEvidence(t *testing.T) {
	signer := teetest.SNPSigner(t)
	certs := teetest.SNPCerts(t, signer)
	rd := reportDataOf(1)
	signed := func(in []byte) ([]byte, error) { return teetest.SNPReport(signer, in) }
	brokenTSM := teetest.TSM("sev_guest", func([]byte) ([]byte, error) { return nil, errors.New("firmware busy") }, nil)
	otherTSM := teetest.TSM("sev_guest", func([]byte) ([]byte, error) { return teetest.SNPReport(signer, make([]byte, 64)) }, nil)

	tests := []struct {
		name       string
		snp        func() *tee.SNP
		wantSource string
		wantCerts  bool
		wantMeta   string // a Meta value substring
		wantErr    string
	}{
		{"configfs-tsm with certificates", func() *tee.SNP {
			return &tee.SNP{TSM: &tee.TSM{Client: teetest.TSM("sev_guest", signed, certs), ReportDir: reportDir}}
		}, "configfs-tsm", true, "sev_guest", ""},
		{"configfs-tsm without certificates", func() *tee.SNP {
			return &tee.SNP{TSM: &tee.TSM{Client: teetest.TSM("sev_guest", signed, nil), ReportDir: reportDir}}
		}, "configfs-tsm", false, "the host provides no certificate table", ""},
		{"ioctl with certificates", func() *tee.SNP {
			d := teetest.SNPDevice(signer, certs, rd)
			return &tee.SNP{Open: opened(d, d.Open), DevicePath: "/dev/sev-guest"}
		}, "ioctl", true, "", ""},
		{"ioctl without certificates", func() *tee.SNP {
			d := teetest.SNPDevice(signer, nil, rd)
			return &tee.SNP{Open: opened(d, d.Open), DevicePath: "/dev/sev-guest"}
		}, "ioctl", false, "", ""},
		{"configfs-tsm fails, ioctl answers", func() *tee.SNP {
			d := teetest.SNPDevice(signer, certs, rd)
			return &tee.SNP{TSM: &tee.TSM{Client: brokenTSM, ReportDir: reportDir}, Open: opened(d, d.Open), DevicePath: "/dev/sev-guest"}
		}, "ioctl", true, "firmware busy", ""},
		{"report for other REPORT_DATA refused", func() *tee.SNP {
			return &tee.SNP{TSM: &tee.TSM{Client: otherTSM, ReportDir: reportDir}}
		}, "", false, "", "snp-report binds REPORT_DATA 0000"},
		{"device has no answer", func() *tee.SNP {
			d := teetest.SNPDevice(signer, certs) // no response for rd
			return &tee.SNP{TSM: &tee.TSM{Client: brokenTSM, ReportDir: reportDir}, Open: opened(d, d.Open), DevicePath: "/dev/sev-guest"}
		}, "", false, "", "firmware busy"},
		{"nothing to ask", func() *tee.SNP { return &tee.SNP{} }, "", false, "", "neither configfs-tsm nor /dev/sev-guest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := tt.snp().Evidence(context.Background(), rd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Evidence error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Platform != evidence.PlatformSNP || a.Kind != evidence.KindSNPReport || a.Source != tt.wantSource {
				t.Errorf("attestation %s %s via %s, want sev-snp snp-report via %s", a.Platform, a.Kind, a.Source, tt.wantSource)
			}
			f, err := evidence.ParseReport(a.Kind, a.Report.Data)
			if err != nil || f.ReportData != rd {
				t.Fatalf("report: %v, REPORT_DATA %x", err, f.ReportData)
			}
			if (a.Certificates != nil) != tt.wantCerts || (tt.wantCerts && !bytes.Equal(a.Certificates.Data[:len(certs)], certs)) {
				t.Errorf("certificates = %v, want present %v", a.Certificates != nil, tt.wantCerts)
			}
			if tt.wantMeta != "" && !strings.Contains(strings.Join(values(a.Meta), "|"), tt.wantMeta) {
				t.Errorf("meta %v lacks %q", a.Meta, tt.wantMeta)
			}
		})
	}
}

func values(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestTDXEvidence(t *testing.T) {
	rd := reportDataOf(2)
	var rtmrs [4][48]byte
	rtmrs[3][0] = 0x33
	tdreport := teetest.TDReport(rd, rtmrs)
	quote := func(in []byte) ([]byte, error) { return teetest.TDXQuote(in, rtmrs[3][:]), nil }
	noQGS := func([]byte) ([]byte, error) { return nil, errors.New("GetQuote: quoting service unavailable") }
	// go-tdx-guest's fake answers an unknown REPORT_DATA with nil and no error: cvmboot must not
	// take that for a quote.
	nilQuote := func([]byte) ([]byte, error) { return nil, nil }

	tests := []struct {
		name      string
		tdx       func() *tee.TDX
		wantKind  evidence.Kind
		wantQuote string // Meta["quote_error"] substring
		wantErr   string
	}{
		{"quote via configfs-tsm", func() *tee.TDX {
			return &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", quote, nil), ReportDir: reportDir}}
		}, evidence.KindTDXQuote, "", ""},
		{"no quoting service: TDREPORT", func() *tee.TDX {
			d := teetest.TDXDevice(t, rd, tdreport)
			return &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", noQGS, nil), ReportDir: reportDir}, Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"}
		}, evidence.KindTDXReport, "quoting service unavailable", ""},
		{"empty quote: TDREPORT", func() *tee.TDX {
			d := teetest.TDXDevice(t, rd, tdreport)
			return &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", nilQuote, nil), ReportDir: reportDir}, Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"}
		}, evidence.KindTDXReport, "outblob is empty", ""},
		{"no configfs-tsm: TDREPORT", func() *tee.TDX {
			d := teetest.TDXDevice(t, rd, tdreport)
			return &tee.TDX{Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"}
		}, evidence.KindTDXReport, "configfs-tsm is not available", ""},
		{"device knows no such REPORT_DATA", func() *tee.TDX {
			d := teetest.TDXDevice(t, reportDataOf(9), tdreport)
			return &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", nilQuote, nil), ReportDir: reportDir}, Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"}
		}, "", "", "/dev/tdx_guest: TDX_CMD_GET_REPORT0: test error: no response"},
		{"TDREPORT for other REPORT_DATA refused", func() *tee.TDX {
			d := teetest.TDXDevice(t, rd, teetest.TDReport(reportDataOf(5), rtmrs))
			return &tee.TDX{Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"}
		}, "", "", "tdx-report binds REPORT_DATA 0506"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := tt.tdx().Evidence(context.Background(), rd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Evidence error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Kind != tt.wantKind {
				t.Fatalf("kind %s, want %s", a.Kind, tt.wantKind)
			}
			if got := a.Meta["quote_error"]; !strings.Contains(got, tt.wantQuote) || (tt.wantQuote == "") != (got == "") {
				t.Errorf("quote_error = %q, want %q", got, tt.wantQuote)
			}
			if len(a.Registers) != 4 || a.Registers[3].Register != "rtmr3:sha384" || !strings.HasPrefix(a.Registers[3].Value, "33") {
				t.Errorf("registers = %+v, want RTMR 0-3 with RTMR 3 = 33…", a.Registers)
			}
		})
	}
}

func TestTPMEvidence(t *testing.T) {
	tpm := swtpmtest.Start(t)
	src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return noClose{tpm}, nil }}
	rd := reportDataOf(3)
	a, err := src.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if a.Kind != evidence.KindTPMQuote || a.Meta["ak_hierarchy"] != "endorsement" {
		t.Errorf("attestation %s, meta %v", a.Kind, a.Meta)
	}
	ak, err := evidence.ParseAK(a.AKPublic.Data)
	if err != nil {
		t.Fatalf("AK: %v", err)
	}
	var got []string
	for _, r := range a.Registers {
		got = append(got, r.Register)
	}
	if want := "pcr0:sha256 pcr1:sha256 pcr2:sha256 pcr3:sha256 pcr4:sha256 pcr5:sha256 pcr6:sha256 pcr7:sha256 pcr8:sha256 pcr9:sha256 pcr11:sha256 pcr12:sha256 pcr13:sha256 pcr14:sha256 pcr15:sha256"; strings.Join(got, " ") != want {
		t.Errorf("registers %v, want %s", got, want)
	}
	// The AK is a primary key: the same TPM gives the same key again, so it can be pinned.
	b, err := src.Evidence(context.Background(), reportDataOf(4))
	if err != nil {
		t.Fatal(err)
	}
	ak2, _ := evidence.ParseAK(b.AKPublic.Data)
	if !ak.Equal(ak2) {
		t.Error("the AK changed between two quotes")
	}
	if bytes.Equal(a.Report.Data, b.Report.Data) {
		t.Error("two quotes for different REPORT_DATA are identical")
	}
	_ = eventlog.QuotedPCRs
}

// noClose keeps the shared swtpm connection open across Evidence calls.
type noClose struct{ transport.TPMCloser }

func (noClose) Close() error { return nil }

// The firmware's event logs go with the attestations: the TPM's TCG log, TDX's CCEL and its
// table; one that cannot be read is noted, not fatal.
func TestFirmwareLogsAttached(t *testing.T) {
	dir := t.TempDir()
	logPath, table, ccel := filepath.Join(dir, "binary_bios_measurements"), filepath.Join(dir, "CCEL"), filepath.Join(dir, "data-CCEL")
	for p, data := range map[string]string{logPath: "tcg log", table: "CCEL table", ccel: "cc log"} {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tpm := swtpmtest.Start(t)
	src := &tee.TPM{Path: "swtpm", Open: func() (transport.TPMCloser, error) { return noClose{tpm}, nil }, FirmwareLogPath: logPath}
	a, err := src.Evidence(context.Background(), reportDataOf(5))
	if err != nil || a.FirmwareLog == nil || string(a.FirmwareLog.Data) != "tcg log" || a.FirmwareLog.Name != "tpm-firmware-log.bin" {
		t.Fatalf("TPM evidence %+v, %v: want the firmware log attached", a, err)
	}
	src.FirmwareLogPath = filepath.Join(dir, "missing")
	a, err = src.Evidence(context.Background(), reportDataOf(5))
	if err != nil || a.FirmwareLog != nil || !strings.Contains(a.Meta["firmware_log_error"], "missing") {
		t.Fatalf("TPM evidence without a log: %+v, %v", a, err)
	}

	rd := reportDataOf(6)
	var rtmrs [4][48]byte
	tdx := &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", func(in []byte) ([]byte, error) { return teetest.TDXQuote(in, rtmrs[3][:]), nil }, nil), ReportDir: reportDir},
		CCELTablePath: table, CCELPath: ccel}
	a, err = tdx.Evidence(context.Background(), rd)
	if err != nil || a.FirmwareLog == nil || a.FirmwareLogTable == nil || string(a.FirmwareLog.Data) != "cc log" || string(a.FirmwareLogTable.Data) != "CCEL table" {
		t.Fatalf("TDX evidence %+v, %v: want the CCEL attached", a, err)
	}
	tdx.CCELPath = filepath.Join(dir, "missing")
	a, err = tdx.Evidence(context.Background(), rd)
	if err != nil || a.FirmwareLog != nil || a.FirmwareLogTable != nil || a.Meta["firmware_log_error"] == "" {
		t.Fatalf("TDX evidence without a CCEL: %+v, %v", a, err)
	}
}

// HostConfig reads SEV-SNP HOST_DATA and TDX MRCONFIGID from reports the vendors' fake
// devices make: what the initdata step compares the document's digest with.
func TestHostConfig(t *testing.T) {
	signer := teetest.SNPSigner(t)
	hostData := bytes.Repeat([]byte{0xab}, 32)
	var snpAsked [64]byte
	snpWithHostData := func(in []byte) ([]byte, error) {
		copy(snpAsked[:], in)
		raw := teetest.SNPRawReport(in)
		copy(raw[0xC0:], hostData)
		report := append([]byte(nil), raw[:evidence.SNPReportSize]...)
		return report, teetest.SignSNPReport(signer, report)
	}
	got, err := tee.HostConfig(context.Background(), &tee.SNP{TSM: &tee.TSM{Client: teetest.TSM("sev_guest", snpWithHostData, nil), ReportDir: reportDir}})
	if err != nil || !bytes.Equal(got, hostData) {
		t.Errorf("SEV-SNP HOST_DATA = %x, %v; want %x", got, err, hostData)
	}

	mrConfigID := bytes.Repeat([]byte{0xcd}, 48)
	tdxWithConfigID := func(rd [64]byte) [1024]byte {
		r := teetest.TDReport(rd, [4][48]byte{})
		copy(r[512+64:], mrConfigID)
		return r
	}
	// A quote comes through the host's quoting service, which could choose its MRCONFIGID:
	// without the local TDREPORT device HostConfig refuses rather than believe it.
	var asked [64]byte
	forged := &tee.TDX{TSM: &tee.TSM{Client: teetest.TSM("tdx_guest", func(in []byte) ([]byte, error) {
		q := teetest.TDXQuote(in, nil)
		copy(q[48+184:], mrConfigID)
		return q, nil
	}, nil), ReportDir: reportDir}, DevicePath: "/dev/tdx_guest"}
	if got, err := tee.HostConfig(context.Background(), forged); err == nil || !strings.Contains(err.Error(), "/dev/tdx_guest is missing") {
		t.Fatalf("TDX without the TDREPORT device: HostConfig = %x, %v; want a refusal", got, err)
	}
	// The TDREPORT HostConfig asks for binds a fixed REPORT_DATA; the fake device answers only
	// it (the SNP path above saw it).
	asked = snpAsked
	d := teetest.TDXDevice(t, asked, tdxWithConfigID(asked))
	got, err = tee.HostConfig(context.Background(), &tee.TDX{Open: opened(d, d.Open), DevicePath: "/dev/tdx_guest"})
	if err != nil || !bytes.Equal(got, mrConfigID) {
		t.Errorf("TDX MRCONFIGID = %x, %v; want %x", got, err, mrConfigID)
	}
}
