package tee

import (
	"errors"
)

// VTPMService is the SVSM's vTPM attestation service (SVSM specification 58019, section 8):
// its manifest, version 0, is the TPMT_PUBLIC of the vTPM's endorsement key, and the report
// the SVSM requests at VMPL 0 binds SHA-512(nonce || manifest) in REPORT_DATA.
var VTPMService = Service{Provider: "svsm", GUID: "c476f1eb-0123-45a5-9641-b4e7dde5bfe3", ManifestVersion: 0}

// VTPMReport asks the SVSM for a report on its vTPM, binding nonce: through configfs-tsm
// only, the one interface that reaches the SVSM's attestation protocol.
func (s *SNP) VTPMReport(nonce [64]byte) (*TSMReport, error) {
	if s.TSM == nil {
		return nil, errors.New("sev-snp: no configfs-tsm with the sev_guest provider, the only way to the SVSM's vTPM attestation")
	}
	return s.TSM.ServiceReport(nonce[:], ProviderSNP, VTPMService)
}
