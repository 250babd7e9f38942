package reference

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadRoundTrip(t *testing.T) {
	v := &Values{Format: Format, UKI: UKI{AuthenticodeSHA256: strings.Repeat("a", 64), AuthenticodeSHA384: strings.Repeat("b", 96)},
		PCR11: PCR11{Value: strings.Repeat("c", 64), Events: []SectionEvent{{Section: ".linux", NameDigest: strings.Repeat("d", 64), DataDigest: strings.Repeat("e", 64)}}},
		PCR12: ZeroPCR}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ref.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil || got.UKI.AuthenticodeSHA384 != v.UKI.AuthenticodeSHA384 || len(got.PCR11.Events) != 1 {
		t.Fatalf("Read: %+v, %v", got, err)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"another format", Format, "other/v1", `format "other/v1"`},
		{"unknown field", `"format"`, `"extra":1,"format"`, `unknown field "extra"`},
		{"short digest", strings.Repeat("e", 64), strings.Repeat("e", 62), `data_digest "` + strings.Repeat("e", 62) + `" is not 32 bytes`},
		{"upper case", strings.Repeat("a", 64), strings.Repeat("A", 64), "uki.authenticode_sha256"},
		{"sha384 size", strings.Repeat("b", 96), strings.Repeat("b", 64), "uki.authenticode_sha384"},
	} {
		if _, err := Parse([]byte(strings.Replace(string(b), c.old, c.new, 1))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	v.Stub.Major = 256
	b256, _ := json.Marshal(v)
	if _, err := Parse(b256); err == nil || !strings.Contains(err.Error(), "no rtmr2 for systemd-stub 256") {
		t.Errorf("stub 256 without rtmr2: %v", err)
	}
	if _, err := Parse(append(b, []byte("{}")...)); err == nil {
		t.Error("trailing data accepted")
	}
}

// LoadOptions is what the e2e boot's kernel measured (its PCR 9 "LOADED_IMAGE::LoadOptions"
// event, pkg/evidence/testdata/uki-boot) for the .cmdline of its UKI.
func TestLoadOptions(t *testing.T) {
	b, ok := LoadOptions("ab\x00")
	if !ok || string(b) != "a\x00b\x00\x00\x00" {
		t.Errorf("LoadOptions(ab) = %q, %v", b, ok)
	}
	if _, ok := LoadOptions("quiet\n"); ok {
		t.Error("a command line with a newline predicted")
	}
	if b, ok := LoadOptions("é"); !ok || string(b) != "\xe9\x00\x00\x00" {
		t.Errorf("LoadOptions(é) = %q", b)
	}
}
