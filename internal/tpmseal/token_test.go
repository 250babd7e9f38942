package tpmseal

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func systemdToken(t testing.TB) map[string]any {
	raw, err := os.ReadFile("testdata/systemd-252-token.json")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// blobWith re-marshals the public part of the systemd token's blob after edit.
func blobWith(t *testing.T, edit func(*tpm2.TPMTPublic)) string {
	m := systemdToken(t)
	blob, _ := base64.StdEncoding.DecodeString(m["tpm2-blob"].(string))
	n := int(blob[0])<<8 | int(blob[1])
	priv, pubPart := blob[:2+n], blob[2+n+2:]
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](pubPart)
	if err != nil {
		t.Fatal(err)
	}
	edit(pub)
	b := tpm2.Marshal(*pub)
	out := append(append([]byte{}, priv...), byte(len(b)>>8), byte(len(b)))
	return base64.StdEncoding.EncodeToString(append(out, b...))
}

func TestParseTokenRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, want string
		edit       func(m map[string]any)
	}{
		{"other type", `type is "luks2-keyring"`, func(m map[string]any) { m["type"] = "luks2-keyring" }},
		{"two keyslots", `want exactly one`, func(m map[string]any) { m["keyslots"] = []string{"1", "2"} }},
		{"keyslot not decimal", `keyslot "01" is not a decimal number`, func(m map[string]any) { m["keyslots"] = []string{"01"} }},
		{"keyslot a number", `field "keyslots": wrong JSON type`, func(m map[string]any) { m["keyslots"] = []int{1} }},
		{"sha1 bank", `tpm2-pcr-bank "sha1": only sha256`, func(m map[string]any) { m["tpm2-pcr-bank"] = "sha1" }},
		{"pin", `tpm2-pin is true`, func(m map[string]any) { m["tpm2-pin"] = true }},
		{"signed policy", `field "tpm2_pubkey" asks for a signed PCR policy`, func(m map[string]any) { m["tpm2_pubkey"] = "AAAA" }},
		{"pcrlock", `field "tpm2_pcrlock" asks for a pcrlock policy`, func(m map[string]any) { m["tpm2_pcrlock"] = true }},
		{"unknown field", `unknown field "tpm2-secret-sauce"`, func(m map[string]any) { m["tpm2-secret-sauce"] = 1 }},
		{"no pcrs", `tpm2-pcrs is empty`, func(m map[string]any) { m["tpm2-pcrs"] = []int{} }},
		{"pcr out of range", `tpm2-pcrs [7 24]`, func(m map[string]any) { m["tpm2-pcrs"] = []int{7, 24} }},
		{"pcrs unsorted", `tpm2-pcrs [11 7]`, func(m map[string]any) { m["tpm2-pcrs"] = []int{11, 7} }},
		{"missing blob", `field "tpm2-blob" is missing`, func(m map[string]any) { delete(m, "tpm2-blob") }},
		{"blob not base64", `tpm2-blob is not base64`, func(m map[string]any) { m["tpm2-blob"] = "%%%" }},
		{"blob truncated", `tpm2-blob: private part: size 158 but 148 bytes left`, func(m map[string]any) { m["tpm2-blob"] = m["tpm2-blob"].(string)[:200] }},
		{"policy hash edited", `the object's policy 384378ca`, func(m map[string]any) {
			m["tpm2-policy-hash"] = strings.Repeat("00", 32)
		}},
		{"policy hash short", `tpm2-policy-hash has 4 bytes`, func(m map[string]any) { m["tpm2-policy-hash"] = "00112233" }},
		{"unknown primary", `tpm2-primary-alg "dsa"`, func(m map[string]any) { m["tpm2-primary-alg"] = "dsa" }},
		{"generation zero", `cvmboot_generation 0: want 1 to 1048576`, func(m map[string]any) { m["cvmboot_generation"] = 0 }},
		{"generation huge", `cvmboot_generation 9223372036854775807: want 1 to`, func(m map[string]any) { m["cvmboot_generation"] = int64(1<<63 - 1) }},
		{"generation text", `field "cvmboot_generation": wrong JSON type`, func(m map[string]any) { m["cvmboot_generation"] = "2" }},
		{"wrong expected values", `cvmboot_pcr_values give the policy`, func(m map[string]any) {
			m["cvmboot_pcr_values"] = []string{strings.Repeat("00", 32), strings.Repeat("11", 32)}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := systemdToken(t)
			tt.edit(m)
			raw, _ := json.Marshal(m)
			_, err := ParseToken(raw)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseToken: %v, want an error with %q", err, tt.want)
			}
		})
	}
	objectCases := []struct {
		name, want string
		edit       func(*tpm2.TPMTPublic)
	}{
		{"password opens it", "userWithAuth", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true }},
		{"not sealed data", "object attributes", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = true }},
		{"sha1 name", "name algorithm 0x0004", func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }},
	}
	for _, tt := range objectCases {
		t.Run(tt.name, func(t *testing.T) {
			m := systemdToken(t)
			m["tpm2-blob"] = blobWith(t, tt.edit)
			raw, _ := json.Marshal(m)
			if _, err := ParseToken(raw); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseToken: %v, want an error with %q", err, tt.want)
			}
		})
	}
	for _, raw := range []string{`[]`, `null`, `{"type":"systemd-tpm2","type":"systemd-tpm2"}`, `{} {}`, `{"type":`} {
		if _, err := ParseToken([]byte(raw)); err == nil {
			t.Errorf("ParseToken(%s) accepted", raw)
		}
	}
}

// Empty fields of features not in use are what systemd writes; they are accepted.
func TestParseTokenEmptyUnsupported(t *testing.T) {
	m := systemdToken(t)
	m["tpm2_pubkey_pcrs"] = []int{}
	m["tpm2_pubkey"] = ""
	raw, _ := json.Marshal(m)
	if _, err := ParseToken(raw); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseToken(f *testing.F) {
	raw, err := os.ReadFile("testdata/systemd-252-token.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAA=","tpm2-pcrs":[4,11],"tpm2-policy-hash":"00"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		tok, err := ParseToken(raw)
		if err != nil {
			return
		}
		// What parses writes back, and what it writes parses to the same token.
		again, err := tok.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed token: %v", err)
		}
		back, err := ParseToken(again)
		if err != nil {
			t.Fatalf("ParseToken(Marshal(tok)): %v\n%s", err, again)
		}
		if back.Keyslot != tok.Keyslot || string(back.Blob) != string(tok.Blob) || len(back.PCRs) != len(tok.PCRs) {
			t.Fatalf("round trip changed the token: %+v -> %+v", tok, back)
		}
	})
}
