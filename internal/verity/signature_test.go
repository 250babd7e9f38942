package verity

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

func TestParseSigPartition(t *testing.T) {
	sig := []byte{0x30, 0x03, 0x02, 0x01, 0x00}
	sig64 := base64.StdEncoding.EncodeToString(sig)
	root := strings.Repeat("ab", 32)
	pad := func(s string) []byte { return append([]byte(s), make([]byte, 4096-len(s))...) }
	good := `{"rootHash":"` + root + `","signature":"` + sig64 + `","certificateFingerprint":"` + strings.Repeat("0f", 32) + `"}`
	sp, err := ParseSigPartition(pad(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(sp.RootHash) != 32 || !bytes.Equal(sp.Signature, sig) || len(sp.CertificateFingerprint) != 32 {
		t.Errorf("%+v", sp)
	}
	for _, in := range [][]byte{
		[]byte(`{"rootHash":"` + root + `","signature":"` + strings.TrimRight(sig64, "=") + `","future":[1,2]}`), // no padding, unknown member
		[]byte(" \n{\"signature\":\"" + sig64 + "\",\"rootHash\":\"" + root + "\"}\n"),
	} {
		if _, err := ParseSigPartition(in); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
	tests := []struct {
		in   []byte
		want string
	}{
		{make([]byte, 4096), "empty"},
		{nil, "empty"},
		{pad(`{"rootHash":"` + root + `"}`), "signature is missing"},
		{pad(`{"signature":"` + sig64 + `"}`), "rootHash is missing"},
		{pad(`{"rootHash":"xyz","signature":"` + sig64 + `"}`), `rootHash "xyz"`},
		{pad(`{"rootHash":"abcd","signature":"` + sig64 + `"}`), "at least 32 hexadecimal digits"},
		{pad(`{"rootHash":"` + root + `","signature":"***"}`), "expected base64"},
		{pad(`{"rootHash":"` + root + `","signature":"` + base64.StdEncoding.EncodeToString([]byte("PEM")) + `"}`), "DER PKCS#7"},
		{pad(`{"rootHash":"` + root + `","signature":""}`), "signature: empty"},
		{pad(`{"rootHash":"` + root + `","signature":"` + sig64 + `","certificateFingerprint":"00"}`), "certificateFingerprint"},
		{pad(`{"rootHash":1,"signature":"` + sig64 + `"}`), "invalid JSON"},
		{pad(`[1]`), "invalid JSON"},
		{pad(good + `{}`), "data after the JSON object"},
		{append([]byte(good), 0, 0, 'x', 0), "non-NUL byte at offset"},
		{pad(`{"rootHash":"` + root), "invalid JSON"},
	}
	for _, tt := range tests {
		_, err := ParseSigPartition(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%.60q: got %v, expected an error containing %q", tt.in, err, tt.want)
		}
	}
}
