package eventlog

import (
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	type nested struct {
		Z string `json:"z"`
		A int    `json:"a"`
	}
	tests := []struct {
		name    string
		in      any
		want    string
		wantErr string
	}{
		{"keys sorted", map[string]any{"b": 1, "a": "x", "C": true}, `{"C":true,"a":"x","b":1}`, ""},
		{"struct fields sorted", nested{Z: "z", A: 1}, `{"a":1,"z":"z"}`, ""},
		{"no HTML escaping", map[string]string{"s": "<a&b>"}, `{"s":"<a&b>"}`, ""},
		{"nested objects sorted", map[string]any{"o": map[string]any{"y": 1, "x": []any{map[string]int{"q": 1, "p": 2}}}}, `{"o":{"x":[{"p":2,"q":1}],"y":1}}`, ""},
		{"big numbers kept", map[string]any{"n": uint64(1<<63 + 1)}, `{"n":9223372036854775809}`, ""},
		{"not an object", []string{"a"}, "", "expected a JSON object, found an array"},
		{"null", nil, "", "expected a JSON object, found null"},
		{"key refused", map[string]string{"key": "00"}, "", `member "key" looks like key material`},
		{"volume key refused", map[string]any{"luks": map[string]string{"volume_key": "00"}}, "", `member "luks.volume_key"`},
		{"passphrase in list refused", map[string]any{"l": []any{map[string]string{"Passphrase": "x"}}}, "", `member "l[0].Passphrase"`},
		{"key_bits allowed", map[string]int{"key_bits": 512}, `{"key_bits":512}`, ""},
		{"key_source allowed", map[string]string{"key_source": "random"}, `{"key_source":"random"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Canonical(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Canonical(%v) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Canonical(%v): %v", tt.in, err)
			}
			if string(got) != tt.want {
				t.Errorf("Canonical(%v) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestEventEncode(t *testing.T) {
	tests := []struct {
		name         string
		ev           Event
		wantContent  string
		wantMeasured string
		wantErr      string
	}{
		{"verity", Verity{Target: "root", RootHash: "ab", HashAlgorithm: "sha256", OnCorruption: "panic"}.Event(),
			`{"data":{"hash_algorithm":"sha256","on_corruption":"panic","roothash":"ab","target":"root"},"type":"cvmboot.verity"}`, "", ""},
		{"storage omits empty", Storage{Encrypted: false, Integrity: "none"}.Event(),
			`{"data":{"encrypted":false,"integrity":"none"},"type":"cvmboot.storage"}`, "", ""},
		{"phase measures the bare word like systemd", Phase("enter-initrd"),
			`{"data":{"phase":"enter-initrd"},"type":"cvmboot.phase"}`, "enter-initrd", ""},
		{"phase with a brace refused", Phase("{x}"), "", "", `phase "{x}"`},
		{"empty phase refused", Phase(""), "", "", `phase ""`},
		{"custom type", Event{Type: "cvmboot.network", Data: map[string]bool{"dhcp": true}},
			`{"data":{"dhcp":true},"type":"cvmboot.network"}`, "", ""},
		{"foreign type refused", Event{Type: "systemd.phase", Data: map[string]bool{}}, "", "", `event type "systemd.phase"`},
		{"upper case type refused", Event{Type: "cvmboot.Verity", Data: map[string]bool{}}, "", "", `event type "cvmboot.Verity"`},
		{"data not an object", Event{Type: "cvmboot.x", Data: "text"}, "", "", "expected a JSON object, found a string"},
		{"key material refused", Event{Type: "cvmboot.storage", Data: map[string]string{"volume_key": "aa"}}, "", "", "key material"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content, measured, err := tt.ev.encode()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("encode error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(content) != tt.wantContent {
				t.Errorf("content = %s\nwant      %s", content, tt.wantContent)
			}
			want := tt.wantMeasured
			if want == "" {
				want = tt.wantContent
			}
			if string(measured) != want {
				t.Errorf("measured = %q, want %q", measured, want)
			}
		})
	}
}
