package tpmseal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
)

// ekOf is the endorsement key a TEE would vouch for: the one tpm makes from the template.
func ekOf(t *testing.T, tpm TPM, tmpl tpm2.TPMTPublic) *tpm2.TPMTPublic {
	t.Helper()
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}).Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	flush(tpm, rsp.ObjectHandle)
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// With the TPM's own endorsement key (RSA, as an SVSM's vTPM has, or ECC) the secret seals
// and unseals through sessions salted to it.
func TestSealUnsealVouchedEK(t *testing.T) {
	tpm := swtpmtest.Start(t)
	values, err := ReadPCRs(tpm, []int{4, 11})
	if err != nil {
		t.Fatal(err)
	}
	for _, tmpl := range []tpm2.TPMTPublic{tpm2.RSAEKTemplate, tpm2.ECCEKTemplate} {
		ek := ekOf(t, tpm, tmpl)
		secret := newSecret(t)
		tok, err := Seal(tpm, PCRPolicy{PCRs: []int{4, 11}, Values: values}, secret, 0, PrimaryECC, ek)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, SecretSize)
		n, err := Unseal(tpm, tok, got, ek)
		if err != nil || !bytes.Equal(got[:n], secret) {
			t.Fatalf("unseal with the EK (%#x): %d bytes, %v", uint16(tmpl.Type), n, err)
		}
		// The salt changes nothing on disk: the token opens without it as well.
		if n, err := Unseal(tpm, tok, got, nil); err != nil || !bytes.Equal(got[:n], secret) {
			t.Fatalf("unseal without the EK: %v", err)
		}
	}
}

// A TPM whose endorsement key is not the vouched one is refused by name, for sealing and for
// unsealing.
func TestOtherEKRefused(t *testing.T) {
	tpm, other := swtpmtest.Start(t), swtpmtest.Start(t)
	values, err := ReadPCRs(tpm, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	wrong := ekOf(t, other, tpm2.RSAEKTemplate)
	var mismatch *EKMismatchError
	if _, err := Seal(tpm, PCRPolicy{PCRs: []int{11}, Values: values}, newSecret(t), 0, PrimaryECC, wrong); !errors.As(err, &mismatch) {
		t.Fatalf("seal under another TPM's EK: %v, want an EK mismatch", err)
	} else {
		t.Log(err)
	}
	tok, err := Seal(tpm, PCRPolicy{PCRs: []int{11}, Values: values}, newSecret(t), 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unseal(tpm, tok, make([]byte, SecretSize), wrong); !errors.As(err, &mismatch) {
		t.Fatalf("unseal under another TPM's EK: %v, want an EK mismatch", err)
	}
}

// impostor is the host's TPM passing off the TEE's endorsement key as its own: it relays
// CreatePrimary in the endorsement hierarchy to the vouched TPM and answers with that TPM's
// public key, under the handle of its own endorsement key. Everything else it answers itself.
type impostor struct {
	TPM         // the host's TPM
	vouched TPM // the TEE's, whose public key the host copies
}

func (m impostor) Send(cmd []byte) ([]byte, error) {
	own, err := m.TPM.Send(cmd)
	if err != nil || len(cmd) < 14 || binary.BigEndian.Uint32(cmd[6:]) != uint32(tpm2.TPMCCCreatePrimary) ||
		binary.BigEndian.Uint32(cmd[10:]) != uint32(tpm2.TPMRHEndorsement) {
		return own, err
	}
	copied, err := m.vouched.Send(cmd)
	if err != nil || len(copied) < 14 || len(own) < 14 {
		return own, err
	}
	copy(copied[10:14], own[10:14])
	return copied, nil
}

// The host's TPM claiming the vouched endorsement key passes the comparison but cannot
// answer a session salted to it: sealing and unsealing fail.
func TestImpostorTPMCannotAnswer(t *testing.T) {
	host, tee := swtpmtest.Start(t), swtpmtest.Start(t)
	ek := ekOf(t, tee, tpm2.RSAEKTemplate)
	fake := impostor{TPM: host, vouched: tee}
	values, err := ReadPCRs(host, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	var mismatch *EKMismatchError
	_, err = Seal(fake, PCRPolicy{PCRs: []int{11}, Values: values}, newSecret(t), 0, PrimaryECC, ek)
	if err == nil || errors.As(err, &mismatch) {
		t.Fatalf("seal through the impostor: %v, want a failed salted session (not a mismatch: the impostor copies the key)", err)
	}
	t.Logf("seal: %v", err)
	tok, err := Seal(host, PCRPolicy{PCRs: []int{11}, Values: values}, newSecret(t), 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unseal(fake, tok, make([]byte, SecretSize), ek); err == nil || errors.As(err, &mismatch) {
		t.Fatalf("unseal through the impostor: %v, want a failed salted session", err)
	} else {
		t.Logf("unseal: %v", err)
	}
	// The relay itself works: with the host's own key the same path succeeds.
	if _, err := Unseal(host, tok, make([]byte, SecretSize), ekOf(t, host, tpm2.RSAEKTemplate)); err != nil {
		t.Fatal(err)
	}
}
