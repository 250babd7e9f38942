package luks2cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cvmboot/cvmboot/internal/luks2"
)

func run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

// fixture holds an image file and key files in a temporary directory.
type fixture struct {
	dir, image, keyFile, passFile string
	key, pass                     []byte
}

func newFixture(t *testing.T, keySize int) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{dir: dir, image: filepath.Join(dir, "disk.img"), keyFile: filepath.Join(dir, "key"), passFile: filepath.Join(dir, "pass")}
	fx.key = make([]byte, keySize)
	if _, err := rand.Read(fx.key); err != nil {
		t.Fatal(err)
	}
	fx.pass = []byte("operator passphrase\n") // the newline is part of it, as with cryptsetup --key-file
	for path, data := range map[string][]byte{fx.keyFile: fx.key, fx.passFile: fx.pass} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(fx.image)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(20 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return fx
}

func TestUsage(t *testing.T) {
	fx := newFixture(t, 64)
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		stdout     string // substring, "" for empty
		stderr     string // substring, "" for empty
		emptyOther bool
	}{
		{"no command", nil, ExitUsage, "", "Usage: cvmboot luks2 COMMAND", true},
		{"help", []string{"--help"}, ExitOK, "Commands:", "", true},
		{"help word", []string{"help"}, ExitOK, "Exit status: 0 success", "", true},
		{"unknown command", []string{"open"}, ExitUsage, "", `unknown command "open"`, true},
		{"format help", []string{"format", "--help"}, ExitOK, "--volume-key-file F", "", true},
		{"dump help", []string{"dump", "-h"}, ExitOK, "Usage: cvmboot luks2 dump DEVICE [--json]", "", true},
		{"format no device", []string{"format", "--volume-key-file", fx.keyFile}, ExitUsage, "", "expected 1 arguments, found 0", true},
		{"format two devices", []string{"format", "a", "b", "--volume-key-file", fx.keyFile}, ExitUsage, "", "expected 1 arguments, found 2 (a b)", true},
		{"format no key file", []string{"format", fx.image}, ExitUsage, "", "--volume-key-file is required", true},
		{"format bad flag", []string{"format", fx.image, "--bogus"}, ExitUsage, "", "flag provided but not defined: -bogus", true},
		{"format bad integrity", []string{"format", fx.image, "--volume-key-file", fx.keyFile, "--integrity", "crc32"}, ExitUsage, "", `--integrity: expected none, hmac-sha256 or aead, found "crc32"`, true},
		{"format bad kdf", []string{"format", fx.image, "--volume-key-file", fx.keyFile, "--kdf", "argon2i"}, ExitUsage, "", `--kdf: expected pbkdf2 or argon2id, found "argon2i"`, true},
		{"format zero sector", []string{"format", fx.image, "--volume-key-file", fx.keyFile, "--sector-size", "0"}, ExitUsage, "", "--sector-size: expected 1..2147483647, found 0", true},
		{"dump no device", []string{"dump"}, ExitUsage, "", "expected 1 arguments, found 0", true},
		{"format missing key file", []string{"format", fx.image, "--volume-key-file", filepath.Join(fx.dir, "nope")}, ExitIO, "", "volume key file " + filepath.Join(fx.dir, "nope"), true},
		{"format missing device", []string{"format", filepath.Join(fx.dir, "nodev"), "--volume-key-file", fx.keyFile}, ExitIO, "", "no such file or directory", true},
		{"format bad key size", []string{"format", fx.image, "--volume-key-file", fx.passFile}, ExitFailure, "", "expected one of [64 32] bytes, found 20", true},
		{"dump not luks", []string{"dump", fx.image}, ExitFailure, "", "no LUKS2 header", true},
		{"dump missing", []string{"dump", filepath.Join(fx.dir, "nodev")}, ExitIO, "", "no such file or directory", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr)
			}
			for _, c := range []struct{ got, want, name string }{{stdout, tc.stdout, "stdout"}, {stderr, tc.stderr, "stderr"}} {
				if c.want == "" && tc.emptyOther && c.got != "" {
					t.Errorf("%s should be empty, got %q", c.name, c.got)
				}
				if c.want != "" && !strings.Contains(c.got, c.want) {
					t.Errorf("%s %q lacks %q", c.name, c.got, c.want)
				}
			}
		})
	}
}

