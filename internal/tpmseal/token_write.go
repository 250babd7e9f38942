package tpmseal

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
)

// tokenJSON is the token's fields in the order systemd writes them.
type tokenJSON struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Blob       []byte   `json:"tpm2-blob"` // standard base64, as systemd
	PCRs       []int    `json:"tpm2-pcrs"`
	Bank       string   `json:"tpm2-pcr-bank"`
	PrimaryAlg string   `json:"tpm2-primary-alg"`
	PolicyHash string   `json:"tpm2-policy-hash"`
	PIN        bool     `json:"tpm2-pin"`
	PCRValues  []string `json:"cvmboot_pcr_values,omitempty"`
	Generation int      `json:"cvmboot_generation,omitempty"`
}

// Marshal writes the token as LUKS2 token JSON.
func (t *Token) Marshal() ([]byte, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	j := tokenJSON{
		Type: TokenType, Keyslots: []string{strconv.Itoa(t.Keyslot)}, Blob: t.Blob,
		PCRs: t.PCRs, Bank: "sha256", PrimaryAlg: t.PrimaryAlg,
		PolicyHash: hex.EncodeToString(t.PolicyHash), Generation: t.Generation,
	}
	for _, v := range t.PCRValues {
		j.PCRValues = append(j.PCRValues, hex.EncodeToString(v))
	}
	return json.Marshal(j)
}

// check is what Marshal and ParseToken both require of a token.
func (t *Token) check() error {
	if t.Keyslot < 0 || t.Keyslot > 31 {
		return fmt.Errorf("systemd-tpm2 token: keyslot %d out of range 0-31", t.Keyslot)
	}
	if t.Generation < 0 || t.Generation > MaxGeneration {
		return fmt.Errorf("systemd-tpm2 token: cvmboot_generation %d out of range 0-%d", t.Generation, MaxGeneration)
	}
	if t.PrimaryAlg != PrimaryECC && t.PrimaryAlg != PrimaryRSA {
		return fmt.Errorf("systemd-tpm2 token: tpm2-primary-alg %q: want %q or %q", t.PrimaryAlg, PrimaryECC, PrimaryRSA)
	}
	if len(t.PolicyHash) != 32 {
		return fmt.Errorf("systemd-tpm2 token: tpm2-policy-hash has %d bytes, want 32 (sha256)", len(t.PolicyHash))
	}
	if len(t.PCRs) == 0 {
		return fmt.Errorf("systemd-tpm2 token: tpm2-pcrs is empty: the secret would be bound to nothing")
	}
	if t.PCRValues != nil {
		d, err := (PCRPolicy{PCRs: t.PCRs, Values: t.PCRValues}).Digest()
		if err != nil {
			return fmt.Errorf("systemd-tpm2 token: cvmboot_pcr_values: %w", err)
		}
		if !bytes.Equal(d, t.PolicyHash) {
			return fmt.Errorf("systemd-tpm2 token: cvmboot_pcr_values give the policy %x, not tpm2-policy-hash %x", d, t.PolicyHash)
		}
	} else {
		for i, p := range t.PCRs {
			if p < 0 || p > MaxPCR || (i > 0 && t.PCRs[i-1] >= p) {
				return fmt.Errorf("systemd-tpm2 token: tpm2-pcrs %v: want ascending, distinct PCRs 0-%d", t.PCRs, MaxPCR)
			}
		}
	}
	if _, err := parseBlob(t.Blob, t.PolicyHash); err != nil {
		return err
	}
	return nil
}
