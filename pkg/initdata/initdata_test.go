package initdata

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"
)

// doc is the spec test vector: 116 bytes, ending in a newline.
const doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n'''\n"

func TestDigestAndBindings(t *testing.T) {
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(doc) != 116 || d.Data["aa.toml"] != "[token_configs.kbs]\nurl = \"http://10.0.0.1:8080\"\n" {
		t.Fatalf("parsed %+v", d)
	}
	dig := d.Digest()
	const want = "b4b24d9f833c619d9b1a272c2f6ae06121d17aac1176da45207a63129c258e95"
	if hex.EncodeToString(dig) != want {
		t.Errorf("digest %x, want %s", dig, want)
	}
	if hex.EncodeToString(HostData(dig)) != want || hex.EncodeToString(MRConfigID(dig)) != want+strings.Repeat("00", 16) {
		t.Errorf("HOST_DATA %x, MRCONFIGID %x", HostData(dig), MRConfigID(dig))
	}
	if p, err := PCR8(dig); err != nil || hex.EncodeToString(p) != "affa0e268f6923242208dac0df17b246e3196d6a07eb1527b1e78c16ee84019d" {
		t.Errorf("PCR 8 %x, %v", p, err)
	}
	// The same text with sha384: another digest; HOST_DATA its first 32 bytes; no PCR 8.
	d384, err := Parse([]byte(strings.Replace(doc, "sha256", "sha384", 1)))
	if err != nil {
		t.Fatal(err)
	}
	dig = d384.Digest()
	if hex.EncodeToString(dig) != "ac29d5708d688d1016e37df1a6ba5ce3abd8eed15a7ccd75f1d8be06f9119f60b8f28a437ba811c3d4737dcacef31e6a" ||
		!bytes.Equal(HostData(dig), dig[:32]) || !bytes.Equal(MRConfigID(dig), dig) {
		t.Errorf("sha384 digest %x", dig)
	}
	if _, err := PCR8(dig); err == nil {
		t.Error("a sha384 digest was extended into PCR 8")
	}
	// A trailing newline is another document.
	if d2, _ := Parse([]byte(doc + "\n")); bytes.Equal(d2.Digest(), d.Digest()) {
		t.Error("a trailing newline did not change the digest")
	}
	// Trustee's az-snp-vtpm verifier test (deps/verifier/src/az_snp_vtpm/mod.rs
	// test_verify_init_data, trustee 78962cd4).
	in, _ := hex.DecodeString("8505e4e25e50a27c5dc8147af88efbece627fbea55291911eff832d9ee127781")
	if p, _ := PCR8(in); hex.EncodeToString(p) != "bddaccb9c52249e97a31baea61b7d91be8221a16e703d92148d04fb8e9c1dfdd" {
		t.Errorf("PCR 8 of Trustee's vector: %x", p)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"not TOML", "version = ", "not TOML"},
		{"no version", "algorithm = \"sha256\"\n[data]\n", "no version"},
		{"another version", strings.Replace(doc, "0.1.0", "0.2.0", 1), `version "0.2.0", expected "0.1.0"`},
		{"IANA algorithm name", strings.Replace(doc, "sha256", "sha-256", 1), `algorithm "sha-256", expected one of [sha256 sha384 sha512]`},
		{"no algorithm", "version = \"0.1.0\"\n[data]\n", "no algorithm"},
		{"no data", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n", "no [data] table"},
		{"data not a string", doc + "\"policy.rego\" = 3\n", `[data] "policy.rego" is a int64, expected a string`},
		{"too large", doc + strings.Repeat("#", MaxSize), "at most 1048576"},
	} {
		if _, err := Parse([]byte(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	d, err := Parse([]byte("version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n"))
	if err != nil || len(d.Data) != 0 || len(d.Digest()) != 64 {
		t.Errorf("empty [data]: %+v, %v", d, err)
	}
	d, _ = Parse([]byte(doc + "\"extra.txt\" = \"x\"\n"))
	if got := d.Ignored(); len(got) != 1 || got[0] != "extra.txt" {
		t.Errorf("ignored %v", got)
	}
}

// kata-containers' agent test image (src/agent/testdata/initdata.img at 7c6ba40c: "initdata",
// length 36, gzip of "some content", zeros to 512 bytes).
func TestReadBlock(t *testing.T) {
	img, err := os.ReadFile("testdata/kata-initdata.img")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ReadBlock(bytes.NewReader(img), int64(len(img)))
	if err != nil || string(raw) != "some content" {
		t.Fatalf("ReadBlock: %q, %v", raw, err)
	}
	b := Block([]byte(doc))
	if len(b)%SectorSize != 0 {
		t.Errorf("block of %d bytes", len(b))
	}
	if raw, err := ReadBlock(bytes.NewReader(b), int64(len(b))); err != nil || string(raw) != doc {
		t.Errorf("round trip: %q, %v", raw, err)
	}
	bad := func(edit func([]byte) []byte) []byte { return edit(bytes.Clone(img)) }
	for _, c := range []struct {
		name string
		img  []byte
		want string
	}{
		{"another disk", bad(func(b []byte) []byte { copy(b, "EFI PART"); return b }), ErrNoMagic.Error()},
		{"empty disk", nil, ErrNoMagic.Error()},
		{"zero length", bad(func(b []byte) []byte { b[8] = 0; return b }), "a 0-byte gzip stream"},
		{"length beyond the device", bad(func(b []byte) []byte { b[9] = 0x10; return b }), "a 4132-byte gzip stream; the device has 496 bytes"},
		{"not gzip", bad(func(b []byte) []byte { b[16] = 0; return b }), "are not gzip"},
		{"truncated gzip", bad(func(b []byte) []byte { b[8] = 20; return b }), "gzip stream"},
	} {
		_, err := ReadBlock(bytes.NewReader(c.img), int64(len(c.img)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if c.want == ErrNoMagic.Error() && !errors.Is(err, ErrNoMagic) {
			t.Errorf("%s: %v is not ErrNoMagic", c.name, err)
		}
	}
}

// The document and the device come from the host.
func FuzzParse(f *testing.F) {
	f.Add([]byte(doc))
	f.Add([]byte("version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := Parse(raw)
		if err != nil {
			return
		}
		if !bytes.Equal(d.Raw, raw) || len(d.Digest()) < 32 {
			t.Fatalf("parsed %q to %+v", raw, d)
		}
	})
}

func FuzzReadBlock(f *testing.F) {
	if img, err := os.ReadFile("testdata/kata-initdata.img"); err == nil {
		f.Add(img)
	}
	f.Add(Block([]byte(doc)))
	f.Fuzz(func(t *testing.T, img []byte) {
		raw, err := ReadBlock(bytes.NewReader(img), int64(len(img)))
		if err == nil && len(raw) > MaxSize {
			t.Fatalf("a %d-byte document", len(raw))
		}
	})
}

func TestReadFile(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte(doc))
	zw.Close()
	b64 := base64.StdEncoding.EncodeToString(z.Bytes())
	for name, in := range map[string][]byte{
		"block":                      Block([]byte(doc)),
		"base64 of gzip (peer pods)": []byte(b64 + "\n"),
		"TOML":                       []byte(doc),
	} {
		got, err := ReadFile(in)
		if err != nil || string(got) != doc {
			t.Errorf("%s: ReadFile = %q, %v", name, got, err)
		}
	}
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"base64 of no gzip": {[]byte(base64.StdEncoding.EncodeToString([]byte("not gzip at all"))), "are not gzip"},
		"bad block":         {append([]byte(Magic), 0xff, 0, 0, 0, 0, 0, 0, 0), "gzip stream"},
		"too large":         {bytes.Repeat([]byte("a = 1\n"), MaxSize/6+1), "at most"},
	} {
		if _, err := ReadFile(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}

func FuzzReadFile(f *testing.F) {
	f.Add(Block([]byte(doc)))
	f.Add([]byte(doc))
	f.Add([]byte("H4sIAAAAAAAA/ytLLSrOzM9TSEnNSy/KLAEA"))
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, err := ReadFile(b)
		if err == nil && len(raw) > MaxSize {
			t.Fatalf("a %d-byte document", len(raw))
		}
	})
}
