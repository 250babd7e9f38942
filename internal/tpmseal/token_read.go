package tpmseal

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/google/go-tpm/tpm2"
)

// Fields of other systemd versions that add a requirement this package does not meet: a
// token carrying one is refused by name rather than opened without it.
var unsupportedFields = map[string]string{
	"tpm2_pubkey":      "a signed PCR policy",
	"tpm2_pubkey_pcrs": "a signed PCR policy",
	"tpm2_pcrlock":     "a pcrlock policy",
	"tpm2_srk":         "a persistent storage root key",
	"tpm2_salt":        "a salted PIN",
	"tpm2_signature":   "a signed PCR policy",
}

// maxTokenBytes bounds what ParseToken reads; a systemd-tpm2 token is under 2 KiB.
const maxTokenBytes = 64 << 10

// ParseToken reads a systemd-tpm2 token from untrusted LUKS2 JSON. It accepts what systemd
// 252 writes (and cvmboot's cvmboot_pcr_values) and refuses anything else by field name.
func ParseToken(raw []byte) (*Token, error) {
	if len(raw) > maxTokenBytes {
		return nil, fmt.Errorf("systemd-tpm2 token: %d bytes, more than %d", len(raw), maxTokenBytes)
	}
	fields, err := objectFields(raw)
	if err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: %w", err)
	}
	var t Token
	var typ, bank string
	var keyslots []string
	var blob, policyHash string
	var pin bool
	var values []string
	var generation *int
	for name, v := range fields {
		var err error
		switch name {
		case "type":
			err = json.Unmarshal(v, &typ)
		case "keyslots":
			err = json.Unmarshal(v, &keyslots)
		case "tpm2-blob":
			err = json.Unmarshal(v, &blob)
		case "tpm2-pcrs":
			err = json.Unmarshal(v, &t.PCRs)
		case "tpm2-pcr-bank":
			err = json.Unmarshal(v, &bank)
		case "tpm2-primary-alg":
			err = json.Unmarshal(v, &t.PrimaryAlg)
		case "tpm2-policy-hash":
			err = json.Unmarshal(v, &policyHash)
		case "tpm2-pin":
			err = json.Unmarshal(v, &pin)
		case "cvmboot_pcr_values":
			err = json.Unmarshal(v, &values)
		case "cvmboot_generation":
			err = json.Unmarshal(v, &generation)
		default:
			if what, ok := unsupportedFields[name]; ok {
				if isEmpty(v) {
					continue // systemd writes empty ones for features not in use
				}
				return nil, fmt.Errorf("systemd-tpm2 token: field %q asks for %s, which cvmboot does not support", name, what)
			}
			return nil, fmt.Errorf("systemd-tpm2 token: unknown field %q: cannot tell what it requires", name)
		}
		if err != nil {
			return nil, fmt.Errorf("systemd-tpm2 token: field %q: %s", name, typeError(err))
		}
	}
	for _, need := range []string{"type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-policy-hash"} {
		if _, ok := fields[need]; !ok {
			return nil, fmt.Errorf("systemd-tpm2 token: field %q is missing", need)
		}
	}
	if typ != TokenType {
		return nil, fmt.Errorf("systemd-tpm2 token: type is %q, want %q", typ, TokenType)
	}
	if len(keyslots) != 1 {
		return nil, fmt.Errorf("systemd-tpm2 token: keyslots %q: want exactly one", keyslots)
	}
	if t.Keyslot, err = strconv.Atoi(keyslots[0]); err != nil || strconv.Itoa(t.Keyslot) != keyslots[0] {
		return nil, fmt.Errorf("systemd-tpm2 token: keyslot %q is not a decimal number", keyslots[0])
	}
	if bank != "" && bank != "sha256" {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-pcr-bank %q: only sha256 is supported", bank)
	}
	if t.PrimaryAlg == "" {
		t.PrimaryAlg = PrimaryECC // tokens written before the field existed
	}
	if pin {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-pin is true: a PIN-protected token cannot be opened unattended")
	}
	if t.Blob, err = base64.StdEncoding.Strict().DecodeString(blob); err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob is not base64: %v", err)
	}
	if t.PolicyHash, err = hex.DecodeString(policyHash); err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-policy-hash is not hex: %v", err)
	}
	if values != nil {
		t.PCRValues = make([][]byte, len(values))
		for i, v := range values {
			if t.PCRValues[i], err = hex.DecodeString(v); err != nil {
				return nil, fmt.Errorf("systemd-tpm2 token: cvmboot_pcr_values[%d] is not hex: %v", i, err)
			}
		}
	}
	if generation != nil {
		if *generation < 1 || *generation > MaxGeneration {
			return nil, fmt.Errorf("systemd-tpm2 token: cvmboot_generation %d: want 1 to %d", *generation, MaxGeneration)
		}
		t.Generation = *generation
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	return &t, nil
}

