package tpmseal

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// PolicyMismatchError means the TPM's PCRs do not satisfy the token's policy: another UKI,
// another firmware or another TPM. Differ names the PCRs whose values are not the expected
// ones when the token records them (cvmboot's tokens); for systemd's tokens it is empty.
type PolicyMismatchError struct {
	PCRs   []int
	Differ []PCRDiff
}

// PCRDiff is one PCR whose value is not the one the secret was sealed to.
type PCRDiff struct {
	PCR             int
	Expected, Found []byte
}

func (e *PolicyMismatchError) Error() string {
	if len(e.Differ) == 0 {
		return fmt.Sprintf("the TPM's PCRs %v do not match the token's policy (the token does not record the expected values)", e.PCRs)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "the TPM's PCRs do not match the token's policy:")
	for i, d := range e.Differ {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " PCR %d expected %x found %x", d.PCR, d.Expected, d.Found)
	}
	return b.String()
}

// Unseal opens t's sealed object under its PCR policy and writes the secret into dst (the
// caller's locked memory), returning its length. With ek (a TEE-vouched endorsement key), the
// policy session is salted to ek: a TPM without ek's private half cannot answer it.
func Unseal(tpm TPM, t *Token, dst []byte, ek *tpm2.TPMTPublic) (int, error) {
	n, flushAll, err := UnsealThenFlush(tpm, t, dst, ek)
	flushAll()
	return n, err
}

// UnsealThenFlush is Unseal that leaves the flushing of the primary key, the sealed object and
// the session (a TPM command each, after the secret is out) to flushAll, which the caller runs
// when it likes (the keyslot opens meanwhile). flushAll is never nil and may be run more than
// once; on error the handles are already flushed.
func UnsealThenFlush(tpm TPM, t *Token, dst []byte, ek *tpm2.TPMTPublic) (n int, flushAll func(), err error) {
	return unsealFresh(tpm, t, dst, ek, 1)
}

// unsealFresh primes for t alone and unseals; redo bounds how often a PCR extended between
// the PolicyPCR and the unseal starts it over.
func unsealFresh(tpm TPM, t *Token, dst []byte, ek *tpm2.TPMTPublic, redo int) (int, func(), error) {
	p, err := Prime(tpm, t.PrimaryAlg, ek, t.PCRs)
	if err != nil {
		return 0, func() {}, err
	}
	return p.unseal(t, dst, redo)
}

// Primed is the part of an unseal that needs no token: the primary key, a policy session
// salted to it (or to ek), and the session's PolicyPCR over the PCRs every token of the
// caller's is sealed to. Prime runs it ahead, while the header that holds the token is still
// being read. Nothing is decided on stale values: the TPM answers the unseal with
// TPM_RC_PCR_CHANGED when any PCR (of most, not only the policy's: it compares one global
// update counter) was extended since the PolicyPCR, and the unseal then starts over once
// (Redone says so).
type Primed struct {
	tpm     TPM
	s       *scrubbing
	alg     string
	ek      *tpm2.TPMTPublic
	pcrs    []int
	prim    *primary
	sess    tpm2.Session
	handles []tpm2.TPMHandle
	used    bool
	redone  string
}

// Prime creates the primary key of alg, starts the policy session (the endorsement key ek, when
// given, salts it and is flushed again: the session needs it only to start) and runs PolicyPCR
// over pcrs. The caller either unseals with it (UnsealThenFlush, once) or flushes it.
//
// Under the kernel's resource manager (/dev/tpmrm0) every command loads and saves all of the
// connection's objects and sessions: each handle held makes each later command several TPM
// commands longer, which is why the endorsement key goes as soon as it has salted.
func Prime(tpm TPM, alg string, ek *tpm2.TPMTPublic, pcrs []int) (_ *Primed, err error) {
	p := &Primed{tpm: tpm, s: &scrubbing{tpm: tpm}, alg: alg, ek: ek, pcrs: slices.Clone(pcrs)}
	defer func() {
		if err != nil {
			p.Flush()
		}
	}()
	if p.prim, err = createPrimary(p.s, alg); err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	p.handles = append(p.handles, p.prim.handle)
	salt, _, err := saltKey(p.s, p.prim, ek)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	sess, _, err := tpm2.PolicySession(p.s, tpm2.TPMAlgSHA256, 16, salt.salt(tpm2.AESEncryption(128, tpm2.EncryptOut))...)
	if salt != p.prim {
		flush(p.s, salt.handle)
	}
	if err != nil {
		return nil, fmt.Errorf("unseal: start a policy session%s: %w", saltNote(ek), err)
	}
	p.sess = sess
	p.handles = append(p.handles, sess.Handle())
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: selection(pcrs)}).Execute(p.s); err != nil {
		return nil, fmt.Errorf("unseal: PolicyPCR over PCRs %v: %w", pcrs, err)
	}
	return p, nil
}

