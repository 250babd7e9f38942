package tpmseal

import (
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TPM is a connection to a TPM 2.0 (go-tpm's transport).
type TPM = transport.TPM

// scrubbing passes commands to a TPM and keeps every command and answer buffer, so that
// wipe can zero them once the call that might carry the secret is done.
type scrubbing struct {
	tpm  TPM
	seen [][]byte
}

func (s *scrubbing) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.tpm.Send(cmd)
	s.seen = append(s.seen, cmd, rsp)
	return rsp, err
}

func (s *scrubbing) wipe() {
	for _, b := range s.seen {
		clear(b)
	}
	s.seen = nil
}

// primaryTemplate is systemd 252's primary key template (src/shared/tpm2-util.c,
// tpm2_make_primary): the TCG storage key shape without noDA and with an empty unique field.
// The same template under the same owner seed gives the same key, which is what lets a
// blob sealed by one program load in another.
func primaryTemplate(alg string) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		Restricted: true, Decrypt: true,
	}
	sym := tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
	switch alg {
	case PrimaryECC:
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: sym,
				Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				CurveID:   tpm2.TPMECCNistP256,
				KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case PrimaryRSA:
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: sym,
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("primary key algorithm %q: want %q or %q", alg, PrimaryECC, PrimaryRSA)
}

// primary is a transient primary key; flush removes it from the TPM.
type primary struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
}

func createPrimary(tpm TPM, alg string) (*primary, error) {
	tmpl, err := primaryTemplate(alg)
	if err != nil {
		return nil, err
	}
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("create the %s primary key in the owner hierarchy: %w", alg, err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		flush(tpm, rsp.ObjectHandle)
		return nil, err
	}
	return &primary{handle: rsp.ObjectHandle, name: rsp.Name, public: *pub}, nil
}

func flush(tpm TPM, h tpm2.TPMHandle) {
	_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(tpm)
}

// session encrypts the first command parameter (dir EncryptIn) or the first answer
// parameter (EncryptOut) under a key salted with the primary, so the secret crosses the bus
// encrypted, as with systemd's encryption session.
func (p *primary) salt(dir ...tpm2.AuthOption) []tpm2.AuthOption {
	return append([]tpm2.AuthOption{tpm2.Salted(p.handle, p.public)}, dir...)
}
