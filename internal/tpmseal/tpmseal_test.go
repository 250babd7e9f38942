package tpmseal

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
)

func extend(t *testing.T, tpm TPM, pcr int, data []byte) {
	t.Helper()
	d := sha256.Sum256(data)
	_, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}).Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
}

// predict is PCR extend done by hand: sha256(old || sha256(data)).
func predict(old, data []byte) []byte {
	d := sha256.Sum256(data)
	n := sha256.Sum256(append(slices.Clone(old), d[:]...))
	return n[:]
}

func newSecret(t *testing.T) []byte {
	s := make([]byte, SecretSize)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealUnseal(t *testing.T) {
	tpm := swtpmtest.Start(t)
	extend(t, tpm, 4, []byte("uki"))
	pcrs := []int{4, 11}
	values, err := ReadPCRs(tpm, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{PrimaryECC, PrimaryRSA} {
		t.Run(alg, func(t *testing.T) {
			secret := newSecret(t)
			tok, err := Seal(tpm, PCRPolicy{PCRs: pcrs, Values: values}, secret, 1, alg, nil)
			if err != nil {
				t.Fatal(err)
			}
			tok.Generation = 3
			raw, err := tok.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseToken(raw)
			if err != nil {
				t.Fatalf("ParseToken(%s): %v", raw, err)
			}
			if back.Generation != 3 || !strings.Contains(string(raw), `"cvmboot_generation":3`) {
				t.Fatalf("generation %d after a round trip of %s", back.Generation, raw)
			}
			dst := make([]byte, 64)
			n, err := Unseal(tpm, back, dst, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dst[:n], secret) {
				t.Fatalf("unsealed %x, sealed %x", dst[:n], secret)
			}
		})
	}
}

// The secret is sealed to values the PCRs will have (as for the next UKI): it does not open
// now, the refusal names the PCR, and it opens once the PCR gets there.
func TestSealPredicted(t *testing.T) {
	tpm := swtpmtest.Start(t)
	pcrs := []int{4, 11}
	now, err := ReadPCRs(tpm, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{now[0], predict(now[1], []byte("next uki"))}
	secret := newSecret(t)
	tok, err := Seal(tpm, PCRPolicy{PCRs: pcrs, Values: want}, secret, 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, SecretSize)
	_, err = Unseal(tpm, tok, dst, nil)
	var pm *PolicyMismatchError
	if !errors.As(err, &pm) || len(pm.Differ) != 1 || pm.Differ[0].PCR != 11 ||
		!bytes.Equal(pm.Differ[0].Expected, want[1]) || !bytes.Equal(pm.Differ[0].Found, now[1]) {
		t.Fatalf("unseal before the extend: %v, want a mismatch naming PCR 11", err)
	}
	t.Logf("refusal: %v", err)
	if bytes.Contains(dst, secret[:8]) {
		t.Fatal("the refused unseal wrote the secret")
	}
	extend(t, tpm, 11, []byte("next uki"))
	if n, err := Unseal(tpm, tok, dst, nil); err != nil || !bytes.Equal(dst[:n], secret) {
		t.Fatalf("unseal after the extend: %v", err)
	}
	extend(t, tpm, 11, []byte("one more"))
	if _, err := Unseal(tpm, tok, dst, nil); !errors.As(err, &pm) {
		t.Fatalf("unseal after another extend: %v, want a mismatch", err)
	}
}

// A token whose object another TPM made does not load here.
func TestUnsealOtherTPM(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	values, err := ReadPCRs(a, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Seal(a, PCRPolicy{PCRs: []int{11}, Values: values}, newSecret(t), 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Unseal(b, tok, make([]byte, SecretSize), nil); err == nil {
		t.Fatal("another TPM unsealed the token")
	} else {
		t.Logf("other TPM: %v", err)
	}
}

// systemd 252's policy for the same PCR values is the one Digest computes: the token
// systemd-cryptenroll wrote for PCRs 7+11 of a fresh swtpm (all zero).
func TestDigestMatchesSystemd(t *testing.T) {
	raw, err := os.ReadFile("testdata/systemd-252-token.json")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 32)
	d, err := PCRPolicy{PCRs: []int{7, 11}, Values: [][]byte{zero, zero}}.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d, tok.PolicyHash) || tok.Keyslot != 1 || tok.PrimaryAlg != PrimaryECC || tok.PCRValues != nil {
		t.Fatalf("digest %x, token %+v", d, tok)
	}
}

// UnsealThenFlush leaves the primary, the sealed object and the session loaded until
// flushAll runs (the caller overlaps those commands with its own work); then none is left.
func TestUnsealThenFlush(t *testing.T) {
	tpm := swtpmtest.Start(t)
	tok, secret := sealToPCR11(t, tpm, nil)
	loaded := func() int { return loadedHandles(t, tpm) }
	if n := loaded(); n != 0 {
		t.Fatalf("%d handles loaded before the unseal", n)
	}
	dst := make([]byte, 64)
	n, flushAll, err := UnsealThenFlush(tpm, tok, dst, nil)
	if err != nil || !bytes.Equal(dst[:n], secret) {
		t.Fatalf("unseal: %v", err)
	}
	if got := loaded(); got != 3 {
		t.Fatalf("%d handles loaded after the unseal, want the primary, the object and the session", got)
	}
	flushAll()
	if got := loaded(); got != 0 {
		t.Fatalf("%d handles left after flushAll", got)
	}
	// A refused unseal flushes before it returns.
	extend(t, tpm, 11, []byte("another UKI"))
	if _, flushAll, err = UnsealThenFlush(tpm, tok, dst, nil); err == nil {
		t.Fatal("unsealed under other PCRs")
	}
	if got := loaded(); got != 0 {
		t.Fatalf("%d handles left after a refusal", got)
	}
	flushAll()
}

// loadedHandles counts the transient objects and the loaded sessions of both kinds (0x02).
func loadedHandles(t *testing.T, tpm TPM) int {
	t.Helper()
	n := 0
	for _, first := range []tpm2.TPMHandle{tpm2.TPMHandle(tpm2.TPMHTTransient) << 24, tpm2.TPMHandle(tpm2.TPMHTHMACSession) << 24} {
		rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 16}).Execute(tpm)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		n += len(hs.Handle)
	}
	return n
}

// Prime makes the primary key and the session before the token is known; one unseal uses
// them, a second is refused, and Flush leaves nothing loaded whether they were used or not.
func TestPrime(t *testing.T) {
	tpm := swtpmtest.Start(t)
	tok, secret := sealToPCR11(t, tpm, nil)
	dst := make([]byte, 64)

	unused, err := Prime(tpm, PrimaryECC, nil, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	if got := loadedHandles(t, tpm); got != 2 {
		t.Fatalf("%d handles loaded after Prime, want the primary and the session", got)
	}
	unused.Flush()
	unused.Flush()
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left after an unused Prime's Flush", got)
	}

	p, err := Prime(tpm, PrimaryECC, nil, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	n, flushAll, err := p.UnsealThenFlush(tok, dst)
	if err != nil || !bytes.Equal(dst[:n], secret) {
		t.Fatalf("unseal with the primed session: %v", err)
	}
	if _, _, err := p.UnsealThenFlush(tok, dst); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("a second unseal with one primed session: %v", err)
	}
	flushAll()
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left after flushAll", got)
	}

	// A token under another primary key is refused, not loaded under the primed one.
	rsa, err := Prime(tpm, PrimaryRSA, nil, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rsa.UnsealThenFlush(tok, dst); err == nil || !strings.Contains(err.Error(), "the primed one rsa") {
		t.Fatalf("an ecc token with an rsa primary: %v", err)
	}
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left after a refusal", got)
	}

	// Other PCRs: refused naming the PCR, with nothing left loaded.
	extend(t, tpm, 11, []byte("another UKI"))
	p, err = Prime(tpm, PrimaryECC, nil, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	var mis *PolicyMismatchError
	if _, _, err := p.UnsealThenFlush(tok, dst); !errors.As(err, &mis) || len(mis.Differ) != 1 || mis.Differ[0].PCR != 11 {
		t.Fatalf("unseal under other PCRs: %v", err)
	}
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left after a policy refusal", got)
	}
}

