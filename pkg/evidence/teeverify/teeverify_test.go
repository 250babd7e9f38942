package teeverify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	sevabi "github.com/google/go-sev-guest/abi"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
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
		{"TDX sample against Intel's root", tdx, nil, "quote signed by Intel's TD quoting enclave (ISVSVN 4), PCK chain up to Intel's SGX Root CA", "", false},
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

// rawSig is an ECDSA P-256 signature in a quote's form: r ‖ s, 32 bytes each.
func rawSig(t *testing.T, key *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// testPCKChain is a PCK certificate chain under a root of its own, shaped as go-tdx-guest
// requires (the names of Intel's CAs, P-256, the PCK's SGX extensions), and the PCK's key.
type testPCKChain struct {
	root, platformCA, pck *x509.Certificate
	pckKey                *ecdsa.PrivateKey
}

func newTestPCKChain(t *testing.T, genuinePCK *x509.Certificate) *testPCKChain {
	t.Helper()
	notBefore, notAfter := sampleTime.Add(-24*time.Hour), sampleTime.Add(24*time.Hour)
	issue := func(serial int64, cn string, ca bool, exts []pkix.Extension, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"Intel Corporation"}},
			NotBefore: notBefore, NotAfter: notAfter, SignatureAlgorithm: x509.ECDSAWithSHA256, ExtraExtensions: exts}
		if ca {
			tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c, key
	}
	// The leaf takes the genuine PCK's extensions (the SGX extension with FMSPC and TCB, key
	// usage, …) but for the authority key identifier, which names its own issuer.
	var exts []pkix.Extension
	for _, e := range genuinePCK.Extensions {
		if !e.Id.Equal([]int{2, 5, 29, 35}) {
			exts = append(exts, e)
		}
	}
	c := &testPCKChain{}
	var rootKey, caKey *ecdsa.PrivateKey
	c.root, rootKey = issue(1, "Intel SGX Root CA", true, nil, nil, nil)
	c.platformCA, caKey = issue(2, "Intel SGX PCK Platform CA", true, nil, c.root, rootKey)
	c.pck, c.pckKey = issue(3, "Intel SGX PCK Certificate", false, exts, c.platformCA, caKey)
	return c
}

