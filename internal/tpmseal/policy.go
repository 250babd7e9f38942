package tpmseal

import (
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// MaxPCR is the highest PCR index a PC client TPM has.
const MaxPCR = 23

// PCRPolicy is the PCRs of the sha256 bank a secret is sealed to, with their expected values.
type PCRPolicy struct {
	PCRs   []int    // ascending, no duplicates
	Values [][]byte // Values[i] is PCRs[i]'s value, 32 bytes
}

// Check reports what makes the policy unusable.
func (p PCRPolicy) Check() error {
	if len(p.PCRs) == 0 {
		return fmt.Errorf("PCR policy: no PCRs")
	}
	if len(p.Values) != len(p.PCRs) {
		return fmt.Errorf("PCR policy: %d PCRs but %d values", len(p.PCRs), len(p.Values))
	}
	for i, pcr := range p.PCRs {
		if pcr < 0 || pcr > MaxPCR {
			return fmt.Errorf("PCR policy: PCR %d out of range 0-%d", pcr, MaxPCR)
		}
		if i > 0 && p.PCRs[i-1] >= pcr {
			return fmt.Errorf("PCR policy: PCRs %v are not ascending and distinct", p.PCRs)
		}
		if len(p.Values[i]) != sha256.Size {
			return fmt.Errorf("PCR policy: PCR %d value has %d bytes, want %d", pcr, len(p.Values[i]), sha256.Size)
		}
	}
	return nil
}

// Digest is the policy digest of TPM2_PolicyPCR(selection, sha256(values...)) started from
// the empty policy: the authPolicy of an object sealed to p, and systemd's "tpm2-policy-hash".
func (p PCRPolicy) Digest() ([]byte, error) {
	if err := p.Check(); err != nil {
		return nil, err
	}
	h := sha256.New()
	for _, v := range p.Values {
		h.Write(v)
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: selection(p.PCRs)}
	if err := cmd.Update(calc); err != nil {
		return nil, err
	}
	return slices.Clone(calc.Hash().Digest), nil
}

// selection is the sha256 bank's selection of pcrs, three bytes of bitmap as systemd and
// every PC client TPM use: the policy digest covers the encoding, so it must match.
func selection(pcrs []int) tpm2.TPMLPCRSelection {
	bitmap := make([]byte, 3)
	for _, p := range pcrs {
		bitmap[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}
}

// ReadPCRs reads the current sha256 values of pcrs.
func ReadPCRs(tpm TPM, pcrs []int) ([][]byte, error) {
	values := make([][]byte, 0, len(pcrs))
	// A PC client TPM answers at most 8 PCRs per call: read them one at a time.
	for _, p := range pcrs {
		rsp, err := (tpm2.PCRRead{PCRSelectionIn: selection([]int{p})}).Execute(tpm)
		if err != nil {
			return nil, fmt.Errorf("read PCR %d: %w", p, err)
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("read PCR %d: the TPM has no sha256 value for it", p)
		}
		values = append(values, slices.Clone(rsp.PCRValues.Digests[0].Buffer))
	}
	return values, nil
}
