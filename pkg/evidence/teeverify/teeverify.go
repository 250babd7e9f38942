// Package teeverify checks the signature chains of SEV-SNP reports and TDX quotes with the
// vendors' libraries (go-sev-guest, go-tdx-guest), offline: certificates come from the evidence
// and the trusted roots, never from the network.
//
// It is a package of its own because those libraries weigh about 5.8 MB of binary (protobuf,
// the vendors' collateral clients): a verifier links it, the boot agent does not.
//
// Both libraries log through github.com/google/logger, which go-tdx-guest points at stdout when
// it is imported; the paths that warn (no trusted roots given, no product in a v2 SEV-SNP
// report, no VCEK in a certificate table) are avoided here so that a verifier's stdout carries
// only its own output.
package teeverify

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	sevabi "github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// Verifier implements evidence.SignatureVerifier.
type Verifier struct {
	// Now is when certificates must be valid; zero means the current time.
	Now time.Time
}

var _ evidence.SignatureVerifier = Verifier{}

// offline refuses every download: the verifier works from the evidence and the trusted roots.
type offline struct{}

func (offline) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("not fetching %s: verification is offline", url)
}

func (v Verifier) now() time.Time {
	if v.Now.IsZero() {
		return time.Now()
	}
	return v.Now
}

// VerifySignature checks an SEV-SNP report's VCEK/VLEK chain or a TDX quote's PCK chain.
func (v Verifier) VerifySignature(a *evidence.Attestation, roots *evidence.TrustedRoots) (desc string, err error) {
	// The vendor libraries parse bytes the host controls and do not all survive malformed
	// ones (go-tdx-guest's QuoteToProto slices past the end of a short QE authentication
	// data field): the verifier must answer with an error, never crash.
	defer func() {
		if r := recover(); r != nil {
			desc, err = "", fmt.Errorf("%s: malformed %s (%d bytes): the vendor parser failed: %v", a.Report.Name, a.Kind, len(a.Report.Data), r)
		}
	}()
	switch a.Kind {
	case evidence.KindSNPReport:
		return v.snp(a, roots)
	case evidence.KindTDXQuote:
		return v.tdx(a, roots)
	}
	return "", fmt.Errorf("a %s has no signature chain", a.Kind)
}

// isAMD tells AMD's roots (ARK-<line>, SEV-<line>, SEV-VLEK-<line>) from others.
func isAMD(c *x509.Certificate) bool {
	cn := c.Subject.CommonName
	return strings.HasPrefix(cn, "ARK-") || strings.HasPrefix(cn, "SEV-")
}

// amdRoots groups the trusted AMD certificates by product line; nil means go-sev-guest's
// built-in AMD roots.
func amdRoots(roots *evidence.TrustedRoots) (map[string][]*trust.AMDRootCerts, []string, error) {
	if roots == nil {
		return nil, nil, nil
	}
	byLine := map[string]*trust.ProductCerts{}
	var lines []string
	for _, c := range roots.Certificates {
		if !isAMD(c) {
			continue
		}
		cn := c.Subject.CommonName
		var line string
		pc := func() *trust.ProductCerts {
			if byLine[line] == nil {
				byLine[line] = &trust.ProductCerts{}
				lines = append(lines, line)
			}
			return byLine[line]
		}
		switch {
		case strings.HasPrefix(cn, "ARK-"):
			line = strings.TrimPrefix(cn, "ARK-")
			pc().Ark = c
		case strings.HasPrefix(cn, "SEV-VLEK-"):
			line = strings.TrimPrefix(cn, "SEV-VLEK-")
			pc().Asvk = c
		default:
			line = strings.TrimPrefix(cn, "SEV-")
			pc().Ask = c
		}
	}
	if len(lines) == 0 {
		return nil, nil, nil
	}
	out := map[string][]*trust.AMDRootCerts{}
	for _, line := range lines {
		if byLine[line].Ark == nil {
			return nil, nil, fmt.Errorf("trusted roots hold an AMD %s signing key but no ARK-%s", line, line)
		}
		r := trust.AMDRootCertsProduct(line)
		r.ProductCerts = byLine[line]
		out[line] = []*trust.AMDRootCerts{r}
	}
	return out, lines, nil
}

