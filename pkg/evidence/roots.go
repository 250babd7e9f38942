package evidence

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// TrustedRoots are what a verifier trusts beyond the vendors' built-in roots: certificates
// (AMD ARK/ASK/ASVK, Intel SGX root CA) and TPM attestation keys.
type TrustedRoots struct {
	Certificates []*x509.Certificate
	// AKs are TPM attestation keys trusted to sign quotes. A TPM quote proves nothing unless its
	// AK is pinned here: anyone can make a key and sign a quote-shaped message.
	AKs []crypto.PublicKey
}

// ParseTrustedRoots reads a PEM bundle of CERTIFICATE and PUBLIC KEY blocks.
func ParseTrustedRoots(data []byte) (*TrustedRoots, error) {
	var roots TrustedRoots
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d (CERTIFICATE): %w", n, err)
			}
			roots.Certificates = append(roots.Certificates, c)
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d (PUBLIC KEY): %w", n, err)
			}
			roots.AKs = append(roots.AKs, k)
		default:
			return nil, fmt.Errorf("PEM block %d is a %q, expected CERTIFICATE or PUBLIC KEY", n, block.Type)
		}
	}
	if len(roots.Certificates)+len(roots.AKs) == 0 {
		return nil, errors.New("no CERTIFICATE or PUBLIC KEY PEM block found")
	}
	return &roots, nil
}

// ReadTrustedRoots reads a PEM bundle file; the error names the file.
func ReadTrustedRoots(path string) (*TrustedRoots, error) {
	data, err := readBounded(path, MaxDescriptionSize)
	if err != nil {
		return nil, err
	}
	roots, err := ParseTrustedRoots(data)
	if err != nil {
		return nil, fail("trusted-roots", "%s: %v", path, err)
	}
	return roots, nil
}

// hasAK reports whether key is one of the pinned attestation keys.
func (r *TrustedRoots) hasAK(key crypto.PublicKey) bool {
	if r == nil {
		return false
	}
	k, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return false
	}
	for _, ak := range r.AKs {
		if k.Equal(ak) {
			return true
		}
	}
	return false
}

// PublicKeyPEM encodes a public key as a PEM PUBLIC KEY block, the form ParseTrustedRoots pins.
func PublicKeyPEM(key crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), nil
}
