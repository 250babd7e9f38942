package veritycli

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cvmboot/cvmboot/internal/cmdkit"
)

func run(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = Main(args, &o, &e)
	return code, o.String(), e.String()
}

// dataFile writes blocks*4096 pseudo-random bytes plus extra.
func dataFile(t *testing.T, dir string, blocks, extra int) string {
	t.Helper()
	b := make([]byte, blocks*4096+extra)
	r := rand.NewChaCha8([32]byte{byte(blocks), byte(extra)})
	_, _ = r.Read(b)
	path := filepath.Join(dir, "data")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x10
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range [][]string{{"help"}, {"--help"}, {"format", "--help"}, {"verify", "-h"}, {"dump", "--help"}} {
		code, out, errOut := run(cmd...)
		if code != ExitOK || !strings.Contains(out, "Usage: cvmboot verity") || !strings.Contains(out, "3 I/O error") || errOut != "" {
			t.Errorf("%v: code %d, stdout %q, stderr %q", cmd, code, out, errOut)
		}
	}
	if code, _, errOut := run(); code != ExitUsage || !strings.Contains(errOut, "Commands:") {
		t.Errorf("no arguments: code %d, stderr %q", code, errOut)
	}
	if code, _, errOut := run("mount"); code != ExitUsage || !strings.Contains(errOut, `unknown command "mount"`) {
		t.Errorf("unknown command: code %d, stderr %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	data := dataFile(t, dir, 10, 0)
	hash := filepath.Join(dir, "hash")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"format", data}, "expected 2 arguments, found 1"},
		{[]string{"format", data, hash, "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"format", data, hash, "--salt", "xyz"}, `--salt "xyz": expected hexadecimal bytes`},
		{[]string{"format", data, hash, "--salt", strings.Repeat("00", 257)}, "salt is 257 bytes: expected at most 256"},
		{[]string{"format", data, hash, "--uuid", "nope"}, `UUID "nope": expected the form`},
		{[]string{"format", data, hash, "--data-block-size", "1000"}, "data block size 1000: expected a power of two"},
		{[]string{"format", data, hash, "--format", "2"}, "hash type 2: expected 0 or 1"},
		{[]string{"format", data, hash, "--hash", "md5"}, `hash algorithm "md5"`},
		{[]string{"format", data, hash, "--hash-offset", "100"}, "hash offset 100: expected a multiple of 512"},
		{[]string{"format", data, hash, "--data-blocks", "11"}, "--data-blocks 11 of 4096 bytes need 45056"},
		{[]string{"format", data, data}, "data area (40960 bytes) overlaps the hash area at --hash-offset 0"},
		{[]string{"verify", data, hash}, "expected 3 arguments, found 2"},
		{[]string{"verify", data, hash, "zz"}, `root hash "zz": expected hexadecimal digits`},
		{[]string{"verify", data, hash, "00", "--no-superblock"}, "--no-superblock needs --salt"},
		{[]string{"verify", data, hash, "00", "--no-superblock", "--salt", "-"}, "root hash 00 is 1 bytes: expected 32 for sha256"},
		{[]string{"dump"}, "expected 1 arguments, found 0"},
	}
	if err := os.WriteFile(hash, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		code, _, errOut := run(tt.args...)
		if code != ExitUsage || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: code %d, stderr %q, want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
}

func TestIOErrors(t *testing.T) {
	dir := t.TempDir()
	data := dataFile(t, dir, 10, 0)
	missing := filepath.Join(dir, "missing")
	tests := [][]string{
		{"format", missing, filepath.Join(dir, "hash")},
		{"format", data, filepath.Join(missing, "hash")},
		{"verify", missing, data, strings.Repeat("00", 32)},
		{"dump", missing},
	}
	for _, args := range tests {
		code, _, errOut := run(args...)
		if code != ExitIO || !strings.Contains(errOut, "missing") {
			t.Errorf("%v: code %d, stderr %q, want 3 naming the file", args, code, errOut)
		}
	}
	// A hash device cut short is an I/O error, not a corruption.
	hash := filepath.Join(dir, "hash")
	_, root, _ := run("format", data, hash)
	if err := os.Truncate(hash, 4096+100); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := run("verify", data, hash, strings.TrimSpace(root)); code != ExitIO || !strings.Contains(errOut, "got 100 of 4096 bytes") {
		t.Errorf("truncated hash: code %d, stderr %q", code, errOut)
	}
}

func TestFormatVerifyDump(t *testing.T) {
	dir := t.TempDir()
	data := dataFile(t, dir, 300, 123)
	hash := filepath.Join(dir, "hash")
	const uuid = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
	// Options before, between and after the positional arguments.
	code, out, errOut := run("format", "--json", data, "--salt", "0102", hash, "--uuid", uuid)
	if code != ExitOK {
		t.Fatalf("format: %d %s", code, errOut)
	}
	var r report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("format --json: %v\n%s", err, out)
	}
	want := report{RootHash: r.RootHash, HashType: 1, Algorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, DataBlocks: 300,
		DataSize: 300 * 4096, Salt: "0102", UUID: uuid, Superblock: true, HashStartBlock: 1, HashBlocks: 4, Levels: 2,
		HashAreaSize: 5 * 4096, HashDeviceSize: 5 * 4096}
	if r != want || len(r.RootHash) != 64 {
		t.Errorf("format --json:\n got %+v\nwant %+v", r, want)
	}
	if st, _ := os.Stat(hash); st.Size() != 5*4096 {
		t.Errorf("hash file is %d bytes", st.Size())
	}

	if code, out, errOut := run("verify", data, hash, r.RootHash); code != ExitOK || out != "verified\n" {
		t.Errorf("verify: %d %q %q", code, out, errOut)
	}
	// Explicit options must agree with the superblock.
	if code, _, errOut := run("verify", "--hash-block-size=512", data, hash, r.RootHash); code != ExitFailed ||
		!strings.Contains(errOut, "superblock field hash_block_size is 4096, expected 512 (--hash-block-size)") {
		t.Errorf("verify with a conflicting option: %d %q", code, errOut)
	}
	if code, _, errOut := run("verify", "--salt=0102", "--uuid", uuid, data, hash, r.RootHash); code != ExitOK {
		t.Errorf("verify with agreeing options: %d %q", code, errOut)
	}

	code, out, _ = run("dump", hash)
	wantDump := "VERITY header information for " + hash + "\n" +
		"UUID:            \t" + uuid + "\nHash type:       \t1\nData blocks:     \t300\nData block size: \t4096\n" +
		"Hash blocks:     \t4\nHash block size: \t4096\nHash algorithm:  \tsha256\nSalt:            \t0102\n" +
		"Hash device size: \t20480 [bytes]\n"
	if code != ExitOK || out != wantDump {
		t.Errorf("dump: %d\n%s\nwant\n%s", code, out, wantDump)
	}
	if code, out, _ := run("dump", "--json", hash); code != ExitOK || !strings.Contains(out, `"hash_blocks": 4`) {
		t.Errorf("dump --json: %d %s", code, out)
	}
	if code, _, errOut := run("dump", data); code != ExitFailed || !strings.Contains(errOut, "no verity superblock at offset 0") {
		t.Errorf("dump of data: %d %q", code, errOut)
	}

	// Corrupt data block 77, then a level-0 hash block (block 3).
	flipByte(t, data, 77*4096+5)
	code, _, errOut = run("verify", data, hash, r.RootHash)
	if code != ExitFailed || !strings.Contains(errOut, data+": data block 77 is corrupted: expected sha256 ") {
		t.Errorf("corrupted data: %d %q", code, errOut)
	}
	code, out, _ = run("verify", "--json", data, hash, r.RootHash)
	if code != ExitFailed || !strings.Contains(out, `"verified": false`) || !strings.Contains(out, `"block": 77`) {
		t.Errorf("corrupted data --json: %d %s", code, out)
	}
	flipByte(t, hash, 3*4096+9)
	code, _, errOut = run("verify", data, hash, r.RootHash)
	if code != ExitFailed || !strings.Contains(errOut, hash+": hash block 3 (tree level 0) is corrupted") {
		t.Errorf("corrupted hash: %d %q", code, errOut)
	}
	flipByte(t, hash, 88) // first salt byte
	code, _, errOut = run("verify", "--salt", "0102", data, hash, r.RootHash)
	if code != ExitFailed || !strings.Contains(errOut, "superblock field salt is 1102, expected 0102") {
		t.Errorf("corrupted superblock: %d %q", code, errOut)
	}
}

func TestFormatDefaultsAndCombinedDevice(t *testing.T) {
	dir := t.TempDir()
	data := dataFile(t, dir, 64, 0)
	hash := filepath.Join(dir, "hash")
	code, out, errOut := run("format", "--json", data, hash)
	if code != ExitOK {
		t.Fatalf("format: %d %s", code, errOut)
	}
	var r report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Salt) != 64 || len(r.UUID) != 36 {
		t.Errorf("default salt %q, uuid %q: want 32 random bytes and a UUID", r.Salt, r.UUID)
	}
	// Hash area appended to the data file itself, past the data.
	code, out, errOut = run("format", data, data, "--hash-offset", "262144", "--salt", "-")
	if code != ExitOK {
		t.Fatalf("combined format: %d %s", code, errOut)
	}
	root := strings.TrimSpace(out)
	if code, out, errOut := run("verify", "--hash-offset=262144", data, data, root); code != ExitOK {
		t.Errorf("combined verify: %d %s %s", code, out, errOut)
	}
	if code, out, _ := run("dump", "--hash-offset", "262144", data); code != ExitOK || strings.Contains(out, "Hash device size") {
		t.Errorf("dump at an offset prints no device size (as veritysetup): %d\n%s", code, out)
	}
}

