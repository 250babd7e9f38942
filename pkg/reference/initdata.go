package reference

import (
	"encoding/hex"
	"fmt"
	"github.com/cvmboot/cvmboot/pkg/initdata"
	"github.com/cvmboot/cvmboot/pkg/readfile"
)

// InitData are the values a Confidential Containers initdata document binds (pkg/initdata):
// its digest, and where each platform carries it.
type InitData struct {
	File      string `json:"file"`
	Algorithm string `json:"algorithm"`
	Digest    string `json:"digest"`       // of the document's exact bytes
	HostData  string `json:"host_data"`    // SEV-SNP HOST_DATA (32 bytes)
	MRConfig  string `json:"mr_config_id"` // TDX MRCONFIGID (48 bytes)
	// PCR8 is vTPM PCR 8 after the one extend with the digest; absent unless the algorithm is
	// sha256, the only one Trustee's vTPM verifiers and the Attestation Agent bind there.
	PCR8 string `json:"pcr8,omitempty"`
}

// TrusteeInitDataName is the claim Trustee's verifiers give initdata's binding, each in its
// platform's encoding: hex of HOST_DATA (snp), of MRCONFIGID (tdx), of PCR 8 (tpm,
// az-snp-vtpm, az-tdx-vtpm) — deps/verifier at trustee 78962cd4. Trustee's default policy does
// not compare it; a policy that does finds every platform's form in the list.
const TrusteeInitDataName = "init_data"

// ComputeInitData reads and checks an initdata document and computes its bindings.
func ComputeInitData(path string) (*InitData, error) {
	raw, err := readfile.Limit(path, initdata.MaxSize)
	if err != nil {
		return nil, err
	}
	d, err := initdata.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dig := d.Digest()
	v := &InitData{File: path, Algorithm: d.Algorithm, Digest: hex.EncodeToString(dig),
		HostData: hex.EncodeToString(initdata.HostData(dig)), MRConfig: hex.EncodeToString(initdata.MRConfigID(dig))}
	if p, err := initdata.PCR8(dig); err == nil {
		v.PCR8 = hex.EncodeToString(p)
	}
	return v, nil
}

// trustee lists the init_data claim values of every platform.
func (i *InitData) trustee() []string {
	out := []string{i.HostData, i.MRConfig}
	if i.PCR8 != "" {
		out = append(out, i.PCR8)
	}
	return out
}