func (v Verifier) snp(a *evidence.Attestation, roots *evidence.TrustedRoots) (string, error) {
	report, err := sevabi.ReportToProto(a.Report.Data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", a.Report.Name, err)
	}
	if a.Certificates == nil {
		return "", fmt.Errorf("%w: the host provided no SEV-SNP certificate table, and the VCEK is not fetched from AMD offline", evidence.ErrNoChainMaterial)
	}
	certs := new(sevabi.CertTable)
	if err := certs.Unmarshal(a.Certificates.Data); err != nil {
		return "", fmt.Errorf("%s: %w", a.Certificates.Name, err)
	}
	info, err := sevabi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return "", err
	}
	key, guid := "VCEK", sevabi.VcekGUID
	if info.SigningKey == sevabi.VlekReportSigner {
		key, guid = "VLEK", sevabi.VlekGUID
	}
	ekDER, err := certs.GetByGUIDString(guid)
	if err != nil || len(ekDER) == 0 {
		return "", fmt.Errorf("%w: the certificate table has no %s", evidence.ErrNoChainMaterial, key)
	}
	chain := certs.Proto()
	trusted, lines, err := amdRoots(roots)
	if err != nil {
		return "", err
	}
	opts := &sevverify.Options{DisableCertFetching: true, Getter: offline{}, Now: v.now(), TrustedRoots: trusted}
	if report.GetCpuid1EaxFms() == 0 {
		// A v2 report does not name the CPU; the VCEK certificate does (checked by the chain).
		if opts.Product, err = productOf(ekDER, info.SigningKey); err != nil {
			return "", fmt.Errorf("%s certificate: %w", key, err)
		}
	}
	if err := sevverify.SnpAttestation(&spb.Attestation{Report: report, CertificateChain: chain}, opts); err != nil {
		return "", fmt.Errorf("signature chain: %w", err)
	}
	rootsDesc := "AMD's built-in roots"
	if trusted != nil {
		rootsDesc = "the trusted roots' ARK-" + strings.Join(lines, ", ARK-")
	}
	return fmt.Sprintf("report signed by the %s, certified up to %s (TCB and guest policy not judged)", key, rootsDesc), nil
}

// productOf reads the product (Milan-B1, Genoa-B0, …) from an endorsement key certificate.
func productOf(der []byte, key sevabi.ReportSigner) (*spb.SevProduct, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	exts, err := kds.VcekCertificateExtensions(cert)
	if err != nil {
		return nil, err
	}
	return kds.ParseProductName(exts.ProductName, key)
}

// intelRootSHA256 is the SHA-256 of Intel's SGX Root CA certificate (CN=Intel SGX Root CA, valid
// until 2049), the root of every TDX quote's PCK chain. go-tdx-guest embeds that certificate but
// warns on stdout when it uses it; cvmboot takes the root from the quote's own chain and accepts
// it only if it is that exact certificate.
const intelRootSHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

func (v Verifier) tdx(a *evidence.Attestation, roots *evidence.TrustedRoots) (string, error) {
	quote, err := tdxabi.QuoteToProto(a.Report.Data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", a.Report.Name, err)
	}
	now := v.now()
	opts := &tdxverify.Options{
		GetCollateral:    false,
		CheckRevocations: false,
		Getter:           offlineTDX{},
		Now:              &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now},
	}
	pool := x509.NewCertPool()
	var names []string
	if roots != nil {
		for _, c := range roots.Certificates {
			if !isAMD(c) {
				pool.AddCert(c)
				names = append(names, c.Subject.CommonName)
			}
		}
	}
	rootsDesc := "the trusted roots' " + strings.Join(names, ", ")
	if len(names) == 0 {
		chain, err := tdxverify.ExtractChainFromQuote(quote)
		if err != nil {
			return "", fmt.Errorf("PCK certificate chain: %w", err)
		}
		if chain.RootCertificate == nil {
			return "", errors.New("PCK certificate chain has no root certificate")
		}
		if d := sha256.Sum256(chain.RootCertificate.Raw); hex.EncodeToString(d[:]) != intelRootSHA256 {
			return "", fmt.Errorf("the PCK chain's root %q (SHA-256 %x) is not Intel's SGX Root CA; give the root to trust in the trusted roots", chain.RootCertificate.Subject.CommonName, d)
		}
		pool.AddCert(chain.RootCertificate)
		rootsDesc = "Intel's SGX Root CA"
	}
	opts.TrustedRoots = pool
	if err := tdxverify.TdxQuote(quote, opts); err != nil {
		return "", fmt.Errorf("signature chain: %w", err)
	}
	// The chain proves that a PCK-holding enclave vouched for the attestation key; only the
	// QE report's identity says which enclave that was.
	qe, err := checkTDQE(quote)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("quote signed by Intel's TD quoting enclave (ISVSVN %d), PCK chain up to %s (TCB level not judged: no collateral offline)", qe.GetIsvSvn(), rootsDesc), nil
}

