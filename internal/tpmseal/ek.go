package tpmseal

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// EKMismatchError means the TPM's endorsement key is not the one a TEE vouched for: this TPM
// is not the TEE's.
type EKMismatchError struct {
	Expected, Found [32]byte // SHA-256 of the TPMT_PUBLIC
}

func (e *EKMismatchError) Error() string {
	return fmt.Sprintf("the TPM's endorsement key (TPMT_PUBLIC sha256 %x) is not the one the TEE vouches for (sha256 %x): this is not the TEE's TPM", e.Found, e.Expected)
}

// endorsement makes the TPM's endorsement key from the TCG default template of ek's type
// (RSA 2048 L-1 or ECC P-256 L-2, the templates an SVSM's vTPM uses) and checks that it is
// ek. The check names a wrong TPM plainly; what keeps a wrong TPM out is the salt: sessions
// are salted to ek as given, so a TPM without its private half cannot answer them.
func endorsement(tpm TPM, ek *tpm2.TPMTPublic) (*primary, error) {
	var tmpl tpm2.TPMTPublic
	switch ek.Type {
	case tpm2.TPMAlgRSA:
		tmpl = tpm2.RSAEKTemplate
	case tpm2.TPMAlgECC:
		tmpl = tpm2.ECCEKTemplate
	default:
		return nil, fmt.Errorf("endorsement key of type %#x: want RSA or ECC", uint16(ek.Type))
	}
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("create the endorsement key: %w", err)
	}
	found := rsp.OutPublic.Bytes()
	want := tpm2.Marshal(*ek)
	if !bytes.Equal(found, want) {
		flush(tpm, rsp.ObjectHandle)
		return nil, &EKMismatchError{Expected: sha256.Sum256(want), Found: sha256.Sum256(found)}
	}
	return &primary{handle: rsp.ObjectHandle, name: rsp.Name, public: *ek}, nil
}

// saltKey returns the key the sessions are salted to: the vouched endorsement key when ek is
// given, else the storage primary (which keeps the secret off the bus, but vouches for
// nothing: a TPM that made the primary can answer). done flushes what saltKey created.
func saltKey(tpm TPM, prim *primary, ek *tpm2.TPMTPublic) (key *primary, done func(), err error) {
	if ek == nil {
		return prim, func() {}, nil
	}
	e, err := endorsement(tpm, ek)
	if err != nil {
		return nil, nil, err
	}
	return e, func() { flush(tpm, e.handle) }, nil
}

// saltNote says, in an error, that the session was salted to the vouched key, which a TPM
// without its private half cannot use.
func saltNote(ek *tpm2.TPMTPublic) string {
	if ek == nil {
		return ""
	}
	return " (salted to the TEE-vouched endorsement key, which only the TEE's TPM can use)"
}

// CheckEndorsement checks that the TPM's endorsement key is ek, before anything is written
// that a refusal later would leave behind.
func CheckEndorsement(tpm TPM, ek *tpm2.TPMTPublic) error {
	e, err := endorsement(tpm, ek)
	if err != nil {
		return err
	}
	flush(tpm, e.handle)
	return nil
}