// Flush flushes what p still holds (the primary key, the session and a loaded object) and
// wipes the commands and answers that crossed. It may run more than once.
func (p *Primed) Flush() {
	for i := len(p.handles) - 1; i >= 0; i-- {
		flush(p.tpm, p.handles[i])
	}
	p.handles = nil
	p.s.wipe()
}

// Forget drops p's handles without flushing them, for a caller that closes a resource-managed
// connection instead (closing /dev/tpmrm0 flushes what it holds, in one command per session
// rather than a load, flush and save of everything per handle). The answers are wiped.
func (p *Primed) Forget() {
	p.handles = nil
	p.s.wipe()
}

// Redone says why the unseal did not use the primed session ("" when it did): a token of other
// PCRs, or PCRs extended after the PolicyPCR.
func (p *Primed) Redone() string { return p.redone }

// UnsealThenFlush loads t's sealed object under the primed primary key and unseals it into dst
// under the primed session, leaving the flushing to flushAll (p.Flush). A Primed unseals once.
// A token of other PCRs than the primed ones, or PCRs extended since the PolicyPCR, unseal with
// a session of their own (once: PCRs extended again fail it).
func (p *Primed) UnsealThenFlush(t *Token, dst []byte) (n int, flushAll func(), err error) {
	return p.unseal(t, dst, 1)
}

func (p *Primed) unseal(t *Token, dst []byte, redo int) (n int, flushAll func(), err error) {
	flushAll = p.Flush
	defer func() {
		if err != nil {
			p.Flush()
		}
	}()
	defer p.s.wipe() // the answers now, not when the caller flushes
	if p.used {
		return 0, flushAll, errors.New("unseal: the primed session was used already")
	}
	p.used = true
	if t.PrimaryAlg != p.alg {
		return 0, flushAll, fmt.Errorf("unseal: the token's primary key is %s, the primed one %s", t.PrimaryAlg, p.alg)
	}
	if !slices.Equal(t.PCRs, p.pcrs) {
		p.Flush()
		p.redone = fmt.Sprintf("the token is sealed to PCRs %v, the session was primed for %v", t.PCRs, p.pcrs)
		return unsealFresh(p.tpm, t, dst, p.ek, redo)
	}
	obj, err := parseBlob(t.Blob, t.PolicyHash)
	if err != nil {
		return 0, flushAll, err
	}
	loaded, err := (tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: p.prim.handle, Name: p.prim.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    obj.private,
		InPublic:     obj.public,
	}).Execute(p.s)
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: load the sealed object under the %s primary key (sealed by another TPM?): %w", t.PrimaryAlg, err)
	}
	p.handles = append(p.handles, loaded.ObjectHandle)
	rsp, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: p.sess}}).Execute(p.s)
	if errors.Is(err, tpm2.TPMRCPCRChanged) && redo > 0 {
		// A PCR was extended after the PolicyPCR: the same steps again, over the values of
		// now, with the same salt.
		p.Flush()
		p.redone = "a PCR was extended after the PolicyPCR"
		return unsealFresh(p.tpm, t, dst, p.ek, redo-1)
	}
	if errors.Is(err, tpm2.TPMRCPolicyFail) {
		// The PCRs are not the policy's (one command fewer than asking for the session's
		// digest first, which every boot would pay for).
		p.Flush()
		return 0, flushAll, mismatch(p.tpm, t)
	}
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: %w", err)
	}
	defer clear(rsp.OutData.Buffer)
	if len(rsp.OutData.Buffer) > len(dst) {
		return 0, flushAll, fmt.Errorf("unseal: the secret has %d bytes, more than the %d expected", len(rsp.OutData.Buffer), len(dst))
	}
	return copy(dst, rsp.OutData.Buffer), flushAll, nil
}

// mismatch names the PCRs whose current values are not the token's expected ones.
func mismatch(tpm TPM, t *Token) error {
	e := &PolicyMismatchError{PCRs: t.PCRs}
	if t.PCRValues == nil {
		return e
	}
	found, err := ReadPCRs(tpm, t.PCRs)
	if err != nil {
		return fmt.Errorf("%v; reading them to tell which: %w", e, err)
	}
	for i, p := range t.PCRs {
		if !bytes.Equal(found[i], t.PCRValues[i]) {
			e.Differ = append(e.Differ, PCRDiff{PCR: p, Expected: t.PCRValues[i], Found: found[i]})
		}
	}
	if len(e.Differ) == 0 {
		return fmt.Errorf("the TPM refused the token's policy although PCRs %v now hold the expected values (they changed during the unseal?)", t.PCRs)
	}
	return e
}
