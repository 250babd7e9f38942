package evidencecli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/measure"
	"github.com/cvmboot/cvmboot/internal/tee"
	"github.com/cvmboot/cvmboot/internal/tee/teetest"
	"github.com/cvmboot/cvmboot/pkg/eventlog"
)

// snpEvidence writes SEV-SNP evidence from go-sev-guest's fake signer and returns the evidence
// directory, the trusted roots file, the nonce and the root hash.
func snpEvidence(t *testing.T) (dir, roots, nonce, rootHash string) {
	t.Helper()
	tmp := t.TempDir()
	rootHash = strings.Repeat("5a", 32)
	log, err := measure.Open(filepath.Join(tmp, "eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []eventlog.Event{
		eventlog.Phase("enter-initrd"),
		eventlog.Verity{Target: "root", RootHash: rootHash, HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
		eventlog.Storage{Encrypted: true, Cipher: "aes-xts-plain64", KeyBits: 512, Integrity: "hmac-sha256", KeySource: "random"}.Event(),
		eventlog.Overlay{Enabled: true, Upper: "tmpfs", Size: "50%"}.Event(),
	} {
		if _, err := log.Measure(ev); err != nil {
			t.Fatal(err)
		}
	}
	signer := teetest.SNPSigner(t)
	snp := &tee.SNP{TSM: &tee.TSM{
		Client:    teetest.TSM("sev_guest", func(in []byte) ([]byte, error) { return teetest.SNPReport(signer, in) }, teetest.SNPCerts(t, signer)),
		ReportDir: "/sys/kernel/config/tsm/report",
	}}
	n := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	dir = filepath.Join(tmp, "evidence")
	if _, err := tee.Collect(context.Background(), log, []tee.Source{snp}, n, dir); err != nil {
		t.Fatal(err)
	}
	roots = filepath.Join(tmp, "roots.pem")
	if err := os.WriteFile(roots, teetest.SNPRoots(signer), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, roots, hex.EncodeToString(n), rootHash
}

func run(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	dir, roots, nonce, rootHash := snpEvidence(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	os.WriteFile(garbage, []byte("not PEM"), 0o644)
	tests := []struct {
		name    string
		args    []string
		code    int
		wantOut []string
		wantErr string
	}{
		{"no command", nil, ExitUsage, nil, "Usage: cvmboot evidence COMMAND"},
		{"help", []string{"--help"}, ExitOK, []string{"verify DIR"}, ""},
		{"verify help", []string{"verify", "--help"}, ExitOK, []string{"--expect-roothash H"}, ""},
		{"unknown command", []string{"check"}, ExitUsage, nil, `unknown command "check"`},
		{"no directory", []string{"verify"}, ExitUsage, nil, "expected one evidence directory, found 0"},
		{"two directories", []string{"verify", dir, dir}, ExitUsage, nil, "found 2 argument(s)"},
		{"unknown flag", []string{"verify", dir, "--frobnicate"}, ExitUsage, nil, "flag provided but not defined: -frobnicate"},
		{"verified", []string{"verify", dir, "--trusted-roots", roots, "--nonce", nonce, "--expect-roothash", rootHash, "--allow-unknown-uki"}, ExitOK,
			[]string{dir + ": accepted with waived links, NOT verified through the whole chain: firmware-log (--allow-unknown-uki), uki (--allow-unknown-uki), cvmboot-log (--allow-unknown-uki)", "platform sev-snp (snp-report via configfs-tsm): report signed by the VCEK", "nonce \"0102030405060708\": as expected",
				"root: dm-verity root hash " + rootHash + " (as expected, enforced)", "storage: encrypted with aes-xts-plain64 (512-bit random key), integrity hmac-sha256",
				"overlay: tmpfs of size 50% over the read-only root", "phases: enter-initrd"}, ""},
		{"flags first, upper-case root hash", []string{"verify", "--trusted-roots", roots, "--expect-roothash", strings.ToUpper(rootHash), dir, "--allow-unknown-uki"}, ExitOK,
			[]string{"nonce \"0102030405060708\": not checked"}, ""},
		{"wrong nonce", []string{"verify", dir, "--trusted-roots", roots, "--nonce", "ffffffffffffffff", "--allow-unknown-uki"}, ExitMismatch, nil, `NOT VERIFIED: nonce: the evidence was made for nonce "0102030405060708", expected "ffffffffffffffff"`},
		{"short nonce", []string{"verify", dir, "--nonce", "01020304"}, ExitUsage, nil, "--nonce is 4 bytes: expected 8 to 64 bytes"},
		{"wrong root hash", []string{"verify", dir, "--trusted-roots", roots, "--expect-roothash", strings.Repeat("00", 32), "--allow-unknown-uki"}, ExitMismatch, nil, "root-hash: the root was verified against root hash " + rootHash},
		{"no reference values", []string{"verify", dir, "--trusted-roots", roots}, ExitMismatch, nil, "NOT VERIFIED: chain: the boot claims are not anchored in hardware: sev-snp snp-report lacks the link(s) firmware-log (SEV-SNP has no firmware event log"},
		{"allow-unsigned needs platforms", []string{"verify", dir, "--allow-unsigned"}, ExitUsage, nil, "flag needs an argument: -allow-unsigned"},
		{"allow-unsigned unknown platform", []string{"verify", dir, "--allow-unsigned=sgx"}, ExitUsage, nil, `--allow-unsigned "sgx": expected a comma-separated list of sev-snp, tdx, tpm`},
		{"expect-uki and reference-values", []string{"verify", dir, "--expect-uki", "a", "--reference-values", "b"}, ExitUsage, nil, "give one"},
		{"missing UKI", []string{"verify", dir, "--expect-uki", filepath.Join(dir, "nope.efi")}, ExitIO, nil, "nope.efi"},
		{"bad measurement", []string{"verify", dir, "--expect-measurement", "00"}, ExitUsage, nil, "expected 48 bytes of hex"},
		{"AMD's real roots", []string{"verify", dir, "--allow-unknown-uki"}, ExitMismatch, nil, "signature: sev-snp: signature chain"},
		{"missing directory", []string{"verify", filepath.Join(dir, "nope")}, ExitIO, nil, "no such file or directory"},
		{"bad nonce", []string{"verify", dir, "--nonce", "xyz"}, ExitUsage, nil, `--nonce "xyz" is not hex`},
		{"long nonce", []string{"verify", dir, "--nonce", strings.Repeat("00", 65)}, ExitUsage, nil, "--nonce is 65 bytes: expected 8 to 64 bytes"},
		{"bad root hash", []string{"verify", dir, "--expect-roothash", "zz"}, ExitUsage, nil, `--expect-roothash "zz" is not hex`},
		{"missing roots", []string{"verify", dir, "--trusted-roots", filepath.Join(dir, "nope.pem")}, ExitIO, nil, "nope.pem"},
		{"garbage roots", []string{"verify", dir, "--trusted-roots", garbage}, ExitUsage, nil, "no CERTIFICATE or PUBLIC KEY PEM block found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if tt.wantErr != "" && !strings.Contains(errOut+out, tt.wantErr) {
				t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", tt.wantErr, out, errOut)
			}
		})
	}
}

func TestVerifyJSON(t *testing.T) {
	dir, roots, nonce, rootHash := snpEvidence(t)
	code, out, errOut := run("verify", "--json", dir, "--trusted-roots", roots, "--nonce", nonce, "--expect-roothash", rootHash, "--allow-unknown-uki")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var claims struct {
		RootHash         string `json:"root_hash"`
		RootHashExpected bool   `json:"root_hash_expected"`
		NonceChecked     bool   `json:"nonce_checked"`
		Storage          struct {
			Encrypted bool `json:"encrypted"`
		} `json:"storage"`
		Platforms []struct {
			Authenticated bool `json:"authenticated"`
		} `json:"platforms"`
	}
	if err := json.Unmarshal([]byte(out), &claims); err != nil {
		t.Fatalf("stdout is not the claims JSON: %v\n%s", err, out)
	}
	if claims.RootHash != rootHash || !claims.RootHashExpected || !claims.NonceChecked || !claims.Storage.Encrypted || !claims.Platforms[0].Authenticated {
		t.Errorf("claims %+v", claims)
	}
}
