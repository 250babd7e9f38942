package teeverify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	sevabi "github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

var sampleTime = time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)

// captureStdout runs fn with file descriptor 1 redirected and returns what was written there:
// the vendors' loggers write to the process's stdout, not to a writer the caller controls.
func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved, err := unix.Dup(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(w.Fd()), 1); err != nil {
		t.Fatal(err)
	}
	fn()
	unix.Dup2(saved, 1)
	unix.Close(saved)
	w.Close()
	out, _ := io.ReadAll(r)
	return string(out)
}

func selfSigned(t *testing.T, cn string) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestVerifySignature(t *testing.T) {
	if got := captureStdout(t, func() { os.Stdout.WriteString("probe") }); got != "probe" {
		t.Fatalf("stdout capture does not work: got %q", got)
	}
	signer := teetest.SNPSigner(t)
	certs := teetest.SNPCerts(t, signer)
	roots, err := evidence.ParseTrustedRoots(teetest.SNPRoots(signer))
	if err != nil {
		t.Fatal(err)
	}
	report, err := teetest.SNPReport(signer, make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	// A certificate table with the ARK and ASK but no VCEK.
	noVCEK := new(sevabi.CertTable)
	if err := noVCEK.Unmarshal(certs); err != nil {
		t.Fatal(err)
	}
	var kept []sevabi.CertTableEntry
	for _, e := range noVCEK.Entries {
		if e.GUID != uuid.MustParse(sevabi.VcekGUID) {
			kept = append(kept, e)
		}
	}
	noVCEK.Entries = kept
	quote, _ := teetest.SampleQuote()
	snp := func(certs []byte) *evidence.Attestation {
		a := &evidence.Attestation{Platform: evidence.PlatformSNP, Kind: evidence.KindSNPReport, Report: evidence.File{Name: "snp-report.bin", Data: report}}
		if certs != nil {
			a.Certificates = &evidence.File{Name: "snp-certs.bin", Data: certs}
		}
		return a
	}
	tdx := &evidence.Attestation{Platform: evidence.PlatformTDX, Kind: evidence.KindTDXQuote, Report: evidence.File{Name: "tdx-quote.bin", Data: quote}}
	strangers := &evidence.TrustedRoots{Certificates: []*x509.Certificate{selfSigned(t, "Some Root CA")}}
	askOnly := &evidence.TrustedRoots{Certificates: []*x509.Certificate{signer.Ask}}

	tests := []struct {
		name    string
		a       *evidence.Attestation
		roots   *evidence.TrustedRoots
		want    string
		wantErr string
		noChain bool
	}{
		{"SEV-SNP v2 report", snp(certs), roots, "report signed by the VCEK, certified up to the trusted roots' ARK-Milan", "", false},
		{"SEV-SNP against AMD's roots", snp(certs), nil, "", "signature chain", false},
		{"SEV-SNP without certificates", snp(nil), roots, "", "the host provided no SEV-SNP certificate table", true},
		{"SEV-SNP without VCEK", snp(noVCEK.Marshal()), roots, "", "the certificate table has no VCEK", true},
		{"SEV-SNP ASK without ARK", snp(certs), askOnly, "", "an AMD Milan signing key but no ARK-Milan", false},
		{"TDX sample against Intel's root", tdx, nil, "PCK chain up to Intel's SGX Root CA", "", false},
		{"TDX sample against another root", tdx, strangers, "", "signature chain", false},
		{"TDX sample, AMD roots ignored", tdx, roots, "PCK chain up to Intel's SGX Root CA", "", false},
		{"TDREPORT has no chain", &evidence.Attestation{Kind: evidence.KindTDXReport}, nil, "", "a tdx-report has no signature chain", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var desc string
			var err error
			v := Verifier{} // the fake AMD chain was made an hour ago
			if tt.a.Kind == evidence.KindTDXQuote {
				v.Now = sampleTime // when the sample quote's PCK certificate was valid
			}
			out := captureStdout(t, func() { desc, err = v.VerifySignature(tt.a, tt.roots) })
			if out != "" {
				t.Errorf("the libraries wrote to stdout: %q", out)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				if errors.Is(err, evidence.ErrNoChainMaterial) != tt.noChain {
					t.Errorf("errors.Is(ErrNoChainMaterial) = %v, want %v", !tt.noChain, tt.noChain)
				}
				return
			}
			if err != nil || !strings.Contains(desc, tt.want) {
				t.Fatalf("VerifySignature = %q, %v; want %q", desc, err, tt.want)
			}
		})
	}
}