func TestFormatDump(t *testing.T) {
	for _, tc := range []struct {
		name    string
		keySize int
		args    []string
		want    []string // substrings of the dump
	}{
		{"no keyslot", 64, []string{"--label", "scratch"},
			[]string{"Label:          scratch", "cipher: aes-xts-plain64", "sector: 4096 [bytes]", "Keyslots:\nTokens:", "Keyslots:   (none)"}},
		{"pbkdf2 hmac 512", 96, []string{"--passphrase-file", "PASS", "--kdf", "pbkdf2", "--pbkdf2-iterations", "1000",
			"--integrity", "hmac-sha256", "--sector-size", "512", "--uuid", "11111111-2222-4333-8444-555555555555", "--subsystem", "cvm"},
			[]string{"UUID:           11111111-2222-4333-8444-555555555555", "Subsystem:      cvm", "integrity: hmac(sha256)", "sector: 512 [bytes]",
				"Key:        768 bits", "PBKDF:      pbkdf2", "Iterations: 1000", "Digest ID:  0", "Keyslots:   0"}},
		{"argon2id aead offset", 32, []string{"--passphrase-file", "PASS", "--argon2-time", "1", "--argon2-memory", "64", "--argon2-parallel", "1",
			"--integrity", "aead", "--data-offset", "4194304"},
			[]string{"cipher: aes-gcm-random", "integrity: aead", "offset: 4194304 [bytes]", "PBKDF:      argon2id", "Memory:     64", "Threads:    1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, tc.keySize)
			args := []string{"format", fx.image, "--volume-key-file", fx.keyFile}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "PASS", fx.passFile))
			}
			code, stdout, stderr := run(args...)
			if code != ExitOK {
				t.Fatalf("format: exit %d: %s", code, stderr)
			}
			if !strings.HasPrefix(stdout, "formatted "+fx.image+": LUKS2 UUID ") {
				t.Errorf("format output %q", stdout)
			}
			code, dump, stderr := run("dump", fx.image)
			if code != ExitOK {
				t.Fatalf("dump: exit %d: %s", code, stderr)
			}
			for _, want := range append(tc.want, "Version:        2", "Epoch:          1",
				"Primary copy:   offset 0, valid, seqid 1, in use", "Secondary copy: offset 16384, valid, seqid 1") {
				if !strings.Contains(dump, want) {
					t.Errorf("dump lacks %q:\n%s", want, dump)
				}
			}
			keyHex := hex.EncodeToString(fx.key)
			for _, half := range []string{keyHex[:16], keyHex[len(keyHex)-16:]} {
				if strings.Contains(dump, half) || strings.Contains(stdout, half) {
					t.Error("output contains volume key bytes")
				}
			}
			code, js, stderr := run("dump", "--json", fx.image)
			if code != ExitOK {
				t.Fatalf("dump --json: exit %d: %s", code, stderr)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(js), &m); err != nil || len(m) != 5 {
				t.Errorf("dump --json is not the 5-section metadata: %v\n%s", err, js)
			}
			// The passphrase opens the volume through the library too.
			if strings.Contains(strings.Join(tc.args, " "), "PASS") {
				f, err := os.Open(fx.image)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				got, err := luks2.Unlock(f, fx.pass)
				if err != nil || !bytes.Equal(got, fx.key) {
					t.Errorf("Unlock with the passphrase file content: %v", err)
				}
			}
		})
	}
}

func TestFormatRefusesExistingHeader(t *testing.T) {
	fx := newFixture(t, 64)
	if code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile, "--label", "first"); code != ExitOK {
		t.Fatalf("first format: %s", stderr)
	}
	code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile)
	if code != ExitFailure || !strings.Contains(stderr, `already holds LUKS2 volume`) || !strings.Contains(stderr, `(label "first")`) {
		t.Errorf("second format without --force: exit %d, %q", code, stderr)
	}
	if code, _, stderr := run("format", "--force", fx.image, "--volume-key-file", fx.keyFile, "--label", "second"); code != ExitOK {
		t.Fatalf("format --force: %s", stderr)
	}
	if _, dump, _ := run("dump", fx.image); !strings.Contains(dump, "Label:          second") {
		t.Errorf("after --force:\n%s", dump)
	}
}