// Intel's TD Quoting Enclave identity, the "TD_QE" enclave identity Intel's PCS publishes
// (GET https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity): mrsigner
// DC9E2A7C…A8C5, isvprodid 2, miscselect 00000000 under mask FFFFFFFF, attributes
// 11000000000000000000000000000000 under mask FBFFFFFFFFFFFFFF0000000000000000. Taken from
// two copies of that document: google/go-tdx-guest testing/testdata/sample_qeIdentity_response
// (issued 2023-06-08; its signature checks with the "Intel SGX TCB Signing" certificate, which
// chains to the Intel SGX Root CA of intelRootSHA256) and Phala-Network/dcap-qvl
// sample/tdx_quote_collateral.json (issued 2025-03-13): the same values. go-tdx-guest's own
// sample production quote (tdx_prod_quote_SPR_E4.dat) carries a QE report with them.
//
// Not to be confused with 8C4F5775…7BFF, the MRSIGNER of Intel's SGX enclaves: with
// isvprodid 1 it is the SGX QE3 ("QE" identity, sgx/certification/v4/qe/identity; e.g.
// Phala-Network/dcap-qvl sample/sgx_quote_collateral.json), with isvprodid 2 the Quote
// Verification Enclave (intel/SGXDataCenterAttestationPrimitives
// QuoteVerification/dcap_tvl/sgx_dcap_constant_val.h, QAE_QVE_MRSIGNER and QVE_PRODID). A TD
// quote's QE report carries neither.
//
// go-tdx-guest compares the QE report with this identity only when it fetches the identity
// from the PCS (Options.GetCollateral); offline it checks that the PCK signed the QE report and
// nothing else. But the PCK signs the report of any enclave allowed the provisioning key,
// which a host with flexible launch control can grant to an enclave of its own: without this
// check, a quote signed by such an enclave verifies.
const (
	tdQEMRSigner       = "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
	tdQEISVProdID      = 2
	tdQEMiscSelect     = 0x00000000
	tdQEMiscSelectMask = 0xffffffff
	// ATTRIBUTES: the flags INIT and PROVISIONKEY set, DEBUG clear (MODE64BIT, bit 2, is
	// ignored); XFRM (the last 8 bytes) is ignored.
	tdQEAttributes     = "11000000000000000000000000000000"
	tdQEAttributesMask = "fbffffffffffffff0000000000000000"
)

// checkTDQE refuses a quote whose QE report is not that of Intel's TD quoting enclave, and
// returns the report otherwise. The quote must have passed tdxverify.TdxQuote, which checks
// that the PCK signed this very report.
func checkTDQE(quote any) (*tdxpb.EnclaveReport, error) {
	q, ok := quote.(*tdxpb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("quoting enclave identity: unsupported quote type %T", quote)
	}
	r := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	if r == nil {
		return nil, errors.New("the quote carries no quoting enclave report, so which enclave signed it is unknown")
	}
	if hex.EncodeToString(r.GetMrSigner()) != tdQEMRSigner || r.GetIsvProdId() != tdQEISVProdID {
		return nil, fmt.Errorf("the quote was signed by an enclave with MRSIGNER %x, ISVPRODID %d, not Intel's TD quoting enclave (MRSIGNER %s, ISVPRODID %d)",
			r.GetMrSigner(), r.GetIsvProdId(), tdQEMRSigner, tdQEISVProdID)
	}
	if got := r.GetMiscSelect() & tdQEMiscSelectMask; got != tdQEMiscSelect {
		return nil, fmt.Errorf("the quoting enclave's MISCSELECT is %08x, masked with %08x %08x, not %08x as Intel's TD quoting enclave identity requires",
			r.GetMiscSelect(), uint32(tdQEMiscSelectMask), got, tdQEMiscSelect)
	}
	want, _ := hex.DecodeString(tdQEAttributes)
	mask, _ := hex.DecodeString(tdQEAttributesMask)
	attrs := r.GetAttributes()
	if len(attrs) != len(mask) {
		return nil, fmt.Errorf("the quoting enclave's ATTRIBUTES are %d bytes, not %d", len(attrs), len(mask))
	}
	got := make([]byte, len(attrs))
	for i := range attrs {
		got[i] = attrs[i] & mask[i]
	}
	if !bytes.Equal(got, want) {
		return nil, fmt.Errorf("the quoting enclave's ATTRIBUTES are %x, masked with %s %x, not %s as Intel's TD quoting enclave identity requires (a debug enclave has bit 1 set)",
			attrs, tdQEAttributesMask, got, tdQEAttributes)
	}
	return r, nil
}

// offlineTDX refuses downloads for go-tdx-guest, whose getter also returns headers.
type offlineTDX struct{}

func (offlineTDX) Get(url string) (map[string][]string, []byte, error) {
	return nil, nil, errors.New("not fetching " + url + ": verification is offline")
}