func (c *testPCKChain) pem() []byte {
	var out []byte
	for _, cert := range []*x509.Certificate{c.pck, c.platformCA, c.root} {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

// forgedQuote is go-tdx-guest's sample production quote made over as a host that runs an
// enclave holding a PCK could make it: REPORT_DATA and RTMR 3 as given (nil keeps them), a new
// attestation key signing header and body, a QE report that binds that key, changed by edit,
// and signed by the PCK of chain. Everything a verifier can check offline is valid up to
// chain.root; only the QE report's identity tells it from Intel's quoting enclave.
func forgedQuote(t *testing.T, chain *testPCKChain, reportData, rtmr3 []byte, edit func(*tdxpb.EnclaveReport)) []byte {
	t.Helper()
	sample, _ := teetest.SampleQuote()
	parsed, err := tdxabi.QuoteToProto(sample)
	if err != nil {
		t.Fatal(err)
	}
	q := parsed.(*tdxpb.QuoteV4)
	if reportData != nil {
		q.TdQuoteBody.ReportData = reportData
	}
	if rtmr3 != nil {
		q.TdQuoteBody.Rtmrs[3] = rtmr3
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sd := q.SignedData
	sd.EcdsaAttestationKey = make([]byte, 64)
	ak.X.FillBytes(sd.EcdsaAttestationKey[:32])
	ak.Y.FillBytes(sd.EcdsaAttestationKey[32:])
	header, err := tdxabi.HeaderToAbiBytes(q.Header)
	if err != nil {
		t.Fatal(err)
	}
	body, err := tdxabi.TdQuoteBodyToAbiBytes(q.TdQuoteBody)
	if err != nil {
		t.Fatal(err)
	}
	sd.Signature = rawSig(t, ak, append(header, body...))

	qcd := sd.CertificationData.QeReportCertificationData
	binding := sha256.Sum256(append(append([]byte(nil), sd.EcdsaAttestationKey...), qcd.QeAuthData.Data...))
	qcd.QeReport.ReportData = append(binding[:], make([]byte, 32)...)
	if edit != nil {
		edit(qcd.QeReport)
	}
	report, err := tdxabi.EnclaveReportToAbiBytes(qcd.QeReport)
	if err != nil {
		t.Fatal(err)
	}
	qcd.QeReportSignature = rawSig(t, chain.pckKey, report)

	// The new chain has another length: the sizes around it follow.
	certs := chain.pem()
	grow := uint32(len(certs)) - qcd.PckCertificateChainData.Size
	qcd.PckCertificateChainData.PckCertChain, qcd.PckCertificateChainData.Size = certs, uint32(len(certs))
	sd.CertificationData.Size += grow
	q.SignedDataSize += grow
	raw, err := tdxabi.QuoteToAbiBytes(q)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestTDQuotingEnclave: a quote is accepted only when Intel's TD quoting enclave signed it,
// checked offline against the identity Intel publishes (tdQE*).
func TestTDQuotingEnclave(t *testing.T) {
	sample, _ := teetest.SampleQuote()
	parsed, err := tdxabi.QuoteToProto(sample)
	if err != nil {
		t.Fatal(err)
	}
	genuine := parsed.(*tdxpb.QuoteV4).SignedData.CertificationData.QeReportCertificationData.QeReport
	// The sample is a production quote signed by Intel's TD QE: its QE report is the
	// reference the published identity is checked against, independently of checkTDQE.
	if got := hex.EncodeToString(genuine.MrSigner); got != "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5" || genuine.IsvProdId != 2 {
		t.Fatalf("the sample quote's QE report: MRSIGNER %s, ISVPRODID %d", got, genuine.IsvProdId)
	}
	if _, err := checkTDQE(parsed); err != nil {
		t.Fatalf("the sample quote's QE report is refused: %v", err)
	}
	pckChain, err := tdxverify.ExtractChainFromQuote(parsed)
	if err != nil {
		t.Fatal(err)
	}
	chain := newTestPCKChain(t, pckChain.PCKCertificate)
	roots := &evidence.TrustedRoots{Certificates: []*x509.Certificate{chain.root}}
	hostSigner := sha256.Sum256([]byte("the host's enclave signing key"))
	intelSGX, _ := hex.DecodeString("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")

	tests := []struct {
		name    string
		edit    func(*tdxpb.EnclaveReport)
		want    string // in the description
		wantErr string
	}{
		// The control: the forged chain itself verifies, so each refusal below is the
		// identity's, not the chain's.
		{"Intel's TD QE identity, test chain", nil, "quote signed by Intel's TD quoting enclave (ISVSVN 4), PCK chain up to the trusted roots' Intel SGX Root CA", ""},
		{"another MRSIGNER", func(r *tdxpb.EnclaveReport) { r.MrSigner = hostSigner[:] }, "",
			fmt.Sprintf("the quote was signed by an enclave with MRSIGNER %x, ISVPRODID 2, not Intel's TD quoting enclave (MRSIGNER %s, ISVPRODID 2)", hostSigner, tdQEMRSigner)},
		{"the SGX quoting enclave", func(r *tdxpb.EnclaveReport) { r.MrSigner, r.IsvProdId = intelSGX, 1 }, "",
			"the quote was signed by an enclave with MRSIGNER 8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff, ISVPRODID 1, not Intel's TD quoting enclave (MRSIGNER " + tdQEMRSigner + ", ISVPRODID 2)"},
		{"another ISVPRODID", func(r *tdxpb.EnclaveReport) { r.IsvProdId = 3 }, "", "MRSIGNER " + tdQEMRSigner + ", ISVPRODID 3, not Intel's TD quoting enclave"},
		{"a debug enclave", func(r *tdxpb.EnclaveReport) { r.Attributes[0] |= 0x02 }, "",
			"the quoting enclave's ATTRIBUTES are 1700000000000000e700000000000000, masked with fbffffffffffffff0000000000000000 13000000000000000000000000000000, not 11000000000000000000000000000000"},
		{"no PROVISIONKEY", func(r *tdxpb.EnclaveReport) { r.Attributes[0] &^= 0x10 }, "", "the quoting enclave's ATTRIBUTES are 0500000000000000e700000000000000"},
		{"MISCSELECT", func(r *tdxpb.EnclaveReport) { r.MiscSelect = 1 }, "", "the quoting enclave's MISCSELECT is 00000001"},
		{"MODE64BIT and XFRM are not judged", func(r *tdxpb.EnclaveReport) { r.Attributes[0] &^= 0x04; r.Attributes[8] = 0x03 }, "quote signed by Intel's TD quoting enclave", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &evidence.Attestation{Platform: evidence.PlatformTDX, Kind: evidence.KindTDXQuote,
				Report: evidence.File{Name: "tdx-quote.bin", Data: forgedQuote(t, chain, nil, nil, tt.edit)}}
			var desc string
			var err error
			if out := captureStdout(t, func() { desc, err = Verifier{Now: sampleTime}.VerifySignature(a, roots) }); out != "" {
				t.Errorf("the libraries wrote to stdout: %q", out)
			}
			if tt.wantErr == "" {
				if err != nil || !strings.Contains(desc, tt.want) {
					t.Fatalf("VerifySignature = %q, %v; want %q", desc, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("VerifySignature = %q, %v; want the error %q", desc, err, tt.wantErr)
			}
			if errors.Is(err, evidence.ErrNoChainMaterial) {
				t.Errorf("the refusal wraps ErrNoChainMaterial, which --allow-unsigned would let through: %v", err)
			}
		})
	}

	// Through the verifier: evidence whose binding and registers are right and whose quote
	// another enclave signed fails the "signature" check, also with --allow-unsigned.
	nonce := []byte("relying party nonce")
	rd := eventlog.ReportData(nil, nonce)
	forged := forgedQuote(t, chain, rd[:], make([]byte, 48), func(r *tdxpb.EnclaveReport) { r.MrSigner = hostSigner[:] })
	ev := &evidence.Evidence{Version: 1, Nonce: hex.EncodeToString(nonce), ReportData: hex.EncodeToString(rd[:]),
		EventLog: evidence.File{Name: evidence.EventLogName},
		Attestations: []evidence.Attestation{{Platform: evidence.PlatformTDX, Kind: evidence.KindTDXQuote, Source: "configfs-tsm",
			Report: evidence.File{Name: "tdx-quote.bin", Data: forged}}}}
	for _, allowUnsigned := range [][]evidence.Platform{nil, evidence.AllPlatforms} {
		var claims *evidence.Claims
		captureStdout(t, func() {
			claims, err = evidence.VerifyEvidence(ev, evidence.Options{Nonce: nonce, TrustedRoots: roots, AllowUnsigned: allowUnsigned, Signatures: Verifier{Now: sampleTime}})
		})
		var e *evidence.Error
		if !errors.As(err, &e) || e.Check != "signature" || !strings.Contains(e.Msg, fmt.Sprintf("tdx: the quote was signed by an enclave with MRSIGNER %x", hostSigner)) {
			t.Errorf("AllowUnsigned %v: VerifyEvidence = %+v, %v; want a signature error naming MRSIGNER %x", allowUnsigned, claims, err, hostSigner)
		}
	}
}
