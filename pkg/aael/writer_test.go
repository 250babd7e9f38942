package aael

import (
	"bytes"
	"crypto"
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/hex"
	"strings"
	"testing"
)

// guest-components' attestation-agent/src/eventlog/mod.rs test_event_digest (8246e5e0): the
// tagged event of ("domain", "operation", "content") and its digests.
func TestAgentVectors(t *testing.T) {
	e := Event{"domain", "operation", "content"}
	tagged, err := e.TaggedEvent()
	if err != nil || hex.EncodeToString(tagged) != "4c45414118000000646f6d61696e206f7065726174696f6e20636f6e74656e74" {
		t.Fatalf("tagged event %x, %v", tagged, err)
	}
	for alg, want := range map[crypto.Hash]string{
		crypto.SHA256: "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351",
		crypto.SHA384: "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02",
		crypto.SHA512: "b708d222ca8bd44dfe6ba0c4ca2cbb72379276fba8091025217064be45a813e5d6124ccf073219edb617d1faf007d55061465bdf34b7437dbdc9a7405bd4e9c0",
	} {
		if _, d, err := e.Record(TDXIndex, alg); err != nil || hex.EncodeToString(d) != want {
			t.Errorf("%v digest %x, %v; want %s", alg, d, err, want)
		}
	}
}

// trustee's deps/eventlog/test_data/CCEL_AAEL_alibabacloud (78962cd4): the first AAEL record, at
// file offset 11447, byte for byte.
func TestTrusteeRecord(t *testing.T) {
	rec, _, err := Event{"coco.com", "some-operation", "some-content"}.Record(TDXIndex, crypto.SHA384)
	want := "0400000006000000010000000c002330183d89750c6a374ac9827d33a33636e7876733544584c8ccc88df0df87eada37e5d71d0773502234c2b5fbc7448e2c0000004c45414124000000636f636f2e636f6d20736f6d652d6f7065726174696f6e20736f6d652d636f6e74656e74"
	if err != nil || hex.EncodeToString(rec) != want {
		t.Fatalf("record %x, %v\nwant   %s", rec, err, want)
	}
	rec, _, err = Event{"coco.com", "some-operation", `{"key": "value", "nested-key": {"sub-key": "value"}}`}.Record(TDXIndex, crypto.SHA384)
	if err != nil || !strings.Contains(hex.EncodeToString(rec), "82b3e7dd09cbe55777a6eeed67614e9e5a25508ec1cd03ecbfbe10c913fa76ed451fbc275babc6a01a8e5c08e853419b") {
		t.Fatalf("second record %x, %v", rec, err)
	}
}

func TestRefuses(t *testing.T) {
	for _, e := range []Event{{"", "op", "c"}, {"a b", "op", "c"}, {"d", "", "c"}, {"d", "o p", "c"}, {"d", "op", "line\nbreak"}} {
		if _, _, err := e.Record(TDXIndex, crypto.SHA384); err == nil {
			t.Errorf("%+v accepted", e)
		}
	}
	if _, _, err := (Event{"d", "o", "c"}).Record(TDXIndex, crypto.SHA1); err == nil {
		t.Error("SHA-1 accepted")
	}
}

func TestParseRoundTrip(t *testing.T) {
	var log []byte
	events := []Event{{"cvmboot", "phase", "enter-initrd"}, {"kata-agent", "CreateContainer", `{"id": "x y"}`}}
	for _, e := range events {
		r, _, err := e.Record(TDXIndex, crypto.SHA384)
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, r...)
	}
	entries, err := Parse(append(log, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
	if err != nil || len(entries) != 2 || entries[1].Event != events[1] || entries[0].Index != TDXIndex {
		t.Fatalf("Parse = %+v, %v", entries, err)
	}
	for name, bad := range map[string][]byte{
		"truncated":    log[:len(log)-3],
		"digest wrong": func() []byte { b := []byte(string(log)); b[20] ^= 1; return b }(),
		"text changed": func() []byte { b := []byte(string(log)); b[len(b)-2] ^= 1; return b }(),
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	r, _, _ := Event{"cvmboot", "phase", "enter-initrd"}.Record(TDXIndex, crypto.SHA384)
	f.Add(r)
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := Parse(b)
		if err != nil {
			return
		}
		var again []byte
		for _, e := range entries {
			rec, _, err := e.Event.Record(e.Index, crypto.SHA384)
			if err != nil {
				t.Fatalf("parsed %+v does not encode: %v", e, err)
			}
			again = append(again, rec...)
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("parsed entries re-encode to other bytes")
		}
	})
}
