package eventlog

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

// The RTMR digest is the SHA-384 of the Attestation Agent's tagged event, built here from the
// layout guest-components' tcg2.rs writes: id "AAEL" (LE), text length (LE), text.
func TestRTMRDigestIsAAEL(t *testing.T) {
	rtmr := RTMRIndex
	for _, tc := range []struct {
		ev   Event
		text string
	}{
		{Phase("enter-initrd"), "cvmboot phase enter-initrd"},
		{Cmdline{SHA256: strings.Repeat("d", 64)}.Event(), `cvmboot cmdline {"data":{"sha256":"` + strings.Repeat("d", 64) + `"},"type":"cvmboot.cmdline"}`},
	} {
		rec, err := NewRecord(tc.ev, nil, nil, &rtmr)
		if err != nil {
			t.Fatal(err)
		}
		tagged := binary.LittleEndian.AppendUint32([]byte("LEAA"), uint32(len(tc.text)))
		tagged = append(tagged, tc.text...)
		want := sha512.Sum384(tagged)
		if got := rec.Extends(RTMR(RTMRIndex)); hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
			t.Errorf("%s: RTMR digest %x, want SHA-384 of %q: %x", tc.ev.Type, got, tagged, want)
		}
		if got := Replay([]Record{*rec})[RTMR(RTMRIndex)]; len(got) != 48 {
			t.Errorf("%s: replay has no RTMR 3", tc.ev.Type)
		}
	}
}

func TestInitdataPCR8(t *testing.T) {
	digest := sha256.Sum256([]byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n"))
	ev := Initdata{Found: true, Source: "device /dev/vdb", Version: "0.1.0", Algorithm: "sha256",
		Digest: hex.EncodeToString(digest[:]), Bound: []string{BoundPCR8}}.Event()
	pcr := PCRFor(TypeInitdata)
	rec, err := NewRecord(ev, []crypto.Hash{crypto.SHA256}, &pcr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.Extends(PCR(PCRInitdata, crypto.SHA256)); hex.EncodeToString(got) != hex.EncodeToString(digest[:]) {
		t.Errorf("PCR 8 extend %x, want the digest itself %x", got, digest)
	}
	if got := rec.Extends(PCR(PCRInitdata, crypto.SHA1)); got != nil {
		t.Errorf("PCR 8 sha1 bank extended with %x: only sha256 is", got)
	}
	if f := rec.FromZero(); len(f) != 1 || f[0] != PCR(PCRInitdata, crypto.SHA256) {
		t.Errorf("FromZero = %v", f)
	}
	// Trustee: PCR 8 = SHA-256(32 zero bytes ‖ digest).
	want := sha256.Sum256(append(make([]byte, 32), digest[:]...))
	line, _ := rec.MarshalLine()
	recs, err := ParseLog(line)
	if err != nil {
		t.Fatal(err)
	}
	if got := Replay(recs)[PCR(8, crypto.SHA256)]; hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Errorf("replayed PCR 8 %x, want %x", got, want)
	}
	unbound := Initdata{Found: true, Source: "file /run/peerpod/initdata", Algorithm: "sha256", Digest: hex.EncodeToString(digest[:])}.Event()
	rec2, err := NewRecord(unbound, []crypto.Hash{crypto.SHA256}, &pcr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec2.Extends(PCR(8, crypto.SHA256)) != nil || rec2.FromZero() != nil {
		t.Error("an initdata record not bound to PCR 8 extends it")
	}
}

func TestInitdataRecordRefused(t *testing.T) {
	d32 := strings.Repeat("ab", 32)
	pcr := PCRSystem
	for name, tc := range map[string]struct {
		data Initdata
		pcr  *int
		want string
	}{
		"pcr8 without a TPM":     {Initdata{Found: true, Source: "x", Algorithm: "sha256", Digest: d32, Bound: []string{BoundPCR8}}, nil, "extended no TPM PCR"},
		"pcr8 with sha384":       {Initdata{Found: true, Source: "x", Algorithm: "sha384", Digest: strings.Repeat("ab", 48), Bound: []string{BoundPCR8}}, &pcr, "only sha256"},
		"digest of another size": {Initdata{Found: true, Source: "x", Algorithm: "sha512", Digest: d32}, &pcr, "32-byte digest"},
		"uppercase digest":       {Initdata{Found: true, Source: "x", Algorithm: "sha256", Digest: strings.ToUpper(d32)}, &pcr, "lowercase hex"},
		"not found but bound":    {Initdata{Found: false, Source: "x", Bound: []string{BoundHostData}}, &pcr, "no document found"},
		"unknown binding":        {Initdata{Found: true, Source: "x", Algorithm: "sha256", Digest: d32, Bound: []string{"pcr9"}}, &pcr, `bound "pcr9"`},
		"binding twice":          {Initdata{Found: true, Source: "x", Algorithm: "sha256", Digest: d32, Bound: []string{BoundPCR8, BoundPCR8}}, &pcr, `bound "pcr8"`},
	} {
		_, err := NewRecord(tc.data.Event(), []crypto.Hash{crypto.SHA256}, tc.pcr, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.want)
		}
	}
}