func TestDumpShowsDamagedCopy(t *testing.T) {
	fx := newFixture(t, 64)
	if code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile, "--label", "x\x1b[31m"); code != ExitFailure || !strings.Contains(stderr, "printable") {
		t.Fatalf("escape in label: exit %d %q", code, stderr)
	}
	if code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile); code != ExitOK {
		t.Fatal(stderr)
	}
	f, err := os.OpenFile(fx.image, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Corrupt the primary's label: the dump must fall back to the secondary and say so.
	if _, err := f.WriteAt([]byte("\x1b[2J"), 0x18); err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, dump, stderr := run("dump", fx.image)
	if code != ExitOK {
		t.Fatalf("dump: %s", stderr)
	}
	if !strings.Contains(dump, "Primary copy:   offset 0, INVALID: primary header at offset 0: sha256 checksum") ||
		!strings.Contains(dump, "Secondary copy: offset 16384, valid, seqid 1, in use") {
		t.Errorf("dump:\n%s", dump)
	}
	if strings.Contains(dump, "\x1b") {
		t.Error("dump printed a raw escape character")
	}
}

// editJSON replaces old by new in the JSON text of both header copies of a
// 16 KiB-header image and recomputes their sha256 checksums.
func editJSON(t *testing.T, image, old, new string) {
	t.Helper()
	img, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	const hdrSize, binSize, csumOff, csumLen = 16 << 10, 4096, 0x1c0, 64
	for _, off := range []int{0, hdrSize} {
		copyBytes := img[off : off+hdrSize]
		area := copyBytes[binSize:]
		text := string(area[:bytes.IndexByte(area, 0)])
		if !strings.Contains(text, old) {
			t.Fatalf("JSON at %d lacks %q", off, old)
		}
		clear(area)
		copy(area, strings.Replace(text, old, new, 1))
		clear(copyBytes[csumOff : csumOff+csumLen])
		sum := sha256.Sum256(copyBytes)
		copy(copyBytes[csumOff:], sum[:])
	}
	if err := os.WriteFile(image, img, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The dump shows the parameters of a keyslot whose KDF has the early name
// "argon2", as luksDump does, and says what the reader repaired in memory.
func TestDumpLegacyAndRepairedKDF(t *testing.T) {
	for _, tc := range []struct {
		name, old, new string
		want           []string
	}{
		{"legacy argon2", `"type":"argon2id"`, `"type":"argon2"`,
			[]string{"PBKDF:      argon2\n\tTime cost:  3\n\tMemory:     64\n\tThreads:    1\n"}},
		{"leftover pbkdf2 parameters", `"salt"`, `"hash":"sha256","iterations":1000,"salt"`,
			[]string{"Repaired:       keyslots.0.kdf: dropped hash, iterations, not used by argon2id (in memory only)\n",
				"PBKDF:      argon2id\n\tTime cost:  3\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, 64)
			if code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile, "--passphrase-file", fx.passFile,
				"--argon2-time", "3", "--argon2-memory", "64", "--argon2-parallel", "1"); code != ExitOK {
				t.Fatal(stderr)
			}
			editJSON(t, fx.image, tc.old, tc.new)
			code, dump, stderr := run("dump", fx.image)
			if code != ExitOK {
				t.Fatalf("dump: exit %d: %s", code, stderr)
			}
			for _, want := range tc.want {
				if !strings.Contains(dump, want) {
					t.Errorf("dump lacks %q:\n%s", want, dump)
				}
			}
		})
	}
}

// TestCryptsetupOpensCLIFormat checks the CLI path end to end with cryptsetup.
func TestCryptsetupOpensCLIFormat(t *testing.T) {
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Skipf("cryptsetup not installed (%v): skipping interoperability test", err)
	}
	fx := newFixture(t, 64)
	if code, _, stderr := run("format", fx.image, "--volume-key-file", fx.keyFile, "--passphrase-file", fx.passFile,
		"--argon2-time", "4", "--argon2-memory", "32", "--argon2-parallel", "1"); code != ExitOK {
		t.Fatal(stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", fx.passFile, fx.image).CombinedOutput()
	if err != nil {
		t.Fatalf("cryptsetup: %v\n%s", err, out)
	}
	_, rest, _ := strings.Cut(string(out), "MK dump:")
	if got := strings.Join(strings.Fields(rest), ""); got != hex.EncodeToString(fx.key) {
		t.Error("cryptsetup recovered a different volume key")
	}
}
