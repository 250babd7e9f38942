package tpmseal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/luks2"
	"github.com/cvmboot/cvmboot/internal/measure/swtpmtest"
)

// needInterop skips unless systemd-cryptenroll, cryptsetup and tpm2-tss's swtpm TCTI are
// installed (test/install-deps.sh installs them).
func needInterop(t *testing.T) {
	for _, bin := range []string{"systemd-cryptenroll", "cryptsetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: skipping the systemd-tpm2 interop test", bin)
		}
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0"); err != nil {
		t.Skip("libtss2-tcti-swtpm0 is not installed: skipping the systemd-tpm2 interop test")
	}
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// systemd-cryptenroll (252) enrolls a TPM2 token in a LUKS2 image; cvmboot reads the token,
// unseals the secret on the same TPM and opens the keyslot with it.
func TestOpenSystemdEnrolledToken(t *testing.T) {
	needInterop(t)
	sw := swtpmtest.StartTCP(t)
	tpm := sw.Open(t)
	extend(t, tpm, 11, []byte("a UKI section"))
	tpm.Close()

	img := filepath.Join(t.TempDir(), "luks.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	pass := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(pass, []byte("enroll me"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
		"--pbkdf-force-iterations", "1000", "--key-file", pass, img)
	out := run(t, []string{"PASSWORD=enroll me"}, "systemd-cryptenroll", "--tpm2-device="+sw.TCTI(), "--tpm2-pcrs=4+11", img)
	t.Logf("systemd-cryptenroll: %s", strings.TrimSpace(out))

	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := luks2.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	var found *Token
	for id, lt := range h.Metadata.Tokens {
		if lt.Type != TokenType {
			continue
		}
		if found, err = ParseToken(lt.JSON); err != nil {
			t.Fatalf("token %d: %v\n%s", id, err, lt.JSON)
		}
	}
	if found == nil {
		t.Fatal("systemd-cryptenroll wrote no systemd-tpm2 token")
	}
	tpm = sw.Open(t)
	defer tpm.Close()
	values, err := ReadPCRs(tpm, []int{4, 11})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := (PCRPolicy{PCRs: []int{4, 11}, Values: values}).Digest(); !bytes.Equal(d, found.PolicyHash) {
		t.Fatalf("systemd's policy %x, ours for the same PCR values %x", found.PolicyHash, d)
	}
	secret := make([]byte, SecretSize)
	n, err := Unseal(tpm, found, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	passphrase := []byte(base64.StdEncoding.EncodeToString(secret[:n]))
	key, err := h.UnlockKeyslot(f, found.Keyslot, passphrase)
	if err != nil {
		t.Fatalf("keyslot %d with the unsealed secret: %v", found.Keyslot, err)
	}
	if err := luks2.VerifyVolumeKey(h, key); err != nil {
		t.Fatal(err)
	}
	extend(t, tpm, 11, []byte("another UKI"))
	// systemd's token records no PCR values: the refusal names the policy's PCRs, not which
	// of them differ.
	_, err = Unseal(tpm, found, secret, nil)
	var pm *PolicyMismatchError
	if !errors.As(err, &pm) || len(pm.Differ) != 0 || !strings.Contains(err.Error(), "PCRs [4 11] do not match the token's policy (the token does not record the expected values)") {
		t.Fatalf("after PCR 11 changed: %v", err)
	}
}

// cvmboot formats a LUKS2 image with a keyslot for the sealed secret and its systemd-tpm2
// token; cryptsetup with systemd's token plugin reads the token as systemd's own (luksDump)
// and the keyslot opens with the secret as systemd-cryptsetup would pass it.
func TestSystemdReadsOurToken(t *testing.T) {
	needInterop(t)
	sw := swtpmtest.StartTCP(t)
	tpm := sw.Open(t)
	values, err := ReadPCRs(tpm, []int{4, 11})
	if err != nil {
		t.Fatal(err)
	}
	secret := newSecret(t)
	tok, err := Seal(tpm, PCRPolicy{PCRs: []int{4, 11}, Values: values}, secret, 0, PrimaryECC, nil)
	tpm.Close()
	if err != nil {
		t.Fatal(err)
	}
	tok.Generation = 2 // cvmboot's extension fields ride along
	raw, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	passphrase := []byte(base64.StdEncoding.EncodeToString(secret))
	img := filepath.Join(t.TempDir(), "luks.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 32 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	volumeKey := newSecret(t)
	volumeKey = append(volumeKey, newSecret(t)...)
	if _, err := luks2.Format(f, size, luks2.Options{
		VolumeKey: volumeKey,
		Keyslots:  []luks2.KeyslotSpec{{Passphrase: passphrase, KDF: "pbkdf2", Hash: "sha512", Iterations: 1000}},
		Tokens:    []luks2.Token{{Type: TokenType, Keyslots: []int{0}, JSON: raw}},
	}); err != nil {
		t.Fatal(err)
	}
	dump := run(t, nil, "cryptsetup", "luksDump", img)
	for _, want := range []string{"0: systemd-tpm2", "tpm2-hash-pcrs:   4+11", "tpm2-pcr-bank:    sha256", "tpm2-primary-alg: ecc", "tpm2-pin:         false", "Keyslot:    0"} {
		if !strings.Contains(dump, want) {
			t.Fatalf("luksDump lacks %q:\n%s", want, dump)
		}
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, passphrase, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "cryptsetup", "open", "--test-passphrase", "--key-slot", "0", "--key-file", keyFile, img, "x")

	tpm = sw.Open(t)
	defer tpm.Close()
	got := make([]byte, SecretSize)
	if n, err := Unseal(tpm, tok, got, nil); err != nil || !bytes.Equal(got[:n], secret) {
		t.Fatalf("unseal our own token: %v", err)
	}
}
