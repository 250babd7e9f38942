package tpmseal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
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

// The host's TPM claiming the vouched endorsement key passes the comparison but cannot
// answer a session salted to it: sealing and unsealing fail.
func TestImpostorTPMCannotAnswer(t *testing.T) {
	host, tee := swtpmtest.Start(t), swtpmtest.Start(t)
	ek := ekOf(t, tee, tpm2.RSAEKTemplate)
	fake := swtpmtest.Impostor{Host: host, Vouched: tee}
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

// liar is a host TPM that does not merely fail the salted session but pretends: it copies
// the vouched endorsement key's public area (as swtpmtest.Impostor does), answers StartAuthSession
// with success and a session of its own, and answers the commands in that session (Create,
// PolicyPCR, Unseal) with success, made-up results and an HMAC it cannot compute. All
// that stops it is the caller's check of the answer's HMAC.
type liar struct {
	swtpmtest.Impostor
	fake     map[uint32]bool // the session handles it made up
	answered []uint32        // the command codes it answered in a fake session
	seen     [][]byte        // every command
}

func (l *liar) Send(cmd []byte) ([]byte, error) {
	l.seen = append(l.seen, slices.Clone(cmd))
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:]))
	answer := func(tag uint16, body []byte) []byte {
		rsp := binary.BigEndian.AppendUint16(nil, tag)
		rsp = binary.BigEndian.AppendUint32(rsp, uint32(10+len(body)))
		rsp = binary.BigEndian.AppendUint32(rsp, 0)
		return append(rsp, body...)
	}
	switch {
	case cc == tpm2.TPMCCStartAuthSession:
		// Handles (tpmKey, bind), nonceCaller, encryptedSalt, then sessionType.
		off := 18
		for range 2 {
			off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
		}
		h := uint32(0x02000000) // HMAC session
		if cmd[off] == byte(tpm2.TPMSEPolicy) {
			h = 0x03000000
		}
		h += uint32(len(l.fake))
		l.fake[h] = true
		body := binary.BigEndian.AppendUint32(nil, h)
		body = binary.BigEndian.AppendUint16(body, 16)
		return answer(0x8001, append(body, bytes.Repeat([]byte{0x5a}, 16)...)), nil
	case cc == tpm2.TPMCCPolicyPCR && l.fake[binary.BigEndian.Uint32(cmd[10:])]:
		return answer(0x8001, nil), nil
	case cc == tpm2.TPMCCFlushContext && l.fake[binary.BigEndian.Uint32(cmd[10:])]:
		return answer(0x8001, nil), nil
	case (cc == tpm2.TPMCCCreate || cc == tpm2.TPMCCUnseal) && len(cmd) >= 22 && l.fake[binary.BigEndian.Uint32(cmd[18:])]:
		l.answered = append(l.answered, uint32(cc))
		params := binary.BigEndian.AppendUint16(nil, 32)
		params = append(params, bytes.Repeat([]byte{0x11}, 32)...)
		body := binary.BigEndian.AppendUint32(nil, uint32(len(params)))
		body = append(body, params...)
		body = binary.BigEndian.AppendUint16(body, 16)
		body = append(body, bytes.Repeat([]byte{0x22}, 16)...)
		body = append(body, 0x01) // continueSession
		body = binary.BigEndian.AppendUint16(body, 32)
		body = append(body, bytes.Repeat([]byte{0x33}, 32)...)
		return answer(0x8002, body), nil
	}
	return l.Impostor.Send(cmd)
}

// A host TPM that answers the salted sessions with success is caught by the answers'
// HMACs: the seal and the unseal fail after it answered, and the secret never crossed to it
// in the clear.
func TestLyingTPMCaughtByHMAC(t *testing.T) {
	host, tee := swtpmtest.Start(t), swtpmtest.Start(t)
	ek := ekOf(t, tee, tpm2.RSAEKTemplate)
	values, err := ReadPCRs(host, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	l := &liar{Impostor: swtpmtest.Impostor{Host: host, Vouched: tee}, fake: map[uint32]bool{}}
	secret := newSecret(t)
	_, err = Seal(l, PCRPolicy{PCRs: []int{11}, Values: values}, secret, 0, PrimaryECC, ek)
	if err == nil || !slices.Contains(l.answered, uint32(tpm2.TPMCCCreate)) || !strings.Contains(err.Error(), "HMAC") {
		t.Fatalf("seal through the liar: %v (it answered %v); want the answer's HMAC refused", err, l.answered)
	}
	for _, c := range l.seen {
		if bytes.Contains(c, secret) {
			t.Fatal("the secret crossed to the liar in the clear")
		}
	}
	t.Logf("seal: %v", err)
	tok, err := Seal(host, PCRPolicy{PCRs: []int{11}, Values: values}, secret, 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.answered = nil
	_, err = Unseal(l, tok, make([]byte, SecretSize), ek)
	if err == nil || !slices.Contains(l.answered, uint32(tpm2.TPMCCUnseal)) || !strings.Contains(err.Error(), "HMAC") {
		t.Fatalf("unseal through the liar: %v (it answered %v); want the answer's HMAC refused", err, l.answered)
	}
	t.Logf("unseal: %v", err)
}