// The priming's PolicyPCR does not decide on stale values: a PCR extended between it and the
// unseal makes the TPM answer TPM_RC_PCR_CHANGED, and the unseal runs again over the values of
// now (here the sealed ones). A token of other PCRs than the primed ones unseals too.
func TestPrimeThenPCRExtended(t *testing.T) {
	tpm := swtpmtest.Start(t)
	now, err := ReadPCRs(tpm, []int{11, 12})
	if err != nil {
		t.Fatal(err)
	}
	secret := newSecret(t)
	next := predict(now[0], []byte("leave-initrd"))
	tok, err := Seal(tpm, PCRPolicy{PCRs: []int{11}, Values: [][]byte{next}}, secret, 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Prime(tpm, PrimaryECC, nil, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	extend(t, tpm, 11, []byte("leave-initrd"))
	dst := make([]byte, 64)
	n, flushAll, err := p.UnsealThenFlush(tok, dst)
	if err != nil || !bytes.Equal(dst[:n], secret) {
		t.Fatalf("unseal after PCR 11 moved to the sealed value: %v", err)
	}
	if !strings.Contains(p.Redone(), "extended") {
		t.Fatalf("Redone() = %q after a PCR_CHANGED", p.Redone())
	}
	flushAll()
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left", got)
	}

	other, err := Seal(tpm, PCRPolicy{PCRs: []int{12}, Values: now[1:]}, secret, 0, PrimaryECC, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err = Prime(tpm, PrimaryECC, nil, []int{11}); err != nil {
		t.Fatal(err)
	}
	clear(dst)
	n, flushAll, err = p.UnsealThenFlush(other, dst)
	if err != nil || !bytes.Equal(dst[:n], secret) || !strings.Contains(p.Redone(), "PCRs [12]") {
		t.Fatalf("unseal of a PCR 12 token with a session primed for PCR 11: %v (redone %q)", err, p.Redone())
	}
	flushAll()
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left", got)
	}

	// Primed on the sealed values, then extended away: refused, naming PCR 11.
	if p, err = Prime(tpm, PrimaryECC, nil, []int{11}); err != nil {
		t.Fatal(err)
	}
	extend(t, tpm, 11, []byte("another UKI"))
	var mis *PolicyMismatchError
	if _, _, err := p.UnsealThenFlush(tok, dst); !errors.As(err, &mis) || len(mis.Differ) != 1 || mis.Differ[0].PCR != 11 {
		t.Fatalf("unseal after PCR 11 moved away from the sealed value: %v", err)
	}
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left after the refusal", got)
	}
}