// objectFields splits a JSON object into its members, refusing duplicates (encoding/json
// would keep the last one silently) and anything after the object.
func objectFields(raw []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("not a JSON object: %s", typeError(err))
	}
	if fields == nil {
		return nil, errors.New("not a JSON object: null")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // {
		return nil, err
	}
	seen := map[string]bool{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, _ := k.(string)
		if seen[name] {
			return nil, fmt.Errorf("field %q appears twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return fields, nil
}

func isEmpty(v json.RawMessage) bool {
	switch string(bytes.TrimSpace(v)) {
	case "null", `""`, "[]", "{}":
		return true
	}
	return false
}

// typeError shortens encoding/json's messages, which name Go types.
func typeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("wrong JSON type (%s)", te.Value)
	}
	return err.Error()
}

// sealedObject is a parsed tpm2-blob.
type sealedObject struct {
	private tpm2.TPM2BPrivate
	public  tpm2.TPM2BPublic
}

// parseBlob splits TPM2B_PRIVATE || TPM2B_PUBLIC and checks that the public area is a
// sealed-data object that only its policy, policyHash, opens.
func parseBlob(blob, policyHash []byte) (*sealedObject, error) {
	r := bytes.NewReader(blob)
	priv, err := read2B(r)
	if err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: private part: %w", err)
	}
	pubBytes, err := read2B(r)
	if err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: public part: %w", err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: %d bytes after the public part", r.Len())
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](pubBytes)
	if err != nil {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: public part: %v", err)
	}
	a := pub.ObjectAttributes
	switch {
	case pub.Type != tpm2.TPMAlgKeyedHash:
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: object type 0x%04x, want KEYEDHASH (sealed data)", uint16(pub.Type))
	case pub.NameAlg != tpm2.TPMAlgSHA256:
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: name algorithm 0x%04x, want sha256", uint16(pub.NameAlg))
	case a.UserWithAuth:
		return nil, errors.New("systemd-tpm2 token: tpm2-blob: the object opens with a password (userWithAuth), not only under its PCR policy")
	case !a.FixedTPM || !a.FixedParent || a.SensitiveDataOrigin || a.Restricted || a.Decrypt || a.SignEncrypt:
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: object attributes %#x are not those of sealed data (fixedTPM|fixedParent)", attrBits(a))
	}
	if subtle.ConstantTimeCompare(pub.AuthPolicy.Buffer, policyHash) != 1 {
		return nil, fmt.Errorf("systemd-tpm2 token: tpm2-blob: the object's policy %x is not tpm2-policy-hash %x", pub.AuthPolicy.Buffer, policyHash)
	}
	return &sealedObject{private: tpm2.TPM2BPrivate{Buffer: priv}, public: tpm2.BytesAs2B[tpm2.TPMTPublic](pubBytes)}, nil
}

func read2B(r *bytes.Reader) ([]byte, error) {
	var n uint16
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, fmt.Errorf("truncated size")
	}
	if n == 0 {
		return nil, errors.New("empty")
	}
	if int(n) > r.Len() {
		return nil, fmt.Errorf("size %d but %d bytes left", n, r.Len())
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func attrBits(a tpm2.TPMAObject) uint32 {
	b := tpm2.Marshal(a)
	return binary.BigEndian.Uint32(b)
}
