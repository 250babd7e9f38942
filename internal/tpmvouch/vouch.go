package tpmvouch

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/pkg/evidence"
)

// snpPolicyDebug is the guest policy's DEBUG bit: the host may decrypt the guest's memory.
const snpPolicyDebug = 1 << 19

// BySVSM is Binding.By for an SVSM's vTPM.
const BySVSM = "svsm-vtpm"

// Binding is a TPM the TEE vouches for: the endorsement key a TEE report binds.
type Binding struct {
	By string
	// EK is the endorsement key's public area. Only a TPM holding its private half can
	// complete a session salted to it.
	EK tpm2.TPMTPublic
	// EKSHA256 is the SHA-256 of the EK's TPMT_PUBLIC as the report binds it, in hex.
	EKSHA256 string
	// Measurement is the report's launch measurement (hex): which firmware and SVSM run.
	Measurement string
}

// Voucher vouches for the TPM, or says why it cannot.
type Voucher interface {
	Vouch() (*Binding, error)
}

// VTPMReporter takes the SVSM's report on its vTPM (tee.SNP).
type VTPMReporter interface {
	VTPMReport(nonce [64]byte) (*tee.TSMReport, error)
}

// SVSM vouches for an SVSM's vTPM on SEV-SNP.
type SVSM struct {
	Reporter VTPMReporter
	Random   io.Reader // crypto/rand when nil
}

// Vouch asks the SVSM for a report on its vTPM under a fresh nonce and checks it.
func (v SVSM) Vouch() (*Binding, error) {
	var nonce [64]byte
	r := v.Random
	if r == nil {
		r = rand.Reader
	}
	if _, err := io.ReadFull(r, nonce[:]); err != nil {
		return nil, fmt.Errorf("a nonce for the SVSM's vTPM report: %w", err)
	}
	rep, err := v.Reporter.VTPMReport(nonce)
	if errors.Is(err, tee.ErrNoServiceProvider) {
		// Not ErrUnavailable: the host chooses whether an SVSM runs, and a TEE without one
		// has no TPM of its own; a TPM attached to it is the host's.
		return nil, fmt.Errorf("SEV-SNP without an SVSM, so without a TPM inside the TEE: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("the SVSM's vTPM attestation: %w", err)
	}
	return CheckSVSM(nonce, rep.OutBlob, rep.Manifest)
}

// CheckSVSM checks an SVSM's vTPM report taken under nonce: a report the SVSM requested (VMPL
// 0) for a guest whose memory the host cannot read (no DEBUG policy), binding SHA-512(nonce ||
// manifest), the manifest one TPMT_PUBLIC of a key that can salt a session. It returns the
// endorsement key.
func CheckSVSM(nonce [64]byte, report, manifest []byte) (*Binding, error) {
	// The report's fields by their offsets in ATTESTATION_REPORT (SEV-SNP firmware ABI 56860,
	// table 22); go-sev-guest's parser would bring protobuf into the initramfs binary.
	if len(report) < evidence.SNPReportSize {
		return nil, fmt.Errorf("the SVSM's vTPM report has %d bytes, an SEV-SNP report %d", len(report), evidence.SNPReportSize)
	}
	if v := binary.LittleEndian.Uint32(report[0x00:]); v < 2 {
		return nil, fmt.Errorf("the SVSM's vTPM report has version %d, expected 2 or later", v)
	}
	if vmpl := binary.LittleEndian.Uint32(report[0x30:]); vmpl != 0 {
		return nil, fmt.Errorf("the vTPM report was made at VMPL %d, expected 0 (the SVSM's): code outside the SVSM asked for it", vmpl)
	}
	if policy := binary.LittleEndian.Uint64(report[0x08:]); policy&snpPolicyDebug != 0 {
		return nil, fmt.Errorf("the guest policy %#x allows debugging: the host can read the guest's memory, the SVSM's vTPM included", policy)
	}
	reportData, measurement := report[0x50:0x90], report[0x90:0xc0]
	h := sha512.New()
	h.Write(nonce[:])
	h.Write(manifest)
	if want := h.Sum(nil); !bytes.Equal(reportData, want) {
		return nil, fmt.Errorf("the vTPM report's REPORT_DATA is %x, expected SHA-512(nonce || manifest) %x: the report does not bind this manifest under this nonce", reportData, want)
	}
	ek, err := parseEK(manifest)
	if err != nil {
		return nil, fmt.Errorf("the SVSM's vTPM manifest (%d bytes): %w", len(manifest), err)
	}
	sum := sha256.Sum256(manifest)
	return &Binding{By: BySVSM, EK: *ek, EKSHA256: hex.EncodeToString(sum[:]), Measurement: hex.EncodeToString(measurement)}, nil
}

// parseEK reads the manifest as exactly one TPMT_PUBLIC of a restricted decryption key (RSA
// or ECC), which is what a session can be salted to.
func parseEK(manifest []byte) (*tpm2.TPMTPublic, error) {
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](manifest)
	if err != nil {
		return nil, fmt.Errorf("not a TPMT_PUBLIC: %w", err)
	}
	if again := tpm2.Marshal(*ek); !bytes.Equal(again, manifest) {
		return nil, fmt.Errorf("not exactly one TPMT_PUBLIC: %d bytes read, %d given", len(again), len(manifest))
	}
	if ek.Type != tpm2.TPMAlgRSA && ek.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("the endorsement key's type is %#x, expected RSA or ECC", uint16(ek.Type))
	}
	if a := ek.ObjectAttributes; !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM {
		return nil, errors.New("the endorsement key is not a fixed, restricted decryption key")
	}
	return ek, nil
}

// ErrUnavailable means the machine is no TEE at all, so nothing can vouch for a TPM: the one
// case root.insecure_unvouched_tpm may stand in for. A TEE whose TPM cannot be vouched for
// (SEV-SNP without an SVSM, TDX) or a check that failed is another error: which of those a
// machine presents is the host's choice.
var ErrUnavailable = errors.New("no TEE here vouches for a TPM")

// Unavailable is a machine without a TEE: nothing vouches for its TPM.
type Unavailable struct{ Reason string }

// Vouch implements Voucher: it always fails with ErrUnavailable and the reason.
func (u Unavailable) Vouch() (*Binding, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnavailable, u.Reason)
}

// Refused is a TEE whose TPM this version cannot vouch for.
type Refused struct{ Reason string }

// Vouch implements Voucher: it always fails with the reason (not ErrUnavailable).
func (r Refused) Vouch() (*Binding, error) { return nil, errors.New(r.Reason) }

// ForPlatform returns the voucher for the detected platform: the SVSM's vTPM report on
// SEV-SNP with configfs-tsm; Refused on another TEE; Unavailable without one.
func ForPlatform(det *tee.Detection) Voucher {
	for _, s := range det.Sources() {
		if snp, ok := s.(*tee.SNP); ok && snp.TSM != nil {
			return SVSM{Reporter: snp}
		}
	}
	switch {
	case det.SNP.Present:
		return Refused{"SEV-SNP without configfs-tsm: the SVSM's vTPM report is reachable only through configfs-tsm (Linux 6.10 and later)"}
	case det.TDX.Present:
		return Refused{"TDX: this version checks no vTPM binding on TDX (a paravisor's or TD partition's vTPM)"}
	}
	return Unavailable{"SEV-SNP " + det.SNP.String() + "; TDX " + det.TDX.String()}
}
