package tpmvouch_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/internal/tpmvouch"
)

const reportDir = "/sys/kernel/config/tsm/report"

// ekPublic is an RSA endorsement key's TPMT_PUBLIC as an SVSM's manifest holds it.
func ekPublic() []byte {
	ek := tpm2.RSAEKTemplate
	ek.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: bytes.Repeat([]byte{0xc5}, 256)})
	return tpm2.Marshal(ek)
}

// svsm is an SEV-SNP guest under an SVSM: tee.SNP over configfs-tsm, the SVSM faked.
func svsm(t *testing.T, manifest []byte, edit func([]byte)) tpmvouch.SVSM {
	fake := teetest.SVSM(teetest.SNPSigner(t), manifest, edit)
	return tpmvouch.SVSM{Reporter: &tee.SNP{TSM: &tee.TSM{Client: fake, ReportDir: reportDir}}}
}

func TestSVSMVouches(t *testing.T) {
	manifest := ekPublic()
	b, err := svsm(t, manifest, nil).Vouch()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(manifest)
	if b.By != tpmvouch.BySVSM || b.EKSHA256 != hex.EncodeToString(sum[:]) || !bytes.Equal(tpm2.Marshal(b.EK), manifest) {
		t.Fatalf("binding = %+v", b)
	}
}

func TestSVSMRefusals(t *testing.T) {
	signing := tpm2.RSASRKTemplate
	signing.ObjectAttributes.Decrypt, signing.ObjectAttributes.SignEncrypt = false, true
	tests := []struct {
		name     string
		manifest []byte
		edit     func([]byte)
		want     string
	}{
		{"made below VMPL 0", ekPublic(), func(r []byte) { binary.LittleEndian.PutUint32(r[0x30:], 1) }, "made at VMPL 1, expected 0"},
		{"debug policy", ekPublic(), func(r []byte) { r[0x08+2] |= 1 << 3 }, "allows debugging"},
		{"report data of another manifest", ekPublic(), func(r []byte) { r[0x50] ^= 1 }, "does not bind this manifest under this nonce"},
		{"trailing bytes", append(ekPublic(), 0), nil, "not exactly one TPMT_PUBLIC"},
		{"not a TPMT_PUBLIC", []byte("fakemanifest\n"), nil, "not a TPMT_PUBLIC"},
		{"signing key", tpm2.Marshal(signing), nil, "not a fixed, restricted decryption key"},
		{"keyed hash", tpm2.Marshal(tpm2.TPMTPublic{Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
			Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{})}), nil, "expected RSA or ECC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := svsm(t, tt.manifest, tt.edit).Vouch()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Vouch = %v, want an error containing %q", err, tt.want)
			}
			if errors.Is(err, tpmvouch.ErrUnavailable) {
				t.Fatalf("a failed check reads as an unavailable TEE: %v", err)
			}
		})
	}
}

// A report binding another nonce (a replayed one) is refused.
func TestSVSMReplayedReport(t *testing.T) {
	manifest := ekPublic()
	var old [64]byte
	rd := sha512.Sum512(append(old[:], manifest...))
	raw := teetest.SNPRawReport(rd[:])
	var fresh [64]byte
	fresh[0] = 1
	if _, err := tpmvouch.CheckSVSM(fresh, raw[:], manifest); err == nil || !strings.Contains(err.Error(), "REPORT_DATA") {
		t.Fatalf("replayed report: %v", err)
	}
	if _, err := tpmvouch.CheckSVSM(old, raw[:], manifest); err != nil {
		t.Fatalf("the same report under its own nonce: %v", err)
	}
	if _, err := tpmvouch.CheckSVSM(old, raw[:100], manifest); err == nil || !strings.Contains(err.Error(), "has 100 bytes") {
		t.Fatalf("short report: %v", err)
	}
}

// Without an SVSM the kernel offers no service_provider attribute: refused, and not as an
// unavailable TEE, which a test setting could stand in for.
func TestNoSVSM(t *testing.T) {
	plain := teetest.TSM("sev_guest", func(in []byte) ([]byte, error) { return in, nil }, nil)
	v := tpmvouch.SVSM{Reporter: &tee.SNP{TSM: &tee.TSM{Client: plain, ReportDir: reportDir}}}
	_, err := v.Vouch()
	// Not "unavailable": the host chooses whether an SVSM runs.
	if errors.Is(err, tpmvouch.ErrUnavailable) || !errors.Is(err, tee.ErrNoServiceProvider) || !strings.Contains(err.Error(), "service_provider is missing") {
		t.Fatalf("Vouch without an SVSM = %v", err)
	}
	if _, err := (tpmvouch.SVSM{Reporter: &tee.SNP{}}).Vouch(); err == nil || errors.Is(err, tpmvouch.ErrUnavailable) {
		t.Fatalf("Vouch without configfs-tsm = %v", err)
	}
}

func TestForPlatform(t *testing.T) {
	dir := t.TempDir()
	det := tee.Detect(tee.Options{ConfigfsDir: dir, DevDir: dir, SysfsDir: dir})
	_, err := tpmvouch.ForPlatform(det).Vouch()
	if !errors.Is(err, tpmvouch.ErrUnavailable) || !strings.Contains(err.Error(), "SEV-SNP absent") {
		t.Fatalf("ForPlatform without a TEE: %v", err)
	}
	det = tee.Detect(tee.Options{ConfigfsDir: "/sys/kernel/config", DevDir: dir, SysfsDir: dir, TSM: teetest.SVSM(teetest.SNPSigner(t), ekPublic(), nil)})
	if b, err := tpmvouch.ForPlatform(det).Vouch(); err != nil || b.By != tpmvouch.BySVSM {
		t.Fatalf("ForPlatform under an SVSM: %+v, %v", b, err)
	}
}

// FuzzCheckSVSM: any report and manifest give a binding or an error, never a panic, and a
// binding is only ever given for a report that binds the manifest under the nonce.
func FuzzCheckSVSM(f *testing.F) {
	manifest := ekPublic()
	var nonce [64]byte
	rd := sha512.Sum512(append(nonce[:], manifest...))
	raw := teetest.SNPRawReport(rd[:])
	f.Add(nonce[:], raw[:], manifest)
	f.Add(nonce[:], raw[:0x4a0], []byte{0, 1})
	f.Fuzz(func(t *testing.T, n, report, manifest []byte) {
		var nonce [64]byte
		copy(nonce[:], n)
		b, err := tpmvouch.CheckSVSM(nonce, report, manifest)
		if err != nil {
			return
		}
		want := sha512.Sum512(append(nonce[:], manifest...))
		if !bytes.Equal(report[0x50:0x90], want[:]) || !bytes.Equal(tpm2.Marshal(b.EK), manifest) {
			t.Fatalf("accepted a report that does not bind the manifest")
		}
	})
}