func TestSeparator(t *testing.T) {
	dir := t.TempDir()
	data := dataFile(t, dir, 4, 0)
	dash := filepath.Join(dir, "-hash")
	if code, _, errOut := run("format", "--salt", "-", "--", data, dash); code != ExitOK {
		t.Fatalf("format -- : %d %s", code, errOut)
	}
	if _, err := os.Stat(dash); err != nil {
		t.Fatal(err)
	}
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	if isTerminal(&buf) {
		t.Fatal("a buffer is not a terminal")
	}
	c := &command{cmdkit.Cmd{Stderr: &buf}}
	if b := c.progress("format", 1<<30); b.w != nil {
		t.Fatal("progress bar on a non-terminal")
	}
	b := &progressBar{w: &buf, label: "format", total: 100 << 20}
	b.update(50 << 20)
	b.update(60 << 20) // within 100 ms: not drawn
	b.update(100 << 20)
	b.finish()
	want := "\rformat [###############...............]  50% 50/100 MiB\rformat [##############################] 100% 100/100 MiB\n"
	if buf.String() != want {
		t.Errorf("progress output %q\nwant %q", buf.String(), want)
	}
}

// TestVeritysetupInterop checks the CLI against veritysetup in both
// directions, dump output included.
func TestVeritysetupInterop(t *testing.T) {
	vs, err := exec.LookPath("veritysetup")
	if err != nil {
		t.Skip("veritysetup not installed (Debian: apt-get install cryptsetup-bin); interoperability not checked")
	}
	dir := t.TempDir()
	data := dataFile(t, dir, 1000, 7)
	for _, opts := range [][]string{
		{"--salt", "00112233"},
		{"--salt", "-", "--hash", "sha512", "--format", "0", "--hash-block-size", "1024", "--data-block-size", "512"},
		{"--salt", "ab", "--hash-offset", "4096", "--data-blocks", "900"},
		{"--salt", "cd", "--no-superblock", "--hash-offset", "8192", "--hash", "sha1"},
	} {
		t.Run(strings.Join(opts, " "), func(t *testing.T) {
			ours, theirs := filepath.Join(dir, "ours"), filepath.Join(dir, "theirs")
			os.Remove(ours)
			os.Remove(theirs)
			opts := append(opts, "--uuid", "12345678-9abc-4def-8123-456789abcdef")
			code, out, errOut := run(append([]string{"format", data, ours}, opts...)...)
			if code != ExitOK {
				t.Fatalf("format: %s", errOut)
			}
			root := strings.TrimSpace(out)
			vsOut, err := exec.Command(vs, append([]string{"format", data, theirs}, opts...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("veritysetup format: %v\n%s", err, vsOut)
			}
			if !strings.Contains(string(vsOut), "Root hash:      \t"+root+"\n") {
				t.Fatalf("root hash %s not in veritysetup output:\n%s", root, vsOut)
			}
			a, _ := os.ReadFile(ours)
			b, _ := os.ReadFile(theirs)
			if !bytes.Equal(a, b) {
				t.Fatal("hash devices differ")
			}
			verifyOpts := opts
			if !strings.Contains(strings.Join(opts, " "), "--no-superblock") {
				verifyOpts = nil
				for i, o := range opts {
					if o == "--hash-offset" {
						verifyOpts = opts[i : i+2]
					}
				}
			}
			if out, err := exec.Command(vs, append([]string{"verify", data, ours, root}, verifyOpts...)...).CombinedOutput(); err != nil {
				t.Fatalf("veritysetup verify: %v\n%s", err, out)
			}
			if code, _, errOut := run(append([]string{"verify", data, theirs, root}, verifyOpts...)...); code != ExitOK {
				t.Fatalf("verify of veritysetup's device: %s", errOut)
			}
			if len(verifyOpts) <= 2 {
				// veritysetup dump prints the root hash too (from format);
				// compare the header lines.
				dumpArgs := append([]string{"dump", theirs}, verifyOpts...)
				_, ourDump, _ := run(dumpArgs...)
				theirDump, err := exec.Command(vs, dumpArgs...).CombinedOutput()
				if err != nil {
					t.Fatalf("veritysetup dump: %v", err)
				}
				if ourDump != string(theirDump) {
					t.Errorf("dump differs:\nours:\n%s\nveritysetup:\n%s", ourDump, theirDump)
				}
			}
		})
	}
}
