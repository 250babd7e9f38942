package verity

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxSignatureSize bounds a root hash signature (a PKCS#7 blob of a few KiB) and
// MaxSigPartitionRead how much of a signature partition is read.
const (
	MaxSignatureSize    = 64 << 10
	MaxSigPartitionRead = 1 << 20
)

// SigPartition is the content of a root-verity-sig (or usr-verity-sig) partition of the
// Discoverable Partitions Specification: a JSON object, NUL-padded to the partition size.
type SigPartition struct {
	RootHash []byte
	// Signature is the DER PKCS#7 signature over the root hash's hex string.
	Signature []byte
	// CertificateFingerprint is the SHA-256 of the signing certificate; nil when absent.
	CertificateFingerprint []byte
}

// ParseSigPartition parses a signature partition's bytes: a JSON object with rootHash
// (hex), signature (base64 DER PKCS#7) and optionally certificateFingerprint (hex SHA-256),
// followed only by NUL bytes. Unknown members are ignored, as the specification allows
// them to be added.
func ParseSigPartition(b []byte) (*SigPartition, error) {
	text := b
	if i := bytes.IndexByte(b, 0); i >= 0 {
		text = b[:i]
		if j := bytes.IndexFunc(b[i:], func(r rune) bool { return r != 0 }); j >= 0 {
			return nil, fmt.Errorf("signature partition: non-NUL byte at offset %d after the JSON object (which ends at %d)", i+j, i)
		}
	}
	if len(bytes.TrimSpace(text)) == 0 {
		return nil, errors.New("signature partition is empty: expected a JSON object")
	}
	var raw struct {
		RootHash               *string `json:"rootHash"`
		Signature              *string `json:"signature"`
		CertificateFingerprint *string `json:"certificateFingerprint"`
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("signature partition: invalid JSON: %v", err)
	}
	if rest := bytes.TrimSpace(text[dec.InputOffset():]); len(rest) > 0 {
		return nil, fmt.Errorf("signature partition: %d bytes of data after the JSON object", len(rest))
	}
	if raw.RootHash == nil {
		return nil, errors.New("signature partition: rootHash is missing")
	}
	if raw.Signature == nil {
		return nil, errors.New("signature partition: signature is missing")
	}
	out := &SigPartition{}
	var err error
	if out.RootHash, err = hex.DecodeString(*raw.RootHash); err != nil || len(out.RootHash) < 16 {
		return nil, fmt.Errorf("signature partition: rootHash %q: expected at least 32 hexadecimal digits", *raw.RootHash)
	}
	if out.Signature, err = decodeBase64(*raw.Signature); err != nil {
		return nil, fmt.Errorf("signature partition: signature: %v", err)
	}
	if err := checkPKCS7(out.Signature); err != nil {
		return nil, fmt.Errorf("signature partition: signature: %v", err)
	}
	if raw.CertificateFingerprint != nil {
		fp, err := hex.DecodeString(*raw.CertificateFingerprint)
		if err != nil || len(fp) != 32 {
			return nil, fmt.Errorf("signature partition: certificateFingerprint %q: expected 64 hexadecimal digits (SHA-256)", *raw.CertificateFingerprint)
		}
		out.CertificateFingerprint = fp
	}
	return out, nil
}

// decodeBase64 decodes standard base64, padded or not, ignoring white space (systemd's
// unbase64mem does the same).
func decodeBase64(s string) ([]byte, error) {
	s = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("expected base64: %v", err)
	}
	return b, nil
}

// checkPKCS7 is a plausibility check, not a parse: the kernel verifies the signature. It
// catches a signature that is not DER (a PEM file, a hex string) with a clear message.
func checkPKCS7(b []byte) error {
	switch {
	case len(b) == 0:
		return errors.New("empty")
	case len(b) > MaxSignatureSize:
		return fmt.Errorf("%d bytes: expected at most %d", len(b), MaxSignatureSize)
	case b[0] != 0x30:
		return fmt.Errorf("starts with byte 0x%02x: expected a DER PKCS#7 SEQUENCE (0x30)", b[0])
	}
	return nil
}
