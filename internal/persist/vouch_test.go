package persist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/internal/tpmseal"
	"github.com/cvmboot/cvmboot/internal/tpmvouch"
)

// ekManifest is the SVSM's vTPM manifest for tpm: its RSA endorsement key's TPMT_PUBLIC.
func ekManifest(t *testing.T, tpm tpmseal.TPM) []byte {
	t.Helper()
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}).Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(tpm)
	return rsp.OutPublic.Bytes()
}

// underSVSM is the stage in an SEV-SNP guest whose SVSM vouches for the vTPM with manifest.
func (m *machine) underSVSM(t *testing.T, manifest []byte, edit func([]byte)) *Stage {
	st := m.stage()
	st.AllowUnvouchedTPM = false
	fake := teetest.SVSM(teetest.SNPSigner(t), manifest, edit)
	st.Vouch = tpmvouch.SVSM{Reporter: &tee.SNP{TSM: &tee.TSM{Client: fake, ReportDir: "/sys/kernel/config/tsm/report"}}}
	return st
}

// The SVSM vouches for this TPM: converted and unlocked without the insecure setting, the
// event naming the endorsement key.
func TestVouchedTPM(t *testing.T) {
	m := newMachine(t)
	manifest := ekManifest(t, m.tpm)
	sum := sha256.Sum256(manifest)
	for i, want := range []string{"converted", "unlocked"} {
		res, err := m.underSVSM(t, manifest, nil).Open(context.Background(), m.verity, "00ff")
		if err != nil {
			t.Fatalf("boot %d: %v", i+1, err)
		}
		ev := res.Event
		if ev.Action != want || ev.TPM != TPMVouched || ev.TPMVouchedBy != tpmvouch.BySVSM || ev.TPMEKSHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("boot %d: event %+v", i+1, ev)
		}
		if res.Facts["tpm"] != TPMVouched || res.Facts["tpm_ek_sha256"] != ev.TPMEKSHA256 {
			t.Fatalf("boot %d: facts %v", i+1, res.Facts)
		}
	}
}

// The SVSM vouches for another TPM than the one answering (the host swapped it): refused
// before the LUKS2 header is written, whatever the insecure setting says; and a root
// converted under the right TPM does not unlock under the other.
func TestVouchedForAnotherTPM(t *testing.T) {
	m := newMachine(t)
	other := swtpmtest.Start(t)
	st := m.underSVSM(t, ekManifest(t, other), nil)
	st.AllowUnvouchedTPM = true
	_, err := st.Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "is not the one the TEE vouches for") || !strings.Contains(err.Error(), "refusing to convert") {
		t.Fatalf("Open: %v", err)
	}
	t.Log(err)
	if !bytes.Equal(readHead(t, m.part), make([]byte, 4096)) {
		t.Fatal("the partition was written")
	}
	if _, err := m.underSVSM(t, ekManifest(t, m.tpm), nil).Open(context.Background(), m.verity, "00ff"); err != nil {
		t.Fatal(err)
	}
	_, err = m.underSVSM(t, ekManifest(t, other), nil).Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "is not the one the TEE vouches for") {
		t.Fatalf("unlock under another TPM's vouching: %v", err)
	}
}

func readHead(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// The stage salts its sessions to the vouched key: a host TPM passing the check by copying
// the key's public area fails at the seal, and nothing is committed.
func TestImpostorTPMCannotCommit(t *testing.T) {
	m := newMachine(t)
	tee := swtpmtest.Start(t)
	host := m.tpm
	m.tpm = swtpmtest.Impostor{Host: host, Vouched: tee}
	_, err := m.underSVSM(t, ekManifest(t, tee), nil).Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "salted to the TEE-vouched endorsement key") {
		t.Fatalf("Open through the impostor: %v", err)
	}
	t.Log(err)
	h, err := luks2.Read(mustOpen(t, m.part))
	if err != nil || len(h.Metadata.Keyslots) != 0 {
		t.Fatalf("after the failed seal: header %v, %d keyslots; want a header without keyslots", err, len(h.Metadata.Keyslots))
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// An SVSM report that does not hold is a failed check, not a missing TEE: the insecure
// setting does not let it through.
func TestFailedVouchNotOverridden(t *testing.T) {
	m := newMachine(t)
	st := m.underSVSM(t, ekManifest(t, m.tpm), func(r []byte) { binary.LittleEndian.PutUint32(r[0x30:], 2) })
	st.AllowUnvouchedTPM = true
	_, err := st.Open(context.Background(), m.verity, "00ff")
	if err == nil || !strings.Contains(err.Error(), "made at VMPL 2") || len(m.prepared) != 0 {
		t.Fatalf("Open: %v (disk prepared %d times)", err, len(m.prepared))
	}
}

// No TEE here: the insecure setting lets the TPM through, and the facts say why it was
// not vouched for.
func TestUnavailableWithInsecureSetting(t *testing.T) {
	m := newMachine(t)
	st := m.stage()
	st.Vouch = tpmvouch.Unavailable{Reason: "no TEE in this test"}
	res, err := st.Open(context.Background(), m.verity, "00ff")
	if err != nil {
		t.Fatal(err)
	}
	if res.Event.TPM != TPMInsecureUnvouched || res.Event.TPMVouchedBy != "" || !strings.Contains(res.Facts["tpm_unvouched_reason"], "no TEE in this test") {
		t.Fatalf("event %+v, facts %v", res.Event, res.Facts)
	}
	st.AllowUnvouchedTPM = false
	if _, err := st.Open(context.Background(), m.verity, "00ff"); err == nil || !strings.Contains(err.Error(), "no TEE in this test") {
		t.Fatalf("without the setting: %v", err)
	}
}
