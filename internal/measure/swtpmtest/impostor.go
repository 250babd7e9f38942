package swtpmtest

import (
	"encoding/binary"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Impostor is the host's TPM passing off another TPM's endorsement key as its own: it relays
// CreatePrimary in the endorsement hierarchy to Vouched and answers with that TPM's public
// key, under the handle of its own endorsement key. Everything else Host answers.
type Impostor struct {
	Host, Vouched transport.TPM
}

// Send implements transport.TPM.
func (m Impostor) Send(cmd []byte) ([]byte, error) {
	own, err := m.Host.Send(cmd)
	if err != nil || len(cmd) < 14 || binary.BigEndian.Uint32(cmd[6:]) != uint32(tpm2.TPMCCCreatePrimary) ||
		binary.BigEndian.Uint32(cmd[10:]) != uint32(tpm2.TPMRHEndorsement) {
		return own, err
	}
	copied, err := m.Vouched.Send(cmd)
	if err != nil || len(copied) < 14 || len(own) < 14 {
		return own, err
	}
	copy(copied[10:14], own[10:14])
	return copied, nil
}
