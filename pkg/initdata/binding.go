package initdata

import (
	"crypto/sha256"
	"fmt"
)

// fit is the one rule kata's runtime, the Attestation Agent and Trustee's verifiers use to put a
// digest into a fixed-size field: truncated at the end, or zero-padded at the end.
func fit(d []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, d)
	return out
}

// HostData is the SEV-SNP HOST_DATA (32 bytes) that binds digest d.
func HostData(d []byte) []byte { return fit(d, 32) }

// MRConfigID is the TDX MRCONFIGID (48 bytes) that binds digest d.
func MRConfigID(d []byte) []byte { return fit(d, 48) }

// PCR8 is the vTPM PCR 8 (SHA-256 bank) after the one extend with d, from zero: what Trustee's
// TPM and Azure vTPM verifiers require (SHA-256(32 zero bytes ‖ d)). They take only a 32-byte
// d, so only a sha256 document binds on a vTPM.
func PCR8(d []byte) ([]byte, error) {
	if len(d) != sha256.Size {
		return nil, fmt.Errorf("initdata: a %d-byte digest cannot be extended into vTPM PCR 8: Trustee and the Attestation Agent take only sha256 documents there", len(d))
	}
	h := sha256.New()
	h.Write(make([]byte, sha256.Size))
	h.Write(d)
	return h.Sum(nil), nil
}