// pcrChanging answers TPM2_Unseal with TPM_RC_PCR_CHANGED (all of them, or the first only),
// as a TPM would while something extends PCRs, and records the salt key of every session.
type pcrChanging struct {
	TPM
	always  bool
	unseals int
	eks     map[uint32]bool // handles of primaries made in the endorsement hierarchy
	salts   []uint32        // tpmKey of every TPM2_StartAuthSession
}

func (c *pcrChanging) Send(cmd []byte) ([]byte, error) {
	cc := binary.BigEndian.Uint32(cmd[6:])
	switch cc {
	case uint32(tpm2.TPMCCUnseal):
		c.unseals++
		if c.always || c.unseals == 1 {
			rsp := make([]byte, 10)
			binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
			binary.BigEndian.PutUint32(rsp[2:], 10)
			binary.BigEndian.PutUint32(rsp[6:], uint32(tpm2.TPMRCPCRChanged))
			return rsp, nil
		}
	case uint32(tpm2.TPMCCStartAuthSession):
		c.salts = append(c.salts, binary.BigEndian.Uint32(cmd[10:]))
	}
	rsp, err := c.TPM.Send(cmd)
	if err == nil && cc == uint32(tpm2.TPMCCCreatePrimary) && binary.BigEndian.Uint32(cmd[10:]) == uint32(tpm2.TPMRHEndorsement) && len(rsp) >= 14 {
		c.eks[binary.BigEndian.Uint32(rsp[10:])] = true
	}
	return rsp, err
}

// PCRs extended again and again do not keep the unseal going: it starts over once, then
// fails. The second attempt is salted to the vouched endorsement key as the first was.
func TestPrimeRedoBounded(t *testing.T) {
	tpm := swtpmtest.Start(t)
	ek := ekOf(t, tpm, tpm2.RSAEKTemplate)
	tok, secret := sealToPCR11(t, tpm, ek)
	dst := make([]byte, 64)

	once := &pcrChanging{TPM: tpm, eks: map[uint32]bool{}}
	p, err := Prime(once, PrimaryECC, ek, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	n, flushAll, err := p.UnsealThenFlush(tok, dst)
	if err != nil || !bytes.Equal(dst[:n], secret) || once.unseals != 2 {
		t.Fatalf("unseal after one PCR_CHANGED: %v (%d unseals)", err, once.unseals)
	}
	flushAll()
	if len(once.salts) != 2 {
		t.Fatalf("%d sessions, want the primed one and the one started over", len(once.salts))
	}
	for i, h := range once.salts {
		if !once.eks[h] {
			t.Fatalf("session %d is salted to %#x, not the endorsement key", i, h)
		}
	}

	always := &pcrChanging{TPM: tpm, always: true, eks: map[uint32]bool{}}
	_, _, err = UnsealThenFlush(always, tok, dst, ek)
	if !errors.Is(err, tpm2.TPMRCPCRChanged) || always.unseals != 2 {
		t.Fatalf("unseal while PCRs keep changing: %v after %d unseals, want PCR_CHANGED after 2", err, always.unseals)
	}
	if got := loadedHandles(t, tpm); got != 0 {
		t.Fatalf("%d handles left", got)
	}
}

// sealToPCR11 seals a new secret to PCR 11's value of now (salted to ek when given).
func sealToPCR11(t *testing.T, tpm TPM, ek *tpm2.TPMTPublic) (*Token, []byte) {
	t.Helper()
	values, err := ReadPCRs(tpm, []int{11})
	if err != nil {
		t.Fatal(err)
	}
	secret := newSecret(t)
	tok, err := Seal(tpm, PCRPolicy{PCRs: []int{11}, Values: values}, secret, 0, PrimaryECC, ek)
	if err != nil {
		t.Fatal(err)
	}
	return tok, secret
}
