package tpmseal

import (
	"bytes"
	"errors"
	"fmt"
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

// UnsealThenFlush is Unseal that leaves the flushing of the primary key, the sealed object, the
// endorsement key when ek is given, and the session (a TPM command each, after the secret is
// out) to flushAll, which the caller runs
// before the TPM's next use or close — meanwhile, for instance, while it opens the keyslot.
// flushAll is never nil; on an error everything is flushed already.
func UnsealThenFlush(tpm TPM, t *Token, dst []byte, ek *tpm2.TPMTPublic) (n int, flushAll func(), err error) {
	var handles []tpm2.TPMHandle
	flushAll = func() {
		for i := len(handles) - 1; i >= 0; i-- {
			flush(tpm, handles[i])
		}
		handles = nil
	}
	defer func() {
		if err != nil {
			flushAll()
		}
	}()
	obj, err := parseBlob(t.Blob, t.PolicyHash)
	if err != nil {
		return 0, flushAll, err
	}
	s := &scrubbing{tpm: tpm}
	defer s.wipe()
	prim, err := createPrimary(s, t.PrimaryAlg)
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: %w", err)
	}
	handles = append(handles, prim.handle)
	loaded, err := (tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: prim.handle, Name: prim.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    obj.private,
		InPublic:     obj.public,
	}).Execute(s)
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: load the sealed object under the %s primary key (sealed by another TPM?): %w", t.PrimaryAlg, err)
	}
	handles = append(handles, loaded.ObjectHandle)
	salt, _, err := saltKey(s, prim, ek) // its handle is flushed with the others
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: %w", err)
	}
	if salt != prim {
		handles = append(handles, salt.handle)
	}

	sess, _, err := tpm2.PolicySession(s, tpm2.TPMAlgSHA256, 16, salt.salt(tpm2.AESEncryption(128, tpm2.EncryptOut))...)
	if err != nil {
		return 0, flushAll, fmt.Errorf("unseal: start a policy session%s: %w", saltNote(ek), err)
	}
	handles = append(handles, sess.Handle())
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: selection(t.PCRs)}).Execute(s); err != nil {
		return 0, flushAll, fmt.Errorf("unseal: PolicyPCR over PCRs %v: %w", t.PCRs, err)
	}
	rsp, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: sess}}).Execute(s)
	if errors.Is(err, tpm2.TPMRCPolicyFail) {
		// The PCRs are not the policy's (one command fewer than asking for the session's
		// digest first, which every boot would pay for).
		flushAll()
		return 0, flushAll, mismatch(tpm, t)
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
